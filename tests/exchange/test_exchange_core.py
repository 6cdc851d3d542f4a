"""The embedded exchange's core rules, in-process: accounts, orders, fills, holds, minimums, counters."""

from __future__ import annotations

import time
import urllib.parse
from decimal import Decimal as D

import pytest

from nija.exchange import Exchange, KrakenReject
from nija.exchange.app import parse_body
from nija.kraken.limits import Tier


def test_fixture_accounts_are_funded_like_the_demo(exchange):
    assert exchange.balances("master") == {"ZUSD": D("60.53")}
    assert exchange.balances("alice") == {"ZUSD": D("84.58")}
    assert exchange.balances("bob") == {"ZUSD": D("65.87")}


def test_account_repr_never_shows_the_secret(exchange):
    acct = exchange.account("alice")
    assert acct.api_secret not in repr(acct)
    assert len(acct.api_key) == 56
    import base64
    assert len(base64.b64decode(acct.api_secret)) == 64


def test_market_buy_fills_at_the_ask_and_charges_the_taker_fee(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    bid, ask = exchange.bid_ask("XBTUSD")
    assert bid < D("50000") < ask
    res = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                              "volume": "0.001", "cl_ord_id": "c1"})
    txid = res["txid"][0]
    order = exchange.account("alice").orders[txid]
    assert order.status == "closed" and order.vol_exec == D("0.001")
    assert order.cost == ask * D("0.001")
    assert order.fee == (order.cost * D("0.004")).quantize(D("0.00001"), rounding="ROUND_UP")
    bal = exchange.balances("alice")
    assert bal["XXBT"] == D("0.001")
    assert bal["ZUSD"] == D("84.58") - order.cost - order.fee


def test_viqc_spends_quote_currency(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    res = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                              "volume": "20", "oflags": "viqc"})
    order = exchange.account("alice").orders[res["txid"][0]]
    assert order.cost <= D("20") and order.cost > D("19.9")
    assert "viqc" in order.oflags


@pytest.mark.parametrize("params, error", [
    ({"volume": "0.00001"}, "EOrder:Order minimum not met"),
    ({"volume": "0.0001", "ordertype": "limit", "price": "1000.0"}, "EOrder:Cost minimum not met"),
    ({"volume": "1"}, "EOrder:Insufficient funds"),
    ({"volume": "0.001", "ordertype": "limit", "price": "50000.05"},
     "EOrder:Invalid price:XBTUSD price can only be specified up to 1 decimals."),
    ({"pair": "NOPEUSD"}, "EQuery:Unknown asset pair"),
    ({"type": "short"}, "EGeneral:Invalid arguments:type"),
    ({"volume": "abc"}, "EGeneral:Invalid arguments:volume"),
    ({"volume": "0.000000001"}, "EGeneral:Invalid arguments:volume"),
])
def test_bad_orders_get_krakens_errors(exchange, params, error):
    exchange.set_price("XBTUSD", D("50000"))
    base = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.001"}
    with pytest.raises(KrakenReject) as info:
        exchange.call("alice", "AddOrder", {**base, **params})
    assert info.value.errors == [error]


def test_tick_size_is_enforced():
    ex = Exchange(seed=1)
    ex.create_account("a", {"ZUSD": "1000"})
    ex.set_price("XDGUSD", D("0.16"))
    with pytest.raises(KrakenReject) as info:
        ex.call("a", "AddOrder", {"pair": "XDGUSD", "type": "buy", "ordertype": "limit", "price": "0.15000005",
                                  "volume": "100"})
    assert info.value.errors[0].startswith("EOrder:Invalid price")


def test_limit_rests_holds_funds_and_fills_when_price_crosses(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    res = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit",
                                              "price": "49000.0", "volume": "0.001", "userref": 42})
    txid = res["txid"][0]
    ex_view = exchange.call("alice", "BalanceEx")
    assert D(ex_view["ZUSD"]["hold_trade"]) > D("49")
    assert txid in exchange.call("alice", "OpenOrders")["open"]
    exchange.set_price("XBTUSD", D("49500"))
    assert txid in exchange.call("alice", "OpenOrders")["open"]
    exchange.set_price("XBTUSD", D("48900"))
    assert exchange.call("alice", "OpenOrders")["open"] == {}
    order = exchange.call("alice", "QueryOrders", {"txid": txid, "trades": "true"})[txid]
    assert order["status"] == "closed" and order["price"].startswith("49000")
    assert order["fee"] == "0.12250"  # maker 0.25 % of 49
    assert exchange.balances("alice")["XXBT"] == D("0.001")
    assert D(exchange.call("alice", "BalanceEx")["ZUSD"]["hold_trade"]) == 0


def test_orders_draw_on_auto_earn_balances_spot_first_and_balance_ex_shows_their_holds():
    """Kraken Rewards' XBT.F is read-only as a key, but orders in XBT use it (Kraken's BalanceEx documentation)."""
    ex = Exchange(seed=1)
    ex.set_price("XBTUSD", D("50000"))
    ex.create_account("earner", {"ZUSD": "10", "XXBT": "0.05", "XBT.F": "0.2"})
    ex.call("earner", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market", "volume": "0.1",
                                   "oflags": "fciq"})
    assert ex.balances("earner")["XXBT"] == 0 and ex.balances("earner")["XBT.F"] == D("0.15")
    # An order resting on XBT.F alone: its hold is listed, though the account has no spot XBT at all.
    ex.create_account("saver", {"ZUSD": "10", "XBT.F": "0.2"})
    ex.call("saver", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "limit", "price": "60000",
                                  "volume": "0.1", "oflags": "fciq"})
    view = ex.call("saver", "BalanceEx")
    free_btc = sum(D(view[key]["balance"]) - D(view[key]["hold_trade"]) for key in ("XXBT", "XBT.F"))
    assert free_btc == D("0.1")
    with pytest.raises(KrakenReject) as info:
        ex.call("saver", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market", "volume": "0.11",
                                      "oflags": "fciq"})
    assert info.value.errors == ["EOrder:Insufficient funds"]


def test_post_only_limit_that_would_take_is_canceled(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    res = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit",
                                              "price": "50100.0", "volume": "0.001", "oflags": "post"})
    order = exchange.account("alice").orders[res["txid"][0]]
    assert order.status == "canceled" and order.reason == "Post only order" and order.vol_exec == 0


def test_ioc_limit_not_crossing_is_canceled(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    res = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit",
                                              "price": "49000.0", "volume": "0.001", "timeinforce": "IOC"})
    assert exchange.account("alice").orders[res["txid"][0]].status == "canceled"
    assert exchange.account("alice").holds == {}


def test_validate_places_nothing(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    res = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                              "volume": "0.001", "validate": "true"})
    assert "txid" not in res and res["descr"]["order"] == "buy 0.00100000 XBTUSD @ market"
    assert exchange.orders("alice") == []


def test_cl_ord_id_unique_among_open_orders_only(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    lim = {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "40000.0", "volume": "0.0005",
           "cl_ord_id": "dup-1"}
    exchange.call("alice", "AddOrder", lim)
    with pytest.raises(KrakenReject):
        exchange.call("alice", "AddOrder", lim)
    exchange.call("alice", "CancelOrder", {"cl_ord_id": "dup-1"})
    exchange.call("alice", "AddOrder", lim)  # the first one is closed now: allowed again
    assert len(exchange.orders_by_cl_ord_id("alice")["dup-1"]) == 2
    found = exchange.call("alice", "QueryOrders", {"cl_ord_id": "dup-1"})
    assert sorted(o["status"] for o in found.values()) == ["canceled", "open"]


def test_cl_ord_id_and_userref_together_are_refused(exchange):
    with pytest.raises(KrakenReject) as info:
        exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                            "volume": "0.001", "cl_ord_id": "x", "userref": "1"})
    assert info.value.errors[0].startswith("EGeneral:Invalid arguments")


def test_sell_more_than_held_is_insufficient_funds(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                        "volume": "0.001"})
    with pytest.raises(KrakenReject) as info:
        exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market",
                                            "volume": "0.00100001", "oflags": "fciq"})
    assert info.value.errors == ["EOrder:Insufficient funds"]
    exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market",
                                        "volume": "0.001", "oflags": "fciq"})
    assert exchange.balances("alice")["XXBT"] == 0


def test_a_sells_fee_comes_out_of_the_base_asset_unless_fciq_says_otherwise(exchange):
    """As on Kraken: fcib is a sell's default, so selling a whole balance is refused (its fee does not fit)."""
    exchange.set_price("XBTUSD", D("50000"))
    exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.001"})
    usd = exchange.balances("alice")["ZUSD"]
    with pytest.raises(KrakenReject) as info:
        exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market",
                                            "volume": "0.001"})
    assert info.value.errors == ["EOrder:Insufficient funds"]
    result = exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market",
                                                 "volume": "0.0005"})
    [order] = exchange.call("alice", "QueryOrders", {"txid": result["txid"][0]}).values()
    assert "fcib" in order["oflags"] and D(order["fee"]) > 0  # reported in USD, paid in BTC
    assert exchange.balances("alice")["XXBT"] == D("0.001") - D("0.0005") - D("0.0005") * exchange.taker_fee
    assert exchange.balances("alice")["ZUSD"] == usd + D(order["cost"])
    with pytest.raises(KrakenReject):
        exchange.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market",
                                            "volume": "0.0001", "oflags": "fcib,fciq"})


def test_rest_counter_uses_the_accounts_tier():
    ex = Exchange(seed=7, speed=0)
    tiny = Tier("tiny", rest_max=3, rest_decay_per_s=0.001, trading_max=2, trading_decay_per_s=0.001,
                max_open_orders_per_pair=5)
    ex.create_account("t", {"ZUSD": "1000"}, tier=tiny)
    for _ in range(3):
        ex.call("t", "Balance")
    with pytest.raises(KrakenReject) as info:
        ex.call("t", "Balance")
    assert info.value.errors == ["EAPI:Rate limit exceeded"]
    ex.set_price("XBTUSD", D("50000"))
    order = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.0001"}
    ex.call("t", "AddOrder", order)
    ex.call("t", "AddOrder", order)
    with pytest.raises(KrakenReject) as info:
        ex.call("t", "AddOrder", order)
    assert info.value.errors == ["EOrder:Rate limit exceeded"]
    ex.call("t", "AddOrder", {**order, "pair": "ETHUSD", "volume": "0.01"})  # another pair, another counter


def test_permissions_are_checked():
    ex = Exchange(seed=7, speed=0)
    ex.create_account("ro", {"ZUSD": "10"}, permissions=("query",))
    ex.call("ro", "Balance")
    with pytest.raises(KrakenReject) as info:
        ex.call("ro", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "1"})
    assert info.value.errors == ["EGeneral:Permission denied"]


def test_nonce_strictly_increasing_and_window():
    ex = Exchange(seed=7, speed=0)
    a = ex.create_account("a", {})
    assert a.accept_nonce(100) and not a.accept_nonce(100) and not a.accept_nonce(99) and a.accept_nonce(101)
    w = ex.create_account("w", {}, nonce_window=10)
    assert w.accept_nonce(100) and w.accept_nonce(95) and not w.accept_nonce(95) and not w.accept_nonce(89)
    assert w.accept_nonce(101)


@pytest.mark.parametrize("ahead_s, render", [
    (30, lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))),
    (30, lambda t: time.strftime("%Y-%m-%dT%H:%M:%S.250Z", time.gmtime(t))),
    (30, lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))),  # no zone: UTC
    (30, lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(t + 7200))),
    (30, lambda t: str(int(t))),
    (-5, lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))),
    (-5, lambda t: time.strftime("%Y-%m-%dT%H:%M:%S-01:00", time.gmtime(t - 3600))),
    (120, lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))),
    (120, lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(t + 7200))),
])
def test_deadline_is_read_in_any_rfc3339_zone(exchange, ahead_s, render):
    exchange.set_price("XBTUSD", D("50000"))
    order = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.0001",
             "deadline": render(exchange.wall_now() + ahead_s)}
    if ahead_s < 0:
        with pytest.raises(KrakenReject, match="EService:Deadline elapsed"):
            exchange.call("alice", "AddOrder", order)
    elif ahead_s > 60:
        with pytest.raises(KrakenReject, match="EGeneral:Invalid arguments:deadline"):
            exchange.call("alice", "AddOrder", order)
    else:
        assert exchange.call("alice", "AddOrder", order)["txid"]


@pytest.mark.parametrize("text", ["tomorrow", "2026-01-02", "2026-13-02T00:00:00Z", ""])
def test_a_deadline_that_is_no_time_is_invalid(exchange, text):
    order = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.0001", "deadline": text or " "}
    with pytest.raises(KrakenReject, match="EGeneral:Invalid arguments:deadline"):
        exchange.call("alice", "AddOrder", order)


def test_form_bodies_are_decoded_as_parse_qsl_does():
    raw = b"nonce=1&deadline=2026-01-02T03%3A04%3A05Z&a+b=c+d&empty=&bare&%E2%82%AC=%E2%82%AC&&pair=XBTUSD"
    assert parse_body(raw, "application/x-www-form-urlencoded") == dict(
        urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))


def test_cancel_all_orders_after_really_fires():
    clock = [1000.0]
    ex = Exchange(seed=7, speed=1.0, monotonic=lambda: clock[0])
    ex.create_account("a", {"ZUSD": "1000"})
    ex.set_price("XBTUSD", D("50000"))
    ex.call("a", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "40000.0",
                              "volume": "0.001"})
    res = ex.call("a", "CancelAllOrdersAfter", {"timeout": "60"})
    assert res["triggerTime"] != "0"
    clock[0] += 59
    assert len(ex.open_orders_of("a")) == 1
    clock[0] += 2
    assert ex.open_orders_of("a") == []
    assert ex.orders("a")[0].status == "canceled"


def test_a_sell_whose_fee_just_fits_in_the_asset_leaves_nothing_and_never_less(exchange):
    exchange.set_price("XBTUSD", D("50000"))
    volume = D("0.00012345")
    fee_btc = (volume * exchange.taker_fee).quantize(D("1e-10"), rounding="ROUND_UP")  # XBT's precision
    exchange.fund("bob", "XXBT", volume + fee_btc)
    exchange.call("bob", "AddOrder", {"pair": "XBTUSD", "type": "sell", "ordertype": "market",
                                      "volume": str(volume)})
    assert exchange.balances("bob").get("XXBT", D(0)) == 0
