"""xmppll: Unix-style tools for XMPP serverless messaging (XEP-0174)."""

__version__ = "0.1.0"
