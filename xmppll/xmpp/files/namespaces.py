"""The namespaces of the IQs that offer us a file, in a module of their own: the agent
registers for them at start and loads file transfer (receive.py and what it imports)
only when the first offer comes (issue 14: an idle agent does not need it)."""

SI_NS = "http://jabber.org/protocol/si"  # XEP-0096 stream initiation
OOB_NS = "jabber:iq:oob"  # XEP-0066 out-of-band data
BYTESTREAMS_NS = "http://jabber.org/protocol/bytestreams"  # XEP-0065 SOCKS5
OFFERS = (SI_NS, OOB_NS, BYTESTREAMS_NS)
