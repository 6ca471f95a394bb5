#!/usr/bin/env bash
# Build a local stand-in for the python:3.11 base image, for machines that reach
# Debian's package archive but no container registry.
#   debootstrap --variant=minbase bookworm + python3, python3-venv, python3-pip,
#   ca-certificates, imported with `docker import`.
# Usage: scripts/build_local_base.sh [--force] [IMAGE]   (default opeva-local/python:3.11)
# Env: DEBIAN_MIRROR (default: debootstrap's own default), DEBIAN_SUITE (bookworm).
set -euo pipefail

die() { echo "build_local_base: ERROR: $*" >&2; exit 1; }

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
image=${1:-opeva-local/python:3.11}
suite=${DEBIAN_SUITE:-bookworm}

if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "build_local_base: $image already exists (use --force to rebuild)"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
docker info >/dev/null 2>&1 || die "docker daemon not reachable"

rootfs=$(mktemp -d /var/tmp/opeva-rootfs.XXXXXX)
chmod 755 "$rootfs"   # becomes the image's /
cleanup() {
    # debootstrap mounts /proc and /sys inside the tree; never delete through a mount.
    { grep -o " $rootfs/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

echo "build_local_base: debootstrap $suite into $rootfs (a few minutes)"
# shellcheck disable=SC2086  # DEBIAN_MIRROR is one optional word
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$rootfs" ${DEBIAN_MIRROR:-} >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; die "debootstrap failed (full log: $rootfs.log)"; }
rm -f "$rootfs.log"
chroot "$rootfs" python3 -c 'import venv, ensurepip, ssl' || die "python3 in the new tree is incomplete"

# Slim the tree: package caches and lists are not needed at run time.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*

tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
echo "build_local_base: built $image"
