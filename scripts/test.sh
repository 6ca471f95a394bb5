#!/usr/bin/env bash
# The test command: set up what the tests need (scripts/bootstrap.sh), then run
# pytest with any arguments given, e.g. scripts/test.sh tests/deploy -x
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/bootstrap.sh

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "test.sh: ERROR: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
