#!/usr/bin/env bash
# Build the demo job image opeva-demo-sim:latest (FROM scratch + static busybox +
# scripts/demo-image/opeva-demo-sim.sh). No registry needed.
# Usage: scripts/build_demo_image.sh [TAG]
set -euo pipefail

die() { echo "build_demo_image: ERROR: $*" >&2; exit 1; }

tag=${1:-opeva-demo-sim:latest}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}

[ -x "$busybox" ] || die "$busybox not found (apt-get install busybox-static)"
# A dynamically linked busybox would not run in an empty image.
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static (or set BUSYBOX=)"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/demo-image/Dockerfile" "$here/demo-image/opeva-demo-sim.sh" "$ctx/"
cp "$busybox" "$ctx/busybox"
out=$(docker build -q -t "$tag" "$ctx" 2>&1) || { echo "$out" >&2; die "docker build of $tag failed"; }
echo "build_demo_image: built $tag"
