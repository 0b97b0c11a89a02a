"""Who may call the server: an API key checked as OpenAI's clients send theirs
(``Authorization: Bearer KEY``), and the warning for a server reachable beyond this machine
without one. Plain ASGI: no web framework imported.

A request without the key, or with another, is answered 401 with OpenAI's error JSON
(``{"error": {"message", "type": "invalid_request_error", "param": null, "code":
"invalid_api_key"}}``); ``GET /health`` stays open (for load balancers and probes). The key
given is compared in constant time (``hmac.compare_digest`` of SHA-256 digests: neither the
content nor the length of the key leaks through timing)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json

from models.whisper.apps.server.protocol import ApiError

#: paths answered without the key
OPEN_PATHS = frozenset({"/health"})
#: host names that are this machine only
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeyCheck:
    """ASGI middleware: ``app``'s HTTP requests need ``Authorization: Bearer api_key`` (but
    :data:`OPEN_PATHS`). A refused request's body is read and dropped first (up to
    ``drain_limit`` bytes), so its client reads the 401 rather than a reset connection."""

    def __init__(self, app, api_key: str, drain_limit: int = 64 * 1024 * 1024):
        if not api_key:
            raise ValueError("api_key: an empty key would let anyone in; give a key or None")
        self.app = app
        self.digest = _digest(api_key.encode())
        self.drain_limit = drain_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        await self.drain(scope, receive)
        body = json.dumps(refusal.body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="kvgraph"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope) -> ApiError | None:
        """None for a request bearing the key; else the 401 to answer."""
        values = [v for k, v in scope.get("headers", ()) if k == b"authorization"]
        scheme, _, token = (values[0] if len(values) == 1 else b"").strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return unauthorized(
                "missing API key: send it as 'Authorization: Bearer KEY' (the openai client's api_key)"
            )
        if not hmac.compare_digest(_digest(token.strip()), self.digest):
            return unauthorized("incorrect API key provided")
        return None

    async def drain(self, scope, receive) -> None:
        """Read the refused request's body (none beyond ``drain_limit`` bytes)."""
        lengths = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
        if lengths and lengths[0].isdigit() and int(lengths[0]) > self.drain_limit:
            return  # answered at once; the server closes the connection
        seen = 0
        while seen <= self.drain_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def unauthorized(message: str) -> ApiError:
    """OpenAI's 401 for a missing or wrong API key."""
    return ApiError(401, message, code="invalid_api_key", type="invalid_request_error")


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address or name to listen on) reachable from this machine only?
    ``""``, ``0.0.0.0`` and ``::`` are every interface; a name other than ``localhost`` is
    taken as reachable from outside."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_warning(prog: str, host: str, api_key: str | None) -> str | None:
    """The one-line warning for listening on ``host`` beyond loopback without a key, else
    None."""
    if api_key or is_loopback(host):
        return None
    return (
        f"{prog}: warning: listening on {host or 'every interface'} without an API key: anyone "
        "who can reach this port can use the server (set --api-key or KVGRAPH_API_KEY)"
    )
