"""Faults over real HTTP: which ones execute the call, triggers (next N, probability), targeting (account, method,
pair), market status, counters through the admin endpoint; nonces under parallel jitter."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D

import aiohttp
import pytest

from nija.exchange import Exchange, Fault
from nija.kraken.limits import Tier

from tests.exchange.test_exchange_http import Signer

MARKET_BUY = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.0005"}


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


def signer(exchange, url, session, name="alice") -> Signer:
    a = exchange.account(name)
    return Signer(session, url, a.api_key, a.api_secret)


@pytest.mark.parametrize("fault, status, executed", [
    (Fault(kind="http_502", method="AddOrder", execute=True), 502, True),
    (Fault(kind="http_520", method="AddOrder"), 520, False),
    (Fault(kind="internal_error", method="AddOrder", execute=True), 200, True),
    (Fault(kind="internal_error", method="AddOrder"), 200, False),
    (Fault(kind="service_busy", method="AddOrder"), 200, False),
])
async def test_which_faults_execute_the_order(exchange, exchange_url, session, fault, status, executed):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.inject(fault)
    got_status, body = await signer(exchange, exchange_url, session).call("AddOrder", cl_ord_id="f-1", **MARKET_BUY)
    assert got_status == status
    if status == 200:
        assert body["error"] and "result" not in body
    assert len(exchange.orders_by_cl_ord_id("alice").get("f-1", [])) == (1 if executed else 0)
    assert exchange.injected_counts() == {fault.kind: 1}


async def test_timeout_without_execution(exchange, session):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.inject(Fault(kind="timeout", method="AddOrder", delay_s=5, execute=False))
    async with exchange.serve() as server:
        s = Signer(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)), server.url,
                   exchange.account("alice").api_key, exchange.account("alice").api_secret)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await s.call("AddOrder", cl_ord_id="t-1", **MARKET_BUY)
        finally:
            await s.session.close()
    assert exchange.orders_by_cl_ord_id("alice") == {}


async def test_next_n_counts_down_and_targets_one_account(exchange, exchange_url, session):
    exchange.inject(Fault(kind="service_unavailable", next_n=2, account="bob"))
    alice, bob = signer(exchange, exchange_url, session), signer(exchange, exchange_url, session, "bob")
    assert (await alice.call("Balance"))[1]["error"] == []
    assert (await bob.call("Balance"))[1]["error"] == ["EService:Unavailable"]
    assert (await bob.call("Balance"))[1]["error"] == ["EService:Unavailable"]
    assert (await bob.call("Balance"))[1]["error"] == []
    assert exchange.faults.faults == []


async def test_probability_trigger_is_roughly_right(exchange, exchange_url, session):
    exchange.inject(Fault(kind="service_busy", probability=0.3, method="Balance"))
    exchange.create_account("busy", {}, tier=Tier("big", 1000, 1, 1000, 1, 10))
    s = signer(exchange, exchange_url, session, "busy")
    results = [(await s.call("Balance"))[1]["error"] for _ in range(100)]
    busy = sum(1 for e in results if e == ["EService:Busy"])
    assert 10 <= busy <= 55 and busy + results.count([]) == 100
    assert exchange.injected_counts()["service_busy"] == busy


async def test_cancel_only_fault_for_one_pair(exchange, exchange_url, session):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.set_price("ETHUSD", D("3000"))
    exchange.inject(Fault(kind="cancel_only", pair="XBTUSD", next_n=5))
    s = signer(exchange, exchange_url, session)
    assert (await s.call("AddOrder", **MARKET_BUY))[1]["error"] == ["EService:Market in cancel_only mode"]
    eth = {**MARKET_BUY, "pair": "ETHUSD", "volume": "0.01"}
    assert (await s.call("AddOrder", **eth))[1]["error"] == []
    assert (await s.call("Balance"))[1]["error"] == []  # reads are not affected


async def test_market_status_cancel_only_and_post_only(exchange, exchange_url, session):
    exchange.set_price("XBTUSD", D("50000"))
    s = signer(exchange, exchange_url, session)
    exchange.set_status("XBTUSD", "cancel_only")
    assert (await s.call("AddOrder", **MARKET_BUY))[1]["error"] == ["EService:Market in cancel_only mode"]
    async with s.session.get(exchange_url + "/0/public/AssetPairs?pair=XBTUSD") as resp:
        assert (await resp.json())["result"]["XXBTZUSD"]["status"] == "cancel_only"
    exchange.set_status("XBTUSD", "online")
    exchange.set_status(None, "post_only")
    assert (await s.call("AddOrder", **MARKET_BUY))[1]["error"] == ["EService:Market in post_only mode"]
    limit = {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "40000.0", "volume": "0.0005",
             "oflags": "post"}
    assert (await s.call("AddOrder", **limit))[1]["error"] == []
    async with s.session.get(exchange_url + "/0/public/SystemStatus") as resp:
        assert (await resp.json())["result"]["status"] == "post_only"


async def test_public_faults_and_latency_fault(exchange, exchange_url, session):
    exchange.inject(Fault(kind="http_502", method="Ticker"))
    async with session.get(exchange_url + "/0/public/Ticker?pair=XBTUSD") as resp:
        assert resp.status == 502 and "502 Bad Gateway" in await resp.text()
    exchange.inject(Fault(kind="latency", delay_s=0.2, method="Time"))
    started = time.monotonic()
    async with session.get(exchange_url + "/0/public/Time") as resp:
        assert (await resp.json())["error"] == []
    assert time.monotonic() - started >= 0.2


async def test_admin_reports_orders_and_injections(exchange, exchange_url, session):
    exchange.set_price("XBTUSD", D("50000"))
    headers = {"X-Admin-Token": exchange.admin_token}
    async with session.post(exchange_url + "/admin/faults", headers=headers,
                            json={"kind": "drop_response_after_execute", "method": "AddOrder"}) as resp:
        assert resp.status == 200
    s = signer(exchange, exchange_url, session)
    with pytest.raises(aiohttp.ClientError):
        await s.call("AddOrder", cl_ord_id="adm-1", **MARKET_BUY)
    assert (await s.call("AddOrder", cl_ord_id="adm-2", **MARKET_BUY))[1]["error"] == []
    async with session.get(exchange_url + "/admin/counters", headers=headers) as resp:
        counters = await resp.json()
    assert counters["injected"] == {"drop_response_after_execute": 1}
    assert counters["orders_by_cl_ord_id"]["alice"] == {"adm-1": 1, "adm-2": 1}
    async with session.get(exchange_url + "/admin/orders?account=alice", headers=headers) as resp:
        orders = (await resp.json())["alice"]
    assert [o["status"] for o in orders["adm-1"]] == ["closed"]
    async with session.get(exchange_url + "/admin/counters", headers={"X-Admin-Token": "wrong"}) as resp:
        assert resp.status == 403


async def test_parallel_calls_with_jitter_lose_nonces_unless_the_key_has_a_window():
    ex = Exchange(seed=7, speed=0)
    strict = ex.create_account("strict", {"ZUSD": "1"}, tier="pro")
    windowed = ex.create_account("windowed", {"ZUSD": "1"}, tier="pro", nonce_window=10**9)
    async with aiohttp.ClientSession() as session:
        async with ex.serve(jitter_ms=5) as server:
            async def burst(acct) -> list:
                s = Signer(session, server.url, acct.api_key, acct.api_secret)
                nonces = [s.nonce() for _ in range(15)]  # signed in order, sent together
                return await asyncio.gather(*(s.call("Balance", nonce=n) for n in nonces))
            lost = sum(1 for _, body in await burst(strict) if body["error"] == ["EAPI:Invalid nonce"])
            assert lost >= 1
            assert all(body["error"] == [] for _, body in await burst(windowed))


async def test_optional_public_rate_limit(session):
    ex = Exchange(seed=7, speed=0)
    async with ex.serve(public_limit=(3, 0.5)) as server:
        errors = []
        for _ in range(5):
            async with session.get(server.url + "/0/public/Time") as resp:
                errors.append((await resp.json())["error"])
    assert errors == [[], [], [], ["EGeneral:Too many requests"], ["EGeneral:Too many requests"]]
