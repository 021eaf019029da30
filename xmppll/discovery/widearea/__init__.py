"""Wide-area DNS-SD: RFC 6763 over unicast DNS, registration by RFC 2136 UPDATE + TSIG.

A second Directory beside mDNS (discovery.directory): config (settings and the TSIG
key file), records (names, TXT freshness), update (the UPDATE messages), browse
(queries and polling), directory (WideAreaDirectory), oneshot (what the commands do
when no agent runs).
"""
