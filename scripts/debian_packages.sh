# shellcheck shell=bash
# Sourced by the setup scripts (after they define die and say): install_missing PKG... installs, as root,
# the Debian packages that are not installed yet, running apt-get update only then.
set -euo pipefail  # as the scripts that source it
install_missing() {
    local pkg missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}): run as root, or: sudo apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # Without systemd the packages' own services may not start: harmless, the scripts start what they need.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}
