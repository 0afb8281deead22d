"""Health and metrics over HTTP, for operators and orchestrators (loopback by default)."""

from __future__ import annotations

from typing import Any

from twisted.web import resource, server


class _Health(resource.Resource):
    isLeaf = True

    def __init__(self, core: Any) -> None:
        super().__init__()
        self.core = core

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self.core.status_json()


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, core: Any) -> None:
        super().__init__()
        self.core = core

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        s = self.core.status()
        lines = [
            "# TYPE switchboard_connections gauge",
            f"switchboard_connections {s['connections']}",
            "# TYPE switchboard_sessions gauge",
            f"switchboard_sessions {s['sessions']}",
            "# TYPE switchboard_uptime_seconds gauge",
            f"switchboard_uptime_seconds {s['uptime']}",
        ]
        return ("\n".join(lines) + "\n").encode()


def admin_site(core: Any) -> server.Site:
    root = resource.Resource()
    root.putChild(b"health", _Health(core))
    root.putChild(b"metrics", _Metrics(core))
    site = server.Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
