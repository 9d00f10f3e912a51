"""Optional API keys: with keys configured, every path needs one except ``GET /health`` and the
web page (``/`` and its static files, which hold no data: the page asks for the key itself).

A client sends its key as ``X-API-Key: <key>`` (the header LitServe's own ``LIT_SERVER_API_KEY``
check reads) or ``Authorization: Bearer <key>``. LitServe's check is not used: it takes one key
from the environment when litserve is imported, guards ``/health`` too (load balancers probe it
without credentials) and none of the routes this server adds (``/models``, ``/stats``,
``/metrics``). Several keys may be given, one per client, so that one can be revoked alone.
Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable
from typing import Any

from nmt.errors import UserError

API_KEYS_ENV = "NMT_API_KEYS"  # comma-separated; keeps keys out of the process list
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/static/",)  # the web page's assets
MIN_KEY_CHARS = 16
HEADER = b"x-api-key"
BEARER = "bearer "


def api_keys(given: Iterable[str] | None, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The keys from ``--api-key`` options and ``$NMT_API_KEYS``; empty means no keys needed."""
    environ = os.environ if environ is None else environ
    keys = [*(given or []), *environ.get(API_KEYS_ENV, "").split(",")]
    keys = [key.strip() for key in keys if key.strip()]
    for key in keys:
        if len(key) < MIN_KEY_CHARS or not key.isascii() or not key.isprintable():
            raise UserError(
                f"--api-key / ${API_KEYS_ENV}: each key must be at least {MIN_KEY_CHARS} "
                "printable ASCII characters (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
    return tuple(dict.fromkeys(keys))


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class APIKeyAuth:
    """ASGI middleware answering 401 to requests without one of ``keys``."""

    def __init__(self, app: Any, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _is_open(scope["path"]):
            if not self._authorized(scope["headers"]):
                body = json.dumps(
                    {"detail": "missing or wrong API key: send it as X-API-Key: <key>"}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="hypernmt"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        offered = []
        for name, value in headers:
            if name == HEADER:
                offered.append(value.strip())
            elif name == b"authorization" and value[: len(BEARER)].lower() == BEARER.encode():
                offered.append(value[len(BEARER) :].strip())
        # compare with every key, so the time does not tell which one nearly matched
        matches = [hmac.compare_digest(o, key) for o in offered for key in self.keys]
        return any(matches)
