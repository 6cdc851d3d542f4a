"""The embedded exchange on HTTP: Kraken's REST paths, envelopes and errors, plus a token-protected admin API.

    GET|POST /0/public/<Method>     Time SystemStatus Assets AssetPairs Ticker OHLC Depth Spread
    POST     /0/private/<Method>    Balance BalanceEx TradeBalance OpenOrders ClosedOrders QueryOrders TradesHistory
                                    QueryTrades AddOrder AddOrderBatch CancelOrder CancelAll CancelAllOrdersAfter
    GET      /v2                    WebSocket v2: `executions` of the account whose GetWebSocketsToken token subscribes
                                    (trades only, no snapshot), `ping`, and a heartbeat every second
    /admin/<what>                   token-protected (header `X-Admin-Token` or `Authorization: Bearer`):
        faults      GET list, POST {kind, next_n|probability, account, method, execute, delay_s}, DELETE clear
        counters    GET injected faults per kind, orders per cl_ord_id per account
        orders      GET ?account=NAME: every order per cl_ord_id (txid, status, vol_exec)
        price       GET ?pair=P, POST {pair, price, pin}     release  POST {pair}
        status      POST {pair|null, status}                 speed    POST {speed}
        latency     GET, POST {latency_ms, jitter_ms}        advance  POST {seconds}
        accounts    GET, POST {name, balances, tier, nonce_window, permissions}   state  GET

Every Kraken answer is HTTP 200 with `{"error": [...], "result": ...}`; a bug in here answers
`EGeneral:Internal error`, never a traceback or a 500. Per-request latency is an `await asyncio.sleep` before the
request is processed (so jitter reorders requests as a real network does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from ..kraken.limits import DecayingCounter
from .engine import Exchange, KrakenReject, rfc3339
from .faults import Fault
from .pairs import resolve_pair

__all__ = ["ExchangeServer", "build_app", "parse_body"]

log = logging.getLogger("nija.exchange")

_JSON = "application/json"
_HTML_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             "</center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n")
_HTML_520 = ("<!DOCTYPE html>\n<html><head><title>api.kraken.com | 520: Web server is returning an unknown error"
             "</title></head><body><h1>Web server is returning an unknown error</h1><p>Error code 520</p>"
             "</body></html>\n")


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_default).encode()


def parse_body(raw: bytes, content_type: str) -> dict:
    """A private request's parameters from a form or JSON body (raises ValueError when unreadable)."""
    if not raw:
        return {}
    if content_type.startswith(_JSON) or raw[:1] in (b"{", b"["):
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("JSON body must be an object")
        return data
    params = {}
    # parse_qsl's result (blank values kept, '+' is a space), without its cost: only a field holding '%' or '+'
    # is unquoted, and in a form body that is the deadline's colons at most.
    for field in raw.decode("utf-8").split("&"):
        if field:
            name, _, value = field.partition("=")
            if "%" in field or "+" in field:
                name, value = unquote_plus(name), unquote_plus(value)
            params[name] = value
    return params


#: messages one WebSocket connection may have waiting; a client that reads none of them is cut off, not kept in memory
WS_OUTBOX_MAX = 10_000


class _Outbox:
    """What waits to be sent on one WebSocket connection, bounded: once full, the connection is closed (code 1008)
    as a server does with a client that stopped reading."""

    __slots__ = ("ws", "queue", "_closing")

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[dict] = asyncio.Queue(maxsize=WS_OUTBOX_MAX)
        self._closing: asyncio.Task | None = None

    def put(self, message: dict) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            if self._closing is None:  # later messages are dropped meanwhile: the client is cut off anyway
                self._closing = asyncio.get_running_loop().create_task(
                    self.ws.close(code=1008, message=b"too many messages not read"))
                self._closing.add_done_callback(lambda task: task.cancelled() or task.exception())


class ExchangeServer:
    """Runs an Exchange on 127.0.0.1 (by default) until the `async with` block ends.

    latency_ms + uniform(0, jitter_ms) is slept per request; `timeout` faults hold a response for their delay_s but
    are released at once when the server stops, so stopping is always prompt. `public_limit=(burst, per_s)` turns
    on a per-address limit of public calls (`EGeneral:Too many requests`). Faults apply to HTTP calls only
    (`Exchange.call` in-process never sees them).
    """

    def __init__(self, exchange: Exchange, *, host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0,
                 jitter_ms: float = 0.0, admin: bool = True, tick_s: float = 0.25,
                 public_limit: tuple[float, float] | None = None) -> None:
        self.exchange = exchange
        self.host = host
        self.port = port
        self.latency_ms = float(latency_ms)
        self.jitter_ms = float(jitter_ms)
        self.admin_enabled = admin
        self.tick_s = tick_s
        #: (burst, calls per second) per client address for /0/public/*, or None (no limit, the default).
        #: Kraken publishes no number; about 1 call/s is safe, OHLC/Depth faster get `EGeneral:Too many requests`.
        self.public_limit = public_limit
        self._public_counters: dict[str, DecayingCounter] = {}
        self.url = ""
        self.requests = 0
        self._rng = random.Random()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._ticker: asyncio.Task | None = None
        self._websockets: set[web.WebSocketResponse] = set()

    async def __aenter__(self) -> "ExchangeServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._closing = asyncio.Event()
        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        # A deep accept queue, as Kraken's front end has: a fan-out opens a connection per account at once, and
        # aiohttp's default of 128 drops the rest, which the clients then retry only after a second.
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=4096)
        await site.start()
        sockets = site._server.sockets if site._server else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        await self.close_websockets()
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except (asyncio.CancelledError, Exception):
                pass
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_forever(self) -> None:
        assert self._closing is not None
        await self._closing.wait()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.exchange.sync()
            except Exception:  # pragma: no cover - never let the clock die
                log.exception("exchange tick failed")

    # ---- request handling -----------------------------------------------------------------------------------
    async def _delay(self) -> None:
        ms = self.latency_ms
        if self.jitter_ms:
            ms += self._rng.uniform(0.0, self.jitter_ms)
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)

    async def _hold(self, seconds: float) -> None:
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _error_response(self, errors: list[str]) -> web.Response:
        return web.Response(body=_dumps({"error": errors}), content_type=_JSON)

    async def _fault_response(self, request: web.Request, fault: Fault, executed_body: bytes | None) \
            -> web.StreamResponse:
        kind = fault.kind
        if kind == "drop_response_after_execute":
            return _abort(request)
        if kind == "timeout":
            await self._hold(fault.delay_s)
            return _abort(request)
        if kind == "http_502":
            return web.Response(status=502, text=_HTML_502, content_type="text/html")
        if kind == "http_520":
            return web.Response(status=520, text=_HTML_520, content_type="text/html")
        if kind == "latency":
            assert executed_body is not None
            return web.Response(body=executed_body, content_type=_JSON)
        text = fault.error_string(self.exchange.clock.now())
        return self._error_response([text or "EGeneral:Internal error"])

    async def public(self, request: web.Request) -> web.StreamResponse:
        return await self._envelope("public", request, self._public)

    async def private(self, request: web.Request) -> web.StreamResponse:
        return await self._envelope("private", request, self._private)

    async def _envelope(self, kind: str, request: web.Request, handle) -> web.StreamResponse:
        """Kraken's answer to one API call: what `handle` returns (a finished response, or the body of the envelope),
        a rejection as its errors, and anything unexpected as `EGeneral:Internal error`, never a traceback."""
        self.requests += 1
        method = request.match_info["method"]
        try:
            answer = await handle(request, method)
        except KrakenReject as exc:
            answer = _dumps({"error": exc.errors})
        except Exception:
            log.exception("%s %s failed", kind, method)
            answer = _dumps({"error": ["EGeneral:Internal error"]})
        return answer if isinstance(answer, web.StreamResponse) else web.Response(body=answer, content_type=_JSON)

    async def _public(self, request: web.Request, method: str) -> web.StreamResponse | bytes:
        ex = self.exchange
        if self.latency_ms or self.jitter_ms:
            await self._delay()
        if self.public_limit is not None:
            counter = self._public_counters.get(request.remote or "")
            if counter is None:
                counter = self._public_counters[request.remote or ""] = DecayingCounter(*self.public_limit)
            if not counter.try_add(1, time.monotonic()):
                return self._error_response(["EGeneral:Too many requests"])
        params: dict = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            raw = await request.read()
            try:
                params.update(parse_body(raw, request.headers.get("Content-Type", "")))
            except (ValueError, UnicodeDecodeError):
                return self._error_response(["EAPI:Bad request"])
        fault = ex.faults.draw(None, method, _pair_key(params)) if ex.faults.faults else None
        if fault is not None:
            if fault.kind != "latency":
                return await self._fault_response(request, fault, None)
            await self._hold(fault.delay_s)
        return _dumps({"error": [], "result": ex.call_public(method, params)})

    async def _private(self, request: web.Request, method: str) -> web.StreamResponse | bytes:
        ex = self.exchange
        raw = await request.read()
        if self.latency_ms or self.jitter_ms:
            await self._delay()
        headers = request.headers
        try:
            params = parse_body(raw, headers.get("Content-Type", ""))
        except (ValueError, UnicodeDecodeError):
            return self._error_response(["EAPI:Bad request"])
        acct = ex.authenticate(headers.get("API-Key"), headers.get("API-Sign"), request.path, raw, params.get("nonce"))
        fault = ex.faults.draw(acct.name, method, _pair_key(params)) if ex.faults.faults else None
        if fault is not None:
            if fault.kind == "latency":
                await self._hold(fault.delay_s)
            elif not fault.executes:
                if fault.kind == "timeout":
                    await self._hold(fault.delay_s)
                    return _abort(request)
                return await self._fault_response(request, fault, None)
        try:
            body = _dumps({"error": [], "result": ex.call(acct, method, params, api_key=headers.get("API-Key"))})
        except KrakenReject as exc:
            body = _dumps({"error": exc.errors})
        if fault is not None and fault.kind != "latency":
            return await self._fault_response(request, fault, body)  # executed, then the fault strikes
        return body

    # ---- WebSocket v2 ----------------------------------------------------------------------------------------

    async def close_websockets(self) -> int:
        """Close every open WebSocket connection (as Kraken does on maintenance); returns how many."""
        sockets = list(self._websockets)
        for ws in sockets:
            await ws.close(code=1001, message=b"going away")
        return len(sockets)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._websockets.add(ws)
        outbox = _Outbox(ws)
        stops: list = []
        sender = asyncio.create_task(self._ws_send(ws, outbox))
        try:
            outbox.put({"channel": "status", "type": "update",
                        "data": [{"api_version": "v2", "system": self.exchange.system_status, "version": "2.0.0"}]})
            async for message in ws:
                if message.type != web.WSMsgType.TEXT:
                    continue
                try:
                    request_msg = json.loads(message.data)
                except ValueError:
                    outbox.put({"error": "EGeneral:Invalid arguments", "success": False})
                    continue
                if not isinstance(request_msg, dict):
                    outbox.put({"error": "EGeneral:Invalid arguments", "success": False})
                    continue
                outbox.put(self._ws_answer(request_msg, outbox, stops))
        finally:
            for stop in stops:
                stop()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            self._websockets.discard(ws)
        return ws

    def _ws_answer(self, message: dict, outbox: _Outbox, stops: list) -> dict:
        method, req_id = message.get("method"), message.get("req_id")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        now = rfc3339(time.time())
        answer: dict = {"method": method, "time_in": now, "time_out": now}
        if req_id is not None:
            answer["req_id"] = req_id
        if method == "ping":
            return {**answer, "method": "pong"}
        if method != "subscribe" or params.get("channel") != "executions":
            return {**answer, "success": False, "error": "EGeneral:Invalid arguments"}
        acct = self.exchange.account_of_token(params.get("token"))
        if acct is None:
            return {**answer, "success": False, "error": "ESession:Invalid session"}
        sequence = itertools.count(1)

        def tell(item: dict) -> None:
            outbox.put({"channel": "executions", "type": "update", "data": [item], "sequence": next(sequence)})

        stops.append(self.exchange.watch_executions(acct.name, tell))
        return {**answer, "success": True, "result": {"channel": "executions", "snapshot": False}}

    async def _ws_send(self, ws: web.WebSocketResponse, outbox: _Outbox) -> None:
        """Everything queued for this connection, in order, and a heartbeat each second it is quiet."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                try:
                    message = await asyncio.wait_for(outbox.queue.get(), timeout=1.0)
                except TimeoutError:
                    message = {"channel": "heartbeat"}
                await ws.send_str(json.dumps(message))

    async def private_get(self, request: web.Request) -> web.StreamResponse:
        return self._error_response(["EAPI:Bad request"])

    # ---- admin ----------------------------------------------------------------------------------------------
    def _admin_ok(self, request: web.Request) -> bool:
        token = request.headers.get("X-Admin-Token")
        if token is None:
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                token = auth[7:]
        return token is not None and token == self.exchange.admin_token

    async def admin(self, request: web.Request) -> web.StreamResponse:
        if not self._admin_ok(request):
            return web.json_response({"error": "admin token missing or wrong"}, status=403)
        ex = self.exchange
        what = request.match_info["what"]
        try:
            data: dict = {}
            if request.method in ("POST", "PUT") and request.can_read_body:
                data = json.loads(await request.read() or b"{}")
            if what == "faults":
                if request.method == "GET":
                    return _ok({"faults": [f.to_dict() for f in ex.faults.faults]})
                if request.method == "DELETE":
                    ex.clear_faults()
                    return _ok({"faults": []})
                fault = ex.inject(Fault(**{k: v for k, v in data.items() if k != "id"}))
                return _ok({"fault": fault.to_dict()})
            if what == "counters":
                return _ok(ex.counters())
            if what == "orders":
                name = request.query.get("account") or data.get("account")
                if not name:
                    return _ok({n: _orders_view(ex, n) for n in (a.name for a in ex.accounts())})
                return _ok({name: _orders_view(ex, name)})
            if what == "price":
                if request.method == "GET":
                    pair = request.query["pair"]
                    return _ok({"pair": pair, "price": str(ex.price(pair))})
                ex.set_price(data["pair"], Decimal(str(data["price"])), pin=bool(data.get("pin", True)))
                return _ok({"pair": data["pair"], "price": str(ex.price(data["pair"]))})
            if what == "release":
                ex.release(data["pair"])
                return _ok({"pair": data["pair"]})
            if what == "status":
                ex.set_status(data.get("pair"), data["status"])
                return _ok({"pair": data.get("pair"), "status": data["status"]})
            if what == "speed":
                ex.set_speed(float(data["speed"]))
                return _ok({"speed": ex.clock.speed})
            if what == "latency":
                if request.method != "GET":
                    self.latency_ms = float(data.get("latency_ms", self.latency_ms))
                    self.jitter_ms = float(data.get("jitter_ms", self.jitter_ms))
                return _ok({"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms})
            if what == "advance":
                ex.advance(float(data["seconds"]))
                return _ok({"now": ex.now()})
            if what == "accounts":
                if request.method == "GET":
                    return _ok({"accounts": [{"name": a.name, "api_key": a.api_key, "tier": a.tier.name}
                                             for a in ex.accounts()]})
                acct = ex.create_account(data["name"], data.get("balances") or {},
                                         tier=data.get("tier", "starter"),
                                         nonce_window=int(data.get("nonce_window", 0)),
                                         permissions=data.get("permissions", ("query", "trade")))
                return _ok({"name": acct.name, "api_key": acct.api_key, "api_secret": acct.api_secret})
            if what == "state":
                return _ok({"speed": ex.clock.speed, "now": ex.now(), "status": ex.system_status,
                            "pair_status": ex.pair_status, "counters": ex.counters(),
                            "faults": [f.to_dict() for f in ex.faults.faults]})
            return web.json_response({"error": f"unknown admin path {what!r}"}, status=404)
        except (KeyError, TypeError, ValueError, KrakenReject) as exc:
            return web.json_response({"error": f"bad admin request: {exc}"}, status=400)


def _orders_view(ex: Exchange, name: str) -> dict:
    out = {}
    for cl, orders in ex.orders_by_cl_ord_id(name).items():
        out[cl] = [o if isinstance(o, str) else {"txid": o.txid, "status": o.status, "vol_exec": str(o.vol_exec)}
                   for o in orders]
    return out


def _pair_key(params: dict) -> str | None:
    pair = params.get("pair")
    if not pair or not isinstance(pair, str):
        return None
    spec = resolve_pair(pair.split(",")[0])
    return spec.key if spec else None


def _ok(obj: Any) -> web.Response:
    return web.Response(body=_dumps(obj), content_type=_JSON)


def _abort(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer (the client sees a reset / disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


def build_app(server: ExchangeServer) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("GET", "/0/public/{method}", server.public)
    app.router.add_route("POST", "/0/public/{method}", server.public)
    app.router.add_route("POST", "/0/private/{method}", server.private)
    app.router.add_route("GET", "/0/private/{method}", server.private_get)
    app.router.add_route("GET", "/v2", server.websocket)
    if server.admin_enabled:
        for verb in ("GET", "POST", "DELETE", "PUT"):
            app.router.add_route(verb, "/admin/{what}", server.admin)
    return app
