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
`EGeneral:Internal error`, never a traceback or a 500. A request's jitter is slept before it is processed (so jitter
reorders requests as a real network does), its latency after (the answer's way back): a burst of requests is
processed as it arrives, not all at once a latency later.

`build_app` is the whole exchange as an aiohttp.web application. `ExchangeServer` listens with `RestProtocol`
(`rest_protocol.py`), which answers the `/0/public` and `/0/private` calls straight from the socket, at a fraction
of the web server's CPU per request, and hands everything else to that application. Both run the same code
(`ExchangeServer._reply_now`): RestProtocol through `answer_now` for a call nothing can hold (no jitter, no fault
armed), sending the answer from a timer once the latency is over, and through `answer` otherwise, as the
application's routes always do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import random
import time
from decimal import Decimal
from typing import Any, Callable, NamedTuple

from aiohttp import web

from ..kraken.limits import DecayingCounter
from .engine import Account, Exchange, KrakenReject, rfc3339
from .faults import Fault
from .pairs import resolve_pair
from .rest_protocol import ABORT, ApiCall, Reply, RestProtocol, parse_body

__all__ = ["ABORT", "ApiCall", "ExchangeServer", "Reply", "build_app", "parse_body"]

log = logging.getLogger("nija.exchange")

_JSON = "application/json"
_MAX_BODY = 1 << 20
_SHUTDOWN_S = 2.0
#: an idle keep-alive connection is closed after this long, as aiohttp's server does (its default), checked every
#: IDLE_SWEEP_S
KEEPALIVE_S = 75.0
IDLE_SWEEP_S = 15.0
_HTML = "text/html; charset=utf-8"
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


def _error(errors: list[str]) -> Reply:
    return Reply(200, _JSON, _dumps({"error": errors}))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_default).encode()


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


class _Held(NamedTuple):
    """A call a drawn fault holds back: the fault, what the call answered if it ran already, or the call itself
    (`then`) when it runs only once the fault's delay is over."""

    fault: Fault
    executed_body: bytes | None
    then: Callable[[], Reply] | None


class ExchangeServer:
    """Runs an Exchange on 127.0.0.1 (by default) until the `async with` block ends.

    Every request sleeps uniform(0, jitter_ms) before it is processed and latency_ms before its answer leaves;
    `timeout` faults hold a response for their delay_s but
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
        self._listener: asyncio.AbstractServer | None = None
        #: open connections answered by RestProtocol (those handed to the application are its runner's)
        self.connections: set[RestProtocol] = set()
        self._answers: set[asyncio.Future] = set()  # answers under way on RestProtocol connections
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
        # The application answers what RestProtocol hands it (the WebSocket, /admin, unusual requests): its runner
        # has no site of its own.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_S)
        await self._runner.setup()
        app_protocol = self._runner.server
        assert app_protocol is not None
        # A deep accept queue, as Kraken's front end has: a fan-out opens a connection per account at once, and
        # the default of 128 drops the rest, which the clients then retry only after a second.
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: RestProtocol(self, app_protocol, _MAX_BODY), self.host, self.port, reuse_address=True,
            backlog=4096)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()  # timeout faults let go of their requests at once
        await self.close_websockets()
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except (asyncio.CancelledError, Exception):
                pass
            self._ticker = None
        if self._listener is not None:
            self._listener.close()
        if self._answers:  # answers under way get their latency's worth of time, as aiohttp's shutdown gives
            _done, late = await asyncio.wait(set(self._answers), timeout=_SHUTDOWN_S)
            for task in late:
                task.cancel()
        for connection in list(self.connections):
            connection.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), _SHUTDOWN_S)
            self._listener = None

    def track(self, answer: asyncio.Future) -> None:
        """An answer under way on a RestProtocol connection, done once sent (waited for when the server stops)."""
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)

    async def serve_forever(self) -> None:
        assert self._closing is not None
        await self._closing.wait()

    async def _tick_loop(self) -> None:
        next_sweep_s = time.monotonic() + IDLE_SWEEP_S
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.exchange.sync()
            except Exception:  # pragma: no cover - never let the clock die
                log.exception("exchange tick failed")
            if time.monotonic() >= next_sweep_s:
                next_sweep_s = time.monotonic() + IDLE_SWEEP_S
                for connection in list(self.connections):
                    connection.close_if_idle(KEEPALIVE_S)

    # ---- Kraken's REST calls -------------------------------------------------------------------------------
    async def answer(self, call: ApiCall) -> Reply:
        """Kraken's answer to one REST call, whichever HTTP server read it: the envelope of what the exchange did, a
        rejection as its errors, anything unexpected as `EGeneral:Internal error` (never a traceback), or a fault."""
        if self.jitter_ms:  # on its way in: requests overtake each other
            await asyncio.sleep(self._rng.uniform(0.0, self.jitter_ms) / 1000.0)
        reply = self._reply_now(call)
        if not isinstance(reply, Reply):
            reply = await self._after_fault(reply, call.path)
        delay_s = self.reply_delay_s()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return reply

    def answer_now(self, call: ApiCall) -> Reply | None:
        """`answer` without its wait on the way back (`reply_delay_s`), computed at once; None for a call that must
        wait before it is processed (jitter, or faults armed that may hold it): `answer` it instead."""
        if self.jitter_ms or self.exchange.faults.faults:
            return None
        reply = self._reply_now(call)
        assert isinstance(reply, Reply)  # no fault armed, none drawn
        return reply

    def reply_delay_s(self) -> float:
        """How long an answer takes on its way back: the latency, none once the server stops (a fault's hold it
        released must stay prompt)."""
        if self.latency_ms > 0 and not (self._closing is not None and self._closing.is_set()):
            return self.latency_ms / 1000.0
        return 0.0

    def _reply_now(self, call: ApiCall) -> Reply | _Held:
        if call.verb != "POST" and call.path.startswith("/0/private/"):
            return _error(["EAPI:Bad request"])
        self.requests += 1
        return self._guarded(call.path, self._private_now if call.path.startswith("/0/private/") else self._public_now,
                             call)

    @staticmethod
    def _guarded(path: str, compute, *args: Any) -> Any:
        try:
            return compute(*args)
        except KrakenReject as exc:
            return _error(exc.errors)
        except Exception:
            log.exception("%s failed", path)
            return _error(["EGeneral:Internal error"])

    async def _after_fault(self, held: _Held, path: str) -> Reply:
        if held.then is not None:  # a latency fault: the call runs once the delay is over
            await self._hold(held.fault.delay_s)
            return self._guarded(path, held.then)
        return await self._fault_reply(held.fault, held.executed_body)

    async def _hold(self, seconds: float) -> None:
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _fault_reply(self, fault: Fault, executed_body: bytes | None) -> Reply:
        kind = fault.kind
        if kind == "drop_response_after_execute":
            return ABORT
        if kind == "timeout":
            await self._hold(fault.delay_s)
            return ABORT
        if kind == "http_502":
            return Reply(502, _HTML, _HTML_502.encode())
        if kind == "http_520":
            return Reply(520, _HTML, _HTML_520.encode())
        text = fault.error_string(self.exchange.clock.now())
        return _error([text or "EGeneral:Internal error"])

    def _public_now(self, call: ApiCall) -> Reply | _Held:
        ex = self.exchange
        if self.public_limit is not None:
            counter = self._public_counters.get(call.remote)
            if counter is None:
                counter = self._public_counters[call.remote] = DecayingCounter(*self.public_limit)
            if not counter.try_add(1, time.monotonic()):
                return _error(["EGeneral:Too many requests"])
        params: dict = dict(call.query)
        if call.verb == "POST" and call.body:
            try:
                params.update(parse_body(call.body, call.headers.get("content-type", "")))
            except (ValueError, UnicodeDecodeError):
                return _error(["EAPI:Bad request"])
        fault = ex.faults.draw(None, call.method, _pair_key(params)) if ex.faults.faults else None
        if fault is None:
            return self._public_result(call.method, params)
        if fault.kind == "latency":
            return _Held(fault, None, functools.partial(self._public_result, call.method, params))
        return _Held(fault, None, None)

    def _public_result(self, method: str, params: dict) -> Reply:
        return Reply(200, _JSON, _dumps({"error": [], "result": self.exchange.call_public(method, params)}))

    def _private_now(self, call: ApiCall) -> Reply | _Held:
        ex = self.exchange
        raw = call.body
        headers = call.headers
        try:
            params = parse_body(raw, headers.get("content-type", ""))
        except (ValueError, UnicodeDecodeError):
            return _error(["EAPI:Bad request"])
        api_key = headers.get("api-key")
        acct = ex.authenticate(api_key, headers.get("api-sign"), call.path, raw, params.get("nonce"))
        fault = ex.faults.draw(acct.name, call.method, _pair_key(params)) if ex.faults.faults else None
        if fault is None:
            return self._private_result(acct, call.method, params, api_key)
        if fault.kind == "latency":
            return _Held(fault, None, functools.partial(self._private_result, acct, call.method, params, api_key))
        if not fault.executes:
            return _Held(fault, None, None)
        # Executed now; then the fault strikes.
        return _Held(fault, self._private_result(acct, call.method, params, api_key).body, None)

    def _private_result(self, acct: Account, method: str, params: dict, api_key: str | None) -> Reply:
        try:
            body = _dumps({"error": [], "result": self.exchange.call(acct, method, params, api_key=api_key)})
        except KrakenReject as exc:
            body = _dumps({"error": exc.errors})
        return Reply(200, _JSON, body)

    async def rest(self, request: web.Request) -> web.StreamResponse:
        """The same calls as routes of the aiohttp application (`build_app`)."""
        body = await request.read() if request.can_read_body else b""
        call = ApiCall(request.method, request.path, request.match_info["method"], request.query, request.headers,
                       body, request.remote or "")
        reply = await self.answer(call)
        if reply is ABORT:
            return _abort(request)
        return web.Response(status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type})

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
    app = web.Application(client_max_size=_MAX_BODY)
    for verb in ("GET", "POST"):
        app.router.add_route(verb, "/0/public/{method}", server.rest)
        app.router.add_route(verb, "/0/private/{method}", server.rest)
    app.router.add_route("GET", "/v2", server.websocket)
    if server.admin_enabled:
        for verb in ("GET", "POST", "DELETE", "PUT"):
            app.router.add_route(verb, "/admin/{what}", server.admin)
    return app
