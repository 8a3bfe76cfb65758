"""The service's front door, one ASGI middleware for HTTP and WebSocket alike: Host, token, Origin, body
size, and the audit log.

    qrtrain serve                                   # loopback: Host must be localhost/127.0.0.1/[::1]
    QRTRAIN_API_TOKEN=... qrtrain serve --host 0.0.0.0

- Host: bound to loopback, only `localhost`, `127.0.0.1` or `[::1]` (with the service's port) are answered,
  so a DNS-rebound name never reaches the API (400).
- Token (when one is set: always beyond loopback): `Authorization: Bearer T` (any case), the HttpOnly
  SameSite=Strict cookie `/?token=T` sets, or `?token=T`; compared in constant time (401).
- Origin: a state-changing request (POST, PUT, PATCH, DELETE) and every WebSocket upgrade must come from
  the service's own page: an `Origin` other than the service's own, or `Sec-Fetch-Site` other than
  same-origin/none, is refused (403). Clients that send neither (curl, scripts) are not browsers.
- Bodies of changes need a Content-Length (411) of at most MAX_BODY bytes (413).
- Audit: every change and every refusal is one JSON line in ROOT/.service/audit.jsonl; the client is the
  socket's peer (X-Forwarded-For counts only with `qrtrain serve --trust-proxy IP`, uvicorn's own setting).
"""

import hmac
import json
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

MAX_BODY = 64 * 1024
MAX_INFERENCE_BODY = 1024 * 1024  # /v1: a conversation may be longer than any job request
CHANGES = ("POST", "PUT", "PATCH", "DELETE")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_audit_lock = threading.Lock()


def header(scope, name: str) -> str | None:
    wanted = name.encode("latin-1")
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


def given_token(scope) -> str:
    """The token a request presents: the Authorization header (Bearer, any case), the cookie, or ?token=."""
    authorization = (header(scope, "authorization") or "").strip()
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for part in (header(scope, "cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == "qrtrain_token" and value:
            return value
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [""])[0]


def token_matches(scope, token: str) -> bool:
    return hmac.compare_digest(given_token(scope).encode("utf-8", "replace"), token.encode("utf-8"))


def host_allowed(host: str | None, port: int) -> bool:
    """A loopback service answers only to loopback names, on its own port (or none given)."""
    if not host:
        return False
    for name in LOOPBACK_NAMES:
        if host == name or host == f"{name}:{port}":
            return True
    return False


def origin_allowed(scope) -> bool:
    """A browser's request comes from the service's own page; requests without browser headers pass."""
    site = header(scope, "sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = header(scope, "origin")
    if origin is None:
        return True
    host = header(scope, "host") or ""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return origin == f"{scheme}://{host}"


class Guard:
    """The ASGI middleware: every check above, before the app sees the request."""

    def __init__(self, app, root: Path, token: str | None, loopback: bool, port: int | None):
        self.app, self.token, self.loopback, self.port = app, token, loopback, port
        self.audit_log = Path(root) / ".service" / "audit.jsonl"

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        refusal = self.refusal(scope, method)
        if refusal is not None:
            status, message = refusal
            self.audit(scope, method, status, refused=message)
            return await refuse(scope, send, status, message)
        if method not in CHANGES or scope.get("path", "").startswith("/v1/"):  # /v1 usage is kept in deployments.db
            return await self.app(scope, receive, send)
        audited = []

        async def send_and_note(message):
            if message["type"] == "http.response.start":  # recorded before the client can see the answer
                audited.append(message["status"])
                self.audit(scope, method, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not audited:
                self.audit(scope, method, 500)

    def refusal(self, scope, method: str) -> tuple[int, str] | None:
        if self.loopback and not host_allowed(header(scope, "host"), self.port or 0):
            return 400, "this service answers only to localhost, 127.0.0.1 or [::1] (the Host header named another)"
        if self.token is not None and not token_matches(scope, self.token):
            return 401, "missing or wrong API token (Authorization: Bearer TOKEN)"
        if method in CHANGES or method == "WEBSOCKET":
            if not origin_allowed(scope):
                return 403, "cross-site request refused: changes and event sockets come from the service's own page"
        if method in CHANGES:
            length = header(scope, "content-length")
            if length is None and header(scope, "transfer-encoding"):
                return 411, "a request body needs a Content-Length"
            limit = MAX_INFERENCE_BODY if scope.get("path", "").startswith("/v1/") else MAX_BODY
            if length is not None and (not length.isdigit() or int(length) > limit):
                return 413, f"request body over {limit} bytes"
        return None

    def audit(self, scope, method: str, status: int, refused: str | None = None) -> None:
        """One JSON line per change or refusal: time, client, method, endpoint, job or version, result."""
        client = scope.get("client")
        record = {"time": round(time.time(), 3), "client": client[0] if client else None, "method": method,
                  "endpoint": scope.get("path"), **(scope.get("state") or {}).get("audit", {}), "status": status}
        if refused:
            record["refused"] = refused
        write_audit(self.audit_log.parent.parent, record)


def write_audit(root: Path, record: dict) -> None:
    """One JSON line in ROOT/.service/audit.jsonl (with the time, when the record has none)."""
    with _audit_lock, open(Path(root) / ".service" / "audit.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


async def refuse(scope, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":  # closing before accepting: the handshake is answered 403
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
