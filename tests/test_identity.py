"""Instance names (xmppll/identity.py): what we may publish as `user@machine`.

One DNS label of at most 63 UTF-8 bytes; any printable text in the user part (XEP-0174
names are for people), an ASCII host label in the machine part, and no dot anywhere,
because python-zeroconf would put it on the wire as a label separator.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xmppll import identity
from xmppll.errors import DataError
from xmppll.identity import MAX_INSTANCE_BYTES, check_instance_name


@pytest.mark.parametrize(
    "name",
    ["juliet@capulet", "Zoë 🎉 smith@h1", "romeo-2@montague", "a@b", "user name@host-1",
     "j@x@h1", "ünïcødé@H1"],
)
def test_valid_names_are_kept_exactly(name: str) -> None:
    assert check_instance_name(name) == name


def test_a_bare_user_gets_the_machine_part() -> None:
    assert check_instance_name("juliet", machine="capulet") == "juliet@capulet"
    assert check_instance_name("Zoë 🎉", machine="h1") == "Zoë 🎉@h1"


def test_63_bytes_is_the_limit() -> None:
    host = "@h1"
    exact = "a" * (MAX_INSTANCE_BYTES - len(host)) + host
    assert len(exact.encode()) == 63
    assert check_instance_name(exact) == exact
    with pytest.raises(DataError, match="64 bytes.*63") as caught:
        check_instance_name("a" + exact)
    assert caught.value.exit_code == 65


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    name = "é" * 30 + "@h1"  # 33 characters, 63 bytes
    assert check_instance_name(name) == name
    with pytest.raises(DataError, match="63"):
        check_instance_name("🎉" + name)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("j.doe@h1", "j_doe@h1"), ("juliet@capulet.local", "juliet@capulet"),
     ("a.b.c@h1", "a_b_c@h1")],
)
def test_a_dot_is_refused_with_a_suggestion(name: str, suggestion: str) -> None:
    with pytest.raises(DataError, match=r"'\.'") as caught:
        check_instance_name(name)
    assert f"try {suggestion!r}" in str(caught.value)
    assert caught.value.exit_code == 65
    assert check_instance_name(suggestion) == suggestion, "the suggestion must be valid"


@pytest.mark.parametrize("name", ["juliet@café", "juliet@ca pulet", "juliet@-capulet",
                                  "juliet@capulet-", "juliet@ca_pulet", "juliet@🎉"])
def test_the_machine_part_is_an_ascii_host_label(name: str) -> None:
    with pytest.raises(DataError, match="machine part"):
        check_instance_name(name)


@pytest.mark.parametrize("name", ["@h1", "ju\x00liet@h1", "ju\nliet@h1", "ju\x7fliet@h1"])
def test_empty_user_and_control_characters_are_refused(name: str) -> None:
    with pytest.raises(DataError):
        check_instance_name(name)


user_parts = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="."), min_size=1
)


@given(user_parts)
def test_any_printable_user_part_is_accepted_iff_it_fits(user: str) -> None:
    name = f"{user}@h1"
    if len(name.encode()) <= MAX_INSTANCE_BYTES:
        assert check_instance_name(name) == name
    else:
        with pytest.raises(DataError, match="63"):
            check_instance_name(name)


@pytest.mark.parametrize(
    ("hostname", "label"),
    [("capulet", "capulet"), ("capulet.example.com", "capulet"), ("My_Host", "My-Host"),
     ("__", "localhost"), ("x" * 80, "x" * 63)],
)
def test_host_label_is_a_valid_dns_label(monkeypatch: pytest.MonkeyPatch, hostname: str,
                                         label: str) -> None:
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(nodename=hostname))
    assert identity.host_label() == label
    if len(label) < 60:
        assert check_instance_name("u", machine=label) == f"u@{label}"


def test_default_name_has_no_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "j.doe")
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(nodename="capulet.lan"))
    assert identity.default_name() == "j_doe@capulet"
    assert check_instance_name(identity.default_name()) == "j_doe@capulet"
