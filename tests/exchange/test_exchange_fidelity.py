"""Fidelity: an independent Kraken client (krakenex, unchanged but for its base URL) works against the embedded
exchange, and our responses have the keys and JSON types of Kraken's own example responses."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal as D
from pathlib import Path

import krakenex
import pytest

from nija.exchange import Exchange

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "kraken" / "official_examples"


def _example(name: str):
    return json.loads((EXAMPLES / f"{name}.json").read_text())["result"]


def _jtype(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def assert_same_shape(ours, theirs, path: str = "$", ignore: frozenset[str] = frozenset()) -> None:
    """Every key of Kraken's example exists in ours with the same JSON type (null in the example: any type)."""
    if theirs is None:
        return
    assert _jtype(ours) == _jtype(theirs), f"{path}: ours is {_jtype(ours)} ({ours!r}), Kraken's {_jtype(theirs)}"
    if isinstance(theirs, dict):
        for key, value in theirs.items():
            if key in ignore:
                continue
            assert key in ours, f"{path}: key {key!r} missing (ours has {sorted(ours)})"
            assert_same_shape(ours[key], value, f"{path}.{key}", ignore)
    elif isinstance(theirs, list) and theirs and ours:
        if isinstance(theirs[0], (list, dict)):  # a list of rows or objects: each of ours like Kraken's first
            for i, item in enumerate(ours[:3]):
                assert_same_shape(item, theirs[0], f"{path}[{i}]", ignore)
        else:  # a row of scalars: position by position
            assert len(ours) == len(theirs), f"{path}: {len(ours)} items, Kraken's has {len(theirs)}"
            for i, (a, b) in enumerate(zip(ours, theirs)):
                assert_same_shape(a, b, f"{path}[{i}]", ignore)


def assert_each_like(ours: dict, theirs: dict, path: str = "$", ignore: frozenset[str] = frozenset()) -> None:
    """A map keyed by ids (assets, txids): each of our values has the shape of Kraken's first example value."""
    assert ours, f"{path}: empty"
    for key, value in ours.items():
        assert_same_shape(value, _first(theirs), f"{path}.{key}", ignore)


def _first(d: dict):
    return next(iter(d.values()))


@pytest.fixture
def traded(exchange: Exchange) -> Exchange:
    """alice has a closed market buy, an open limit sell and a canceled limit buy."""
    exchange.set_price("XBTUSD", D("50000"))
    call = exchange.call
    call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.001",
                               "userref": "1000"})
    call("alice", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "limit", "price": "60000.0",
                               "volume": "0.0005", "userref": "2000"})
    tx = call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "40000.0",
                                    "volume": "0.0002", "userref": "3000"})["txid"][0]
    call("alice", "CancelOrder", {"txid": tx})
    return exchange


def test_public_shapes_match_krakens_examples(exchange):
    pub = exchange.call_public
    assert_same_shape(pub("Time", {}), _example("public__time"))
    assert_each_like(pub("Assets", {}), {"XETH": _example("public__assets__info")["XETH"]}, "assets",
                     frozenset({"collateral_value"}))  # only for assets that count as margin collateral
    assert_same_shape(pub("AssetPairs", {"pair": "XBTUSD"})["XXBTZUSD"],
                      _example("public__assets__pairs")["XXBTZUSD"],
                      ignore=frozenset({"leverage_buy", "leverage_sell"}))  # spot only: empty lists
    assert_same_shape(pub("Ticker", {"pair": "XBTUSD"}), _example("public__ticker"))
    ours = pub("OHLC", {"pair": "XBTUSD", "interval": "5"})
    assert_same_shape(ours, _example("public__ohlc"))
    assert_same_shape(pub("Depth", {"pair": "XBTUSD", "count": "2"}), _example("public__depth"))
    assert_same_shape(pub("Spread", {"pair": "XBTUSD"}), _example("public__spread"))


def test_private_shapes_match_krakens_examples(traded):
    call = traded.call
    assert_each_like(call("alice", "Balance"), _example("user__account__balance"))
    assert_same_shape(call("alice", "TradeBalance"), _example("user__trades__balance"))
    # The 2013 OpenOrders example writes refid/userref as "" where later examples (and we) write null/integers.
    open_ours = call("alice", "OpenOrders")["open"]
    assert_each_like(open_ours, _example("user__orders__open")["open"], "open", frozenset({"refid", "userref"}))
    assert all(isinstance(o["userref"], int) for o in open_ours.values())
    assert_each_like(open_ours, _example("user__orders__query"), "open")  # the newer example's keys too
    closed = call("alice", "ClosedOrders")
    assert_same_shape(closed["count"], _example("user__orders__closed")["count"])
    # Kraken's examples are all canceled orders ("reason": "User requested"); a filled order's reason is null.
    canceled = {k: v for k, v in closed["closed"].items() if v["status"] == "canceled"}
    filled = {k: v for k, v in closed["closed"].items() if v["status"] == "closed"}
    assert len(canceled) == len(filled) == 1 and _first(filled)["reason"] is None
    assert_each_like(canceled, _example("user__orders__closed")["closed"], "closed")
    assert_each_like(filled, _example("user__orders__closed")["closed"], "closed", frozenset({"reason"}))
    assert_each_like(call("alice", "QueryOrders", {"txid": ",".join(canceled)}),
                     _example("user__orders__query"), "query")
    # Margin-position fields (posstatus, cprice, ccost, ...) exist only for margin trades; this is a spot exchange.
    margin_only = frozenset({"posstatus", "cprice", "ccost", "cfee", "cvol", "cmargin", "net", "trades"})
    history = call("alice", "TradesHistory")
    assert_same_shape(history["count"], _example("user__trades__history")["count"])
    assert_each_like(history["trades"], _example("user__trades__history")["trades"], "trades", margin_only)


def test_order_placement_shapes_match_krakens_examples(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    call = exchange.call
    added = call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "40000.0",
                                       "volume": "0.0005"})
    assert_same_shape(added, _example("trading__orders__add"), ignore=frozenset({"close"}))  # no close orders
    assert_same_shape(call("alice", "CancelOrder", {"txid": added["txid"][0]}), _example("trading__orders__cancel"))
    batch = call("alice", "AddOrderBatch", {"pair": "XBTUSD", "orders": [
        {"type": "buy", "ordertype": "limit", "price": "40000.0", "volume": "0.0005"},
        {"type": "buy", "ordertype": "limit", "price": "41000.0", "volume": "0.0005"}]})
    assert_same_shape(batch, _example("trading__orders__batchadd"), ignore=frozenset({"close"}))
    assert_same_shape(call("alice", "CancelAll"), _example("trading__orders__batchcancel"))


async def test_krakenex_unchanged_drives_the_exchange(exchange, exchange_url):
    """balance, market order, query it, OHLC: krakenex as published, only its base URL changed."""
    acct = exchange.account("alice")
    exchange.set_price("XBTUSD", D("50000"))

    def session() -> dict:
        api = krakenex.API(key=acct.api_key, secret=acct.api_secret)
        api.uri = exchange_url
        out = {"time": api.query_public("Time"), "balance": api.query_private("Balance")}
        time.sleep(0.002)  # krakenex's nonce is in milliseconds: two calls within 1 ms would repeat it
        out["add"] = api.query_private("AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                                    "volume": "0.0005", "cl_ord_id": "krakenex-1"})
        time.sleep(0.002)
        txid = out["add"]["result"]["txid"][0]
        out["query"] = api.query_private("QueryOrders", {"txid": txid, "trades": True})
        out["ohlc"] = api.query_public("OHLC", {"pair": "XBTUSD", "interval": 5})
        time.sleep(0.002)
        out["balance_after"] = api.query_private("Balance")
        api.close()
        return out

    out = await asyncio.to_thread(session)
    assert out["balance"] == {"error": [], "result": {"ZUSD": "84.5800"}}
    txid = out["add"]["result"]["txid"][0]
    order = out["query"]["result"][txid]
    assert order["status"] == "closed" and order["vol_exec"] == "0.00050000" and order["cl_ord_id"] == "krakenex-1"
    assert len(order["trades"]) == 1
    rows = out["ohlc"]["result"]["XXBTZUSD"]
    assert len(rows) == 720 and rows[-1][0] - rows[-2][0] == 300
    assert out["balance_after"]["result"]["XXBT"] == "0.0005000000"


async def test_a_second_key_lets_a_millisecond_client_trade_an_account_nija_uses(exchange, exchange_url, tmp_path):
    """NIJA's nanosecond nonces put a key out of reach of krakenex's milliseconds; the account's second key, with a
    sequence of its own, trades the same balances (what paper mode writes to keys.env for the trader's client)."""
    from nija.kraken.client import KrakenClient, KrakenContext

    acct = exchange.account("master")
    trader_key = exchange.add_key("master")
    async with KrakenContext(state_dir=tmp_path) as context:
        nija = KrakenClient(acct.api_key, acct.api_secret, base_url=exchange_url, context=context)
        await nija.balance()

        def session(key: str, secret: str) -> dict:
            api = krakenex.API(key=key, secret=secret)
            api.uri = exchange_url
            try:
                return api.query_private("Balance")
            finally:
                api.close()

        refused = await asyncio.to_thread(session, acct.api_key, acct.api_secret)
        accepted = await asyncio.to_thread(session, trader_key.api_key, trader_key.api_secret)
        assert refused["error"] == ["EAPI:Invalid nonce"]
        assert accepted["error"] == [] and accepted["result"] == (await nija.private("Balance"))
    assert "secret" not in repr(trader_key).lower() and trader_key.api_secret not in repr(trader_key)


async def test_each_key_of_an_account_has_its_own_rest_counter(exchange, exchange_url, tmp_path):
    """Kraken counts REST calls per key: the trader's own client spending its key's budget leaves NIJA's intact."""
    from nija.kraken.client import KrakenClient, KrakenContext

    acct = exchange.account("master")  # Starter: 15 calls at once
    trader_key = exchange.add_key("master")
    async with KrakenContext(state_dir=tmp_path / "trader") as theirs, \
            KrakenContext(state_dir=tmp_path / "nija") as ours:
        trader = KrakenClient(trader_key.api_key, trader_key.api_secret, base_url=exchange_url, context=theirs)
        nija = KrakenClient(acct.api_key, acct.api_secret, base_url=exchange_url, context=ours, read_attempts=1)
        for _ in range(14):
            await trader.private("Balance")
        for _ in range(14):
            await nija.private("Balance")  # no EAPI:Rate limit exceeded: the trader's calls were not counted here
