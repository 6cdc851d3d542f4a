"""The issue's "done means" on the embedded exchange over real HTTP: proportional buys with the cap, ladder exits
as fractions of each follower's own position, a too-small follower skipped, a rejected key failing alone, and
faults that never leave a follower with the wrong position or two orders for one client order id."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal as D

import pytest
from pydantic import SecretStr

from nija.accounts import Follower, FollowerConfig
from nija.exchange import Exchange, Fault
from nija.kraken.client import KrakenClient
from nija.store import IntentRow
from nija.trading.copy import CopyEngine
from nija.trading.kraken_gateway import follower_accounts
from nija.trading.signals import cl_ord_id_for

from tests.trading.live import PAIR, make_rig, round_volume_down


@pytest.fixture
async def served():
    exchange = Exchange(seed=7, speed=0)
    async with exchange.serve(host="127.0.0.1", port=0, latency_ms=0) as server:
        yield exchange, server.url


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_master_buy_then_ladder_exits_are_mirrored(served, tmp_path):
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {
        "alice": {"usd": "1000"},  # 10 % cap: 100 USD
        "bob": {"usd": "3000", "risk_multiplier": 0.1},  # proportional: 3000/10000 × 5000 × 0.1 = 150 USD
        "carl": {"usd": "4"},  # 10 % of 4 USD is below XBTUSD's minimum order
        "dora": {"usd": "1000", "bad_key": True},  # the exchange rejects this key
    })
    try:
        signal = await rig.master_trade("buy", D("0.1"))
        summary = await rig.engine.copy(signal)
        by_name = {r.name: r for r in summary.results}
        equity_ratio = signal.notional_usd / signal.master_equity_usd
        assert equity_ratio > D("0.45")  # the master bet about half its equity: the 10 % cap binds for alice
        alice_expected = round_volume_down(D("0.10") * D(1000) / signal.avg_price_usd, 8)  # the 10 % cap
        assert rig.held("alice") == alice_expected and by_name["alice"].status == "succeeded"
        bob_expected = round_volume_down(signal.notional_usd * D(3000) / signal.master_equity_usd * D("0.1")
                                         / signal.avg_price_usd, 8)
        assert rig.held("bob") == bob_expected
        assert by_name["carl"].status == "skipped" and by_name["carl"].reason.startswith("below_ordermin")
        assert rig.orders_per_cl_ord_id("carl") == {}
        assert by_name["dora"].status == "failed" and "Invalid key" in by_name["dora"].reason
        assert (summary.succeeded, summary.skipped, summary.failed) == (2, 1, 1)

        # Profit-taking ladder: 10 %, 15 %, 25 % of the initial volume, then the rest.
        expected = {"alice": rig.held("alice"), "bob": rig.held("bob")}
        for step, volume in enumerate((D("0.01"), D("0.015"), D("0.025"), D("0.05"))):
            exchange.set_price("XBTUSD", D("50600") + 250 * step)
            exit_signal = await rig.master_trade("sell", volume, reason="PROFIT_TAKING")
            await rig.engine.copy(exit_signal)
            for name in expected:
                if exit_signal.closes_position:
                    expected[name] = D(0)
                else:
                    expected[name] -= round_volume_down(exit_signal.sell_fraction * expected[name], 8)
                assert rig.held(name) == expected[name], (step, name)
        assert exit_signal.closes_position and rig.held("alice") == rig.held("bob") == 0
        for name in ("alice", "bob"):
            assert all(count == 1 for count in rig.orders_per_cl_ord_id(name).values())
    finally:
        await rig.close()


@pytest.mark.parametrize("fault", [
    Fault(kind="drop_response_after_execute", method="AddOrder"),
    Fault(kind="http_502", method="AddOrder"),
    Fault(kind="http_502", method="AddOrder", execute=True),
    Fault(kind="internal_error", method="AddOrder", execute=True),
    Fault(kind="service_unavailable", method="AddOrder", next_n=2),
    Fault(kind="timeout", method="AddOrder", delay_s=1.0),
    Fault(kind="timeout", method="AddOrder", delay_s=1.0, execute=False),
], ids=lambda f: f"{f.kind}{'-executed' if f.execute else ''}{'-x' + str(f.next_n) if f.next_n != 1 else ''}")
@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_faults_never_duplicate_or_lose_an_order(served, tmp_path, fault):
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "1000"}, "bob": {"usd": "1000"}},
                         client_timeout_s=0.5)
    try:
        fault.account = "alice"
        exchange.inject(fault)
        signal = await rig.master_trade("buy", D("0.1"))
        summary = await rig.engine.copy(signal)
        assert exchange.injected_counts().get(fault.kind, 0) >= 1  # the fault really hit alice's order
        if summary.unsettled:  # the client could not settle it: reconciliation by cl_ord_id does
            await rig.engine.reconcile()
        expected = round_volume_down(D("0.10") * D(1000) / signal.avg_price_usd, 8)
        for name in ("alice", "bob"):
            assert rig.held(name) == expected, name
            assert rig.orders_per_cl_ord_id(name) == {cl_ord_id_for(signal.signal_id, name): 1}
        assert all(row.finished for row in await rig.store.intents_for(signal.signal_id))
    finally:
        await rig.close()


async def test_order_unsettled_by_the_client_is_reconciled_by_the_engine(served, tmp_path):
    """The reply is lost and every lookup fails too: the intent stays open, and reconciliation settles it."""
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "1000"}}, client_timeout_s=0.5)
    try:
        exchange.inject(Fault(kind="drop_response_after_execute", method="AddOrder", account="alice"))
        exchange.inject(Fault(kind="service_unavailable", method="OpenOrders", account="alice", next_n=4))
        signal = await rig.master_trade("buy", D("0.1"))
        summary = await rig.engine.copy(signal)
        assert summary.unsettled == 1 and await rig.store.signal_status(signal.signal_id) != "done"
        [settled] = await rig.engine.reconcile()
        assert settled.succeeded == 1 and await rig.store.signal_status(signal.signal_id) == "done"
        cl = cl_ord_id_for(signal.signal_id, "alice")
        assert rig.orders_per_cl_ord_id("alice") == {cl: 1}
        assert rig.held("alice") == round_volume_down(D(100) / signal.avg_price_usd, 8)
    finally:
        await rig.close()


async def stored_buy_intent(rig, name: str):
    """A first run that stored a master buy's signal and `name`'s intent, then died: (signal, cl_ord_id)."""
    signal = await rig.master_trade("buy", D("0.1"))
    await rig.store.save_signal(signal)
    cl = cl_ord_id_for(signal.signal_id, name)
    await rig.store.add_intents([IntentRow(signal.signal_id, name, cl, "XBTUSD", "buy")])
    return signal, cl


async def test_restart_after_a_lost_reply_settles_by_lookup(served, tmp_path):
    """A crash between sending and recording: the next run finds the order by cl_ord_id and sends nothing."""
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "1000"}})
    signal, cl = await stored_buy_intent(rig, "alice")
    client = rig.engine.followers["alice"].gateway.client
    await client.add_order("XBTUSD", "buy", D("0.002"), cl_ord_id=cl)
    await rig.engine.resume()
    await rig.engine.wait_idle()
    try:
        assert rig.orders_per_cl_ord_id("alice") == {cl: 1}
        assert rig.held("alice") == D("0.002") and await rig.store.signal_status(signal.signal_id) == "done"
    finally:
        await rig.close()


async def test_restart_while_the_lost_order_is_still_on_its_way_never_places_it_twice(served, tmp_path):
    """The process dies with an AddOrder still queued at the exchange; the next run's lookup comes before the order
    lands. It must wait out the order's deadline instead of calling it absent and sending it again."""
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "1000"}})
    _, cl = await stored_buy_intent(rig, "alice")
    gateway = rig.engine.followers["alice"].gateway
    exchange.inject(Fault(kind="latency", delay_s=1.0, next_n=1, account="alice", method="AddOrder"))
    sending = asyncio.create_task(gateway.client.add_order("XBTUSD", "buy", D("0.002"), cl_ord_id=cl))
    await asyncio.sleep(0.3)  # the request is at the exchange, held there
    sending.cancel()  # the process dies
    # The next run: a new client that never saw the order.
    account = exchange.account("alice")
    gateway.client = KrakenClient(account.api_key, account.api_secret, base_url=url, context=rig.context,
                                  name="alice", retry_base_s=0.05, order_deadline_s=2, deadline_margin_s=0.05)
    try:
        await rig.engine.resume()
        await rig.engine.wait_idle()
        await asyncio.sleep(1.5)  # past the moment the held request lands, whatever the engine did
        assert rig.orders_per_cl_ord_id("alice") == {cl: 1}
        assert rig.held("alice") == D("0.002")
    finally:
        await rig.close()


async def test_cash_held_by_a_followers_own_open_order_still_counts_in_its_equity(served, tmp_path):
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "10000"}})
    try:
        own = exchange.account("alice")
        alice = KrakenClient(own.api_key, own.api_secret, base_url=url, context=rig.context, name="alice-own")
        await alice.add_order(PAIR, "buy", D("0.1"), ordertype="limit", price=D("30000"))  # holds ~3,012
        await rig.engine.refresh_all()
        signal = await rig.master_trade("buy", D("0.1"))  # half the master's equity
        summary = await rig.engine.copy(signal)
        # capped at 10 % of her 10,000 USD of equity, not of the 6,988 her resting order leaves free
        assert [r.volume_base for r in summary.results] == [round_volume_down(D("1000") / signal.avg_price_usd, 8)]
    finally:
        await rig.close()


async def restarted_engine(rig, names: list[str], **options) -> None:
    """The next run of the engine on the same store: new clients and portfolios, nothing in memory."""
    await rig.engine.stop()
    pairs = await rig.master.pairs()
    loaded = [Follower(FollowerConfig(name=name), SecretStr(rig.exchange.account(name).api_key),
                       SecretStr(rig.exchange.account(name).api_secret)) for name in names]
    accounts = follower_accounts(loaded, pairs, base_url=rig.url, context=rig.context, timeout_s=0.5,
                                 retry_base_s=0.01, read_attempts=1, order_deadline_s=2, deadline_margin_s=0.05)
    rig.engine = CopyEngine(rig.store, pairs, accounts, **options)
    await rig.engine.start()


@contextlib.asynccontextmanager
async def alice_sees_the_master_close(served, tmp_path, refused_with: str | None = None, **engine_options):
    """alice (1,000 USD) has copied a master buy of 0.1 BTC, and the master has just sold it all. With
    `refused_with` (a fault kind), alice's orders are refused that way until the faults are cleared. Yields the rig,
    the exit signal (not copied yet) and what alice holds; closes the rig after."""
    exchange, url = served
    rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "1000"}}, engine_options=engine_options)
    try:
        await rig.engine.copy(await rig.master_trade("buy", D("0.1")))
        await rig.engine.wait_idle()  # its fill read back
        held = rig.held("alice")
        assert held > 0
        exit_signal = await rig.master_trade("sell", D("0.1"), reason="STOP_LOSS")
        if refused_with is not None:
            exchange.inject(Fault(kind=refused_with, method="AddOrder", account="alice", next_n=1000))
        yield rig, exit_signal, held
    finally:
        await rig.close()


async def test_an_exit_is_kept_when_the_followers_balances_could_not_be_read_at_start(served, tmp_path):
    """Invariant 7 with invariant 4: a holding not read yet is unknown, not zero, so the exit waits for it."""
    async with alice_sees_the_master_close(served, tmp_path) as (rig, sell, _):
        rig.exchange.inject(Fault(kind="service_unavailable", method="BalanceEx", account="alice", next_n=50))
        await restarted_engine(rig, ["alice"], settle_retry_s=0.01)  # alice's first read meets an outage
        assert not rig.engine.followers["alice"].portfolio.known
        [result] = (await rig.engine.copy(sell)).results
        assert result.status == "unsettled" and result.reason.startswith("position_unknown")
        rig.exchange.clear_faults()  # the outage passes
        await rig.engine.reconcile()
        assert rig.held("alice") == 0 and await rig.store.signal_status(sell.signal_id) == "done"


async def test_an_exit_read_again_at_once_when_the_balances_come_back(served, tmp_path):
    """The read at start failed but the next one works: the exit goes out with the signal, not a minute later."""
    async with alice_sees_the_master_close(served, tmp_path) as (rig, sell, _):
        rig.exchange.inject(Fault(kind="service_unavailable", method="BalanceEx", account="alice", next_n=1))
        await restarted_engine(rig, ["alice"])
        assert not rig.engine.followers["alice"].portfolio.known
        [result] = (await rig.engine.copy(sell)).results
        assert result.status == "succeeded" and rig.held("alice") == 0


@pytest.mark.parametrize("kind", ["cancel_only", "order_rate_limit"])
async def test_an_exit_the_exchange_refuses_for_now_is_sent_again_by_reconciliation(served, tmp_path, kind):
    """The pair goes cancel_only after the engine loaded it, or the trading counter is full: nothing executed,
    and the exit must not be dropped."""
    async with alice_sees_the_master_close(served, tmp_path, refused_with=kind) as (rig, sell, _):
        [result] = (await rig.engine.copy(sell)).results
        assert result.status == "unsettled" and result.reason.startswith("exit retried later")
        assert rig.engine.unsettled == 1  # what the heartbeat shows
        rig.exchange.clear_faults()  # the market takes orders again
        await rig.engine.reconcile()
        assert rig.engine.unsettled == 0
        assert rig.held("alice") == 0 and await rig.store.signal_status(sell.signal_id) == "done"
        assert list(rig.orders_per_cl_ord_id("alice").values()) == [1, 1]  # the buy and one sell


async def test_a_daily_loss_seen_by_a_refresh_blocks_entries_even_after_equity_comes_back(served, tmp_path):
    exchange, url = served
    prices = {"BTC": D("50000")}

    async def price_source():
        return dict(prices)

    rig = await make_rig(exchange, url, tmp_path,
                         {"alice": {"usd": "1000", "max_daily_loss": 0.05, "max_risk_per_trade": 1}},
                         engine_options={"price_source": price_source})
    try:
        await rig.engine.copy(await rig.master_trade("buy", D("0.1")))  # about half of alice's equity in BTC
        await rig.engine.wait_idle()  # its fill read back, so the refreshes below are taken
        alice = rig.engine.followers["alice"]
        for price in (D("37500"), D("50000")):  # a 25 % dip between two signals, seen by a refresh, then back
            prices["BTC"] = price
            exchange.set_price(PAIR, price)
            await rig.engine.refresh_all()
        assert alice.portfolio.equity_usd(rig.engine.prices) > D("0.95") * alice.portfolio.day_start_equity_usd
        [result] = (await rig.engine.copy(await rig.master_trade("buy", D("0.01")))).results
        assert result.status == "skipped" and result.reason.startswith("daily_loss_reached")
    finally:
        await rig.close()


async def test_a_refused_follower_key_names_the_variables_to_fix_and_its_failed_copy_is_a_warning(served, tmp_path):
    from structlog.testing import capture_logs

    exchange, url = served
    with capture_logs() as logs:
        rig = await make_rig(exchange, url, tmp_path, {"dora": {"usd": "1000", "bad_key": True}})
        try:
            await rig.engine.copy(await rig.master_trade("buy", D("0.1")))
        finally:
            await rig.close()
    [refused] = [line for line in logs if line["event"] == "follower_key_refused"]
    assert "KRAKEN_USER_DORA_API_KEY" in refused["fix"] and refused["name"] == "dora"
    [result] = [line for line in logs if line["event"] == "copy_result"]
    assert result["status"] == "failed" and result["log_level"] == "warning"


@pytest.mark.parametrize("gone_fraction, first_outcome", [(D("0.001"), "succeeded"), (D("0.05"), "unsettled")])
async def test_an_exit_the_book_overcounts_is_sent_smaller_at_once_or_resized_from_fresh_balances(
        served, tmp_path, gone_fraction, first_outcome):
    """The book counts more than Kraken lets the follower sell (a fee taken in the asset, a sale or transfer of its
    own): the exit goes again at once a fee's worth smaller; if that is refused too, reconciliation sizes it from
    balances read afresh. Either way the follower ends flat, with one order per client order id."""
    async with alice_sees_the_master_close(served, tmp_path) as (rig, exit_signal, held):
        rig.exchange.fund("alice", "XXBT", -(held * gone_fraction).quantize(D("0.00000001")))  # unknown to the book
        [result] = (await rig.engine.copy(exit_signal)).results
        assert result.status == first_outcome
        await rig.engine.reconcile()
        assert rig.held("alice") < held * D("0.01") and await rig.store.signal_status(exit_signal.signal_id) == "done"
        assert all(count == 1 for count in rig.orders_per_cl_ord_id("alice").values())
        assert not rig.engine._exit_refusals  # nothing kept of a settled exit


@pytest.mark.parametrize("refused_with, error", [("insufficient_funds", "Insufficient funds"),
                                                  ("invalid_arguments", "Invalid arguments")])
async def test_an_exit_refused_again_and_again_fails_and_never_holds_the_pair(served, tmp_path, monkeypatch,
                                                                              refused_with, error):
    """Refused for funds, or as malformed (not a key refused, which waits for the key): failed after a few tries."""
    import nija.trading.copy

    monkeypatch.setattr(nija.trading.copy, "EXIT_REFUSAL_SPACING_S", 0.0)  # reconciliation passes a minute apart
    async with alice_sees_the_master_close(served, tmp_path, refused_with=refused_with,
                                           settle_retry_s=0.01) as (rig, exit_signal, _):
        [result] = (await rig.engine.copy(exit_signal)).results
        assert result.status == "unsettled"  # sized again from fresh balances, not failed at the first refusal
        for _ in range(3):  # the daemon's reconcile loop, a minute apart
            if await rig.store.signal_status(exit_signal.signal_id) == "done":
                break
            await rig.engine.reconcile()
        assert await rig.store.signal_status(exit_signal.signal_id) == "done"
        [settled] = [r for s in rig.engine.summaries if s.signal_id == exit_signal.signal_id for r in s.results][-1:]
        assert settled.status == "failed" and error in settled.reason
        rig.exchange.clear_faults()
        [entry] = (await rig.engine.copy(await rig.master_trade("buy", D("0.01")))).results
        assert entry.status == "succeeded"  # not held behind the exit


async def test_an_exit_refused_for_another_reason_is_sent_again_by_reconciliation(served, tmp_path):
    """An exit the exchange refuses for a reason of its own (here too many open orders; one day a string Kraken
    adds) executed nothing: it is kept for reconciliation, never failed at the first refusal."""
    async with alice_sees_the_master_close(served, tmp_path, refused_with="orders_limit",
                                           settle_retry_s=0.01) as (rig, exit_signal, _):
        [result] = (await rig.engine.copy(exit_signal)).results
        assert result.status == "unsettled"
        rig.exchange.clear_faults()
        await rig.engine.reconcile()
        assert rig.held("alice") == 0 and await rig.store.signal_status(exit_signal.signal_id) == "done"
        assert all(count == 1 for count in rig.orders_per_cl_ord_id("alice").values())


async def test_an_exit_settled_by_the_next_signals_hold_is_logged_with_what_it_sold(served, tmp_path):
    from structlog.testing import capture_logs

    async with alice_sees_the_master_close(served, tmp_path, refused_with="cancel_only") as (rig, exit_signal, held):
        await rig.engine.copy(exit_signal)
        rig.exchange.clear_faults()
        with capture_logs() as logs:
            await rig.engine.copy(await rig.master_trade("buy", D("0.01")))  # its hold settles the exit first
        [settled] = [line for line in logs if line["event"] == "copy_result"
                     and line["signal_id"] == exit_signal.signal_id]
        assert settled["status"] == "succeeded" and settled["side"] == "sell" and D(settled["volume"]) == held


async def test_a_later_signal_does_not_use_up_a_refused_exits_tries_within_seconds(served, tmp_path):
    """The next signal on the pair settles the waiting exit first, retrying it a few times in seconds: those count as
    one refusal, so the exit is still there for reconciliation once the funds are back."""
    async with alice_sees_the_master_close(served, tmp_path, refused_with="insufficient_funds", settle_retry_s=0.01,
                                           settle_attempts=2) as (rig, exit_signal, _):  # Starter: few lookups
        await rig.engine.copy(exit_signal)
        [held_entry] = (await rig.engine.copy(await rig.master_trade("buy", D("0.01")))).results
        assert held_entry.status == "unsettled" and await rig.store.signal_status(exit_signal.signal_id) != "done"
        rig.exchange.clear_faults()
        await rig.engine.reconcile()
        assert await rig.store.signal_status(exit_signal.signal_id) == "done"
        exit_results = [r for s in rig.engine.summaries if s.signal_id == exit_signal.signal_id for r in s.results]
        assert "failed" not in {r.status for r in exit_results}

@pytest.mark.parametrize("spec", [{}, {"entry_slippage": 0.01}], ids=["market", "ioc-limit"])
async def test_a_copy_logs_what_it_really_got_once_its_fill_is_read(served, tmp_path, spec):
    """copy_result comes at once (a market copy's size as planned at the master's price); copy_fill then tells
    what the order really got, for a market copy and an IOC-limit one (entry_slippage) alike."""
    from structlog.testing import capture_logs

    exchange, url = served
    with capture_logs() as logs:
        rig = await make_rig(exchange, url, tmp_path, {"alice": {"usd": "1000", **spec}})
        try:
            await rig.engine.copy(await rig.master_trade("buy", D("0.1")))
            await rig.engine.wait_idle()
        finally:
            await rig.close()
    events = [line["event"] for line in logs if line["event"].startswith("copy_")]
    assert events.index("copy_result") < events.index("copy_fill")
    [result] = [line for line in logs if line["event"] == "copy_result"]
    [fill] = [line for line in logs if line["event"] == "copy_fill"]
    [order] = [orders[0] for orders in exchange.orders_by_cl_ord_id("alice").values()]
    assert order.ordertype == ("limit" if spec else "market")
    assert fill["order_id"] == result["order_id"] == order.txid
    assert fill["volume"] == f"{order.vol_exec:f}" and fill["notional"] == str(order.cost.quantize(D("0.01")))
    assert D(fill["fee_usd"]) == order.fee > 0


@pytest.mark.parametrize("read_before", [True, False], ids=["holding-known", "holding-never-read"])
async def test_an_exit_for_a_follower_whose_key_is_refused_waits_for_the_key_to_work(served, tmp_path, read_before):
    """dora's key loses its permissions (revoked, or edited on Kraken's key page) while she holds BTC, the master
    sells half: her exit is kept, whether her holding was read before or never, and sent once the key works again."""
    exchange, url = served
    later_s = [0.0]  # the engine's clock, moved on by the reconciliation passes of a long refusal
    rig = await make_rig(exchange, url, tmp_path, {"dora": {"usd": "1000"}},
                         engine_options={"clock": lambda: time.time() + later_s[0]})
    try:
        await rig.engine.copy(await rig.master_trade("buy", D("0.1")))
        await rig.engine.wait_idle()
        held = rig.held("dora")
        dora, permissions = exchange.account("dora"), exchange.account("dora").permissions
        dora.permissions = frozenset()
        if not read_before:
            rig.engine.followers["dora"].portfolio.forget()  # as when the read at start-up was refused
        await rig.engine.refresh_all()
        assert rig.engine.followers["dora"].unusable
        [result] = (await rig.engine.copy(await rig.master_trade("sell", D("0.05")))).results
        assert result.status == "unsettled"
        for _ in range(5):  # an hour of reconciliation passes while the key is refused: the exit still waits
            later_s[0] += 720
            await rig.engine.reconcile()
        assert rig.engine.unsettled == 1
        dora.permissions = permissions
        await rig.engine.refresh_all()
        await rig.engine.reconcile()
        assert rig.engine.unsettled == 0
        assert rig.held("dora") == held - round_volume_down(held / 2, 8)
    finally:
        await rig.close()
