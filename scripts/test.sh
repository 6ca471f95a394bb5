#!/usr/bin/env bash
# The test command. With no test paths it runs two tiers and stops at the first that fails:
#   1. fast: tests/unit and tests/devserver, no Docker needed (seconds);
#   2. the rest: real dockerd, a one-node Slurm cluster (scripts/slurm_cluster.sh), the reference backend,
#      deployment and fault tests.
# It sets up what each tier needs (scripts/bootstrap.sh). Options go to pytest in both tiers
# (e.g. scripts/test.sh -x); with test paths it is one plain pytest run (scripts/test.sh tests/unit -k stop).
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

bash scripts/bootstrap.sh venv
echo "test.sh: tier 1 (fast): ${fast[*]}"
pytest "${fast[@]}" "$@"
bash scripts/bootstrap.sh
bash scripts/slurm_cluster.sh start
echo "test.sh: tier 2: everything else"
pytest tests "${fast[@]/#/--ignore=}" "$@"
