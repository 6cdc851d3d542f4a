"""A private call's POST, written straight onto a connection of the shared aiohttp session's pool.

`session.post` builds for every request a request object, header multidicts, a body payload, a task that writes
it (on Python 3.11, one more turn of the event loop) and a response object with a reader of its own: about 100 µs
of the 250 µs a bare `session.post` costs here (docs/benchmarks/client.md). A Kraken private call needs none of
it: a small body known in full, a fixed set of headers, a reply read whole. So it borrows a connection from the
session's connector — the same pool, TLS context, DNS cache and connection limit as every other request of the
process — writes the request's bytes itself, and reads the reply with aiohttp's own response parser, which handles
chunked and compressed bodies, keep-alive and close as for `session.post` (tests/kraken/test_kraken_wire.py).
Failures raise what `session.post` raises (aiohttp.ClientError, OSError), plus aiohttp's HttpProcessingError for
a reply that is not HTTP.

Per-request session options (default headers, trace configs, middlewares) do not apply to these requests; public
calls and the WebSocket still go through the session as usual. A session that sends through a proxy is refused
(`check_session`): private calls would leave from another address than public ones.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from yarl import URL

__all__ = ["Origin", "post", "check_header_value", "check_session"]

_NO_LIMITS = aiohttp.ClientTimeout()  # the caller bounds the whole call (nija.kraken.client.RequestTimeouts)
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: nothing that could end a header line early


def check_header_value(value: str) -> bool:
    """Whether `value` can be written into a header line as it is (no spaces, line breaks or non-ASCII)."""
    return _HEADER_VALUE.fullmatch(value) is not None


def check_session(session: aiohttp.ClientSession) -> None:
    """Refuse a session with a proxy for every request (`proxy=`, or `trust_env=True` reading HTTP(S)_PROXY)."""
    if session.trust_env or getattr(session, "_default_proxy", None) is not None:
        raise ValueError(
            "the aiohttp session given to NIJA sends through a proxy (proxy= or trust_env=True), which NIJA's private "
            "calls do not use: pass a session without one, or leave the session to NIJA"
        )


class Origin:
    """One base URL's requests: the path prefix, the Host header, and the request whose connection key files the
    connections to it in aiohttp's pool (made once, inside the running loop)."""

    __slots__ = ("path_prefix", "host_header", "_key_url", "_key_request")

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"base URL {base_url!r} is not an http:// or https:// address with a host")
        self.path_prefix = url.raw_path.rstrip("/")
        host = url.raw_host
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        self.host_header = host if url.is_default_port() else f"{host}:{url.port}"
        self._key_url = url
        self._key_request: ClientRequest | None = None

    def key_request(self) -> ClientRequest:
        if self._key_request is None:
            self._key_request = ClientRequest("POST", self._key_url, loop=asyncio.get_running_loop())
        return self._key_request


async def post(session: aiohttp.ClientSession, origin: Origin, path: str, headers: str,
               body: bytes) -> tuple[int, bytes]:
    """POST `body` to `origin` + `path` with `headers` (complete "Name: value\\r\\n" lines whose values hold no
    line break) on a pooled connection; returns the reply's status and body. The connection goes
    back to the pool once the reply is read whole, and is closed on any failure or cancellation: a reply still on
    its way must never be taken for the next request's."""
    connection = await session.connector.connect(origin.key_request(), [], _NO_LIMITS)
    try:
        protocol = connection.protocol
        transport = connection.transport
        if protocol is None or transport is None:
            raise aiohttp.ServerDisconnectedError()
        # As session.post's defaults: a reply with neither length nor chunking runs to the connection's close.
        protocol.set_response_params(read_until_eof=True)
        transport.write(
            f"POST {origin.path_prefix}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        while True:
            message, payload = await protocol.read()
            # An interim reply (100 Continue, 103 Early Hints) comes before the real one, as session.post skips it:
            # left unread, the real reply would be taken as the next request's.
            if not 100 <= message.code < 200 or message.code == 101:
                break
        raw = await payload.read()
    except BaseException:
        connection.close()
        raise
    connection.release()
    return message.code, raw
