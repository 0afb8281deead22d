"""Server-to-server federation (RFC 6120, XEP-0220, XEP-0178, XEP-0368).

``service`` holds the links and secrets, ``inbound`` and ``outbound`` the two kinds of stream,
``resolve`` the SRV lookups, ``tls`` the TLS contexts.
"""

from core.s2s.service import RemoteRoute, S2SService

__all__ = ["RemoteRoute", "S2SService"]
