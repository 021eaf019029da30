import subprocess
import sys

from xmppll.xmpp.caps import CAPS_NODE, FEATURES, IDENTITY, caps_ver


def test_caps_ver_matches_xep0115_worked_example():
    identities = [("client", "pc", "Exodus 0.9.1")]
    features = [
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
        "http://jabber.org/protocol/caps",
    ]
    assert caps_ver(identities, features) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_caps_ver_ignores_input_order():
    identities = [("client", "pc", "a"), ("automation", "bot", "b")]
    assert caps_ver(identities, FEATURES) == caps_ver(identities[::-1], FEATURES[::-1])


def test_our_caps_cover_what_we_answer():
    assert list(FEATURES) == sorted(FEATURES)
    for feature in (
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "urn:xmpp:receipts",
    ):
        assert feature in FEATURES
    assert IDENTITY == ("client", "pc", "xmppll")
    assert CAPS_NODE.startswith("https://")
    assert caps_ver() == caps_ver([IDENTITY], FEATURES)


def test_caps_stays_cheap_to_import():
    """The TXT record code imports caps in commands that must not load the XML stack."""
    code = "import sys, xmppll.xmpp.caps; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    assert not [m for m in loaded if m.split(".")[0] in ("xml", "pyexpat", "defusedxml")]
