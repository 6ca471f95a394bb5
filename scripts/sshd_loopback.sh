#!/usr/bin/env bash
# A real sshd on 127.0.0.1 that lets in root with one generated key only: the
# Slurm executor's tests reach the cluster's commands over ssh through it.
#   bash scripts/sshd_loopback.sh [start] [DIR]    (as root; DIR default /tmp/opeva-sshd)
#   bash scripts/sshd_loopback.sh stop [DIR]
#   bash scripts/sshd_loopback.sh status [DIR]
# start: installs openssh-server/-client when missing (apt-get update only then),
#   creates in DIR a host key, a client key pair (id_ed25519), authorized_keys,
#   known_hosts for [127.0.0.1]:PORT and sshd_config, starts sshd on PORT, checks
#   one login, and prints SSHD_PORT=, SSHD_KEY=, SSHD_KNOWN_HOSTS= lines (eval-able).
#   Running it again while that sshd runs only prints them again.
# Env: SSHD_PORT (default 2222; when the default is taken, the next free port up
#   to 2299 is used, a port given explicitly must be free).
set -euo pipefail

die() { echo "sshd_loopback: ERROR: $*" >&2; exit 1; }
say() { echo "sshd_loopback: $*" >&2; }
# shellcheck source=scripts/debian_packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/debian_packages.sh"

action=start
case "${1:-}" in
    start | stop | status) action=$1; shift ;;
esac
dir=${1:-/tmp/opeva-sshd}
case "$dir" in
    /*) ;;
    *) dir=$(pwd)/$dir ;;
esac
pidfile=$dir/sshd.pid
log=$dir/sshd.log

running() {
    local pid
    [ -r "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = sshd ]
}

port_in_use() {
    # bash's /dev/tcp connects only when something listens; the subshell closes it at once.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

print_env() {
    echo "SSHD_PORT=$(cat "$dir/port")"
    echo "SSHD_KEY=$dir/id_ed25519"
    echo "SSHD_KNOWN_HOSTS=$dir/known_hosts"
}

install_packages() {
    install_missing openssh-server openssh-client
}

choose_port() {
    local port
    if [ -n "${SSHD_PORT:-}" ]; then
        port_in_use "$SSHD_PORT" && die "SSHD_PORT=$SSHD_PORT is already in use"
        echo "$SSHD_PORT"
        return 0
    fi
    for port in $(seq 2222 2299); do
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "no free port in 2222-2299: set SSHD_PORT"
}

make_keys() {
    install -d -m 0700 "$dir"
    [ -s "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C opeva-sshd-host -f "$dir/ssh_host_ed25519_key"
    [ -s "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C opeva-sshd-client -f "$dir/id_ed25519"
    install -m 0600 "$dir/id_ed25519.pub" "$dir/authorized_keys"
}

write_config() {
    local port=$1
    cat >"$dir/sshd_config" <<EOF
# Written by scripts/sshd_loopback.sh: a test sshd for root with one key, on loopback only.
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $pidfile
AuthorizedKeysFile $dir/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# Without PAM no login session is set up, which a container often cannot do anyway.
UsePAM no
# DIR may sit under /tmp, which is world-writable: StrictModes would refuse the keys there.
StrictModes no
PrintMotd no
LogLevel VERBOSE
# The client's ControlMaster multiplexes sessions over one connection; allow plenty.
MaxSessions 50
MaxStartups 50:30:100
Subsystem sftp internal-sftp
EOF
    echo "[127.0.0.1]:$port $(cut -d' ' -f1-2 "$dir/ssh_host_ed25519_key.pub")" >"$dir/known_hosts"
    echo "$port" >"$dir/port"
}

check_login() {
    ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$dir/known_hosts" \
        -o ConnectTimeout=10 -i "$dir/id_ed25519" -p "$(cat "$dir/port")" root@127.0.0.1 true
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "run as root"
    install_packages
    if running && check_login >/dev/null 2>&1; then
        print_env
        return 0
    fi
    make_keys
    local port
    port=$(choose_port)
    write_config "$port"
    # sshd's privilege separation directory; systemd would create it.
    install -d -m 0755 /run/sshd
    /usr/sbin/sshd -t -f "$dir/sshd_config" || die "sshd -t rejects $dir/sshd_config"
    # sshd daemonizes itself and writes the pid file; -E keeps its log with the keys.
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$log" || die "sshd did not start (log: $log)"
    local _
    for _ in $(seq 50); do
        check_login >/dev/null 2>&1 && break
        sleep 0.2
    done
    if ! check_login >/dev/null 2>&1; then
        tail -n 20 "$log" >&2 || true
        die "ssh root@127.0.0.1 -p $port with $dir/id_ed25519 fails (sshd log above)"
    fi
    say "sshd listening on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    print_env
}

cmd_stop() {
    local pid _
    if ! running; then
        say "not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    # Only the listener is ended; sessions already open end with their clients.
    kill -TERM "$pid"
    for _ in $(seq 20); do
        running || break
        sleep 0.2
    done
    running && die "sshd (pid $pid) is still running"
    say "stopped"
}

cmd_status() {
    running || die "not running (no live sshd in $pidfile)"
    say "running, pid $(cat "$pidfile")"
    print_env
}

case "$action" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
esac
