"""The market model: determinism, candles at every interval, ticker/depth consistency, the clock, slippage, and
APEX v7.1 entries and exits actually occurring."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from nija.exchange import Exchange
from nija.exchange.market import HISTORY_MINUTES, INTERVALS, RING_MINUTES

from tests.exchange.apex_probe import entry_signal

START = 1_750_000_000.0  # a fixed simulated start, so two exchanges can be compared


class ManualClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_same_seed_same_market_other_seed_other_market():
    a, b, c = (Exchange(seed=s, speed=0, start_time=START) for s in (7, 7, 8))
    rows = [x.call_public("OHLC", {"pair": "SOLUSD", "interval": "5"}) for x in (a, b, c)]
    assert rows[0] == rows[1] and rows[0] != rows[2]


def test_path_does_not_depend_on_how_often_it_is_looked_at():
    ca, cb = ManualClock(), ManualClock()
    a = Exchange(seed=7, speed=1, start_time=START, monotonic=ca)
    b = Exchange(seed=7, speed=1, start_time=START, monotonic=cb)
    a.price("ETHUSD"), b.price("ETHUSD")
    ca.t += 1800
    for _ in range(30):
        cb.t += 60
        b.price("ETHUSD")
    assert a.price("ETHUSD") == b.price("ETHUSD")
    assert a.call_public("OHLC", {"pair": "ETHUSD"}) == b.call_public("OHLC", {"pair": "ETHUSD"})


def test_accelerated_clock():
    clock = ManualClock()
    ex = Exchange(seed=7, speed=60, start_time=START, monotonic=clock)
    clock.t += 2.5
    assert ex.now() == pytest.approx(START + 150)
    ex.set_speed(0)
    clock.t += 100
    assert ex.now() == pytest.approx(START + 150)


@pytest.mark.parametrize("interval", INTERVALS)
def test_ohlc_every_interval_is_consistent(interval):
    ex = Exchange(seed=7, speed=0, start_time=START)
    res = ex.call_public("OHLC", {"pair": "XBTUSD", "interval": str(interval)})
    rows = res["XXBTZUSD"]
    assert 1 <= len(rows) <= 720
    width = interval * 60
    for prev, row in zip(rows, rows[1:]):
        assert row[0] - prev[0] == width
    for t, o, h, lo, c, vwap, vol, count in rows:
        assert t % width == 0 and isinstance(count, int) and count >= 0
        o, h, lo, c, vwap = map(D, (o, h, lo, c, vwap))
        assert lo <= min(o, c) and max(o, c) <= h and lo * D("0.999") <= vwap <= h * D("1.001")
        assert D(vol) >= 0
    assert res["last"] == rows[-2][0] if len(rows) > 1 else True
    assert rows[-1][0] <= START < rows[-1][0] + width  # the last row is the unfinished candle


def test_history_gives_the_strategy_100_candles_from_the_first_second():
    ex = Exchange(seed=7)
    assert len(ex.call_public("OHLC", {"pair": "SOLUSD", "interval": "5"})["SOLUSD"]) == 720
    assert len(ex.call_public("OHLC", {"pair": "SOLUSD", "interval": "60"})["SOLUSD"]) >= 100
    assert HISTORY_MINUTES >= 100 * 60


def test_ohlc_since_returns_newer_rows_only():
    ex = Exchange(seed=7, speed=0, start_time=START)
    full = ex.call_public("OHLC", {"pair": "XBTUSD", "interval": "5"})
    since = ex.call_public("OHLC", {"pair": "XBTUSD", "interval": "5", "since": str(full["last"])})
    assert [r[0] for r in since["XXBTZUSD"]] == [full["XXBTZUSD"][-1][0]]


def test_ticker_and_depth_agree_with_each_other_and_the_candles():
    ex = Exchange(seed=7, speed=0, start_time=START)
    for key, spec in ex.market.specs.items():
        t = ex.call_public("Ticker", {"pair": key})[key]
        ask, bid, last = D(t["a"][0]), D(t["b"][0]), D(t["c"][0])
        assert bid < ask and bid <= last <= ask, key
        assert (ask - bid) / last <= D(str(spec.spread)) * 2 + spec.tick_size / last * 2
        assert D(t["l"][1]) <= last <= D(t["h"][1]) and D(t["v"][0]) <= D(t["v"][1])
        assert isinstance(t["t"][0], int) and t["t"][0] <= t["t"][1]
        depth = ex.call_public("Depth", {"pair": key, "count": "10"})[key]
        asks = [D(p) for p, _, _ in depth["asks"]]
        bids = [D(p) for p, _, _ in depth["bids"]]
        assert asks == sorted(asks) and bids == sorted(bids, reverse=True)
        assert asks[0] == ask and bids[0] == bid
        day = ex.call_public("OHLC", {"pair": key, "interval": "1440"})[key]
        assert D(day[-1][4]) == last or abs(D(day[-1][4]) - last) <= spec.tick_size


def test_large_market_orders_walk_the_book():
    ex = Exchange(seed=7, speed=0)
    ex.create_account("whale", {"ZUSD": "100000000"})
    ex.set_price("XBTUSD", D("50000"))
    _, ask = ex.bid_ask("XBTUSD")
    small = ex.call("whale", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                          "volume": "0.001"})["txid"][0]
    big = ex.call("whale", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market",
                                        "volume": "50"})["txid"][0]
    orders = ex.account("whale").orders
    assert orders[small].avg_price == ask
    assert orders[big].avg_price >= ask + 50 * D("0.1")  # slippage: it took many levels


def test_set_price_pins_until_released():
    clock = ManualClock()
    ex = Exchange(seed=7, speed=1, monotonic=clock)
    ex.set_price("SOLUSD", D("123.45"))
    clock.t += 600
    assert ex.price("SOLUSD") == D("123.45")
    ex.release("SOLUSD")
    clock.t += 600
    assert ex.price("SOLUSD") != D("123.45")


def test_market_state_is_bounded():
    clock = ManualClock()
    ex = Exchange(seed=7, speed=1, monotonic=clock)
    pm = ex.market.pair("XBTUSD")
    clock.t += 3 * 86400  # long gaps are filled minute by minute
    ex.sync()
    assert len(pm.candles) == RING_MINUTES
    rows = ex.call_public("OHLC", {"pair": "XBTUSD", "interval": "1"})["XXBTZUSD"]
    assert rows[-1][0] // 60 == int(ex.now()) // 60


def test_apex_entries_and_both_kinds_of_exit_occur():
    ex = Exchange(seed=7, speed=0)
    entries = take_profit = stop_loss = 0
    for key in ("SOLUSD", "XDGUSD", "ADAUSD"):
        spec = ex.market.specs[key]
        rows = ex.call_public("OHLC", {"pair": key, "interval": "5"})[key][:-1]
        for i in range(100, len(rows), 3):
            if not entry_signal(rows[i - 100:i], spec.spread)[0]:
                continue
            entries += 1
            entry = D(rows[i - 1][4])
            for row in rows[i:i + 288]:
                if D(row[2]) >= entry * D("1.012"):
                    take_profit += 1
                    break
                if D(row[3]) <= entry * D("0.97"):
                    stop_loss += 1
                    break
    assert entries >= 20 and take_profit >= 5 and stop_loss >= 2, (entries, take_profit, stop_loss)
