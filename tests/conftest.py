"""Shared fixtures: the virtual LAN, and the skip-or-fail rule for missing capabilities."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lan import Lan

LAN_FIXTURES = {"lan", "lan_factory"}


def require(condition: bool, what: str) -> None:
    """Skip the test when the machine lacks `what`; fail it under XMPPLL_REQUIRE_ALL=1.

    A developer's laptop may lack root or avahi, and a skip says so without noise. CI
    sets XMPPLL_REQUIRE_ALL=1 because there a silent skip would hide that the
    end-to-end tests never ran.
    """
    if condition:
        return
    if os.environ.get("XMPPLL_REQUIRE_ALL") == "1":
        pytest.fail(f"missing {what} (XMPPLL_REQUIRE_ALL=1 makes this a failure)", pytrace=False)
    pytest.skip(f"missing {what}")


@functools.cache
def lan_missing() -> str | None:
    """What this machine lacks to build a virtual LAN, or None. Probed once per session.

    The probe builds a bridge and a veth pair in a throwaway network namespace, which
    vanishes with the probe: it tests the kernel without touching the real network.
    """
    if os.geteuid() != 0:
        return "root (network namespaces need it; run `sudo ./tests/run.sh`)"
    for tool in ("ip", "unshare", "setpriv", "sysctl", "hostname"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command"
    probe = subprocess.run(
        [
            "unshare",
            "--net",
            "--uts",
            "sh",
            "-c",
            "ip link add br0 type bridge && ip link add v0 type veth peer name v1",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"network namespaces with bridge and veth support ({probe.stderr.strip()})"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the LAN `lan`, so `-m "not lan"` runs without root."""
    for item in items:
        if LAN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lan)


def _require_lan() -> None:
    missing = lan_missing()
    require(missing is None, f"virtual LAN support: {missing}")


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Three hosts h1..h3 on one bridge, torn down after the test, pass or fail."""
    _require_lan()
    with Lan(3) as net:
        yield net


@pytest.fixture
def lan_factory() -> Iterator[Callable[..., Lan]]:
    """`lan_factory(n, user=..., tmp=...)` builds more LANs (e.g. two separate links),
    all torn down after the test."""
    _require_lan()
    made: list[Lan] = []

    def make(n_hosts: int = 3, *, user: str = "tester", tmp: Path | None = None) -> Lan:
        net = Lan(n_hosts, user=user, tmp=tmp)
        made.append(net)
        return net

    yield make
    for net in made:
        net.close()
