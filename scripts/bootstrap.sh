#!/usr/bin/env bash
# Idempotent setup for the demo and the test suite, on Debian as root:
#   - installs the Debian packages that are missing (apt-get update only then),
#   - starts dockerd when `docker info` fails, and waits for it,
#   - creates .venv and installs the package with its test extras.
# `bootstrap.sh venv` does the virtualenv part only (what the fast test tier needs).
# Env: BOOTSTRAP_PACKAGES (override the package list), DOCKERD_LOG (dockerd's log
# when this script starts it), DOCKERD_TIMEOUT (seconds, default 60), PYTHON.
set -euo pipefail

die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }
say() { echo "bootstrap: $*"; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
only=${1:-all}
case $only in all | venv) ;; *) die "usage: bootstrap.sh [all|venv]" ;; esac

prepare_venv() {
    python=${PYTHON:-python3}
    venv=$root/.venv
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$python is older than 3.11 (set PYTHON=/path/to/python3.11)"
        say "creating $venv"
        "$python" -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    # Reinstall only when pyproject.toml changed since the last successful install.
    stamp=$venv/.bootstrap-stamp
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x "$venv/bin/job-worker-agent" ]; then
        say "pip install -e '.[test]' into $venv"
        "$venv/bin/python" -m pip install -q -e '.[test]' || die "pip install failed"
        echo "$want" >"$stamp"
    fi
}

prepare_venv
if [ "$only" = venv ]; then
    say "virtualenv ready"
    exit 0
fi

# --- Debian packages ---------------------------------------------------------
packages=${BOOTSTRAP_PACKAGES:-docker.io busybox-static shellcheck debootstrap docker-registry iproute2 prometheus libfuse2}
# shellcheck source=scripts/debian_packages.sh
source "$root/scripts/debian_packages.sh"
# shellcheck disable=SC2086 # the list is space-separated on purpose
install_missing $packages

# --- Docker daemon -------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "dockerd not found (package docker.io)"
    if [ "$(systemctl is-system-running 2>/dev/null || true)" = running ] \
        || [ "$(systemctl is-system-running 2>/dev/null || true)" = degraded ]; then
        say "starting docker with systemctl"
        systemctl start docker || die "systemctl start docker failed (journalctl -u docker)"
    else
        [ "$(id -u)" = 0 ] || die "docker daemon not running and not root: start dockerd as root"
        log=${DOCKERD_LOG:-/var/log/opeva-dockerd.log}
        say "starting dockerd in the background (log: $log)"
        setsid dockerd >"$log" 2>&1 </dev/null &
    fi
    timeout=${DOCKERD_TIMEOUT:-60}
    for _ in $(seq "$timeout"); do
        [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        [ -n "${log:-}" ] && tail -n 20 "$log" >&2
        die "docker daemon did not answer within ${timeout}s (/var/run/docker.sock)"
    fi
    say "docker daemon is up"
fi

say "ready"
