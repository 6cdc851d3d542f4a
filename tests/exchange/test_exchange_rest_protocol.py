"""The exchange's HTTP server byte by byte: Kraken's REST calls answered straight from the socket, everything else
(the WebSocket, /admin, unusual requests) answered by the aiohttp application on the same connection, in order."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from decimal import Decimal as D

import aiohttp
import pytest

from nija.exchange import Fault
from nija.exchange import app as exchange_app
from nija.kraken.auth import decode_secret, sign

# The exchange reads its sockets itself here: on each loop NIJA may run on (nija.event_loop).
pytestmark = pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])


class Raw:
    """One TCP connection to the exchange, written and read as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> "Raw":
        host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body (Content-Length or chunked)."""
        status_line = await asyncio.wait_for(self.reader.readline(), 10)
        assert status_line.startswith(b"HTTP/1."), status_line
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await self.reader.readline()).strip(), 16):
                body += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


def private_request(account, method: str, nonce: int, *, extra: str = "", **params) -> bytes:
    body = urllib.parse.urlencode({"nonce": nonce, **params}).encode()
    path = f"/0/private/{method}"
    signature = sign(path, nonce, body, decode_secret(account.api_secret))
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAPI-Key: {account.api_key}\r\nAPI-Sign: {signature}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def public_request(method: str, query: str = "", *, extra: str = "") -> bytes:
    return f"GET /0/public/{method}{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def admin_request(exchange, what: str) -> bytes:
    return f"GET /admin/{what} HTTP/1.1\r\nHost: x\r\nX-Admin-Token: {exchange.admin_token}\r\n\r\n".encode()


@pytest.fixture
async def raw(exchange_url):
    connection = await Raw.open(exchange_url)
    yield connection
    connection.close()


async def test_calls_then_admin_then_calls_on_one_connection_are_all_answered_in_order(exchange, raw):
    alice = exchange.account("alice")
    nonce = time.time_ns()
    await raw.send(private_request(alice, "Balance", nonce))
    status, headers, body = await raw.reply()
    assert status == 200 and headers["content-type"] == "application/json" and "date" in headers
    assert json.loads(body) == {"error": [], "result": {"ZUSD": "84.5800"}}
    await raw.send(admin_request(exchange, "counters"))  # the application takes the connection over from here
    status, _, body = await raw.reply()
    assert status == 200 and "orders_by_cl_ord_id" in json.loads(body)
    await raw.send(private_request(alice, "Balance", nonce + 1))
    status, _, body = await raw.reply()
    assert json.loads(body)["result"] == {"ZUSD": "84.5800"}


async def test_pipelined_requests_are_answered_in_the_order_they_were_sent(exchange, exchange_server, raw):
    exchange_server.latency_ms = 30  # the first answer is not ready before the second request is read
    alice = exchange.account("alice")
    nonce = time.time_ns()
    await raw.send(private_request(alice, "Balance", nonce) + public_request("Time")
                   + private_request(alice, "Balance", nonce + 1, extra="")
                   + admin_request(exchange, "latency") + public_request("SystemStatus"))
    answers = [json.loads((await raw.reply())[2]) for _ in range(5)]
    assert answers[0]["result"] == {"ZUSD": "84.5800"}
    assert "unixtime" in answers[1]["result"]
    assert answers[2]["result"] == {"ZUSD": "84.5800"}  # its nonce was checked after the first one's
    assert answers[3] == {"latency_ms": 30.0, "jitter_ms": 0.0}
    assert answers[4]["result"]["status"] == "online"


async def test_a_request_arriving_in_pieces_is_answered_once_whole(exchange, raw):
    request = private_request(exchange.account("alice"), "Balance", time.time_ns())
    for i in range(len(request)):
        raw.writer.write(request[i:i + 1])
    await raw.writer.drain()
    status, _, body = await raw.reply()
    assert status == 200 and json.loads(body)["result"] == {"ZUSD": "84.5800"}


async def test_a_request_pipelined_behind_a_dropped_answer_is_never_run(exchange, raw):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.inject(Fault(kind="drop_response_after_execute", next_n=1, account="alice", method="AddOrder"))
    alice = exchange.account("alice")
    nonce = time.time_ns()
    order = dict(pair="XBTUSD", type="buy", ordertype="market", volume="0.0001")
    await raw.send(private_request(alice, "AddOrder", nonce, cl_ord_id="first", **order)
                   + private_request(alice, "AddOrder", nonce + 1, cl_ord_id="second", **order))
    assert await raw.closed_by_server()  # the first one's answer was dropped with its connection
    assert list(exchange.orders_by_cl_ord_id("alice")) == ["first"]  # the client never saw the second one go


@pytest.mark.parametrize("query, check", [
    ("?[1]", lambda result: "unixtime" in result),  # not a JSON body: a query string is a form
    ("?pair=XBTUSD&pair=ETHUSD", lambda result: list(result) == ["XXBTZUSD"]),  # the first of a repeated name
    ("?pair=XBT%55SD", lambda result: list(result) == ["XXBTZUSD"]),  # escapes: answered by the application
])
async def test_query_strings_are_read_as_before(raw, query, check):
    method = "Time" if query == "?[1]" else "Ticker"
    await raw.send(public_request(method, query))
    status, _, body = await raw.reply()
    assert status == 200 and check(json.loads(body)["result"])


async def test_a_request_with_bare_line_feeds_is_refused_at_once(raw):
    await raw.send(b"GET /0/public/Time HTTP/1.1\nHost: x\n\n")
    assert (await raw.reply())[0] == 400


async def test_connection_close_is_honoured(raw):
    await raw.send(public_request("Time", extra="Connection: close\r\n"))
    status, headers, _ = await raw.reply()
    assert status == 200 and headers["connection"] == "close"
    assert await raw.closed_by_server()


@pytest.mark.parametrize("request_bytes, status, error", [
    # HTTP/1.0, a chunked body, Expect: 100-continue: the application answers them as it always did
    (b"GET /0/public/Time HTTP/1.0\r\n\r\n", 200, None),
    (b"POST /0/public/Ticker HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"Content-Type: application/x-www-form-urlencoded\r\n\r\nb\r\npair=XBTUSD\r\n0\r\n\r\n", 200, None),
    (b"GET /0/private/Balance HTTP/1.1\r\nHost: x\r\n\r\n", 200, "EAPI:Bad request"),
    (b"GET /0/public/Nope HTTP/1.1\r\nHost: x\r\n\r\n", 200, "EGeneral:Unknown method"),
    (b"GET /0/public/Time/more HTTP/1.1\r\nHost: x\r\n\r\n", 404, None),
    (b"DELETE /0/public/Time HTTP/1.1\r\nHost: x\r\n\r\n", 405, None),
    (b"GET /0/public/Time HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400, None),
    (b"POST /0/private/Balance HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n" + b"x" * 1048577, 413,
     None),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, None),
])
async def test_unusual_requests_get_the_applications_own_answer(raw, request_bytes, status, error):
    await raw.send(request_bytes)
    got_status, _, body = await raw.reply()
    assert got_status == status
    if error is not None:
        assert json.loads(body)["error"] == [error]
    elif status == 200:
        assert json.loads(body)["error"] == []


async def test_the_websocket_works_on_a_pooled_connection_that_served_calls_before(exchange_url):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.get(f"{exchange_url}/0/public/Time") as resp:
            assert (await resp.json())["error"] == []
        async with session.ws_connect(f"{exchange_url}/v2") as ws:
            status = await ws.receive_json(timeout=10)
            assert status["channel"] == "status"
            await ws.send_json({"method": "ping", "req_id": 7})
            while (message := await ws.receive_json(timeout=10)).get("channel") == "heartbeat":
                pass
            assert message["method"] == "pong" and message["req_id"] == 7


async def test_an_idle_connection_is_closed_after_the_keep_alive_time(exchange, monkeypatch):
    monkeypatch.setattr(exchange_app, "KEEPALIVE_S", 0.3)
    monkeypatch.setattr(exchange_app, "IDLE_SWEEP_S", 0.1)
    async with exchange.serve(tick_s=0.05) as server:
        connection = await Raw.open(server.url)
        await connection.send(public_request("Time"))
        assert (await connection.reply())[0] == 200
        assert server.connections
        started = time.monotonic()
        assert await connection.closed_by_server()
        assert time.monotonic() - started >= 0.3
        assert not server.connections
        connection.close()


async def test_stopping_waits_for_answers_under_way(exchange):
    async with exchange.serve(latency_ms=300) as server:
        connection = await Raw.open(server.url)
        await connection.send(public_request("Time"))
        await asyncio.sleep(0.05)  # read by the server, its latency running
    status, _, body = await connection.reply()
    assert status == 200 and json.loads(body)["error"] == []
    connection.close()
