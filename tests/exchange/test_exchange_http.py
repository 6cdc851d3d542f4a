"""The embedded exchange over real HTTP on 127.0.0.1: envelopes, auth order, bodies, faults, admin, shutdown."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from decimal import Decimal as D

import aiohttp
import pytest

from nija.exchange import Exchange, Fault
from nija.kraken.auth import decode_secret, sign


class Signer:
    """A minimal, independent private-call helper (form or JSON bodies)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str, secret: str) -> None:
        self.session, self.url, self.key, self.secret = session, url, key, decode_secret(secret)
        self.last = 0

    def nonce(self) -> int:
        self.last = max(self.last + 1, time.time_ns())
        return self.last

    async def call(self, method: str, *, json_body: bool = False, nonce: int | None = None,
                   sign_with: bytes | None = None, **params) -> tuple[int, object]:
        n = self.nonce() if nonce is None else nonce
        params = {"nonce": n, **params}
        body = json.dumps(params) if json_body else urllib.parse.urlencode(params)
        path = f"/0/private/{method}"
        headers = {"API-Key": self.key, "API-Sign": sign(path, n, body, sign_with or self.secret),
                   "Content-Type": "application/json" if json_body else "application/x-www-form-urlencoded"}
        async with self.session.post(self.url + path, data=body, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def alice(exchange, exchange_url, session) -> Signer:
    a = exchange.account("alice")
    return Signer(session, exchange_url, a.api_key, a.api_secret)


async def test_public_endpoints_answer_in_krakens_envelope(exchange_url, session):
    for method, query in [("Time", ""), ("SystemStatus", ""), ("Assets", ""), ("AssetPairs", "?pair=XBTUSD"),
                          ("Ticker", "?pair=XBTUSD,ETHUSD"), ("OHLC", "?pair=XBTUSD&interval=5"),
                          ("Depth", "?pair=SOLUSD&count=5")]:
        async with session.get(f"{exchange_url}/0/public/{method}{query}") as resp:
            assert resp.status == 200
            data = await resp.json()
            assert data["error"] == [] and data["result"], method
    async with session.get(f"{exchange_url}/0/public/Ticker?pair=XBTUSD,ETHUSD") as resp:
        assert set((await resp.json())["result"]) == {"XXBTZUSD", "XETHZUSD"}
    async with session.get(f"{exchange_url}/0/public/Nope") as resp:
        assert (await resp.json()) == {"error": ["EGeneral:Unknown method"]}
    async with session.get(f"{exchange_url}/0/public/OHLC?pair=XBTUSD&interval=7") as resp:
        assert (await resp.json())["error"] == ["EGeneral:Invalid arguments:interval"]


async def test_private_call_with_form_and_json_bodies(alice):
    status, data = await alice.call("Balance")
    assert status == 200 and data == {"error": [], "result": {"ZUSD": "84.5800"}}
    status, data = await alice.call("Balance", json_body=True)
    assert data["result"] == {"ZUSD": "84.5800"}


async def test_auth_errors_in_krakens_order(exchange, alice, session, exchange_url):
    bad_key = Signer(session, exchange_url, "nope", exchange.account("alice").api_secret)
    assert (await bad_key.call("Balance"))[1] == {"error": ["EAPI:Invalid key"]}
    assert (await alice.call("Balance", sign_with=b"wrong"))[1] == {"error": ["EAPI:Invalid signature"]}
    await alice.call("Balance")
    assert (await alice.call("Balance", nonce=alice.last - 5))[1] == {"error": ["EAPI:Invalid nonce"]}
    assert (await alice.call("Balance", nonce=alice.last))[1] == {"error": ["EAPI:Invalid nonce"]}


async def test_garbage_never_gets_a_500(exchange_url, session, exchange):
    key = exchange.account("alice").api_key
    for body, ctype in [(b"\xff\xfe", "application/x-www-form-urlencoded"), (b"{not json", "application/json"),
                        (b"", "application/x-www-form-urlencoded"), (b"nonce=abc", "x")]:
        async with session.post(f"{exchange_url}/0/private/Balance", data=body,
                                headers={"API-Key": key, "API-Sign": "x", "Content-Type": ctype}) as resp:
            assert resp.status == 200
            assert (await resp.json())["error"]


async def test_order_round_trip_over_http(exchange, alice):
    exchange.set_price("XBTUSD", D("50000"))
    _, data = await alice.call("AddOrder", pair="XBTUSD", type="buy", ordertype="market", volume="0.0005",
                               cl_ord_id="round-trip-1")
    assert data["error"] == [] and data["result"]["descr"]["order"] == "buy 0.00050000 XBTUSD @ market"
    txid = data["result"]["txid"][0]
    _, q = await alice.call("QueryOrders", txid=txid)
    assert q["result"][txid]["status"] == "closed" and q["result"][txid]["cl_ord_id"] == "round-trip-1"
    _, closed = await alice.call("ClosedOrders", cl_ord_id="round-trip-1")
    assert list(closed["result"]["closed"]) == [txid] and closed["result"]["count"] == 1
    _, th = await alice.call("TradesHistory")
    assert th["result"]["count"] == 1
    (trade,) = th["result"]["trades"].values()
    assert trade["ordertxid"] == txid and trade["pair"] == "XXBTZUSD"


@pytest.mark.parametrize("kind, error", [("service_unavailable", "EService:Unavailable"),
                                         ("service_busy", "EService:Busy"),
                                         ("internal_error", "EGeneral:Internal error"),
                                         ("rate_limit", "EAPI:Rate limit exceeded")])
async def test_error_faults(exchange, alice, kind, error):
    exchange.inject(Fault(kind=kind, next_n=1, account="alice", method="Balance"))
    assert (await alice.call("Balance"))[1] == {"error": [error]}
    assert (await alice.call("Balance"))[1]["error"] == []
    assert exchange.injected_counts() == {kind: 1}


async def test_throttled_fault_names_a_time(exchange, alice):
    exchange.inject(Fault(kind="throttled"))
    (err,) = (await alice.call("Balance"))[1]["error"]
    assert err.startswith("EService: Throttled: ") and int(err.rsplit(" ", 1)[1]) > time.time()


async def test_http_502_is_html_and_does_not_execute(exchange, alice):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.inject(Fault(kind="http_502", method="AddOrder"))
    status, body = await alice.call("AddOrder", pair="XBTUSD", type="buy", ordertype="market", volume="0.0005",
                                    cl_ord_id="h502")
    assert status == 502 and "<html>" in body
    assert exchange.orders_by_cl_ord_id("alice") == {}


async def test_drop_response_after_execute(exchange, alice):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.inject(Fault(kind="drop_response_after_execute", method="AddOrder"))
    with pytest.raises(aiohttp.ClientError):
        await alice.call("AddOrder", pair="XBTUSD", type="buy", ordertype="market", volume="0.0005",
                         cl_ord_id="dropped")
    assert [o.status for o in exchange.orders_by_cl_ord_id("alice")["dropped"]] == ["closed"]


async def test_timeout_fault_lets_the_client_time_out_and_the_server_stops_promptly():
    ex = Exchange(seed=7)
    acct = ex.create_account("a", {"ZUSD": "100"})
    ex.inject(Fault(kind="timeout", delay_s=60))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as short, \
            aiohttp.ClientSession() as patient:

        async def serve_while_a_response_is_held() -> tuple[str, asyncio.Task]:
            async with ex.serve() as server:
                signer = Signer(short, server.url, acct.api_key, acct.api_secret)
                with pytest.raises(asyncio.TimeoutError):
                    await signer.call("Balance")
                assert (await signer.call("Balance"))[1]["error"] == []  # only the next call was held
                ex.inject(Fault(kind="timeout", delay_s=3600))
                held = asyncio.create_task(patient.get(server.url + "/0/public/Time"))  # held by the server
                await asyncio.sleep(0.1)
                assert not held.done()
                return server.url, held

        # Hang guard only: leaving `serve()` must not wait for the held response (an hour).
        url, held = await asyncio.wait_for(serve_while_a_response_is_held(), timeout=120)
        with pytest.raises(aiohttp.ClientError):
            await held  # cut off by the shutdown, not answered
        with pytest.raises(aiohttp.ClientError):
            await patient.get(url + "/0/public/Time")  # the server is gone


async def test_admin_endpoint_needs_the_token(exchange, exchange_url, session):
    async with session.get(f"{exchange_url}/admin/counters") as resp:
        assert resp.status == 403
    headers = {"X-Admin-Token": exchange.admin_token}
    async with session.post(f"{exchange_url}/admin/faults", headers=headers,
                            json={"kind": "service_busy", "next_n": 2, "account": "bob"}) as resp:
        assert resp.status == 200 and (await resp.json())["fault"]["next_n"] == 2
    async with session.post(f"{exchange_url}/admin/price", headers=headers,
                            json={"pair": "XBTUSD", "price": "51000"}) as resp:
        assert (await resp.json())["price"] == "51000"
    async with session.get(f"{exchange_url}/admin/counters", headers=headers) as resp:
        data = await resp.json()
        assert data["injected"] == {} and data["orders_by_cl_ord_id"]["alice"] == {}


async def test_latency_is_applied_per_request(exchange, exchange_server, alice):
    exchange_server.latency_ms = 50
    started = time.monotonic()
    await asyncio.gather(*(alice.call("Balance") for _ in range(1)))
    assert time.monotonic() - started >= 0.05


async def test_a_request_acts_on_arrival_and_its_answer_takes_the_latency_to_come_back(exchange, exchange_server,
                                                                                      alice):
    # As over a network, and so that a burst of requests is worked through as it arrives rather than all at once a
    # latency later.
    exchange.set_price("XBTUSD", D("50000"))
    exchange_server.latency_ms = 400
    started = time.monotonic()
    reply = asyncio.ensure_future(alice.call("AddOrder", pair="XBTUSD", type="buy", ordertype="limit", price="40000",
                                             volume="0.001"))
    while not exchange.account("alice").open_orders and time.monotonic() - started < 5:
        await asyncio.sleep(0.005)
    assert exchange.account("alice").open_orders and not reply.done()  # placed; its answer is still on its way
    status, body = await reply
    assert status == 200 and body["error"] == [] and time.monotonic() - started >= 0.4


async def test_stopping_lets_go_of_a_held_request_at_once_even_with_latency_on_its_answer():
    ex = Exchange(seed=7)
    ex.inject(Fault(kind="timeout", delay_s=3600))
    async with aiohttp.ClientSession() as session:
        async with ex.serve(latency_ms=10_000) as server:
            held = asyncio.create_task(session.get(server.url + "/0/public/Time"))
            deadline = time.monotonic() + 5
            while server.requests == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert server.requests == 1 and not held.done()
            stopping_at = time.monotonic()
        assert time.monotonic() - stopping_at < 1.0  # not the 2 s stop() gives answers under way
        with pytest.raises(aiohttp.ClientError):
            await held


async def test_add_order_batch_with_a_json_body(exchange, alice):
    exchange.set_price("XBTUSD", D("50000"))
    orders = [{"type": "buy", "ordertype": "limit", "price": "45000.0", "volume": "0.0005", "cl_ord_id": "b-1"},
              {"type": "buy", "ordertype": "limit", "price": "44000.0", "volume": "0.0005", "cl_ord_id": "b-2"},
              {"type": "buy", "ordertype": "limit", "price": "44000.0", "volume": "1"}]  # cannot pay
    _, data = await alice.call("AddOrderBatch", json_body=True, pair="XBTUSD", orders=orders)
    assert data["error"] == []
    first, second, third = data["result"]["orders"]
    assert first["descr"]["order"] == "buy 0.00050000 XBTUSD @ limit 45000.0" and first["txid"].startswith("O")
    assert second["txid"] != first["txid"] and third == {"error": "EOrder:Insufficient funds"}
    orders[2]["price"] = "44000.05"  # a malformed order rejects the whole batch before anything is placed
    _, data = await alice.call("AddOrderBatch", json_body=True, pair="XBTUSD", orders=orders)
    assert data["error"][0].startswith("EOrder:Invalid price")
    _, open_ = await alice.call("OpenOrders")
    assert len(open_["result"]["open"]) == 2
    _, cancel = await alice.call("CancelAll")
    assert cancel["result"] == {"count": 2}
