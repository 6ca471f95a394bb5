#!/usr/bin/env bash
# A real one-node Slurm cluster on this host, for the Slurm executor's tests and CI.
#   bash scripts/slurm_cluster.sh [start|stop|status]     (default: start; as root)
# start: installs slurm-wlm and munge when missing (apt-get update only then),
#   creates a munge key if there is none, starts munged as user munge, writes
#   /etc/slurm/slurm.conf (this host, `hostname -s`, as controller and only node;
#   partitions `debug` (default) and `long`; no accounting, no cgroups; cores
#   shared by up to 4 jobs so several small jobs run at once even on 2 CPUs),
#   starts slurmctld and slurmd in the background (no systemd), and waits until
#   the node is idle and a test job has run. Running it again changes nothing
#   while the cluster answers.
# stop: ends slurmd, slurmctld and munged (by their pid files).
# status: prints sinfo and squeue.
# Env: SLURM_CLUSTER_TIMEOUT (seconds to wait for each step, default 60).
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log, /var/log/munge/munged.log
set -euo pipefail

die() { echo "slurm_cluster: ERROR: $*" >&2; exit 1; }
say() { echo "slurm_cluster: $*"; }
# shellcheck source=scripts/debian_packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/debian_packages.sh"

timeout=${SLURM_CLUSTER_TIMEOUT:-60}
conf=/etc/slurm/slurm.conf
ctld_log=/var/log/slurm/slurmctld.log
slurmd_log=/var/log/slurm/slurmd.log
munge_log=/var/log/munge/munged.log
ctld_pid=/run/slurmctld.pid
slurmd_pid=/run/slurmd.pid
munge_pid=/run/munge/munged.pid

# Prints the tail of a log next to the error, since that is where daemons say why.
die_with_log() {
    local log=$1
    shift
    if [ -r "$log" ]; then
        echo "slurm_cluster: last lines of $log:" >&2
        tail -n 25 "$log" >&2
    fi
    die "$*"
}

# True when the pid file names a live process whose executable is $2.
running() {
    local pidfile=$1 name=$2 pid
    [ -r "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -z "$pid" ] || [ ! -r "/proc/$pid/comm" ]; then
        return 1
    fi
    [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ]
}

# Polls a command (given as arguments) once a second until it succeeds or $timeout passes.
wait_until() {
    local _
    for _ in $(seq "$timeout"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    "$@" >/dev/null 2>&1
}

stop_daemon() {
    local pidfile=$1 name=$2 pid _
    running "$pidfile" "$name" || return 0
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do
        running "$pidfile" "$name" || return 0
        sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
}

install_packages() {
    install_missing slurm-wlm munge
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    # munged refuses a key that others can read, and a log or pid directory it does not own.
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    if running "$munge_pid" munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    say "starting munged"
    # munged forks into the background itself (as the init script and unit expect).
    runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 || die_with_log "$munge_log" "munged did not start"
    wait_until sh -c 'munge -n | unmunge' || die_with_log "$munge_log" "munge -n | unmunge fails: munged does not answer"
}

write_config() {
    local host hw cpus sockets cores threads boards memory
    host=$(hostname -s)
    [ -n "$host" ] || die "hostname -s is empty"
    # The node exactly as slurmd sees the hardware, so that it registers without a mismatch.
    hw=$(slurmd -C 2>/dev/null | head -n 1) || die "slurmd -C failed"
    field() { printf '%s\n' "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    cpus=$(field CPUs)
    boards=$(field Boards)
    sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket)
    threads=$(field ThreadsPerCore)
    memory=$(field RealMemory)
    if [ -z "$cpus" ] || [ -z "$memory" ]; then
        die "cannot read CPUs/RealMemory from slurmd -C: $hw"
    fi
    # A little under what slurmd measures: a node with less memory than configured is drained.
    memory=$((memory * 95 / 100))
    install -d -m 0755 /etc/slurm
    local tmp
    tmp=$(mktemp /etc/slurm/slurm.conf.XXXXXX)
    cat >"$tmp" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node test cluster. Rewritten on every start.
ClusterName=opeva-test
# The address in parentheses spares a DNS look-up of the host name.
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$ctld_pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$ctld_log
SlurmdLogFile=$slurmd_log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
# No cgroups: CI machines and containers rarely let slurmd manage them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that names no memory is given the whole node and runs alone.
DefMemPerCPU=256
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to scontrol/squeue this long (seconds): there is no sacct here.
MinJobAge=600
# Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of time.
KillWait=5
# A node that was down comes back on its own once slurmd registers again.
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$memory State=UNKNOWN
# OverSubscribe=FORCE:4: each core is shared by up to 4 jobs (no gang scheduling here).
PartitionName=debug Nodes=$host Default=YES DefaultTime=00:30:00 MaxTime=04:00:00 OverSubscribe=FORCE:4 State=UP
PartitionName=long Nodes=$host Default=NO DefaultTime=01:00:00 MaxTime=2-00:00:00 OverSubscribe=FORCE:4 State=UP
EOF
    chmod 0644 "$tmp"
    mv "$tmp" "$conf"
    install -d -o slurm -g slurm -m 0755 /var/lib/slurm /var/lib/slurm/slurmctld /var/log/slurm
    install -d -m 0755 /var/lib/slurm/slurmd
}

cluster_answers() {
    sinfo -h -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

start_slurm() {
    if ! running "$ctld_pid" slurmctld; then
        say "starting slurmctld"
        : >>"$ctld_log"
        chown slurm:slurm "$ctld_log"
        # slurmctld daemonizes itself; what it prints before that goes to the log too.
        setsid /usr/sbin/slurmctld >>"$ctld_log" 2>&1 </dev/null || die_with_log "$ctld_log" "slurmctld did not start"
    fi
    wait_until scontrol ping || die_with_log "$ctld_log" "slurmctld does not answer scontrol ping after ${timeout}s"
    if ! running "$slurmd_pid" slurmd; then
        say "starting slurmd"
        setsid /usr/sbin/slurmd >>"$slurmd_log" 2>&1 </dev/null || die_with_log "$slurmd_log" "slurmd did not start"
    fi
    if ! wait_until cluster_answers; then
        # A node left down or drained by an earlier run (e.g. a reboot) is put back once.
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        wait_until cluster_answers || {
            sinfo -N -l >&2 || true
            die_with_log "$slurmd_log" "the node is not idle after ${timeout}s (sinfo above)"
        }
    fi
}

smoke_test() {
    local out
    out=$(timeout "$timeout" srun -N1 -n1 -t 1 echo slurm-ok 2>&1) || {
        echo "$out" >&2
        die_with_log "$slurmd_log" "srun -N1 echo failed or took more than ${timeout}s"
    }
    [ "$out" = slurm-ok ] || die "srun printed '$out' instead of 'slurm-ok'"
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "run as root"
    install_packages
    start_munge
    if running "$ctld_pid" slurmctld && running "$slurmd_pid" slurmd && cluster_answers; then
        say "already running"
        return 0
    fi
    write_config
    start_slurm
    smoke_test
    say "ready: partitions $(sinfo -h -o '%P' | tr '\n' ' ')on $(hostname -s), $(sinfo -h -N -o '%c' | head -n 1) CPUs"
}

cmd_stop() {
    [ "$(id -u)" = 0 ] || die "run as root"
    stop_daemon "$slurmd_pid" slurmd
    stop_daemon "$ctld_pid" slurmctld
    stop_daemon "$munge_pid" munged
    say "stopped"
}

cmd_status() {
    command -v sinfo >/dev/null || die "slurm is not installed (run: bash $0 start)"
    sinfo || die "sinfo failed: the cluster is not running (bash $0 start)"
    squeue
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
