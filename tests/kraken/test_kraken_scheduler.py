"""The rate scheduler makes calls wait for budget instead of exceeding Kraken's counters."""

import asyncio
import json
import os
import time

from nija.kraken.limits import Tier, rest_cost
from nija.kraken.scheduler import Pacer, RateScheduler

FAST = Tier("fast-test", rest_max=3, rest_decay_per_s=50.0, trading_max=2, trading_decay_per_s=50.0,
            max_open_orders_per_pair=10)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_burst_then_waits_on_a_manual_clock():
    clock = FakeClock()
    pacer = Pacer(15, 0.33, clock, margin=0.0)
    for _ in range(15):
        assert pacer.counter.try_add(1, clock()) is True
    assert pacer.counter.wait_s(1, clock()) > 3.0 - 1e-6  # Starter: one call per 3.03 s after the burst


async def test_rest_calls_beyond_the_burst_wait_and_never_exceed_the_counter():
    scheduler = RateScheduler(safety_margin=0.1)
    budget = scheduler.budget("k", FAST)
    waited = [await budget.rest.take(rest_cost("Balance")) for _ in range(8)]
    assert waited[:2] == [0.0, 0.0]  # 3 with margin 0.1: two fit at once, the third waits a little
    assert all(w > 0 for w in waited[3:])
    assert budget.rest.counter.level(asyncio.get_running_loop().time()) <= FAST.rest_max


async def test_order_calls_cost_nothing_on_the_rest_counter_and_ledgers_cost_two():
    scheduler = RateScheduler()
    budget = scheduler.budget("k", FAST)
    for _ in range(20):
        assert await budget.rest.take(rest_cost("AddOrder")) == 0.0
    await budget.rest.take(rest_cost("Ledgers"))
    assert budget.rest.counter.level(asyncio.get_running_loop().time()) > 1.5


def test_cancel_all_and_the_dead_mans_switch_count_on_the_rest_counter():
    """Kraken frees only single-order calls (and their batch, edit and amend forms): a dead man's switch renewed
    every 15 s spends the key's REST budget, and a counter that ignored it would run into the limit."""
    assert [rest_cost(m) for m in ("CancelAll", "CancelAllOrdersAfter", "CancelOrder", "AddOrder")] == [1, 1, 0, 0]


def test_order_calls_are_charged_on_their_pairs_trading_counter_by_the_age_of_the_order():
    clock = FakeClock()
    budget = RateScheduler(clock=clock).budget("k", FAST)
    key = str.upper
    assert budget.order_charges("AddOrder", {"pair": "xbtusd"}, key) == {"XBTUSD": 1}
    assert budget.order_charges("AddOrderBatch", {"pair": "XBTUSD", "orders": [{}] * 4}, key) == {"XBTUSD": 2}
    budget.remember_order(["OABC", "my-order"], "XBTUSD")
    budget.remember_order(["OOLD"], "ETHUSD", age_s=100)
    clock.now = 4.0
    assert budget.order_charges("CancelOrder", {"txid": "OABC"}, key) == {"XBTUSD": 8}
    assert budget.order_charges("CancelOrder", {"cl_ord_id": "my-order"}, key) == {"XBTUSD": 8}
    assert budget.order_charges("AmendOrder", {"txid": "OABC"}, key) == {"XBTUSD": 1 + 3}
    assert budget.order_charges("EditOrder", {"txid": "OOLD", "pair": "ETHUSD"}, key) == {"ETHUSD": 1}
    assert budget.order_charges("CancelOrderBatch", {"orders": ["OABC", {"txid": "OOLD"}]}, key) == {
        "XBTUSD": 8, "ETHUSD": 1}
    clock.now = 400.0
    assert budget.order_charges("CancelOrder", {"txid": "OABC"}, key) == {"XBTUSD": 0}
    # Neither placed nor learned here: not open, so Kraken charges nothing; an edit is priced as the dearest case.
    assert budget.unknown_orders("CancelOrder", {"txid": "OELSE"}) == ["OELSE"]
    assert budget.order_charges("CancelOrder", {"txid": "OELSE"}, key) == {}
    assert budget.order_charges("EditOrder", {"txid": "OELSE", "pair": "XBTUSD"}, key) == {"XBTUSD": 1 + 6}
    assert budget.order_charges("Balance", {}, key) == {}
    # A batch names orders by txid in `orders` and by client id in `cl_ord_ids`.
    clock.now = 401.0
    budget.remember_order(["OC", "client-c"], "XBTUSD")
    budget.remember_order(["OD", "client-d"], "XBTUSD")
    assert budget.order_charges("CancelOrderBatch", {"orders": ["OC"], "cl_ord_ids": ["client-d"]}, key) == {
        "XBTUSD": 16}


def test_a_userref_names_every_open_order_carrying_it():
    clock = FakeClock()
    budget = RateScheduler(clock=clock).budget("k", FAST)
    assert budget.unknown_orders("CancelOrder", {"txid": "7"}) == ["7"]
    budget.learned_open_orders([(["OA"], "XBTUSD", 0.0, 7), (["OB", "mine"], "XBTUSD", 20.0, 7),
                                (["OC"], "ETHUSD", 1.0, None)])
    assert budget.order_charges("CancelOrder", {"txid": "7"}, str.upper) == {"XBTUSD": 8 + 4}
    assert budget.unknown_orders("CancelOrder", {"txid": "7"}) == ["7"]  # any order may carry it: read again


async def test_public_calls_are_paced_across_callers():
    scheduler = RateScheduler(public_rate_per_s=100.0)
    waits = await asyncio.gather(*(scheduler.take_public() for _ in range(5)))
    assert sorted(waits)[0] == 0.0 and sum(1 for w in waits if w > 0) == 4


def test_a_key_keeps_one_tier():
    scheduler = RateScheduler()
    scheduler.budget("k", FAST)
    try:
        scheduler.budget("k", Tier("other", 20, 1, 180, 3.75, 225))
    except ValueError as exc:
        assert "same tier" in str(exc)
    else:
        raise AssertionError("a second tier for one key must be refused")


async def test_levels_left_by_an_earlier_run_outlive_a_run_that_did_not_use_their_keys(tmp_path):
    from nija.kraken.client import KrakenContext
    from nija.kraken.limits import tier_named

    starter = tier_named("starter")
    first = KrakenContext(state_dir=tmp_path)
    for key_id in ("master", "follower"):
        first.scheduler.budget(key_id, starter).rest.counter.add(15, first.scheduler._clock())
    await first.close()
    second = KrakenContext(state_dir=tmp_path)  # a short run: only another key is used
    second.scheduler.budget("other", starter).rest.counter.add(3, second.scheduler._clock())
    await second.close()
    third = KrakenContext(state_dir=tmp_path)
    level = third.scheduler.budget("follower", starter).rest.counter.level(third.scheduler._clock())
    assert level > 14  # what the first run left, barely decayed: the follower's first call will wait for it
    await third.close()


def test_the_rest_levels_file_is_rewritten_only_when_a_counter_rose_above_it(tmp_path):
    """A daemon that is idle, or only waits for its counters to drain, does not rewrite the file every second."""
    from nija.kraken.limits import tier_named
    from nija.kraken.rest_levels import RestLevelsFile

    scheduler = RateScheduler()
    levels = RestLevelsFile(tmp_path / "rest_levels.json")
    assert not levels.behind(scheduler)  # nothing counted yet
    counter = scheduler.budget("master", tier_named("starter")).rest.counter
    counter.add(5, time.monotonic())
    assert levels.behind(scheduler)
    levels.save(scheduler, durable=False)
    assert not levels.behind(scheduler)  # draining: the file, decayed alike, still covers it
    counter.add(1, time.monotonic())
    assert levels.behind(scheduler)
    levels.save(scheduler, durable=False)
    again = RateScheduler()
    RestLevelsFile(tmp_path / "rest_levels.json").carry_over_into(again)
    assert again.budget("master", tier_named("starter")).rest.counter.level(time.monotonic()) > 5.9


def test_a_rest_levels_file_that_cannot_be_written_is_said_once_not_every_second(tmp_path):
    from structlog.testing import capture_logs

    from nija.kraken.limits import tier_named
    from nija.kraken.rest_levels import RestLevelsFile

    (tmp_path / "rest_levels.json").mkdir()  # the replace onto it fails
    scheduler = RateScheduler()
    levels = RestLevelsFile(tmp_path / "rest_levels.json")
    counter = scheduler.budget("master", tier_named("starter")).rest.counter
    with capture_logs() as logs:
        for _ in range(5):  # the saver's checks of five seconds, the counter rising each time
            counter.add(1, time.monotonic())
            levels.save(scheduler, durable=False)
    assert [line["event"] for line in logs] == ["rest_levels_unsaved"]


async def test_a_running_context_writes_the_rest_levels_file_off_the_event_loop(tmp_path, monkeypatch):
    """Replacing a file can wait for the disk for milliseconds; the loop keeps sending orders meanwhile."""
    import threading

    from nija.kraken import rest_levels
    from nija.kraken.client import KrakenContext
    from nija.kraken.limits import tier_named

    writers: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(rest_levels.REST_LEVELS_FILE):  # os is one module: the nonce mark passes here too
            writers.append(threading.current_thread().name)
        real_replace(src, dst)

    monkeypatch.setattr(rest_levels.os, "replace", replace)
    monkeypatch.setattr(rest_levels, "SAVE_EVERY_S", 0.05)
    monkeypatch.setattr("nija.kraken.client.SAVE_EVERY_S", 0.05)
    context = KrakenContext(state_dir=tmp_path)
    context.scheduler.budget("master", tier_named("starter")).rest.counter.add(5, context.scheduler._clock())
    context.keep_rest_levels()
    deadline = time.monotonic() + 10
    while not writers and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await context.close()
    assert writers[0] != threading.main_thread().name  # the saves while running
    assert writers[-1] == threading.main_thread().name  # the durable one at the stop
    again = RateScheduler()
    rest_levels.RestLevelsFile(tmp_path / "nonces" / rest_levels.REST_LEVELS_FILE).carry_over_into(again)
    assert again.budget("master", tier_named("starter")).rest.counter.level(time.monotonic()) > 4.9


def test_older_rest_levels_never_replace_newer_ones_on_file(tmp_path):
    """A save still on its thread when a newer one lands (the stop's) must not put the older levels back."""
    from nija.kraken.rest_levels import RestLevelsFile

    levels = RestLevelsFile(tmp_path / "rest_levels.json")
    now_s = time.time()
    assert levels._write({"k": (9.0, 0.33)}, now_s, 2, False) is None
    assert levels._write({"k": (2.0, 0.33)}, now_s - 0.5, 1, False) is None  # taken earlier, written later
    assert json.loads((tmp_path / "rest_levels.json").read_text())["rest_levels"] == {"k": 9.0}


def test_rest_levels_are_still_saved_after_the_wall_clock_steps_back(tmp_path, monkeypatch):
    """An NTP step back must not make later saves, the one at the stop included, look older than the last."""
    from nija.kraken import rest_levels
    from nija.kraken.limits import tier_named

    wall = [time.time()]
    monkeypatch.setattr(rest_levels.time, "time", lambda: wall[0])
    scheduler = RateScheduler()
    levels = rest_levels.RestLevelsFile(tmp_path / "rest_levels.json")
    counter = scheduler.budget("master", tier_named("starter")).rest.counter
    counter.add(2, time.monotonic())
    levels.save(scheduler, durable=False)
    wall[0] -= 60  # the clock is stepped back a minute
    counter.add(10, time.monotonic())
    assert levels.behind(scheduler)
    levels.save(scheduler, durable=True)
    assert json.loads((tmp_path / "rest_levels.json").read_text())["rest_levels"]["master"] > 11
