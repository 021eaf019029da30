#!/usr/bin/env bash
# The project's one test command: `sudo ./tests/run.sh [pytest args]`.
#
# From a fresh clone on Debian 12 it installs what the end-to-end tests need (real peers:
# avahi, libpurple/finch, telepathy-salut from bullseye; the virtual LAN: iproute2,
# namespaces) and a virtualenv, then runs pytest. Repeated runs only check and go straight to pytest.
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

# Packages must not start services: a system-wide avahi-daemon would multicast on the real
# network and own the mDNS port that the tests' namespaced daemons need. Callers run
# no_service_starts first and services_may_start after (also on exit, by the trap).
made_policy=
no_service_starts() {
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
}
services_may_start() {
    if [[ $made_policy ]]; then
        rm -f /usr/sbin/policy-rc.d
        made_policy=
        trap - EXIT
    fi
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
    no_service_starts
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
    services_may_start
}

# telepathy-salut left Debian after bullseye; bullseye's build runs on bookworm with
# bookworm's libraries (shared/reference/salut-facts.md). Its index is fetched into a
# private apt state directory, so the system's sources and lists are never touched.
salut_version=0.8.1-7
salut_binary=/usr/lib/telepathy/telepathy-salut
salut_state=/var/cache/xmppll-bullseye

debian_mirror() {
    # The main archive URI the system already uses (deb822 or one-line format), so the
    # private index comes from the same (possibly local) mirror.
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
        [[ $uri ]] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { if ($i !~ /security/) print $i; break } }' "$f" | head -n1)
        [[ $uri ]] && { echo "$uri"; return; }
    done
    echo http://deb.debian.org/debian
}

install_salut() {
    [[ -x $salut_binary ]] && return 0
    command -v apt-get >/dev/null || { say "not a Debian system: install telepathy-salut yourself"; return; }
    if ((EUID != 0)); then
        say "missing telepathy-salut; run as root to install it (tests needing it will skip)"
        return
    fi
    local mirror private
    mirror=$(debian_mirror)
    say "installing telepathy-salut $salut_version from bullseye ($mirror)"
    mkdir -p "$salut_state/lists/partial" "$salut_state/cache/archives/partial" "$salut_state/debs"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bullseye main\n' \
        "$mirror" >"$salut_state/bullseye.list"
    private=(-o "Dir::Etc::SourceList=$salut_state/bullseye.list"
             -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::State::Lists=$salut_state/lists"
             -o "Dir::Cache=$salut_state/cache")
    # apt downloads as the unprivileged _apt user, which must be able to write there.
    chown _apt "$salut_state/debs" 2>/dev/null || true
    apt-get "${private[@]}" update -qq
    (cd "$salut_state/debs" && apt-get "${private[@]}" download -qq "telepathy-salut=$salut_version")
    no_service_starts
    export DEBIAN_FRONTEND=noninteractive
    # Its dependencies come from the system's own (bookworm) index.
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        "$salut_state/debs/telepathy-salut_${salut_version}_$(dpkg --print-architecture).deb" python3-dbus python3-gi
    services_may_start
    [[ -x $salut_binary ]] || { say "telepathy-salut installed but $salut_binary is missing"; return 1; }
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
install_salut
make_venv
flock -u 9
exec 9>&-

[[ ${CI:-} == true ]] && export XMPPLL_REQUIRE_ALL=1
# Two workers: most of a LAN test is waiting on mDNS and stream timers, so two at once
# halve the wall time on 2 cores (7.9 -> 4.2 min); every LAN has its own random names.
# More would starve the timing of the real peers. `-n 0` (after these) runs serially,
# for -s or --pdb. The slowest tests are listed so that the suite's time stays seen.
exec .venv/bin/python -m pytest -n 2 --durations=10 "$@"
