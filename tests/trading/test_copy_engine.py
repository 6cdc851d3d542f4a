"""The copy engine against in-memory accounts: sizing on the path, ordering, isolation, durability, resume."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal as D
from pathlib import Path

import pytest

from nija.accounts import FollowerConfig
from nija.kraken.errors import AmbiguousOrderError, ConfigurationError, InsufficientFundsError, TransportError
from nija.kraken.pairs import Pairs
from nija.settings import CopyTradingMode
from nija.store import IntentRow, Store
from nija.trading.copy import CopyEngine, Fill, FollowerAccount, Placed
from nija.trading.positions import BalanceRead, utc_day
from nija.trading.signals import Signal, cl_ord_id_for
from nija.trading.sizing import OrderPlan

from tests.trading.fake_gateway import FakeAccount

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kraken" / "asset_pairs_sample.json"
PAIRS = Pairs.from_results(json.loads(FIXTURE.read_text())["result"])


def buy(sid="b1", volume="0.1", master_equity="10000", price="50000"):
    return Signal(sid, "OM-" + sid, "XBTUSD", "buy", D(volume), D(price), D("20"), D(master_equity))


def sell(sid, fraction=None, closes=False):
    return Signal(sid, "OM-" + sid, "XBTUSD", "sell", D("0.01"), D("50000"), D("2"), D("10000"),
                  position_fraction=None if fraction is None else D(fraction), closes_position=closes)


def account(name, fake, **config):
    return FollowerAccount(FollowerConfig(name=name, **config), fake)


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "nija.sqlite3")
    yield store
    await store.close()


async def engine_with(store, accounts, **kwargs):
    engine = CopyEngine(store, PAIRS, accounts, **kwargs)
    await engine.refresh_all()
    return engine


async def test_buy_is_sized_per_follower_and_capped(store):
    alice, bob, carl = FakeAccount(usd="1000"), FakeAccount(usd="3000"), FakeAccount(usd="20")
    engine = await engine_with(store, [account("alice", alice), account("bob", bob, risk_multiplier=0.1),
                                       account("carl", carl)])
    summary = await engine.copy(buy())
    by_name = {r.name: r for r in summary.results}
    assert by_name["alice"].volume_base == D("0.002")  # 50 % of equity asked, capped at 10 % of 1000
    assert by_name["bob"].volume_base == D("0.003")  # 3000/10000 × 5000 × 0.1 = 150 USD
    assert by_name["carl"].status == "skipped" and "ordermin" in by_name["carl"].reason
    assert (summary.succeeded, summary.skipped, summary.failed, summary.followers) == (2, 1, 0, 3)
    assert alice.balances["BTC"] == D("0.002") and carl.calls == ["balance"]
    rows = {row.follower: row for row in await store.intents_for("b1")}
    assert rows["alice"].status == "done" and rows["alice"].order_id and rows["carl"].status == "skipped"
    assert await store.signal_status("b1") == "done"


async def test_sells_follow_the_buy_and_take_the_same_fraction(store):
    alice = FakeAccount(usd="1000")
    engine = await engine_with(store, [account("alice", alice)])
    await engine.start(refresh_first=False)
    for signal in (buy("b1"), sell("s1", "0.25"), sell("s2", closes=True)):
        assert await engine.submit(signal)
    await engine.wait_idle()
    await engine.stop()
    # the sell was sized after the buy filled, from the follower's own position, without a balance call
    placed = [c.split() for c in alice.calls if c.startswith("place")]
    assert [(side, D(volume)) for _, side, volume in placed] == [("buy", D("0.002")), ("sell", D("0.0005")),
                                                                  ("sell", D("0.0015"))]
    assert alice.balances["BTC"] == 0


async def test_one_slow_follower_does_not_delay_the_others(store):
    slow, fast = FakeAccount(), FakeAccount()
    slow.gate = asyncio.Event()
    engine = await engine_with(store, [account("slow", slow), account("fast", fast)])
    copying = asyncio.create_task(engine.copy(buy()))
    while not fast.orders:  # the fast follower completes while the slow one is still waiting
        await asyncio.sleep(0)
    assert not slow.orders and not copying.done()
    slow.gate.set()
    summary = await copying
    assert summary.succeeded == 2


async def test_a_rejected_key_fails_alone(store):
    bad, good = FakeAccount(), FakeAccount()
    bad.fail_with = ConfigurationError(["EAPI:Invalid key"], method="AddOrder")
    engine = await engine_with(store, [account("bad", bad), account("good", good)])
    summary = await engine.copy(buy())
    by_name = {r.name: r for r in summary.results}
    assert by_name["bad"].status == "failed" and "Invalid key" in by_name["bad"].reason
    assert by_name["good"].status == "succeeded" and summary.latency_ms is not None


async def test_disabled_and_non_copying_followers_are_not_targets(store):
    on, off, own = FakeAccount(), FakeAccount(), FakeAccount()
    engine = await engine_with(store, [account("on", on), account("off", off, enabled=False),
                                       account("own", own, copy_from_master=False)])
    summary = await engine.copy(buy())
    assert summary.followers == 1 and not off.orders and not own.orders


async def test_the_daily_loss_block_lifts_at_utc_midnight_before_the_next_balance_read(store):
    now_s = [1_780_012_800.0 - 60]  # a minute before a UTC midnight
    loser = FakeAccount(usd="1000")
    engine = await engine_with(store, [account("l", loser, max_daily_loss=0.05)], clock=lambda: now_s[0])
    loser.balances["USD"] = D("900")  # 10 % down today
    await engine.refresh_all()
    blocked = await engine.copy(buy("before-midnight"))
    assert blocked.results[0].reason.startswith("daily_loss_reached")
    now_s[0] += 90  # the next day; the balances have not been read since
    summary = await engine.copy(buy("after-midnight"))
    assert summary.results[0].status == "succeeded" and loser.orders


async def test_the_daily_loss_block_outlives_a_recovery_and_a_restart_the_same_day(store):
    now_s = [1_780_012_800.0 + 3600]  # an hour into a UTC day
    loser = FakeAccount(usd="1000")
    engine = await engine_with(store, [account("l", loser, max_daily_loss=0.05)], clock=lambda: now_s[0])
    loser.balances["USD"] = D("900")
    await engine.refresh_all()
    assert (await engine.copy(buy("down"))).results[0].reason.startswith("daily_loss_reached")
    loser.balances["USD"] = D("990")  # back to 1 % down, the same day
    await engine.refresh_all()
    assert (await engine.copy(buy("recovered"))).results[0].reason.startswith("daily_loss_reached")
    loser.balances["BTC"] = D("0.0001")  # the restarted engine has no BTC price until the next signal's
    restarted = await engine_with(store, [account("l", loser, max_daily_loss=0.05)], clock=lambda: now_s[0])
    assert restarted.followers["l"].portfolio.equity_usd(restarted.prices) is None
    assert (await restarted.copy(buy("restarted"))).results[0].reason.startswith("daily_loss_reached")
    now_s[0] += 86_400
    await restarted.refresh_all()
    assert (await restarted.copy(buy("next-day"))).results[0].status == "succeeded"


async def test_disabled_symbol_and_daily_loss(store):
    doge_hater, loser = FakeAccount(), FakeAccount(usd="1000")
    engine = await engine_with(store, [account("h", doge_hater, disabled_symbols=["BTC"]),
                                       account("l", loser, max_daily_loss=0.05)])
    engine.followers["l"].portfolio.day_start_equity_usd = D("1100")  # already down 9 % today
    engine.followers["l"].portfolio.day = utc_day(time.time())
    summary = await engine.copy(buy())
    reasons = {r.name: r.reason for r in summary.results}
    assert reasons["h"].startswith("disabled_symbol") and reasons["l"].startswith("daily_loss_reached")


async def test_a_slow_follower_does_not_hold_back_the_others_copy_result_lines(store, monkeypatch):
    import nija.trading.copy as copy_module
    recorder = LogRecorder()
    monkeypatch.setattr(copy_module, "log", recorder)
    monkeypatch.setattr(copy_module, "RESULT_LOG_AFTER_S", 0.05)
    alice, slow = FakeAccount(), FakeAccount()
    slow.gate = asyncio.Event()  # its order hangs until let go
    engine = await engine_with(store, [account("alice", alice), account("slow", slow)])
    copying = asyncio.create_task(engine.copy(buy()))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if any(event == "copy_result" for event, _ in recorder.events):
            break
    assert [f["name"] for e, f in recorder.events if e == "copy_result"] == ["alice"]  # slow is still waited for
    slow.gate.set()
    summary = await copying
    assert [f["name"] for e, f in recorder.events if e == "copy_result"] == ["alice", "slow"]
    assert [r.name for r in summary.results] == ["alice", "slow"]


async def test_a_signal_is_copied_once(store):
    alice = FakeAccount()
    engine = await engine_with(store, [account("alice", alice)])
    assert (await engine.copy(buy())).succeeded == 1
    assert await engine.copy(buy()) is None
    assert await engine.submit(buy()) is False
    assert len(alice.orders) == 1


async def test_independent_mode_copies_nothing(store):
    alice = FakeAccount()
    engine = await engine_with(store, [account("alice", alice)], mode=CopyTradingMode.INDEPENDENT)
    summary = await engine.copy(buy())
    assert summary.followers == 0 and not alice.orders


async def test_unsettled_order_is_reconciled_by_lookup_not_resent(store):
    lost, unsent = FakeAccount(), FakeAccount()
    lost.execute_then_fail = AmbiguousOrderError("lookup failed", cl_ord_id="x")
    unsent.fail_with = TransportError("timeout")  # the exchange never saw it
    engine = await engine_with(store, [account("lost", lost), account("unsent", unsent)])
    summary = await engine.copy(buy())
    assert summary.unsettled == 2 and summary.failed == 2
    assert await store.signal_status("b1") != "done"  # stays open until every intent is settled
    [again] = await engine.reconcile()
    assert again.succeeded == 2 and await store.signal_status("b1") == "done"
    cl = cl_ord_id_for("b1", "lost")
    assert len(lost.orders[cl]) == 1  # found by its cl_ord_id, not placed again
    assert len(unsent.orders[cl_ord_id_for("b1", "unsent")]) == 1  # proven absent, sent once
    assert lost.balances["BTC"] == unsent.balances["BTC"] == D("0.002")


async def test_restart_resumes_stored_intents_without_duplicates(tmp_path):
    path = tmp_path / "nija.sqlite3"
    sent, not_sent = FakeAccount(), FakeAccount()
    # A first run stored the signal and both intents, sent one order, then died.
    store = await Store.open(path)
    signal = buy()
    await store.save_signal(signal)
    await store.add_intents([IntentRow("b1", n, cl_ord_id_for("b1", n), "XBTUSD", "buy") for n in ("sent", "not_sent")])
    await store.close()
    # ... and the first run managed to send one order before dying
    await sent.place(OrderPlan("XBTUSD", "buy", D("0.002"), D("100")), cl_ord_id_for("b1", "sent"))

    store = await Store.open(path)
    engine = CopyEngine(store, PAIRS, [account("sent", sent), account("not_sent", not_sent)])
    await engine.start()
    await engine.wait_idle()
    await engine.stop()
    assert len(sent.orders[cl_ord_id_for("b1", "sent")]) == 1
    assert len(not_sent.orders[cl_ord_id_for("b1", "not_sent")]) == 1
    assert await store.signal_status("b1") == "done"
    assert all(row.finished for row in await store.intents_for("b1"))
    await store.close()


class LogRecorder:
    """Stands in for the engine's structlog logger: keeps (event, fields) pairs."""

    def __init__(self):
        self.events = []

    def info(self, event, **fields):
        self.events.append((event, fields))

    warning = error = exception = info


async def test_copy_log_lines(store, monkeypatch):
    import nija.trading.copy as copy_module
    recorder = LogRecorder()
    monkeypatch.setattr(copy_module, "log", recorder)
    alice, carl = FakeAccount(), FakeAccount(usd="5")
    engine = await engine_with(store, [account("alice", alice), account("carl", carl)])
    await engine.copy(buy())
    results = {fields["name"]: fields for event, fields in recorder.events if event == "copy_result"}
    assert results["alice"]["order_id"] and D(results["alice"]["volume"]) == D("0.002")
    assert D(results["alice"]["notional"]) == D("100") and results["alice"]["pair"] == "XBTUSD"
    assert results["alice"]["side"] == "buy" and results["alice"]["reason"] is None
    assert results["carl"]["reason"].startswith("below_") and results["carl"]["order_id"] is None
    [summary] = [fields for event, fields in recorder.events if event == "copy_summary"]
    assert (summary["signal_id"], summary["succeeded"], summary["skipped"], summary["failed"], summary["followers"]) \
        == ("b1", 1, 1, 0, 2)
    assert summary["latency_ms"] >= 0


async def test_late_joiner_neither_buys_in_nor_sells_what_it_never_copied(store):
    """late_join=ignore: a follower that joins while the master holds a position sits the position out."""
    late = FakeAccount(usd="1000")
    engine = await engine_with(store, [account("late", late)])
    await engine.start(refresh_first=False)
    summary = await engine.copy(sell("s1", "0.5"))
    await engine.stop()
    assert summary.results[0].status == "skipped" and summary.results[0].reason.startswith("no_position")
    assert late.orders == {}


async def test_reconcile_during_a_dispatch_never_sends_an_order_twice(store):
    """The daemon reconciles every minute: a signal being dispatched at that moment is still copied once."""
    alice, bob = FakeAccount(), FakeAccount()
    engine = await engine_with(store, [account("alice", alice), account("bob", bob)])
    await engine.start(refresh_first=False)
    assert await engine.submit(buy())
    await engine.resume()  # runs while the consumer dispatches the signal just queued
    await engine.wait_idle()
    await engine.stop()
    for fake in (alice, bob):
        assert [len(orders) for orders in fake.orders.values()] == [1]
        assert fake.balances["BTC"] == D("0.002")



class SlowToPrepare(FakeAccount):
    async def place(self, plan, cl_ord_id):
        time.sleep(0.002)  # CPU spent on the order before it leaves (signing, encoding): the event loop is busy
        return await super().place(plan, cl_ord_id)


async def test_a_signal_resumed_during_a_fan_out_reaches_every_follower_in_the_same_order(store):
    """A fan-out lets each follower's order leave before it starts the next follower. A signal that a reconcile
    takes up meanwhile must not overtake it on the followers not started yet: every follower sees one order."""
    names = [f"f{i:02d}" for i in range(50)]
    fakes = [SlowToPrepare(usd="100000") for _ in names]
    engine = await engine_with(store, [account(name, fake) for name, fake in zip(names, fakes)])
    # Stored with its intents by a run that died before sending any (its followers listed in another order then).
    left_over = buy("r1")
    await store.save_signal(left_over)
    await store.add_intents([IntentRow("r1", name, cl_ord_id_for("r1", name), "XBTUSD", "buy")
                             for name in reversed(names)])
    buying = asyncio.create_task(engine.copy(buy("b1")))
    while not fakes[0].orders:  # b1's fan-out has begun and is still starting the others
        await asyncio.sleep(0)
    assert await engine.resume() == 1
    await buying
    await engine.wait_idle()
    signal_of = {cl_ord_id_for(sid, name): sid for sid in ("r1", "b1") for name in names}
    assert {tuple(signal_of[cl] for cl in fake.orders) for fake in fakes} == {("b1", "r1")}


async def test_a_stop_while_a_fan_out_is_starting_still_gives_every_stored_intent_its_grace(store):
    names = [f"f{i:02d}" for i in range(30)]
    fakes = [SlowToPrepare() for _ in names]
    engine = await engine_with(store, [account(name, fake) for name, fake in zip(names, fakes)])
    await engine.start(refresh_first=False)
    assert await engine.submit(buy("b1"))
    while not fakes[0].orders:  # the consumer is starting the followers one by one
        await asyncio.sleep(0)
    await engine.stop(grace_s=10)
    assert [len(fake.orders) for fake in fakes] == [1] * len(names)
    assert await store.signal_status("b1") == "done"


async def test_a_stop_during_the_commit_of_the_intents_still_stops(store):
    """The stop's cancellation reaches the consumer while SQLite writes the intents (the write still happens)."""
    engine = await engine_with(store, [account("alice", FakeAccount())])
    await engine.start(refresh_first=False)
    real_execute, stopping = store._db.execute, []

    def execute(sql, *args, **kwargs):
        if sql.startswith(("COMMIT", "INSERT OR IGNORE INTO intents")) and not stopping:
            stopping.append(asyncio.get_running_loop().create_task(engine.stop(grace_s=0.1)))
        return real_execute(sql, *args, **kwargs)

    store._db.execute = execute
    assert await engine.submit(buy())
    while not stopping:
        await asyncio.sleep(0.001)
    await asyncio.wait_for(stopping[0], 5)  # used to hang: the ROLLBACK's error replaced the cancellation
    assert [row.status for row in await store.intents_for("b1")] == ["pending"]  # stored; resumed at next start


async def test_outside_master_follow_a_signal_with_an_exit_of_unknown_outcome_stays_open_for_it(store):
    alice = FakeAccount(usd="0", btc="0.01")
    alice.fail_with = TransportError("timeout")
    engine = await engine_with(store, [account("alice", alice)])
    assert (await engine.copy(sell("s1", closes=True))).unsettled == 1
    independent = await engine_with(store, [account("alice", alice)], mode=CopyTradingMode.INDEPENDENT)
    assert await independent.reconcile() == []
    assert await store.signal_status("s1") != "done"
    [summary] = await (await engine_with(store, [account("alice", alice)])).reconcile()  # MASTER_FOLLOW again
    assert summary.succeeded == 1 and alice.balances["BTC"] == 0 and await store.signal_status("s1") == "done"


async def test_an_order_found_after_a_balance_read_that_holds_it_is_not_booked_twice(store):
    alice = FakeAccount(usd="1000")
    alice.execute_then_fail = AmbiguousOrderError("reply lost")  # the buy executed; its reply never came
    engine = await engine_with(store, [account("alice", alice)])
    assert (await engine.copy(buy("b1"))).unsettled == 1
    await engine.refresh_all()  # the scheduled refresh reads balances that hold the executed buy
    [summary] = await engine.reconcile()  # then the reconcile finds the order by client order id
    assert summary.succeeded == 1
    assert engine.followers["alice"].portfolio.held("BTC") == alice.balances["BTC"] == D("0.002")
    half = await engine.copy(sell("s1", "0.5"))
    assert half.succeeded == 1 and alice.balances["BTC"] == D("0.001")  # half of the position, not all of it


async def test_after_a_restart_an_order_the_previous_run_placed_is_not_booked_twice(store):
    alice = FakeAccount(usd="1000")
    await _stored_without_orders(store, buy("b1"), "alice")  # the old run sent it, then died before its result
    await alice.place(OrderPlan("XBTUSD", "buy", D("0.002"), D("100")), cl_ord_id_for("b1", "alice"))
    engine = await engine_with(store, [account("alice", alice)])  # reads balances that hold the buy
    [summary] = await engine.reconcile()
    assert summary.succeeded == 1 and engine.followers["alice"].portfolio.held("BTC") == D("0.002")


class AnsweredBeforeMatching(FakeAccount):
    """AddOrder's reply carries no execution, and the first read of the order shows it still pending."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reads = 0

    async def place(self, plan, cl_ord_id):
        placed = await super().place(plan, cl_ord_id)
        return Placed(placed.order_id, None)

    async def fill_of(self, order_id):
        fill = await super().fill_of(order_id)
        self.reads += 1
        return Fill(fill.order_id, "pending", D(0), D(0), D(0)) if self.reads == 1 else fill


async def test_an_ioc_entry_read_while_pending_is_booked_once_the_exchange_closes_it(store):
    alice = AnsweredBeforeMatching(usd="1000")
    engine = await engine_with(store, [account("alice", alice, entry_slippage=0.01)], settle_retry_s=0.01)
    entry = await engine.copy(buy("b1"))
    capped = D("0.00198019")  # 10 % of 1 000 USD at the IOC limit, 1 % above the master's 50 000
    assert entry.results[0].volume_base == capped and alice.balances["BTC"] == capped
    exit_ = await engine.copy(sell("s1", closes=True))  # sized from the booked entry, not from a pending 0
    assert exit_.succeeded == 1 and alice.balances["BTC"] == 0


class BtcAndXrpAccount:
    """A follower trading BTC and XRP whose exchange refuses a buy its USD cannot pay (cost + 0.4 % fee)."""

    BASE = {"XBTUSD": "BTC", "XRPUSD": "XRP"}

    def __init__(self, balances, prices):
        self.balances = {asset: D(amount) for asset, amount in balances.items()}
        self.prices = {pair: D(price) for pair, price in prices.items()}
        self.orders = {}

    async def place(self, plan, cl_ord_id):
        await asyncio.sleep(0.05)  # the round trip: the other pair's entry is sized meanwhile
        cost = plan.volume_base * self.prices[plan.pair]
        fee = cost * D("0.004")
        if cost + fee > self.balances["USD"]:
            raise InsufficientFundsError(["EOrder:Insufficient funds"], method="AddOrder")
        base = self.BASE[plan.pair]
        self.balances[base] = self.balances.get(base, D(0)) + plan.volume_base
        self.balances["USD"] -= cost + fee
        fill = self.orders[cl_ord_id] = Fill(f"O{len(self.orders)}", "closed", plan.volume_base, cost, fee)
        return Placed(fill.order_id, fill)

    async def find(self, cl_ord_id):
        return self.orders.get(cl_ord_id)

    def settle_delay_s(self, cl_ord_id, sent_at_s=None):
        return 0.0

    async def fill_of(self, order_id):
        return next((fill for fill in self.orders.values() if fill.order_id == order_id), None)

    async def read_balances(self):
        return BalanceRead(dict(self.balances))


async def test_entries_on_two_pairs_at_once_share_the_followers_free_cash(store):
    # 1,000 USD of equity, 150 of it cash: each entry is capped at 100 USD, and the second gets what is left.
    alice = BtcAndXrpAccount({"USD": "150", "BTC": "0.017"}, {"XBTUSD": "50000", "XRPUSD": "0.5"})
    engine = CopyEngine(store, PAIRS, [account("alice", alice)])
    engine.prices.set("BTC", D("50000"))
    await engine.refresh_all()
    await engine.start(refresh_first=False)
    assert await engine.submit(buy("e1"))
    assert await engine.submit(Signal("e2", "OM-e2", "XRPUSD", "buy", D("10000"), D("0.5"), D("2"), D("10000")))
    await engine.wait_idle()
    results = [(await engine.summary_of(sid)).results[0] for sid in ("e1", "e2")]
    await engine.stop()
    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.reason for r in results]
    assert results[0].notional_usd == D("100") and D("40") < results[1].notional_usd < D("50")
    assert alice.balances["USD"] >= 0


class NothingWithinTheCap(FakeAccount):
    """The price ran past the follower's entry_slippage cap: its IOC limit is canceled with nothing executed."""

    async def place(self, plan, cl_ord_id):
        fill = Fill("OIOC-1", "canceled", D(0), D(0), D(0))
        self.orders.setdefault(cl_ord_id, []).append(fill)
        return Placed(fill.order_id, fill)


async def test_an_ioc_entry_that_got_nothing_is_a_skip_not_a_success(store):
    alice = NothingWithinTheCap(usd="1000")
    engine = await engine_with(store, [account("alice", alice, entry_slippage=0.005)])
    summary = await engine.copy(buy("b1", price="50000"))
    [result] = summary.results
    assert (summary.succeeded, summary.skipped) == (0, 1) and result.order_id == "OIOC-1"
    assert result.reason == "beyond_entry_slippage: nothing filled at or below 50250.0"
    assert engine.followers["alice"].portfolio.held("BTC") in (None, D(0))


class FoundPendingFirst(FakeAccount):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.finds = 0

    async def find(self, cl_ord_id):
        found = await super().find(cl_ord_id)
        self.finds += 1
        return Fill(found.order_id, "pending", D(0), D(0), D(0)) if found and self.finds == 1 else found


async def test_an_earlier_order_found_pending_is_settled_once_closed_before_the_exit_is_sized(store):
    alice = FoundPendingFirst(usd="1000")
    alice.execute_then_fail = AmbiguousOrderError("reply lost")
    engine = await engine_with(store, [account("alice", alice)], settle_retry_s=0.01)
    assert (await engine.copy(buy("b1"))).unsettled == 1
    exit_ = await engine.copy(sell("s1", closes=True))
    assert exit_.succeeded == 1 and alice.balances["BTC"] == 0


class SlowFillReads(FakeAccount):
    """Fills at its own price (not the master's) and answers fill reads only once `reads_open` is set."""

    def __init__(self, **kwargs):
        super().__init__(price="51000", **kwargs)
        self.reads_open = asyncio.Event()

    async def place(self, plan, cl_ord_id):
        placed = await super().place(plan, cl_ord_id)
        return Placed(placed.order_id, None)  # a market order: booked as an estimate, confirmed later

    async def fill_of(self, order_id):
        await self.reads_open.wait()
        return await super().fill_of(order_id)


async def test_an_estimate_is_not_corrected_again_once_a_balance_read_holds_the_real_fill(store):
    alice = SlowFillReads(usd="1000")
    engine = await engine_with(store, [account("alice", alice)])
    await engine.copy(buy("b1"))  # booked at the master's price; the real fill is read after the fan-out
    await engine.refresh_all()  # meanwhile a refresh reads the real balances
    alice.reads_open.set()
    await engine.wait_idle()
    assert engine.followers["alice"].portfolio.cash_usd() == alice.balances["USD"]


class TwoPairAccount(FakeAccount):
    """Trades XBTUSD and XRPUSD; the replies to the first order on each pair in `lose_reply` are lost."""

    PRICES = {"XBTUSD": ("BTC", D("50000")), "XRPUSD": ("XRP", D("0.5"))}

    def __init__(self):
        super().__init__(usd="1000")
        self.balances["XRP"] = D(0)
        self.lose_reply: set[str] = set()

    async def place(self, plan, cl_ord_id):
        asset, price = self.PRICES[plan.pair]
        sign = 1 if plan.side == "buy" else -1
        self.balances[asset] += sign * plan.volume_base
        self.balances["USD"] -= sign * plan.volume_base * price
        fill = Fill(f"O{len(self.calls)}", "closed", plan.volume_base, plan.volume_base * price, D(0))
        self.calls.append(f"place {plan.side} {plan.volume_base}")
        self.orders.setdefault(cl_ord_id, []).append(fill)
        if plan.pair in self.lose_reply:
            self.lose_reply.discard(plan.pair)
            raise AmbiguousOrderError("reply lost")
        return Placed(fill.order_id, fill)

    async def find(self, cl_ord_id):
        await asyncio.sleep(0.05)  # a lookup takes a round trip, during which the other pair's task runs
        return await super().find(cl_ord_id)


def _on(pair, sid, side, volume, price):
    extra = {"closes_position": True} if side == "sell" else {}
    return Signal(sid, "OM-" + sid, pair, side, D(volume), D(price), D("1"), D("10000"), **extra)


async def test_lost_entries_on_two_pairs_are_both_settled_before_their_exits(store):
    alice = TwoPairAccount()
    alice.lose_reply = {"XBTUSD", "XRPUSD"}  # a network blip: both entries execute, neither reply arrives
    engine = await engine_with(store, [account("alice", alice)], settle_retry_s=0.01)
    await asyncio.gather(engine.copy(_on("XBTUSD", "b1", "buy", "0.1", "50000")),
                         engine.copy(_on("XRPUSD", "x1", "buy", "10000", "0.5")))
    exits = await asyncio.gather(engine.copy(_on("XBTUSD", "s1", "sell", "0.1", "50000")),
                                 engine.copy(_on("XRPUSD", "s2", "sell", "10000", "0.5")))
    assert [summary.succeeded for summary in exits] == [1, 1]
    assert alice.balances["BTC"] == alice.balances["XRP"] == 0


async def test_a_sell_after_an_unsettled_buy_is_sized_from_the_settled_buy(store):
    """The buy's reply is lost and its lookup fails: the sell that follows must not see "no position" and skip,
    leaving the follower holding what the master sold. It waits for the buy to be settled by lookup first."""
    alice = FakeAccount(usd="1000")
    alice.execute_then_fail = AmbiguousOrderError("lookup failed", cl_ord_id="x")
    engine = await engine_with(store, [account("alice", alice)], settle_retry_s=0.001)
    assert (await engine.copy(buy())).unsettled == 1
    alice.failing_finds = 2  # the lookup keeps failing a little longer: retried with backoff
    sold = await engine.copy(sell("s1", closes=True))
    assert sold.succeeded == 1 and sold.results[0].volume_base == D("0.002")
    assert alice.balances["BTC"] == 0
    assert len(alice.orders[cl_ord_id_for("b1", "alice")]) == 1  # the buy was found, not sent again
    [buy_summary] = await engine.reconcile()  # the buy's signal is closed with the outcome found
    assert buy_summary.signal_id == "b1" and buy_summary.succeeded == 1
    assert await store.signal_status("b1") == "done" and alice.balances["BTC"] == 0


async def test_a_signal_behind_an_intent_that_stays_unsettled_is_held_not_misjudged(store):
    alice = FakeAccount(usd="1000")
    alice.execute_then_fail = AmbiguousOrderError("lookup failed", cl_ord_id="x")
    engine = await engine_with(store, [account("alice", alice)], settle_retry_s=0.001, settle_attempts=2)
    await engine.copy(buy())
    alice.failing_finds = 2  # every lookup of the held sell fails
    held = await engine.copy(sell("s1", closes=True))
    assert held.unsettled == 1 and "held" in held.results[0].reason
    assert [c for c in alice.calls if c.startswith("place sell")] == []  # not sized against a stale position
    settled = await engine.reconcile()  # the exchange answers again: the buy is found, then the sell is sent
    assert sorted(s.signal_id for s in settled) == ["b1", "s1"] and all(s.succeeded == 1 for s in settled)
    assert alice.balances["BTC"] == 0 and len(alice.orders[cl_ord_id_for("b1", "alice")]) == 1


async def test_signals_copied_counts_every_signal_once_beyond_the_kept_summaries(store):
    alice = FakeAccount(usd="100000")
    engine = await engine_with(store, [account("alice", alice)])
    for n in range(105):
        await engine.copy(buy(f"b{n}", volume="0.001"))
    alice.execute_then_fail = AmbiguousOrderError("lookup failed", cl_ord_id="x")
    assert (await engine.copy(buy("lost", volume="0.001"))).unsettled == 1
    await engine.reconcile()  # settling a signal again does not count it twice
    assert engine.signals_copied == 106 and len(engine.summaries) == 100


@pytest.mark.parametrize("status", ["cancel_only", "post_only", "limit_only", "reduce_only"])
async def test_a_pair_not_open_for_market_orders_is_skipped_with_its_status(store, status):
    alice = FakeAccount()
    engine = await engine_with(store, [account("alice", alice)])
    assert (await engine.copy(buy("b0"))).succeeded == 1  # online: copied
    raw = json.loads(FIXTURE.read_text())["result"]
    raw["XXBTZUSD"] = dict(raw["XXBTZUSD"], status=status)
    engine.set_pairs(Pairs.from_results(raw))  # the status changed after start-up
    summary = await engine.copy(buy("b1"))
    result = summary.results[0]
    assert result.status == "skipped" and result.reason.startswith(f"pair_{status}")
    assert list(alice.orders) == [cl_ord_id_for("b0", "alice")]  # nothing sent for b1


async def test_an_intent_unsettled_again_keeps_its_place_ahead_of_later_ones(store):
    """s1 (half) is lost, s2 (close) is held behind it; at reconcile s1's lookup fails once more. s2 must still
    settle s1 first and sell only what is left — not the whole position it held before s1."""
    alice = FakeAccount(usd="1000")
    engine = await engine_with(store, [account("alice", alice)], settle_retry_s=0.001, settle_attempts=2)
    assert (await engine.copy(buy())).succeeded == 1  # holds 0.002
    alice.execute_then_fail = AmbiguousOrderError("lookup failed", cl_ord_id="x")
    assert (await engine.copy(sell("s1", "0.5"))).unsettled == 1  # sold 0.001, reply lost
    alice.failing_finds = 2
    assert (await engine.copy(sell("s2", closes=True))).unsettled == 1  # held behind s1
    alice.failing_finds = 1  # s1's own lookup at reconcile fails again
    await engine.reconcile()
    await engine.reconcile()
    assert "place sell 0.002" not in alice.calls
    assert alice.balances["BTC"] == 0
    assert await store.signal_status("s1") == "done" and await store.signal_status("s2") == "done"


async def _stored_without_orders(store, signal, follower):
    """A previous run stored `signal` and its intent for `follower`, then died before recording any outcome."""
    await store.save_signal(signal)
    await store.add_intents([IntentRow(signal.signal_id, follower, cl_ord_id_for(signal.signal_id, follower),
                                       signal.pair, signal.side)])


async def test_a_resumed_lookup_is_proven_from_the_intents_stored_time(store):
    import time
    alice = FakeAccount()
    before_s = time.time()
    await _stored_without_orders(store, buy("r1"), "alice")
    after_s = time.time()
    engine = await engine_with(store, [account("alice", alice)])
    [summary] = await engine.reconcile()
    assert summary.succeeded == 1
    [sent_at_s] = alice.lookup_sent_at  # the gateway is told when the previous run last touched the intent
    assert before_s <= sent_at_s <= after_s


class LandsDuringTheLookup(FakeAccount):
    """The lost order reaches the exchange while the first lookup is under way; that lookup ends only after the
    moment the order could last land."""

    async def find(self, cl_ord_id):
        if "find" in self.calls:
            return await super().find(cl_ord_id)
        self.calls.append("find")
        await asyncio.sleep(0.2)
        await self.place(OrderPlan("XBTUSD", "buy", D("0.002"), D("100")), cl_ord_id)
        return None


async def test_a_lookup_begun_before_the_order_could_last_land_does_not_prove_it_absent(store):
    alice = LandsDuringTheLookup()
    await _stored_without_orders(store, buy("r1"), "alice")
    cl_ord_id = cl_ord_id_for("r1", "alice")
    alice.settle_delays[cl_ord_id] = 0.1
    engine = await engine_with(store, [account("alice", alice)])
    [summary] = await engine.reconcile()
    assert summary.succeeded == 1 and "found by client order id" in summary.results[0].reason
    assert len(alice.orders[cl_ord_id]) == 1  # looked again instead of sending it a second time


async def test_waiting_to_prove_an_order_absent_holds_no_global_slot(store):
    """alice's lookup must wait a long time before it proves anything; with one global slot, bob is copied
    meanwhile."""
    alice, bob = FakeAccount(), FakeAccount()
    await _stored_without_orders(store, buy("r1"), "alice")
    await _stored_without_orders(store, buy("r2"), "bob")
    alice.settle_delays[cl_ord_id_for("r1", "alice")] = 3600.0
    engine = await engine_with(store, [account("alice", alice), account("bob", bob)], concurrency=1)
    await engine.resume()
    try:
        async with asyncio.timeout(30):
            bob_summary = await engine.summary_of("r2")
        assert bob_summary.succeeded == 1 and bob.balances["BTC"] == D("0.002")
        assert alice.orders == {}  # still waiting: nothing sent on an unproven lookup
    finally:
        for task in list(engine._in_flight.values()) + list(engine._tails.values()):
            task.cancel()


def _pairs_with_status(status):
    raw = json.loads(FIXTURE.read_text())["result"]
    raw["XXBTZUSD"] = dict(raw["XXBTZUSD"], status=status)
    return Pairs.from_results(raw)


@pytest.mark.parametrize("status", ["cancel_only", "post_only", "limit_only", "reduce_only"])
async def test_an_exit_on_a_pair_not_taking_it_waits_for_the_pair_and_is_never_dropped(store, status):
    alice = FakeAccount()
    engine = await engine_with(store, [account("alice", alice)])
    assert (await engine.copy(buy("b0"))).succeeded == 1
    engine.set_pairs(_pairs_with_status(status))
    held = await engine.copy(sell("s1", closes=True))
    assert held.unsettled == 1 and held.results[0].reason.startswith(f"pair_{status}")
    assert not [c for c in alice.calls if c.startswith("place sell")]
    assert await store.signal_status("s1") != "done"
    engine.set_pairs(PAIRS)  # the pair is back online: reconciliation sends the exit
    [settled] = await engine.reconcile()
    assert settled.signal_id == "s1" and settled.succeeded == 1 and alice.balances["BTC"] == 0


async def test_an_old_entry_proven_never_placed_is_not_bought_at_todays_price(store):
    alice, bob = FakeAccount(), FakeAccount()
    signal = buy("b1")
    await _stored_without_orders(store, signal, "alice")  # the run died before sending
    await store.add_intents([IntentRow("b1", "bob", cl_ord_id_for("b1", "bob"), "XBTUSD", "buy")])
    await bob.place(OrderPlan("XBTUSD", "buy", D("0.002"), D("100")), cl_ord_id_for("b1", "bob"))  # bob's went out
    later = signal.filled_at_s + 301  # reconciled after an outage longer than ENTRY_MAX_AGE_S
    engine = await engine_with(store, [account("alice", alice), account("bob", bob)], clock=lambda: later)
    [summary] = await engine.reconcile()
    by_name = {r.name: r for r in summary.results}
    assert by_name["alice"].status == "skipped" and by_name["alice"].reason.startswith("stale_entry")
    assert alice.orders == {}
    assert by_name["bob"].status == "succeeded"  # an order found is still booked, however old
    assert await store.signal_status("b1") == "done"


async def test_a_recent_entry_proven_never_placed_is_sent_on_reconcile(store):
    alice = FakeAccount()
    signal = buy("b1")
    await _stored_without_orders(store, signal, "alice")
    engine = await engine_with(store, [account("alice", alice)], clock=lambda: signal.filled_at_s + 299)
    [summary] = await engine.reconcile()
    assert summary.succeeded == 1 and alice.balances["BTC"] == D("0.002")


async def test_an_orders_time_limit_starts_when_it_holds_a_slot(store):
    """One global slot: alice's order hangs until its time limit, and bob waits that long for the slot. Bob's
    order still gets its full time limit, rather than being given up on before it is sent."""
    alice, bob = FakeAccount(), FakeAccount()
    alice.gate = asyncio.Event()  # never answers
    bob.latency_s = 0.01
    engine = await engine_with(store, [account("alice", alice), account("bob", bob)], concurrency=1,
                               order_timeout_s=0.5)
    summary = await engine.copy(buy())
    by_name = {r.name: r for r in summary.results}
    assert by_name["alice"].status == "unsettled"
    assert by_name["bob"].status == "succeeded" and bob.balances["BTC"] == D("0.002")


async def test_a_summary_that_cannot_be_stored_fails_the_caller_instead_of_hanging(store, monkeypatch):
    import nija.trading.copy as copy_module
    recorder = LogRecorder()
    monkeypatch.setattr(copy_module, "log", recorder)
    alice = FakeAccount()
    engine = await engine_with(store, [account("alice", alice)])

    async def broken_finish(signal_id, summary_json=None):
        raise OSError("disk full")

    monkeypatch.setattr(store, "finish_signal", broken_finish)
    with pytest.raises(RuntimeError, match="b1.*disk full"):
        async with asyncio.timeout(30):
            await engine.copy(buy())
    assert ("copy_summary_failed", {"signal_id": "b1"}) in recorder.events
    assert await store.signal_status("b1") != "done"  # reconciliation picks it up again


async def test_stop_cancels_follower_tasks_still_running_after_the_grace_period(store):
    alice = FakeAccount()
    alice.gate = asyncio.Event()  # the exchange does not answer
    engine = await engine_with(store, [account("alice", alice)], order_timeout_s=3600)
    await engine.start(refresh_first=False)
    assert await engine.submit(buy())
    while not alice.calls or not alice.calls[-1].startswith("place"):
        await asyncio.sleep(0.001)
    await engine.stop(grace_s=0.01)
    alice.gate.set()  # had the task lived on, it would place the order now, after the engine stopped
    for _ in range(20):
        await asyncio.sleep(0)
    assert alice.orders == {}
    assert [row.status for row in await store.intents_for("b1")] == ["pending"]  # the next start looks it up


async def test_an_intent_of_a_follower_no_longer_configured_lets_its_signal_finish(store, monkeypatch):
    import nija.trading.copy as copy_module
    recorder = LogRecorder()
    monkeypatch.setattr(copy_module, "log", recorder)
    alice, gone = FakeAccount(), FakeAccount()
    gone.fail_with = TransportError("timeout")  # gone's intent stays unsettled ...
    engine = await engine_with(store, [account("alice", alice), account("gone", gone)])
    assert (await engine.copy(buy())).unsettled == 1
    engine = await engine_with(store, [account("alice", alice)])  # ... and gone leaves the accounts file
    [summary] = await engine.reconcile()
    [result] = [r for r in summary.results if r.name == "gone"]
    assert result.status == "skipped" and result.reason.startswith("follower_not_configured")
    assert await store.signal_status("b1") == "done"
    assert await engine.reconcile() == []  # not taken up again every minute
    assert [e for e, _ in recorder.events].count("copy_follower_not_configured") == 1
    assert gone.calls.count("find") == 0


@pytest.mark.parametrize("switch_off", [{"enabled": False}, {"copy_from_master": False}])
async def test_a_follower_switched_off_before_reconciliation_gets_no_order_sent(store, switch_off):
    """Its owner trades the account now: an exit left unsettled is looked up, never sent on its behalf."""
    alice = FakeAccount(usd="0", btc="0.5")
    alice.fail_with = TransportError("timeout")  # the exit's outcome is unknown: it waits for reconciliation
    engine = await engine_with(store, [account("alice", alice)])
    assert (await engine.copy(sell("s1", closes=True))).unsettled == 1
    alice.fail_with = None
    engine = await engine_with(store, [account("alice", alice, **switch_off)])  # restarted with copying off
    [summary] = await engine.reconcile()
    [result] = summary.results
    assert result.status == "skipped" and result.reason.startswith("copying_off")
    assert alice.orders == {} and "find" in alice.calls  # looked up; proven absent; not sent
    assert await store.signal_status("s1") == "done"


async def test_a_stored_entry_fanned_out_only_after_an_outage_is_not_bought_at_todays_price(store):
    """The daemon stopped after storing the signal, before its fan-out; it comes back an hour later."""
    alice = FakeAccount()
    signal = buy("b1")
    await store.save_signal(signal)
    engine = await engine_with(store, [account("alice", alice)], clock=lambda: signal.filled_at_s + 3600)
    [summary] = await engine.reconcile()
    assert summary.skipped == 1 and summary.results[0].reason.startswith("stale_entry")
    assert alice.orders == {}


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])  # uvloop's timers may fire up to a millisecond early
async def test_an_order_is_proven_absent_by_the_first_lookup_after_its_moment_on_either_loop(store):
    """The first lookup comes before the order could last land and proves nothing; the one after the wait must
    prove it (each lookup costs 3 points of a Starter key's REST counter)."""
    for n in range(20):
        alice = FakeAccount()
        await _stored_without_orders(store, buy(f"r{n}"), "alice")
        alice.settle_delays[cl_ord_id_for(f"r{n}", "alice")] = 0.003 + n * 0.000049  # every fraction of a millisecond
        engine = await engine_with(store, [account("alice", alice)])
        [summary] = await engine.reconcile()
        assert summary.succeeded == 1 and alice.calls.count("find") == 2, alice.calls
