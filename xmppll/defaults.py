"""Values that the command line and the core must agree on, defined once.

Plain constants only: every command imports this, so it must cost nothing."""

DEFAULT_PORT = 5298  # XEP-0174's port for link-local streams (port.p2pj)
STATUSES = ("avail", "away", "dnd")  # XEP-0174's presence values in the TXT `status`
VERIFY_POLICIES = ("strict", "mark", "off")  # how an incoming sender is checked
MESSAGE_TIMEOUT = 10.0  # s for a peer to take a message
FILE_TIMEOUT = 120.0  # s for a peer to accept a file: a person may have to say yes
