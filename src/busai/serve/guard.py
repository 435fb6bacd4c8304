"""What the server checks before a request reaches the app, and the headers every answer carries.

- :class:`SecurityHeaders`: ``X-Content-Type-Options``, ``X-Frame-Options`` and a
  Content-Security-Policy on every response, error answers included.
- :class:`UploadGate`: for the upload route, refuses a declared ``Content-Length`` over the limit
  before any byte is read (413), and bounds the uploads held at once, running or waiting
  (503 with ``Retry-After``). Chunked bodies, which declare no length, are cut off while they
  stream by the route's own ``max_body_size`` (FastAPI).

Plain ASGI middleware rather than ``@app.middleware("http")``: the gate must answer before the body
is read, and the counter must cover the request until its answer is sent. Host-header checking
is Starlette's ``TrustedHostMiddleware``; no library sets the other two headers or counts held requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from busai.errors import ConfigError
from busai.serve.limits import RETRY_AFTER_S

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def content_security_policy(page: str) -> str:
    """A CSP that lets ``page`` run its own inline ``<script>`` blocks (by hash) and nothing else.

    Styles stay ``'unsafe-inline'``: the page sets a few style attributes, and no user text is
    ever inserted as HTML (the page writes results with ``textContent``).
    """
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    )
    script_src = hashes or "'none'"
    return (
        f"default-src 'none'; script-src {script_src}; style-src 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def host_patterns(hosts) -> list[str]:
    """Host names for ``TrustedHostMiddleware``: loopback names plus ``hosts``; IPv6 addresses bracketed
    as they appear in a Host header."""
    patterns = list(LOOPBACK_HOSTS)
    for given in hosts:
        host = given.strip().lower()
        if not host:
            raise ConfigError(f"--allow-host {given!r}: an empty host name answers no request; give a name clients use (e.g. scanner.lan), or '*' for any")
        if "*" in host.lstrip("*") or (host.startswith("*") and host != "*" and not host.startswith("*.")):
            raise ConfigError(f"--allow-host {host}: a wildcard is allowed only as '*' or '*.example.com'")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if host and host not in patterns:
            patterns.append(host)
    return patterns


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, csp: str) -> None:
        self.app = app
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", csp.encode()),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UploadGate:
    """Bounds the requests to ``path`` held at once and refuses over-long declared bodies up front."""

    def __init__(self, app: ASGIApp, *, path: str, max_body: int, max_held: int, too_large: str) -> None:
        self.app = app
        self.path = path
        self.max_body = max_body
        self.max_held = max_held
        self.too_large = too_large
        self.held = 0  # only touched on the event loop, so no lock is needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            return await _answer(send, 413, self.too_large)
        if self.held >= self.max_held:
            detail = f"the server is busy with {self.held} uploads; retry in {RETRY_AFTER_S} seconds"
            return await _answer(send, 503, detail, [(b"retry-after", str(RETRY_AFTER_S).encode())])
        self.held += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.held -= 1


async def _answer(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    """A JSON ``{"detail": ...}`` answer, the shape FastAPI gives every other error."""
    body = json.dumps({"detail": detail}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
