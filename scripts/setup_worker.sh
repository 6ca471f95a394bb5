#!/usr/bin/env bash
# Set up job-worker-agent containers on this host: mount the NFS share, then run
# one or more worker containers with the Docker socket and the share mounted.
# Re-running replaces this worker's containers (state volumes are kept).
#
# Usage: sudo scripts/setup_worker.sh --server URL --worker-id ID \
#            --nfs-server HOST --nfs-export PATH [options]
#   --server URL              backend base URL (required)
#   --worker-id ID            worker id; container job-worker-<ID> (required)
#   --nfs-server HOST         NFS server (required unless --skip-mount/--mount-cmd)
#   --nfs-export PATH         exported path on the NFS server (same condition)
#   --mount-point DIR         where the share is mounted, the same path inside the
#                             worker container (default /opt/opeva_shared_data)
#   --skip-mount              do not mount; DIR must already hold the share
#   --mount-cmd CMD           mount with CMD (run by sh) instead of mount -t nfs;
#                             it sees MOUNT_POINT, NFS_SERVER, NFS_EXPORT
#   --fstab                   add the NFS mount to /etc/fstab (once)
#   --image IMAGE             worker image (default calof/job_worker_agent:latest)
#   --job-image IMAGE         job image when the backend names none (WORKER_IMAGE)
#   --poll-interval S         POLL_INTERVAL
#   --heartbeat-interval S    WORKER_HEARTBEAT_INTERVAL
#   --status-poll-interval S  STATUS_POLL_INTERVAL
#   --log-level LEVEL         LOG_LEVEL
#   --replicas N              N workers <ID>-1..<ID>-N (default 1: just <ID>)
#   --metrics-port P          METRICS_PORT of the first worker, +1 for each next
#                             one (default 9464; 0 turns metrics off)
#   --network NET             docker network of the workers (e.g. host, so that a
#                             backend on this host's loopback is reachable)
#   --user UID[:GID]          run the workers unprivileged; adds the socket's group
#   --env NAME[=VALUE]        extra environment (repeatable), e.g. --env OPEVA_TOKEN
#   --dry-run                 print the commands instead of running them
set -euo pipefail

die() { echo "setup_worker: ERROR: $*" >&2; exit 1; }
say() { echo "setup_worker: $*"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

server="" worker_id="" nfs_server="" nfs_export=""
mount_point=/opt/opeva_shared_data
image=calof/job_worker_agent:latest
job_image="" poll="" heartbeat="" status_poll="" log_level="" network="" user=""
replicas=1 metrics_port=9464 skip_mount=0 mount_cmd="" fstab=0 dry_run=0
extra_env=()

need() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
    case "$1" in
        --server) need "$@"; server=$2; shift 2 ;;
        --worker-id) need "$@"; worker_id=$2; shift 2 ;;
        --nfs-server) need "$@"; nfs_server=$2; shift 2 ;;
        --nfs-export) need "$@"; nfs_export=$2; shift 2 ;;
        --mount-point) need "$@"; mount_point=$2; shift 2 ;;
        --skip-mount) skip_mount=1; shift ;;
        --mount-cmd) need "$@"; mount_cmd=$2; shift 2 ;;
        --fstab) fstab=1; shift ;;
        --image) need "$@"; image=$2; shift 2 ;;
        --job-image) need "$@"; job_image=$2; shift 2 ;;
        --poll-interval) need "$@"; poll=$2; shift 2 ;;
        --heartbeat-interval) need "$@"; heartbeat=$2; shift 2 ;;
        --status-poll-interval) need "$@"; status_poll=$2; shift 2 ;;
        --log-level) need "$@"; log_level=$2; shift 2 ;;
        --replicas) need "$@"; replicas=$2; shift 2 ;;
        --metrics-port) need "$@"; metrics_port=$2; shift 2 ;;
        --network) need "$@"; network=$2; shift 2 ;;
        --user) need "$@"; user=$2; shift 2 ;;
        --env) need "$@"; extra_env+=("$2"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# --- input checks --------------------------------------------------------------
is_number() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; }
[ -n "$server" ] || die "--server URL is required"
case "$server" in http://*|https://*) ;; *) die "--server must start with http:// or https:// (got '$server')" ;; esac
[ -n "$worker_id" ] || die "--worker-id ID is required"
case "$worker_id" in *[!A-Za-z0-9_.-]*|[!A-Za-z0-9]*) die "--worker-id '$worker_id': use letters, digits, '.', '_', '-'" ;; esac
case "$mount_point" in /*) ;; *) die "--mount-point must be an absolute path" ;; esac
if ! is_number "$replicas" || [ "$replicas" -lt 1 ]; then die "--replicas must be a number >= 1"; fi
is_number "$metrics_port" || die "--metrics-port must be a number"
for v in "$poll" "$heartbeat" "$status_poll"; do
    [ -z "$v" ] || is_number "$v" || die "intervals must be whole seconds (got '$v')"
done
if [ "$skip_mount" = 0 ] && [ -z "$mount_cmd" ]; then
    if [ -z "$nfs_server" ] || [ -z "$nfs_export" ]; then
        die "--nfs-server and --nfs-export are required (or use --skip-mount / --mount-cmd)"
    fi
fi
if [ "$fstab" = 1 ] && { [ -z "$nfs_server" ] || [ -z "$nfs_export" ]; }; then
    die "--fstab needs --nfs-server and --nfs-export"
fi

# Run a command, or only print it with --dry-run.
run() {
    if [ "$dry_run" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}
# A failed precondition stops a real run; a dry run only warns.
precondition() {
    if [ "$dry_run" = 1 ]; then echo "setup_worker: WARNING (dry run): $*" >&2; else die "$*"; fi
}

# --- preconditions -------------------------------------------------------------
[ "$(id -u)" = 0 ] || precondition "must run as root (mounting and docker need it): sudo $0 ..."
command -v docker >/dev/null || precondition "docker not found: install Docker (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || precondition "docker daemon not reachable: start it (systemctl start docker) and check /var/run/docker.sock"
if [ "$skip_mount" = 0 ] && [ -z "$mount_cmd" ] && ! command -v mount.nfs >/dev/null && [ ! -x /sbin/mount.nfs ]; then
    precondition "NFS client missing (mount.nfs): apt-get install nfs-common"
fi

# --- the share -----------------------------------------------------------------
run mkdir -p "$mount_point"
if [ "$skip_mount" = 1 ]; then
    say "not mounting (--skip-mount): using $mount_point as it is"
elif [ "$dry_run" = 0 ] && mountpoint -q "$mount_point"; then
    say "$mount_point is already a mount point; leaving it as it is"
elif [ -n "$mount_cmd" ]; then
    run env MOUNT_POINT="$mount_point" NFS_SERVER="$nfs_server" NFS_EXPORT="$nfs_export" sh -c "$mount_cmd" \
        || die "mount command failed: $mount_cmd"
else
    run mount -t nfs "$nfs_server:$nfs_export" "$mount_point" \
        || die "mount -t nfs $nfs_server:$nfs_export $mount_point failed (server reachable? export allowed for this host?)"
fi
if [ "$fstab" = 1 ]; then
    line="$nfs_server:$nfs_export $mount_point nfs defaults,_netdev 0 0"
    if [ "$dry_run" = 0 ] && grep -qsF "$nfs_server:$nfs_export $mount_point " /etc/fstab; then
        say "/etc/fstab already has $nfs_server:$nfs_export"
    elif [ "$dry_run" = 1 ]; then
        echo "+ echo '$line' >> /etc/fstab"
    else
        echo "$line" >>/etc/fstab
        say "added to /etc/fstab: $line"
    fi
fi
if [ "$dry_run" = 0 ]; then
    [ -d "$mount_point" ] || die "$mount_point is not a directory"
    probe="$mount_point/.job-worker-write-test.$$"
    # With root_squash, root on this host is 'nobody' on the share: see docs/deployment.md.
    if ! touch "$probe" 2>/dev/null; then
        die "$mount_point is not writable by $(id -un) (NFS root_squash? export options?)"
    fi
    rm -f "$probe"
fi

# --- the image -------------------------------------------------------------------
if [ "$dry_run" = 0 ] && ! docker image inspect "$image" >/dev/null 2>&1; then
    say "pulling $image"
    docker pull "$image" || die "image $image is neither local nor pullable (offline? build it: scripts/build_image.sh --tag $image)"
fi

# --- the containers --------------------------------------------------------------
# Remove every container of this worker id (also replicas from an earlier, larger run).
if [ "$dry_run" = 1 ]; then
    echo "+ docker rm -f \$(docker ps -aq --filter label=opeva.worker-group=$worker_id) job-worker-$worker_id ..."
else
    old=$(
        docker ps -aq --filter "label=opeva.worker-group=$worker_id"
        for name in "job-worker-$worker_id" $(seq -f "job-worker-$worker_id-%g" 1 "$replicas"); do
            docker ps -aq --filter "name=^/$name\$"
        done
    )
    if [ -n "$old" ]; then
        say "removing old containers"
        # shellcheck disable=SC2046  # one id per line
        docker rm -f $(echo "$old" | sort -u) >/dev/null || die "could not remove the old containers"
    fi
fi

group_args=()
if [ -n "$user" ]; then
    group_args=(--user "$user")
    if [ -S /var/run/docker.sock ]; then
        group_args+=(--group-add "$(stat -c %g /var/run/docker.sock)")
    else
        precondition "/var/run/docker.sock not found (needed for --group-add with --user)"
    fi
fi

names=()
for i in $(seq 1 "$replicas"); do
    if [ "$replicas" = 1 ]; then id=$worker_id; else id=$worker_id-$i; fi
    port=$metrics_port
    [ "$metrics_port" = 0 ] || port=$((metrics_port + i - 1))
    args=(docker run -d --restart unless-stopped --name "job-worker-$id"
        --label "opeva.worker-group=$worker_id"
        -e "OPEVA_SERVER=$server" -e "WORKER_ID=$id" -e "OPEVA_SHARED_DIR=$mount_point"
        -e "METRICS_PORT=$port")
    [ -z "$job_image" ] || args+=(-e "WORKER_IMAGE=$job_image")
    [ -z "$poll" ] || args+=(-e "POLL_INTERVAL=$poll")
    [ -z "$heartbeat" ] || args+=(-e "WORKER_HEARTBEAT_INTERVAL=$heartbeat")
    [ -z "$status_poll" ] || args+=(-e "STATUS_POLL_INTERVAL=$status_poll")
    [ -z "$log_level" ] || args+=(-e "LOG_LEVEL=$log_level")
    for e in ${extra_env[@]+"${extra_env[@]}"}; do args+=(-e "$e"); done
    [ -z "$network" ] || args+=(--network "$network")
    args+=(${group_args[@]+"${group_args[@]}"}
        -v /var/run/docker.sock:/var/run/docker.sock
        -v "$mount_point:$mount_point"
        -v "job-worker-$id-state:/var/lib/job-worker-agent"
        "$image")
    if [ "$dry_run" = 1 ]; then
        run "${args[@]}"
    else
        "${args[@]}" >/dev/null || die "docker run for job-worker-$id failed"
    fi
    names+=("job-worker-$id")
done

[ "$dry_run" = 0 ] || exit 0
# A worker that dies at once (bad URL, socket refused, ...) shows up within seconds.
sleep "${SETUP_WORKER_SETTLE:-3}"
for name in "${names[@]}"; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
        docker logs --tail 30 "$name" >&2 || true
        die "container $name is not running (its last log lines are above)"
    fi
    say "started $name"
done
say "logs: docker logs -f ${names[0]}"
