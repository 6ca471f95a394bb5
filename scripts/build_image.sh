#!/usr/bin/env bash
# Build the worker image from this checkout.
# Usage: scripts/build_image.sh [--tag TAG] [--local-base] [--base IMAGE] [--ca-file FILE]
#   --tag TAG       image tag (default calof/job_worker_agent:latest)
#   --local-base    build opeva-local/python:3.11 with debootstrap first and use it
#                   (for machines that reach no container registry)
#   --base IMAGE    base image (default: the Dockerfile's, python:3.11-slim)
#   --ca-file FILE  CA bundle pip must trust inside the build (default: $PIP_CERT,
#                   else the host's /etc/ssl/certs/ca-certificates.crt; '' for none);
#                   used in the build stage only, not in the image
set -euo pipefail

die() { echo "build_image: ERROR: $*" >&2; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=calof/job_worker_agent:latest
base=""
ca_file=${PIP_CERT:-}
# The host's bundle holds any CA a TLS-intercepting proxy needs; elsewhere it is harmless.
[ -n "$ca_file" ] || [ ! -r /etc/ssl/certs/ca-certificates.crt ] || ca_file=/etc/ssl/certs/ca-certificates.crt
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=${2:?--tag needs a value}; shift 2 ;;
        --local-base) base=opeva-local/python:3.11; shift ;;
        --base) base=${2:?--base needs a value}; shift 2 ;;
        --ca-file) [ $# -ge 2 ] || die "--ca-file needs a value"; ca_file=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[ -z "$ca_file" ] || [ -r "$ca_file" ] || die "CA file $ca_file not readable"

if [ "$base" = opeva-local/python:3.11 ]; then
    bash "$root/scripts/build_local_base.sh" "$base"
fi

# A throw-away context: the sources the Dockerfile copies, plus the CA file.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r "$root/Dockerfile" "$root/.dockerignore" "$root/pyproject.toml" "$root/README.md" "$root/src" "$ctx/"
mkdir -p "$ctx/deploy/docker/build-ca"
find "$ctx/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
if [ -n "$ca_file" ]; then
    cp "$ca_file" "$ctx/deploy/docker/build-ca/ca.crt"
fi

args=(-t "$tag")
[ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
echo "build_image: docker build ${args[*]}"
docker build "${args[@]}" "$ctx" || die "docker build failed"
echo "build_image: built $tag"
