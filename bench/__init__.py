"""Load generator and side-by-side benchmarks of Switchboard and Prosody (see bench/README.md).

Nothing here is imported by the server; the generator speaks raw XMPP (RFC 6120, RFC 6121)
over TCP with byte templates so that it costs as little CPU as the servers it measures.
"""
