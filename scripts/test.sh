#!/usr/bin/env bash
# The test command. With no test paths it runs two tiers and stops at the first part that fails:
#   1. fast: tests/unit and tests/devserver, no Docker needed, on 2 pytest-xdist workers (about a minute);
#   2. the rest: real dockerd, a one-node Slurm cluster (scripts/slurm_cluster.sh), the reference backend,
#      deployment and fault tests. Mostly waiting on jobs and polls: first the tests that may run side by
#      side, on TEST_JOBS workers (default 5; tests that must not overlap each other share an xdist_group,
#      see tests/conftest.py), then the tests marked `serial` one at a time (they restart dockerd or need a
#      quiet host).
# It sets up what each tier needs (scripts/bootstrap.sh; tier 2's while tier 1 runs). Options go to every pytest run (e.g.
# scripts/test.sh -x --durations=15; -n0 runs without workers); with test paths it is one plain pytest
# run (scripts/test.sh tests/unit -k stop).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

fast=(tests/unit tests/devserver)
paths=0
for arg in "$@"; do
    case $arg in -*) ;; *) paths=1 ;; esac
done

pytest() {
    local rc=0
    .venv/bin/python -m pytest "$@" || rc=$?
    if [ "$rc" = 5 ]; then
        echo "test.sh: ERROR: pytest collected no tests" >&2
        return 1
    fi
    return "$rc"
}

if [ "$paths" = 1 ]; then
    bash scripts/bootstrap.sh
    bash scripts/slurm_cluster.sh start
    pytest "$@"
    exit
fi

jobs=${TEST_JOBS:-5}
bash scripts/bootstrap.sh venv
# Tier 2's setup (Docker, Slurm and their packages) runs meanwhile: on a fresh machine the installs take about
# as long as the fast tier. It is waited for (never cut in the middle of an install), and its output shown, after.
setup_log=$(mktemp)
(bash scripts/bootstrap.sh && bash scripts/slurm_cluster.sh start) >"$setup_log" 2>&1 &
setup=$!
echo "test.sh: tier 1 (fast): ${fast[*]}; tier 2's setup runs meanwhile"
fast_rc=0
pytest "${fast[@]}" -n 2 "$@" || fast_rc=$?
setup_rc=0
wait "$setup" || setup_rc=$?
cat "$setup_log"
rm -f "$setup_log"
[ "$fast_rc" = 0 ] || exit "$fast_rc"
[ "$setup_rc" = 0 ] || { echo "test.sh: ERROR: tier 2's setup failed" >&2; exit "$setup_rc"; }
echo "test.sh: tier 2: everything else, $jobs side by side"
pytest tests "${fast[@]/#/--ignore=}" -m "not serial" -n "$jobs" --dist loadgroup "$@"
echo "test.sh: tier 2: the tests marked serial, one at a time"
pytest tests "${fast[@]/#/--ignore=}" -m serial "$@"
