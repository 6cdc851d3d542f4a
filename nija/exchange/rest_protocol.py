"""Kraken's REST calls served straight from the socket; every other request goes to the aiohttp application.

The exchange is the server of every fan-out benchmark, so it must not be their bottleneck. aiohttp's web server
spends more CPU per request than the exchange's own work for an order, so the calls clients make by the thousand
(`/0/public/*`, `/0/private/*`) are read and answered here: a plain HTTP/1.1 request with a Content-Length body
(or none). Anything else on the connection (the WebSocket at `/v2`, `/admin`, HTTP/1.0, chunked bodies,
`Expect`, a malformed request) hands the connection, from that request on, to the application's own request
handler, which answers exactly as it would have from the start. `build_app` serves the same calls through its
routes; both run `ExchangeServer`'s answering code (`answer_now`, or `answer` for a call jitter or a fault may hold).

Requests on one connection are answered one after the other, in order, as aiohttp does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from .app import ExchangeServer

__all__ = ["ABORT", "ApiCall", "Reply", "RestProtocol", "parse_body"]

_JSON = "application/json"


class ApiCall(NamedTuple):
    """One REST call as the exchange needs it, whichever HTTP server read it."""

    verb: str  # GET or POST
    path: str  # /0/private/AddOrder: what the signature covers
    method: str  # AddOrder
    query: Mapping[str, str]
    headers: Mapping[str, str]  # looked up by lower-case name
    body: bytes
    remote: str  # the client's address: public calls are limited per address


class Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes


#: no answer at all: the connection is dropped (a fault that "loses" the response)
ABORT = Reply(0, "", b"")


def parse_body(raw: bytes, content_type: str) -> dict:
    """A private request's parameters from a form or JSON body (raises ValueError when unreadable)."""
    if not raw:
        return {}
    if content_type.startswith(_JSON) or raw[:1] in (b"{", b"["):
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("JSON body must be an object")
        return data
    return _form(raw.decode("utf-8"))


# The fields that need unquoting repeat: the deadline is the same for every order a client sends within a second.
_unquote_plus = functools.lru_cache(maxsize=256)(unquote_plus)


def _form(text: str, *, first_wins: bool = False) -> dict:
    """parse_qsl's result (blank values kept, '+' is a space) as a dict, without its cost: only a field holding
    '%' or '+' is unquoted, and in NIJA's form bodies that is the deadline's colons at most. A repeated name keeps
    its last value, or its first with `first_wins` (as a query string read by aiohttp does)."""
    params: dict = {}
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            if "%" in field or "+" in field:
                name, value = _unquote_plus(name), _unquote_plus(value)
            if not (first_wins and name in params):
                params[name] = value
    return params


_MAX_HEAD_BYTES = 16 * 1024  # longer heads go to aiohttp, which answers them with its own error
_HEADERS_OF_ANOTHER_KIND = frozenset({"transfer-encoding", "expect", "upgrade"})
_ONE_ONLY = frozenset({"content-length", "content-type", "api-key", "api-sign", "host"})


class RestProtocol(asyncio.Protocol):
    """One client connection of an `ExchangeServer`."""

    def __init__(self, server: ExchangeServer, app_protocol: Callable[[], asyncio.Protocol], max_body: int) -> None:
        self._server = server
        self._app_protocol = app_protocol
        self._max_body = max_body
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: tuple[tuple[str, str, dict[str, str], int, bool], int] | None = None  # read; body on its way
        self._last: asyncio.Future | None = None  # the latest request's answer, sent; the next one waits for it
        self._handed_off: bytearray | None = None  # bytes for the application once the answers before are out
        self._closing = False  # the client asked to close after the current answer
        self.idle_since = time.monotonic()

    # ---- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        # A client that sends requests without reading the answers: stop reading its requests until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.idle_since = time.monotonic()
        if self._handed_off is not None:
            self._handed_off += data
            return
        if self._closing:
            return  # after "Connection: close" nothing more is read
        buffer = self._buffer
        buffer += data
        while buffer:
            if self._head is None:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    # a head too long, or one whose lines end in a bare LF: the application answers it (an error)
                    if len(buffer) > _MAX_HEAD_BYTES or b"\n\n" in buffer:
                        return self._hand_off()
                    return
                request = _read_head(bytes(buffer[:head_end]), self._max_body)
                if request is None:
                    return self._hand_off()
                self._head = (request, head_end + 4)
            (verb, target, headers, length, close), body_at = self._head
            if len(buffer) < body_at + length:
                return  # the body is still on its way
            body = bytes(buffer[body_at:body_at + length])
            del buffer[:body_at + length]
            self._head = None
            self._start(verb, target, headers, body, close)
            if close:
                self._closing = True
                buffer.clear()

    # ---- answering ------------------------------------------------------------------------------------------

    def _start(self, verb: str, target: str, headers: dict[str, str], body: bytes, close: bool) -> None:
        path, _, query = target.partition("?")
        method = path[path.index("/", 3) + 1:]
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        call = ApiCall(verb, path, method, _form(query, first_wins=True), headers, body, peer[0] if peer else "")
        server = self._server
        loop = asyncio.get_running_loop()
        # Most calls are answered at once, their answer sent once the latency is over: no task, no sleep.
        reply = server.answer_now(call) if self._last is None or self._last.done() else None
        if reply is not None:
            delay_s = server.reply_delay_s()
            if delay_s <= 0:
                self._send(reply, close)
                self._last = None
                return
            sent = loop.create_future()
            loop.call_later(delay_s, self._send_when_due, reply, close, sent)
        else:
            sent = loop.create_task(self._answer(self._last, call, close))
        server.track(sent)
        self._last = sent

    def _send_when_due(self, reply: Reply, close: bool, sent: asyncio.Future) -> None:
        if not sent.done():  # else given up on by a stopping server
            self._send(reply, close)
            sent.set_result(None)

    async def _answer(self, previous: asyncio.Future | None, call: ApiCall, close: bool) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))
        if self._transport is None or self._transport.is_closing():
            return  # dropped (a fault, or the client left) before its turn came: never run, as aiohttp does
        self._send(await self._server.answer(call), close)

    def _send(self, reply: Reply, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reply is ABORT:
            transport.abort()
            return
        transport.write(_response_bytes(reply, close))
        self.idle_since = time.monotonic()
        if close:
            transport.close()

    # ---- everything else: the aiohttp application -----------------------------------------------------------

    def _hand_off(self) -> None:
        """From this request on the connection is the application's: once the answers before it are written."""
        self._handed_off, self._buffer = self._buffer, bytearray()
        if self._last is None or self._last.done():
            self._give_to_application()
        else:
            self._last.add_done_callback(lambda _task: self._give_to_application())

    def _give_to_application(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._server.connections.discard(self)
        transport.resume_reading()  # in case answers backed up: the application does its own flow control
        protocol = self._app_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._handed_off = bytes(self._handed_off or b""), None
        if data:
            protocol.data_received(data)

    def close_if_idle(self, idle_s: float) -> None:
        """Close the connection when nothing was asked or answered for `idle_s` and no answer is pending."""
        if (self._transport is not None and (self._last is None or self._last.done())
                and time.monotonic() - self.idle_since > idle_s):
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _read_head(head: bytes, max_body: int) -> tuple[str, str, dict[str, str], int, bool] | None:
    """(verb, target, headers by lower-case name, body length, close after) of a request this module answers, or
    None for one the application should answer (another path, verb or version, an unusual header, anything
    malformed)."""
    if not head.isascii():
        return None
    lines = head.decode("ascii").split("\r\n")
    if "\n" in lines[0] or "\r" in lines[0]:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    verb, target, version = parts
    if version != "HTTP/1.1" or verb not in ("GET", "POST") or "%" in target or "#" in target:
        return None
    path = target.partition("?")[0]
    if path.startswith("/0/private/"):
        method = path[11:]
    elif path.startswith("/0/public/"):
        method = path[10:]
    else:
        return None
    if not method or "/" in method:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip(" \t") or "\n" in line or "\r" in line:
            return None  # malformed, a folded line, or a bare CR or LF
        name = name.lower()
        if name in _HEADERS_OF_ANOTHER_KIND:
            return None
        value = value.strip(" \t")
        if name in headers:
            if name in _ONE_ONLY:
                return None
            value = f"{headers[name]}, {value}"
        headers[name] = value
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > max_body:
        return None
    close = "close" in (token.strip().lower() for token in headers.get("connection", "").split(","))
    return verb, target, headers, int(length_text), close


_REASONS = {status.value: status.phrase for status in HTTPStatus}
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _response_bytes(reply: Reply, close: bool) -> bytes:
    head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\nDate: {_http_date()}\r\n")
    return (head + "Connection: close\r\n\r\n" if close else head + "\r\n").encode() + reply.body
