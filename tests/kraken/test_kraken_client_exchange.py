"""The client over real HTTP on 127.0.0.1 against the embedded exchange (tests/conftest.py's `exchange`).

Reads run with read_attempts=1 where the point is that an error never happens: a retry must not hide it.
"""

import asyncio
import sys
import time
from decimal import Decimal

import pytest

from nija.exchange import Fault
from nija.kraken.client import KrakenClient, KrakenContext, derive_cl_ord_id
from nija.kraken.errors import AmbiguousOrderError, InsufficientFundsError, RetryableError
from nija.kraken.limits import Tier
from nija.kraken.nonce import NonceCoordinator
from nija.kraken.rest_levels import SAVE_EVERY_S

# Roomy limits for tests about nonces and orders, so the rate counter never shapes them.
ROOMY = Tier("roomy-test", rest_max=10_000, rest_decay_per_s=1000.0, trading_max=10_000, trading_decay_per_s=100.0,
             max_open_orders_per_pair=1000)
# A shortened Starter-like tier: a burst of 5 then 10 calls/s.
SHORT = Tier("short-test", rest_max=5, rest_decay_per_s=10.0, trading_max=60, trading_decay_per_s=1.0,
             max_open_orders_per_pair=60)

# A resting limit buy far below the market, above XBTUSD's minimums (0.0001 BTC, 0.5 USD).
VOLUME, PRICE = Decimal("0.0001"), Decimal("10000")


def client_for(exchange, name, context, **kwargs) -> KrakenClient:
    account = exchange.account(name)
    kwargs.setdefault("order_deadline_s", 2)  # Kraken's shortest: an order proven absent 2-3 s after a send
    kwargs.setdefault("deadline_margin_s", 0.05)  # one clock here, the exchange's
    return KrakenClient(account.api_key, account.api_secret, base_url=kwargs.pop("base_url"), context=context,
                        tier=account.tier, name=name, retry_base_s=0.01, **kwargs)


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
@pytest.mark.parametrize("nonce_window", [0, 1_000_000])
async def test_200_concurrent_calls_on_one_key_with_jitter_give_zero_invalid_nonce(exchange, context, nonce_window):
    exchange.create_account("jitter", balances={"ZUSD": Decimal("10")}, tier=ROOMY, nonce_window=nonce_window)
    async with exchange.serve(host="127.0.0.1", port=0, latency_ms=0, jitter_ms=2) as server:
        client = client_for(exchange, "jitter", context, base_url=server.url, read_attempts=1,
                            nonce_window=nonce_window)
        results = await asyncio.gather(*(client.balance() for _ in range(200)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    assert all(r.get("ZUSD") == Decimal("10") for r in results)


async def test_two_clients_of_one_key_share_its_nonce_sequence(exchange, context, exchange_url):
    exchange.create_account("shared", balances={"ZUSD": Decimal("1")}, tier=ROOMY)
    first = client_for(exchange, "shared", context, base_url=exchange_url, read_attempts=1)
    second = client_for(exchange, "shared", context, base_url=exchange_url, read_attempts=1)
    results = await asyncio.gather(*(c.balance() for c in [first, second] * 25), return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception)] == []


async def test_rate_counter_on_a_short_tier_waits_instead_of_being_rejected(exchange, context, exchange_url):
    exchange.create_account("limited", balances={"ZUSD": Decimal("1")}, tier=SHORT)
    client = client_for(exchange, "limited", context, base_url=exchange_url, read_attempts=1)
    started = time.monotonic()
    results = await asyncio.gather(*(client.balance() for _ in range(15)), return_exceptions=True)
    elapsed_s = time.monotonic() - started
    assert [r for r in results if isinstance(r, Exception)] == []  # no EAPI:Rate limit exceeded
    # 5 at once, then 10 more at 10/s: the calls really waited for the counter (a floor, not a speed target).
    assert elapsed_s >= (15 - 5) / 10.0 - 0.05
    assert client._budget.rest.waited_s > 0.5


async def test_a_call_counted_late_by_the_server_does_not_push_its_counter_over(exchange, context, exchange_url):
    # The server counts the first call 0.3 s after we sent it (a stalled loop or a slow network look the same):
    # a client that kept the charge at its send time would believe 3 calls more budget than the server has.
    exchange.create_account("late", balances={"ZUSD": Decimal("1")}, tier=SHORT)
    client = client_for(exchange, "late", context, base_url=exchange_url, read_attempts=1)
    exchange.inject(Fault(kind="latency", method="Balance", account="late", delay_s=0.3))
    results = await asyncio.gather(*(client.balance() for _ in range(12)), return_exceptions=True)
    assert [r for r in results if isinstance(r, Exception)] == []


async def test_order_calls_do_not_spend_the_rest_counter(exchange, context, exchange_url):
    exchange.create_account("trader", balances={"ZUSD": Decimal("100000")}, tier=SHORT)
    client = client_for(exchange, "trader", context, base_url=exchange_url, read_attempts=1, order_attempts=1)
    for _ in range(8):  # more than SHORT's burst of 5, yet no waiting: AddOrder costs 0 on the REST counter
        await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
    assert client._budget.rest.waited_s == 0.0


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="drop_response_after_execute", method="AddOrder"),
        Fault(kind="http_502", method="AddOrder", execute=True),
        Fault(kind="internal_error", method="AddOrder", execute=True),
        Fault(kind="timeout", method="AddOrder", delay_s=1.0),
    ],
    ids=lambda f: f"{f.kind}-executed",
)
async def test_ambiguous_add_order_that_executed_is_found_not_placed_twice(exchange, context, exchange_url, fault):
    client = client_for(exchange, "alice", context, base_url=exchange_url, timeout_s=0.3)
    exchange.inject(fault)
    cl_ord_id = derive_cl_ord_id("signal-1", "alice")
    result = await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE,
                                    cl_ord_id=cl_ord_id)
    assert result.recovered and result.order is not None and result.order.cl_ord_id == cl_ord_id
    orders = exchange.orders_by_cl_ord_id("alice")
    assert len(orders[cl_ord_id]) == 1
    assert result.order_id == orders[cl_ord_id][0].txid


async def test_ambiguous_add_order_that_did_not_execute_is_sent_once_more(exchange, context, exchange_url):
    # One account per kind, all at once: each waits for its first send's deadline before the resend.
    kinds = ["http_502", "service_unavailable", "internal_error"]
    clients = []
    for kind in kinds:
        exchange.create_account(kind, balances={"ZUSD": Decimal("100")}, tier=ROOMY)
        exchange.inject(Fault(kind=kind, method="AddOrder", account=kind, execute=False))
        clients.append(client_for(exchange, kind, context, base_url=exchange_url))
    results = await asyncio.gather(*(c.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
                                     for c in clients))
    for kind, result in zip(kinds, results):
        assert not result.recovered and result.attempts == 2, kind
        assert len(exchange.orders_by_cl_ord_id(kind)[result.cl_ord_id]) == 1, kind


@pytest.mark.parametrize("held_s, found", [(1.0, True), (3.5, False)], ids=["lands-before-deadline", "lands-after"])
async def test_add_order_queued_behind_a_busy_backend_is_never_placed_twice(exchange, context, exchange_url, held_s,
                                                                           found):
    """The request passed its nonce check, then waits in the exchange's queue longer than the client waits for an
    answer. A lookup right after the timeout finds nothing; a resend then would make two orders once the queued
    one lands. With Kraken's deadline the queued one either lands before it (found) or is rejected (resent)."""
    client = client_for(exchange, "alice", context, base_url=exchange_url, timeout_s=0.3)
    exchange.inject(Fault(kind="latency", method="AddOrder", account="alice", delay_s=held_s))
    cl_ord_id = derive_cl_ord_id("busy-backend", held_s)
    started = asyncio.get_running_loop().time()
    # A market order: it closes at once, so its cl_ord_id (unique among open orders only) is free again.
    result = await client.add_order("XBTUSD", "buy", VOLUME, cl_ord_id=cl_ord_id)
    assert result.recovered is found
    # Let the queued request come out of the exchange before counting.
    await asyncio.sleep(max(0.0, started + held_s + 0.2 - asyncio.get_running_loop().time()))
    assert len(exchange.orders_by_cl_ord_id("alice")[cl_ord_id]) == 1


async def test_add_order_stays_ambiguous_when_the_lookup_fails_too(exchange, context, exchange_url):
    client = client_for(exchange, "alice", context, base_url=exchange_url, read_attempts=2)
    exchange.inject(Fault(kind="drop_response_after_execute", method="AddOrder"))
    exchange.inject(Fault(kind="http_502", method="OpenOrders", next_n=5))
    with pytest.raises(AmbiguousOrderError):
        await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE,
                               cl_ord_id="lost-1")
    assert len(exchange.orders_by_cl_ord_id("alice")["lost-1"]) == 1  # placed once, never resent


async def test_validate_places_nothing(exchange, context, exchange_url):
    client = client_for(exchange, "alice", context, base_url=exchange_url)
    result = await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE,
                                    validate=True)
    assert result.validated_only and result.txid == []
    assert result.cl_ord_id not in exchange.orders_by_cl_ord_id("alice")


async def test_typed_helpers_against_the_exchange(exchange, context, exchange_url):
    client = client_for(exchange, "alice", context, base_url=exchange_url)
    assert (await client.balance()).get("ZUSD") == Decimal("84.58")
    assert (await client.balance_ex()).by_asset["ZUSD"].available == Decimal("84.58")
    assert isinstance((await client.trade_balance()).equivalent_balance, Decimal)
    pairs = await client.pairs()
    btc = pairs.get("BTC/USD")
    assert btc.key == "XXBTZUSD" and (await client.pairs()) is pairs  # loaded once
    ticker = (await client.ticker("XBTUSD"))["XXBTZUSD"]
    assert ticker.ask >= ticker.bid > 0
    ohlc = await client.ohlc("XBTUSD", interval=5)
    assert ohlc.pair_key == "XXBTZUSD" and len(ohlc.candles) > 10
    placed = await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE, fetch_order=True)
    assert placed.order is not None and placed.order.status == "open"
    assert placed.order_id in await client.open_orders()
    assert (await client.query_orders(placed.order_id))[placed.order_id].cl_ord_id == placed.cl_ord_id
    assert (await client.cancel_order(placed.order_id)).count == 1
    closed = await client.closed_orders()
    assert closed.closed[placed.order_id].status == "canceled"
    switch = await client.cancel_all_orders_after(60)
    assert switch.trigger_time > switch.current_time
    await client.cancel_all_orders_after(0)


async def test_trades_history_lists_each_execution_with_its_order_and_time(exchange, context, exchange_url):
    client = client_for(exchange, "alice", context, base_url=exchange_url)
    before_s = int(time.time()) - 1
    bought = await client.add_order("XBTUSD", "buy", Decimal("0.0002"), fetch_order=True)
    sold = await client.add_order("XBTUSD", "sell", Decimal("0.0001"), fetch_order=True)
    page = await client.trades_history(start=before_s)
    assert page.count == 2
    newest, oldest = page.trades.values()  # newest first, as Kraken lists them
    assert (newest.ordertxid, newest.type, newest.volume_base) == (sold.order_id, "sell", Decimal("0.0001"))
    assert (oldest.ordertxid, oldest.type, oldest.volume_base) == (bought.order_id, "buy", Decimal("0.0002"))
    assert oldest.pair == "XXBTZUSD" and before_s < oldest.time <= newest.time <= time.time()
    assert oldest.cost == bought.order.cost and oldest.fee == bought.order.fee
    assert (await client.trades_history(start=int(time.time()) + 1)).trades == {}


async def test_restart_with_clock_stepped_back_keeps_nonces_valid(exchange, exchange_url, tmp_path):
    exchange.create_account("restart", balances={"ZUSD": Decimal("1")}, tier=ROOMY)
    state_dir = tmp_path / "restart-state"
    account = exchange.account("restart")

    async with KrakenContext(nonces=NonceCoordinator(state_dir), public_rate_per_s=1000) as first_run:
        client = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=first_run,
                              tier=ROOMY, read_attempts=1)
        for _ in range(5):
            await client.balance()

    # The daemon restarts on a machine whose clock went back an hour.
    stepped_back = NonceCoordinator(state_dir, clock_ns=lambda: time.time_ns() - 3600 * 10**9)
    async with KrakenContext(nonces=stepped_back, public_rate_per_s=1000) as second_run:
        client = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=second_run,
                              tier=ROOMY, read_attempts=1)
        for _ in range(5):
            assert (await client.balance()).get("ZUSD") == Decimal("1")


async def test_orders_on_a_fast_forwarded_exchange_meet_their_deadline(context, tmp_path):
    """Paper mode runs the market clock fast; an AddOrder deadline is real time, so orders still go through."""
    from nija.exchange import Exchange

    fast = Exchange(seed=7, speed=600)  # ten simulated minutes per real second
    fast.create_account("paper", balances={"ZUSD": Decimal("1000")}, tier=ROOMY)
    async with fast.serve(host="127.0.0.1", port=0) as server:
        client = client_for(fast, "paper", context, base_url=server.url, order_attempts=1)
        await asyncio.sleep(0.05)  # half a simulated minute passes
        result = await client.add_order("XBTUSD", "buy", VOLUME)
    assert not result.recovered and len(fast.orders_by_cl_ord_id("paper")[result.cl_ord_id]) == 1


async def test_an_add_order_cancelled_by_its_caller_is_outranked_by_every_later_nonce(exchange, context, exchange_url):
    """The copy engine gives up on an order with its own timeout: the request may still be on its way, so even with
    a nonce window every later call on the key must carry a nonce it can no longer slip under."""
    window = 5_000_000_000
    exchange.create_account("windowed", balances={"ZUSD": Decimal("1000")}, tier=ROOMY, nonce_window=window)
    client = client_for(exchange, "windowed", context, base_url=exchange_url, nonce_window=window, timeout_s=5)
    exchange.inject(Fault(kind="latency", method="AddOrder", account="windowed", delay_s=0.5))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
    sent_nonce = exchange.account("windowed").highest_nonce  # the cancelled request reached the exchange
    assert context.nonces.last_nonce(client.key_id) >= sent_nonce + window
    assert (await client.balance()).get("ZUSD") is not None  # the key still works


async def test_a_key_whose_nonce_state_was_lost_recovers_on_its_next_retry(exchange, exchange_url, tmp_path):
    """An earlier run's nonces ran a few seconds ahead of the clock, then its state dir was lost: the first call
    gets EAPI:Invalid nonce, and the re-signed call must get past it (last + 1 never would)."""
    exchange.create_account("lost", balances={"ZUSD": Decimal("1")}, tier=ROOMY)
    account = exchange.account("lost")
    ahead = NonceCoordinator(tmp_path / "old-state", clock_ns=lambda: time.time_ns() + 4 * 10**9)
    async with KrakenContext(nonces=ahead, public_rate_per_s=1000) as earlier_run:
        client = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=earlier_run,
                              tier=ROOMY, read_attempts=1)
        await client.balance()
    async with KrakenContext(nonces=NonceCoordinator(tmp_path / "new-state"), public_rate_per_s=1000) as now:
        client = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=now,
                              tier=ROOMY, read_attempts=2, retry_base_s=0.01)
        assert (await client.balance()).get("ZUSD") == Decimal("1")
        assert (await client.balance()).get("ZUSD") == Decimal("1")  # and stays valid


async def test_an_order_is_not_held_up_by_a_read_waiting_for_rest_budget(exchange, context, exchange_url):
    slow_rest = Tier("slow-rest", rest_max=2, rest_decay_per_s=0.5, trading_max=1000, trading_decay_per_s=100.0,
                     max_open_orders_per_pair=1000)
    exchange.create_account("busy-reads", balances={"ZUSD": Decimal("1000")}, tier=slow_rest)
    client = client_for(exchange, "busy-reads", context, base_url=exchange_url)
    await client.balance()
    await client.balance()
    read = asyncio.ensure_future(client.balance())  # the REST counter is full: this read waits about 2 s
    await asyncio.sleep(0.05)
    await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)  # costs nothing there
    assert not read.done()
    await read


async def test_an_order_is_not_held_up_by_a_second_read_whose_budget_the_first_took(exchange, context, exchange_url):
    """Two reads wait for one unit of budget; the first takes it while the second already had its turn on the key
    coming. The second must wait off the key, not on it, or every order behind it waits too."""
    slow_rest = Tier("slow-rest-2", rest_max=2, rest_decay_per_s=0.5, trading_max=1000, trading_decay_per_s=100.0,
                     max_open_orders_per_pair=1000)
    exchange.create_account("busy-reads-2", balances={"ZUSD": Decimal("1000")}, tier=slow_rest)
    client = client_for(exchange, "busy-reads-2", context, base_url=exchange_url)
    await client.balance()
    await client.balance()  # the REST counter is full
    reads = [asyncio.ensure_future(client.balance()) for _ in range(2)]
    await asyncio.sleep(1.9)
    exchange.inject(Fault(kind="latency", method="AddOrder", account="busy-reads-2", delay_s=1.0))
    # This order holds the key while the first read's budget comes; both reads then queue for the key.
    await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
    await asyncio.sleep(0.2)  # the first read is answered; the second waits for budget
    await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
    assert not all(read.done() for read in reads)  # the order went first: it did not wait out the read's budget
    await asyncio.gather(*reads)


async def test_an_order_on_one_pair_is_not_held_up_by_another_pairs_trading_counter(exchange, context, exchange_url):
    slow_trading = Tier("slow-trading", rest_max=10_000, rest_decay_per_s=1000.0, trading_max=3,
                        trading_decay_per_s=0.5, max_open_orders_per_pair=1000)
    exchange.create_account("busy-pair", balances={"ZUSD": Decimal("1000")}, tier=slow_trading)
    client = client_for(exchange, "busy-pair", context, base_url=exchange_url)
    for _ in range(2):
        await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
    xbt = asyncio.ensure_future(client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE))
    await asyncio.sleep(0.05)  # XBTUSD's counter is full: that add waits about 2 s
    await client.add_order("ETHUSD", "buy", Decimal("0.01"), ordertype="limit", price=Decimal("1000"))
    assert not xbt.done()
    await xbt


async def test_cancels_of_orders_placed_before_a_restart_wait_for_the_trading_counter(exchange, exchange_url, tmp_path):
    """Kraken charges a cancel by the order's age (8 under 5 s). After a restart the client does not know the orders
    it cancels: it learns their pair and age from OpenOrders, so the cancels wait instead of being refused."""
    tight = Tier("tight-trading", rest_max=10_000, rest_decay_per_s=1000.0, trading_max=20, trading_decay_per_s=10.0,
                 max_open_orders_per_pair=1000)
    exchange.create_account("restarted", balances={"ZUSD": Decimal("1000")}, tier=tight)
    async with KrakenContext(state_dir=tmp_path) as before:
        placer = client_for(exchange, "restarted", before, base_url=exchange_url)
        placed = [await placer.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE) for _ in range(3)]
    await asyncio.sleep(0.4)  # what the adds cost has decayed: the restarted client could not know of it
    async with KrakenContext(state_dir=tmp_path) as after:
        client = client_for(exchange, "restarted", after, base_url=exchange_url, read_attempts=1)
        results = [await client.cancel_order(result.txid[0]) for result in placed]  # 3 + 3 × 8 > 20: one waits
        assert [r.count for r in results] == [1, 1, 1]
        assert client._budget.trading(client._pair_key("XBTUSD")).waited_s > 0
        assert await client.open_orders() == {}


async def test_a_batch_of_orders_is_sent_as_json_and_its_orders_are_known_to_the_counter(exchange, context,
                                                                                          exchange_url):
    exchange.create_account("batcher", balances={"ZUSD": Decimal("1000")}, tier=ROOMY)
    client = client_for(exchange, "batcher", context, base_url=exchange_url)
    orders = [{"type": "buy", "ordertype": "limit", "volume": VOLUME, "price": PRICE, "cl_ord_id": f"batch-{i}"}
              for i in range(2)]
    result = await client.private("AddOrderBatch", pair="XBTUSD", orders=orders)
    txids = [entry["txid"] for entry in result["orders"]]
    assert len(txids) == 2 and set((await client.open_orders()).keys()) == set(txids)
    assert client._budget.unknown_orders("CancelOrderBatch", {"orders": [txids[0], {"cl_ord_id": "batch-1"}]}) == []


async def test_a_cancel_by_userref_is_charged_for_every_order_it_cancels(exchange, context, exchange_url):
    tight = Tier("tight-userref", rest_max=10_000, rest_decay_per_s=1000.0, trading_max=20, trading_decay_per_s=10.0,
                 max_open_orders_per_pair=1000)
    exchange.create_account("tagger", balances={"ZUSD": Decimal("1000")}, tier=tight)
    client = client_for(exchange, "tagger", context, base_url=exchange_url, read_attempts=1)
    for _ in range(2):  # the client's own add_order tags by cl_ord_id; a raw AddOrder may carry a userref
        await client.private("AddOrder", pair="XBTUSD", type="buy", ordertype="limit", volume=VOLUME, price=PRICE,
                             userref=7)
    third = await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE)
    assert (await client.cancel_order("7")).count == 2  # 3 adds + 2 × 8: the counter is nearly full
    assert (await client.cancel_order(third.txid[0])).count == 1  # waits for room instead of being refused


async def test_a_restart_starts_from_the_rest_counter_the_last_run_left(exchange, exchange_url, tmp_path):
    """Kraken's counter does not restart with NIJA: a run that filled it and stopped leaves its level behind, and
    the next run waits for it instead of earning EAPI:Rate limit exceeded."""
    slow = Tier("slow-rest-restart", rest_max=4, rest_decay_per_s=2.0, trading_max=1000, trading_decay_per_s=100.0,
                max_open_orders_per_pair=1000)
    exchange.create_account("restarting", balances={"ZUSD": Decimal("1")}, tier=slow)
    async with KrakenContext(state_dir=tmp_path) as before:
        client = client_for(exchange, "restarting", before, base_url=exchange_url, read_attempts=1)
        for _ in range(4):
            await client.balance()
    async with KrakenContext(state_dir=tmp_path) as after:
        client = client_for(exchange, "restarting", after, base_url=exchange_url, read_attempts=1)
        await client.balance()  # waits for room; no EAPI:Rate limit exceeded
        assert client._budget.rest.waited_s > 0


# The killed run of the test below: fills the REST counter of a slow tier, says so, then waits to be killed.
_FILL_THEN_HANG = """
import asyncio, sys
from nija import event_loop
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.limits import Tier

async def main(url, key, secret, state_dir):
    tier = Tier("slow-rest-kill", rest_max=6, rest_decay_per_s=0.5, trading_max=1000, trading_decay_per_s=100.0,
                max_open_orders_per_pair=1000)
    context = KrakenContext(state_dir=state_dir)
    client = KrakenClient(key, secret, base_url=url, context=context, tier=tier, read_attempts=1)
    for _ in range(6):
        await client.balance()
    print("counter full", flush=True)
    await asyncio.sleep(60)

event_loop.run(main(*sys.argv[1:]))
"""


async def test_a_run_killed_without_stopping_still_leaves_its_rest_counter_to_the_next(exchange, exchange_url, tmp_path):
    """SIGKILL, an OOM kill or a crash skips the save at the stop: the level saved while running still tells the
    next run to wait instead of earning EAPI:Rate limit exceeded."""
    slow = Tier("slow-rest-kill", rest_max=6, rest_decay_per_s=0.5, trading_max=1000, trading_decay_per_s=100.0,
                max_open_orders_per_pair=1000)
    account = exchange.create_account("killed", balances={"ZUSD": Decimal("1")}, tier=slow)
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FILL_THEN_HANG, exchange_url, account.api_key, account.api_secret, str(tmp_path),
        stdout=asyncio.subprocess.PIPE)
    try:
        assert await asyncio.wait_for(run.stdout.readline(), 30) == b"counter full\n"
        await asyncio.sleep(1.5 * SAVE_EVERY_S)  # the running context's check comes round once
    finally:
        run.kill()
        await run.wait()
    async with KrakenContext(state_dir=tmp_path) as after:
        client = client_for(exchange, "killed", after, base_url=exchange_url, read_attempts=1)
        await client.balance()  # waits for room; no EAPI:Rate limit exceeded
        assert client._budget.rest.waited_s > 0


async def test_an_order_placed_with_a_uuid_in_another_spelling_is_found_by_that_spelling(exchange, context,
                                                                                       exchange_url):
    """add_order sends a UUID in one spelling; every lookup takes the caller's spelling to the same one, or a resting
    order would read as proven absent and be sent again."""
    client = client_for(exchange, "alice", context, base_url=exchange_url)
    written = "6D3F2D1A-0B6E-4F7A-9C1B-2E5F8A7D4C3B"
    placed = await client.add_order("XBTUSD", "buy", VOLUME, ordertype="limit", price=PRICE, cl_ord_id=written)
    assert (await client.find_order_settled(written)).txid == placed.txid[0]
    assert (await client.cancel_order(cl_ord_id=written)).count == 1


async def test_a_refused_order_is_proven_absent_at_once(exchange, context, exchange_url):
    """Kraken refused it, so nothing can land later: a lookup need not wait for the order's deadline."""
    client = client_for(exchange, "alice", context, base_url=exchange_url, order_deadline_s=30)
    client._created_at_s -= 60  # running for a minute: no order of a previous run can still land
    with pytest.raises(InsufficientFundsError):
        await client.add_order("XBTUSD", "buy", Decimal("100"), cl_ord_id="refused-1")  # far beyond the cash
    assert client.settle_delay_s("refused-1") == 0


async def test_orders_on_a_host_whose_clock_is_behind_krakens_carry_a_deadline_kraken_accepts(
        exchange, context, exchange_url):
    """Kraken checks an order's deadline on its own clock: from a host 20 s behind, a deadline stamped on the host's
    clock has passed on arrival. Once Kraken's `Time` is read, deadlines are stamped in Kraken's time."""
    exchange.create_account("late", balances={"ZUSD": Decimal("1000")}, tier=ROOMY)
    client = client_for(exchange, "late", context, base_url=exchange_url, order_attempts=1)
    reading = await client.read_clock()
    assert reading.lowest_s <= 0 <= reading.highest_s and reading.off_by_s == 0.0  # as far as whole seconds tell
    exchange.shift_wall_clock(20)
    with pytest.raises(RetryableError, match="Deadline elapsed"):
        await client.add_order("XBTUSD", "buy", VOLUME)
    reading = await client.read_clock()
    assert 19 < reading.lowest_s <= 20 <= reading.highest_s and reading.off_by_s == reading.lowest_s
    context.clock_offset_s = reading.lowest_s
    result = await client.add_order("XBTUSD", "buy", VOLUME)
    assert len(exchange.orders_by_cl_ord_id("late")[result.cl_ord_id]) == 1


async def test_an_order_that_lands_late_on_a_kraken_clock_behind_the_hosts_is_found_not_sent_twice(
        exchange, context, exchange_url):
    """Kraken 30 s behind: the order's deadline, in Kraken's time, passes 30 s later on the host's clock than it
    reads. A reply lost while the order is still on its way must not be taken for an absent order before then."""
    exchange.create_account("early", balances={"ZUSD": Decimal("1000")}, tier=ROOMY)
    client = client_for(exchange, "early", context, base_url=exchange_url, order_attempts=2, timeout_s=0.5)
    exchange.shift_wall_clock(-30)
    reading = await client.read_clock()
    assert reading.off_by_s < -29
    context.clock_offset_s = reading.lowest_s
    exchange.inject(Fault(kind="latency", delay_s=2.0, method="AddOrder", account="early"))  # lands after 2 s
    result = await client.add_order("XBTUSD", "buy", VOLUME)
    assert result.recovered and len(exchange.orders_by_cl_ord_id("early")[result.cl_ord_id]) == 1
