#!/usr/bin/env bash
# The project's one test command: `sudo ./tests/run.sh [pytest args]`.
#
# From a fresh clone on Debian 12 it installs what the end-to-end tests need (real peers:
# avahi, libpurple/finch; the virtual LAN: iproute2, namespaces) and a virtualenv, then
# runs pytest. Repeated runs only check and go straight to pytest.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

packages=(
    iproute2 iputils-ping procps util-linux hostname passwd
    avahi-daemon avahi-utils finch libpurple-bin dbus tmux nftables jq groff-base man-db
    make systemd
    bind9 bind9-utils bind9-dnsutils
    python3 python3-venv
)

say() { printf 'tests/run.sh: %s\n' "$*" >&2; }

missing_packages() {
    local p
    for p in "${packages[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || echo "$p"
    done
}

install_packages() {
    command -v dpkg-query >/dev/null || { say "not a Debian system: install ${packages[*]} yourself"; return; }
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        say "missing ${missing[*]}; run as root to install them (tests needing them will skip)"
        return
    fi
    say "installing ${missing[*]}"
    # Packages must not start services: a system-wide avahi-daemon would multicast on the
    # real network and own the mDNS port that the tests' namespaced daemons need.
    local made_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [[ " ${missing[*]} " == *" avahi-daemon "* && -d /run/systemd/system ]]; then
        systemctl disable --now avahi-daemon.socket avahi-daemon.service 2>/dev/null || true
    fi
    # bind9 likewise: the wide-area tests run named inside a namespace of their own, and a
    # system named would answer on the real network (policy-rc.d keeps it from starting).
    if [[ " ${missing[*]} " == *" bind9 "* && -d /run/systemd/system ]]; then
        systemctl disable --now named.service 2>/dev/null || true
    fi
    if [[ $made_policy ]]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
}

make_venv() {
    # Debian's python3, not one under /root (pyenv): tests run commands as another uid,
    # which must be able to execute the venv's interpreter.
    local python=python3
    [[ -x /usr/bin/python3 ]] && python=/usr/bin/python3
    if ! .venv/bin/python -c '' 2>/dev/null; then
        rm -rf .venv
        "$python" -m venv .venv
    fi
    # Reinstall only when the dependencies may have changed; the editable install
    # picks up code changes by itself.
    local stamp=.venv/.xmppll-pyproject.sha256
    if ! sha256sum --status -c "$stamp" 2>/dev/null; then
        .venv/bin/pip install -q -e '.[test]'
        sha256sum pyproject.toml >"$stamp"
    fi
}

# Concurrent runs on one machine (several checkouts, several engineers) would race on
# dpkg's lock and on a half-built venv. One lock per uid: another's file is not writable.
exec 9>"${TMPDIR:-/tmp}/xmppll-tests-setup.$EUID.lock"
flock 9
install_packages
make_venv
flock -u 9
exec 9>&-

[[ ${CI:-} == true ]] && export XMPPLL_REQUIRE_ALL=1
exec .venv/bin/python -m pytest "$@"
