"""The master-fill watcher against the embedded exchange over real HTTP: every fill becomes one signal."""

import time
from collections import Counter
from decimal import Decimal

import pytest

from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.models import ClosedOrdersPage, ExtendedBalances, Order, Trade, TradeBalance, TradesPage
from nija.kraken.limits import Tier
from nija.kraken.nonce import NonceCoordinator
from nija.kraken.scheduler import Pacer
from nija.trading.master_fills import MasterFillWatcher

PAIR = "XBTUSD"
#: a roomy tier so the test measures the watcher, not the rate counter
FAST = Tier("fast", 1000, 1000.0, 1000, 1000.0, 100)


@pytest.fixture
async def master(exchange, exchange_url, tmp_path):
    exchange.set_price(PAIR, Decimal("50000"))
    account = exchange.create_account("whale", {"ZUSD": Decimal("10000")}, tier=FAST)
    context = KrakenContext(nonces=NonceCoordinator(tmp_path / "nonces"), public_rate_per_s=1000.0)
    client = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=context, tier=FAST)
    yield client
    await context.close()


def watcher_for(client, pairs, tmp_path, emitted, clock):
    async def emit(signal):
        emitted.append(signal)

    return MasterFillWatcher(client, pairs, emit, state_path=tmp_path / "master_fills.json", clock=clock)


async def test_fills_become_signals_once_with_the_fraction_closed(master, tmp_path):
    pairs = await master.pairs()
    emitted = []
    now = [0.0]
    def clock():
        return time.time() + now[0]

    # A fill from before the first start is history, not a signal.
    await master.add_order(PAIR, "buy", Decimal("0.01"))
    watcher = watcher_for(master, pairs, tmp_path, emitted, clock)
    assert await watcher.poll() == []
    now[0] += 1

    equity_before = (await master.trade_balance()).equivalent_balance
    bought = await master.add_order(PAIR, "buy", Decimal("0.04"))
    [entry] = await watcher.poll()
    assert entry.side == "buy" and entry.master_order_id == bought.order_id
    assert entry.volume_base == Decimal("0.04")
    assert entry.avg_price_usd > 0
    # Equity before the order: what it is now plus the fee the order paid (less the half-spread crossed).
    assert abs(entry.master_equity_usd - equity_before) < equity_before * Decimal("0.0005")

    # The master now holds 0.05 BTC; selling 0.02 closes 40 % of it (fee in USD: see the test below for BTC).
    sold = await master.add_order(PAIR, "sell", Decimal("0.02"), oflags="fciq")
    [exit_] = await watcher.poll()
    assert exit_.side == "sell" and exit_.master_order_id == sold.order_id
    assert exit_.position_fraction == Decimal("0.4") and not exit_.closes_position

    # Nothing new: nothing emitted; a restarted watcher does not emit the old fills again.
    assert await watcher.poll() == []
    restarted = watcher_for(master, pairs, tmp_path, emitted, clock)
    assert await restarted.poll() == []

    # Selling the rest closes the position.
    await master.add_order(PAIR, "sell", Decimal("0.03"), oflags="fciq")
    [last] = await restarted.poll()
    assert last.closes_position and last.sell_fraction == 1
    assert len(emitted) == 3


async def test_the_watch_state_is_written_off_the_event_loop(master, tmp_path, monkeypatch):
    """Replacing the state file can wait for the disk for milliseconds; followers' orders keep leaving meanwhile."""
    import threading

    from nija.trading import master_fills

    writers: list[str] = []
    real_replace = master_fills.os.replace

    def replace(src, dst):
        if str(dst).endswith("master_fills.json"):  # os is one module: the nonce mark's writes pass here too
            writers.append(threading.current_thread().name)
        real_replace(src, dst)

    monkeypatch.setattr(master_fills.os, "replace", replace)
    emitted = []
    watcher = watcher_for(master, await master.pairs(), tmp_path, emitted, time.time)
    await watcher.poll()
    await master.add_order(PAIR, "buy", Decimal("0.01"))
    [entry] = await watcher.poll()
    assert emitted == [entry]
    assert writers and threading.main_thread().name not in writers
    assert watcher_for(master, await master.pairs(), tmp_path, emitted, time.time)._since_s is not None  # on file


async def test_unreadable_state_file_is_named_with_the_fix(master, tmp_path):
    (tmp_path / "master_fills.json").write_text("{not json")
    with pytest.raises(ValueError) as info:
        watcher_for(master, await master.pairs(), tmp_path, [], lambda: 0.0)
    assert "master_fills.json" in str(info.value) and "move the file away" in str(info.value)


async def test_an_entry_found_late_is_not_copied_but_an_exit_is(master, tmp_path):
    pairs = await master.pairs()
    emitted = []
    shift = [0.0]
    watcher = watcher_for(master, pairs, tmp_path, emitted, lambda: time.time() + shift[0])
    await watcher.poll()
    shift[0] += 1
    await master.add_order(PAIR, "buy", Decimal("0.02"))
    await master.add_order(PAIR, "sell", Decimal("0.01"))
    shift[0] += 3600  # NIJA was down for an hour
    await watcher.poll()
    assert [signal.side for signal in emitted] == ["sell"]


async def test_a_pair_listed_after_start_up_is_loaded_and_its_fill_copied(master, tmp_path):
    full = await master.pairs()
    from nija.kraken.pairs import Pairs

    without_btc = Pairs([pair for pair in full if pair.altname != PAIR])
    emitted, changed = [], []

    async def emit(signal):
        emitted.append(signal)

    shift = [0.0]
    watcher = MasterFillWatcher(master, without_btc, emit, state_path=tmp_path / "fills.json",
                                clock=lambda: time.time() + shift[0], pairs_changed=changed.append)
    await watcher.poll()
    shift[0] += 1
    await master.add_order(PAIR, "buy", Decimal("0.01"))
    [signal] = await watcher.poll()
    assert signal.pair == "XXBTZUSD" and PAIR in watcher.pairs
    assert changed and PAIR in changed[-1]


async def test_a_sells_fee_paid_in_the_asset_counts_in_the_position_it_closed(master, tmp_path):
    """Kraken's default for a sell is the fee in the base asset (fcib): the position before the fill held the fee
    too, and the master's last sell (all it can, the fee beside it) closes the position."""
    pairs = await master.pairs()
    emitted = []
    watcher = watcher_for(master, pairs, tmp_path, emitted, time.time)
    await watcher.poll()
    await master.add_order(PAIR, "buy", Decimal("0.05"))
    await watcher.poll()
    await master.add_order(PAIR, "sell", Decimal("0.02"))  # the fee, about 0.00008 BTC, on top
    [first] = await watcher.poll()
    fee_btc = Decimal("0.05") - Decimal("0.02") - (await master.balance()).get("XXBT")
    assert fee_btc > Decimal("0.00005")
    # (0.02 + fee) / 0.05 ≈ 0.4016; with the fee left out it would be 0.02 / (0.05 - fee) ≈ 0.4006
    assert abs(first.position_fraction - (Decimal("0.02") + fee_btc) / Decimal("0.05")) < Decimal("0.0002")
    assert not first.closes_position
    held = (await master.balance()).get("XXBT")
    await master.add_order(PAIR, "sell", pairs.get(PAIR).round_volume_down(held / Decimal("1.004")))
    [last] = await watcher.poll()
    assert last.closes_position


@pytest.mark.parametrize("oflags, fee_in_btc", [("", True), ("fcib", True), ("fciq", False), ("post,fciq", False)])
async def test_a_sell_that_names_no_fee_currency_paid_its_fee_in_the_asset(master, tmp_path, oflags, fee_in_btc):
    """Kraken's default for a sell is fcib: an order that names neither flag paid its fee in the base asset."""
    kraken, emitted = ScriptedMaster(), []
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time)
    await watcher.poll()
    kraken.xbt = Decimal("0.5") - Decimal("0.1") * (1 + Decimal("0.0025") * fee_in_btc)  # 0.5 held before
    kraken.closed = {"OS": _order("OS", "closed", "0.1", "sell", closetm=time.time(), oflags=oflags)}
    [sell] = await watcher.poll()
    assert sell.position_fraction == (Decimal("0.1") * (1 + Decimal("0.0025") * fee_in_btc)) / Decimal("0.5")


async def test_a_state_file_of_another_master_key_is_a_first_start(master, exchange, exchange_url, tmp_path):
    """Paper keys swapped for live ones, or a rotated key, on the same state directory: the new master's earlier
    trades are history, not fills made while NIJA was down."""
    pairs = await master.pairs()
    emitted = []
    assert await watcher_for(master, pairs, tmp_path, emitted, time.time).poll() == []  # the first master's watch
    other = exchange.create_account("new-master", {"ZUSD": Decimal("10000")}, tier=FAST)
    new_master = KrakenClient(other.api_key, other.api_secret, base_url=exchange_url, context=master.context, tier=FAST)
    await new_master.add_order(PAIR, "buy", Decimal("0.02"))  # before NIJA watched this master
    await new_master.add_order(PAIR, "sell", Decimal("0.01"))
    assert await watcher_for(new_master, pairs, tmp_path, emitted, time.time).poll() == []
    bought = await new_master.add_order(PAIR, "buy", Decimal("0.01"))  # watched from here on
    [signal] = await watcher_for(new_master, pairs, tmp_path, emitted, time.time).poll()
    assert signal.master_order_id == bought.order_id and len(emitted) == 1


async def test_a_forgotten_watch_copies_nothing_from_before_copying_starts_again(master, tmp_path):
    """COPY_TRADING_MODE=INDEPENDENT for a while: the master's trades of that time are its own."""
    pairs = await master.pairs()
    emitted = []
    assert await watcher_for(master, pairs, tmp_path, emitted, time.time).poll() == []
    watcher_for(master, pairs, tmp_path, emitted, time.time).forget("COPY_TRADING_MODE=INDEPENDENT")
    await master.add_order(PAIR, "buy", Decimal("0.02"))  # traded while nothing was copied
    assert await watcher_for(master, pairs, tmp_path, emitted, time.time).poll() == []
    assert emitted == []


class PartlyFilledMaster:
    """A master whose one open limit order fills in steps (as Kraken's OpenOrders shows it)."""

    key_id = "kscripted"  # a key's fingerprint, as KrakenClient.key_id

    def __init__(self):
        self.vol_exec = Decimal("0")

    def order(self):
        return Order.from_kraken("OPART-00001-AAAAAA", {
            "status": "open", "opentm": time.time() - 10, "descr": {"pair": PAIR, "type": "buy", "ordertype": "limit"},
            "vol": "1.0", "vol_exec": str(self.vol_exec), "cost": str(self.vol_exec * 50000),
            "fee": str(self.vol_exec * 50000 * Decimal("0.0025"))})

    async def open_orders(self):
        return {"OPART-00001-AAAAAA": self.order()}

    async def closed_orders(self, **_):
        return ClosedOrdersPage(closed={}, count=0)

    async def balance_ex(self):
        return ExtendedBalances.from_result({"ZUSD": {"balance": "100000"}, "XXBT": {"balance": str(self.vol_exec)}})

    async def trade_balance(self):
        return TradeBalance.model_validate({"eb": "150000"})


async def test_a_crash_between_a_signal_and_its_record_never_copies_a_partial_fill_twice(master, tmp_path):
    pairs = await master.pairs()
    kraken = PartlyFilledMaster()
    stored: dict[str, Decimal] = {}  # what the copy engine's store would hold: one row per signal id

    async def store_then_die(signal):
        stored.setdefault(signal.signal_id, signal.volume_base)
        raise RuntimeError("the process dies right after the engine stored the signal")

    async def store(signal):
        stored.setdefault(signal.signal_id, signal.volume_base)

    path = tmp_path / "master_fills.json"
    first = MasterFillWatcher(kraken, pairs, store_then_die, state_path=path)
    await first.poll()
    kraken.vol_exec = Decimal("0.5")
    with pytest.raises(RuntimeError):
        await first.poll()
    kraken.vol_exec = Decimal("1.0")  # the order fills on while NIJA is down
    await MasterFillWatcher(kraken, pairs, store, state_path=path).poll()
    assert sum(stored.values()) == Decimal("1.0")  # not 1.5: the first half is not copied again


def _order(txid, status, vol_exec, side="buy", closetm=None, oflags="fciq"):
    """A scripted order; its fee in USD unless `oflags` says otherwise (the balances a test sets move by volume)."""
    raw = {"status": status, "opentm": time.time() - 10, "descr": {"pair": PAIR, "type": side, "ordertype": "limit"},
           "vol": "1.0", "vol_exec": str(vol_exec), "cost": str(Decimal(vol_exec) * 50000),
           "fee": str(Decimal(vol_exec) * 50000 * Decimal("0.0025")), "oflags": oflags}
    if closetm is not None:
        raw["closetm"] = closetm
    return Order.from_kraken(txid, raw)


class ScriptedMaster:
    """A master whose orders and balances a test sets, with hooks that run right after a read is answered."""

    key_id = "kscripted"  # a key's fingerprint, as KrakenClient.key_id

    def __init__(self):
        self.open, self.closed, self.xbt, self.trades = {}, {}, Decimal(0), []
        self.after_open_read = self.after_balance_read = None
        self.trade_reads = 0
        self.reads = Counter()  # method → calls

    async def open_orders(self):
        self.reads["OpenOrders"] += 1
        answer = dict(self.open)
        hook, self.after_open_read = self.after_open_read, None
        if hook:
            hook()
        return answer

    async def closed_orders(self, **_):
        self.reads["ClosedOrders"] += 1
        return ClosedOrdersPage(closed=dict(self.closed), count=len(self.closed))

    async def balance_ex(self):
        self.reads["BalanceEx"] += 1
        answer = ExtendedBalances.from_result({"ZUSD": {"balance": "100000"}, "XXBT": {"balance": str(self.xbt)}})
        hook, self.after_balance_read = self.after_balance_read, None
        if hook:
            hook()
        return answer

    async def trade_balance(self):
        self.reads["TradeBalance"] += 1
        return TradeBalance.model_validate({"eb": "150000"})

    def execute(self, txid, volume, at_s, side="buy"):
        self.trades.append(Trade(tid=f"T{len(self.trades)}", ordertxid=txid, pair="XXBTZUSD", time=at_s, type=side,
                                 vol=volume))

    async def trades_history(self, start=None, ofs=None, **_):
        self.trade_reads += 1
        picked = sorted((t for t in self.trades if start is None or t.time > start), key=lambda t: -t.time)
        page = picked[ofs or 0:(ofs or 0) + 50]
        return TradesPage(trades={t.tid: t for t in page}, count=len(picked))


async def test_a_poll_that_finds_entries_only_reads_the_orders_once(master, tmp_path):
    """3 REST calls instead of 5: on a Starter key that is 6 s of the counter's decay sooner for the next look."""
    kraken, emitted = ScriptedMaster(), []
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time)
    watcher.value_usd = lambda owned: owned["USD"] + owned.get("BTC", Decimal(0)) * 50000  # as the followers'
    await watcher.poll()
    kraken.reads.clear()
    kraken.closed, kraken.xbt = {"OA": _order("OA", "closed", "0.3", closetm=time.time())}, Decimal("0.3")
    [entry] = await watcher.poll()
    assert entry.side == "buy" and entry.master_equity_usd == Decimal("115000") + entry.fee_usd
    assert kraken.reads == Counter({"OpenOrders": 1, "ClosedOrders": 1, "BalanceEx": 1})
    kraken.reads.clear()
    kraken.closed["OB"] = _order("OB", "closed", "0.1", closetm=time.time(), side="sell")
    kraken.xbt = Decimal("0.2")
    [exit_] = await watcher.poll()  # an exit needs the position, read between two looks at the orders
    assert exit_.position_fraction == Decimal("0.1") / Decimal("0.3")
    assert kraken.reads == Counter({"OpenOrders": 2, "ClosedOrders": 2, "BalanceEx": 1})
    # A holding without a price yet: Kraken's own equivalent balance stands in.
    watcher.value_usd = lambda owned: None
    kraken.reads.clear()
    kraken.closed["OC"], kraken.xbt = _order("OC", "closed", "0.4", closetm=time.time()), Decimal("0.6")
    [entry] = await watcher.poll()
    assert entry.master_equity_usd == Decimal("150000") + entry.fee_usd
    assert kraken.reads == Counter({"OpenOrders": 1, "ClosedOrders": 1, "BalanceEx": 1, "TradeBalance": 1})


async def test_an_order_that_closes_between_the_two_order_reads_is_one_fill_not_two(master, tmp_path):
    kraken, emitted = ScriptedMaster(), []
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time)
    await watcher.poll()
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "0.3")}, Decimal("0.3")

    def the_rest_fills():  # right after OpenOrders answered, before ClosedOrders is read
        kraken.open, kraken.closed = {}, {"OA": _order("OA", "closed", "1.0", closetm=time.time())}
        kraken.xbt = Decimal("1.0")

    kraken.after_open_read = the_rest_fills
    await watcher.poll()
    assert sum(signal.volume_base for signal in emitted) == Decimal("1.0")


async def test_what_open_orders_executed_before_the_first_start_is_not_copied(master, tmp_path):
    kraken, emitted = ScriptedMaster(), []
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "0.5")}, Decimal("0.5")  # half filled yesterday
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time)
    await watcher.poll()
    await watcher.poll()
    assert emitted == []
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "0.75")}, Decimal("0.75")
    await watcher.poll()
    assert [signal.volume_base for signal in emitted] == [Decimal("0.25")]  # only what it executed since


class ShiftedClock:
    """time.time() plus `shift_s`: a restart an hour later without waiting an hour."""

    def __init__(self):
        self.shift_s = 0.0

    def __call__(self):
        return time.time() + self.shift_s


async def test_a_partial_fill_made_while_nija_was_down_is_dated_before_the_gap(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "0.5")}, Decimal("0.5")  # fills while NIJA is down
    clock.shift_s += 3600
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert emitted == []  # its executions are not listed: maybe an hour-old entry, as a closed order of that age


@pytest.mark.parametrize("filled_before_restart_s, copied", [(30, True), (3000, False)])
async def test_a_resting_buy_filled_during_a_gap_is_dated_by_its_executions(master, tmp_path, filled_before_restart_s,
                                                                            copied):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    kraken.open = {"OA": _order("OA", "open", "0")}  # a limit buy rests below the market
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    clock.shift_s += 3600  # NIJA is down for an hour; the buy fills in full some time before it comes back
    kraken.execute("OA", Decimal("1.0"), clock() - filled_before_restart_s)
    kraken.open, kraken.xbt = {}, Decimal("1.0")
    kraken.closed = {"OA": _order("OA", "closed", "1.0", closetm=clock() - filled_before_restart_s)}
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert [signal.volume_base for signal in emitted] == ([Decimal("1.0")] if copied else [])
    if copied:
        assert emitted[0].filled_at_s == pytest.approx(clock() - filled_before_restart_s, abs=1)


async def test_a_limit_buy_filled_just_before_nija_came_back_is_copied(exchange, master, tmp_path):
    pairs = await master.pairs()
    emitted, clock = [], ShiftedClock()
    await watcher_for(master, pairs, tmp_path, emitted, clock).poll()
    resting = await master.add_order(PAIR, "buy", Decimal("0.01"), ordertype="limit", price=Decimal("49000"))
    await watcher_for(master, pairs, tmp_path, emitted, clock).poll()
    exchange.clock.advance(3570)  # NIJA is down for an hour; 30 s before it comes back, the price dips to the limit
    exchange.set_price(PAIR, Decimal("48900"))
    exchange.clock.advance(30)
    clock.shift_s += 3600
    await watcher_for(master, pairs, tmp_path, emitted, clock).poll()
    [entry] = emitted
    assert entry.master_order_id == resting.order_id and entry.volume_base == Decimal("0.01")
    assert entry.filled_at_s == pytest.approx(clock() - 30, abs=2)


async def test_executions_of_a_gap_entry_are_found_past_the_first_page(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    clock.shift_s += 3600
    kraken.execute("OA", Decimal("0.5"), clock() - 60)
    for i in range(60):  # a busy hour of grid trading since on another order
        kraken.execute("OG", Decimal("0.001"), clock() - 59 + i / 2, side="sell" if i % 2 else "buy")
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "0.5")}, Decimal("0.5")
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert [signal.volume_base for signal in emitted] == [Decimal("0.5")] and kraken.trade_reads == 2


async def test_an_entry_whose_execution_began_early_in_a_gap_is_not_copied_though_it_ended_late(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    clock.shift_s += 3600
    kraken.execute("OA", Decimal("0.5"), clock() - 3000)  # half fills early in the gap, the rest just before
    kraken.execute("OA", Decimal("0.5"), clock() - 30)
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "1.0")}, Decimal("1.0")
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert emitted == []


async def test_executions_are_read_only_for_entries_a_gap_makes_look_old(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    watcher = watcher_for(kraken, pairs, tmp_path, emitted, clock)
    await watcher.poll()
    kraken.closed, kraken.xbt = {"OA": _order("OA", "closed", "0.5", closetm=clock())}, Decimal("0.5")
    await watcher.poll()
    clock.shift_s += 3600
    kraken.closed["OS"] = _order("OS", "closed", "0.5", "sell", closetm=clock() - 3000)  # an exit: always copied
    kraken.xbt = Decimal("0")
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert [signal.side for signal in emitted] == ["buy", "sell"] and kraken.trade_reads == 0


async def test_a_fill_landing_while_the_balances_are_read_does_not_skew_the_fraction(master, tmp_path):
    kraken, emitted = ScriptedMaster(), []
    kraken.xbt = Decimal("1.0")
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time)
    await watcher.poll()
    kraken.closed, kraken.xbt = {"OA": _order("OA", "closed", "0.5", "sell", time.time())}, Decimal("0.5")

    def second_sell():  # the master's next step sells the rest before NIJA reads the orders again
        kraken.closed["OB"] = _order("OB", "closed", "0.5", "sell", time.time() + 0.001)
        kraken.xbt = Decimal("0")

    kraken.after_balance_read = second_sell
    await watcher.poll()
    first, second = emitted
    assert first.position_fraction == Decimal("0.5") and not first.closes_position
    assert second.position_fraction == Decimal("1") and second.closes_position


async def test_a_partial_sell_found_after_a_gap_keeps_its_place_after_the_buy_it_sells_from(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    kraken.closed = {"OB": _order("OB", "closed", "1.0", "buy", closetm=clock() + 30)}  # during the gap
    kraken.open, kraken.xbt = {"OS": _order("OS", "open", "0.5", "sell")}, Decimal("0.5")  # then half sold
    clock.shift_s += 90
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert [signal.side for signal in emitted] == ["buy", "sell"]
    assert emitted[1].position_fraction == Decimal("0.5") and not emitted[1].closes_position


async def test_new_resting_orders_placed_while_the_balances_are_read_do_not_fail_the_poll(master, tmp_path):
    kraken, emitted = ScriptedMaster(), []
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time)
    await watcher.poll()
    kraken.closed, kraken.xbt = {"OA": _order("OA", "closed", "0.5", "buy", time.time())}, Decimal("0.5")
    placed = []

    def a_grid_bot_places_another_order():
        placed.append(f"OR{len(placed)}")
        kraken.open[placed[-1]] = _order(placed[-1], "open", "0")
        kraken.after_balance_read = a_grid_bot_places_another_order

    kraken.after_balance_read = a_grid_bot_places_another_order
    await watcher.poll()
    assert [signal.volume_base for signal in emitted] == [Decimal("0.5")]


async def test_a_state_file_from_before_the_last_poll_was_kept_does_not_age_a_fresh_partial_fill(master, tmp_path):
    import json

    kraken, emitted = ScriptedMaster(), []
    (tmp_path / "master_fills.json").write_text(json.dumps({"since_s": time.time() - 3600, "seen": {}}))
    kraken.open, kraken.xbt = {"OA": _order("OA", "open", "0.5")}, Decimal("0.5")
    await watcher_for(kraken, await master.pairs(), tmp_path, emitted, time.time).poll()
    assert [signal.side for signal in emitted] == ["buy"]


async def test_a_fill_made_long_ago_is_not_fresh_because_its_order_closed_lately(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    kraken.xbt = Decimal("0.5")  # a resting buy fills half a minute into an hour down, and is canceled at the end
    kraken.closed = {"OA": _order("OA", "canceled", "0.5", closetm=clock() + 3590)}
    clock.shift_s += 3600
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert emitted == []


async def test_a_partial_fill_of_an_order_opened_after_the_gap_is_fresh(master, tmp_path):
    kraken, emitted, clock = ScriptedMaster(), [], ShiftedClock()
    pairs = await master.pairs()
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    clock.shift_s += 3600
    order = _order("OA", "open", "0.5").model_copy(update={"opentm": clock() - 10})  # placed 10 s before
    kraken.open, kraken.xbt = {"OA": order}, Decimal("0.5")
    await watcher_for(kraken, pairs, tmp_path, emitted, clock).poll()
    assert [signal.side for signal in emitted] == ["buy"]


async def test_a_fill_just_after_the_first_start_counts_though_our_clock_runs_ahead(master, tmp_path):
    kraken, emitted = ScriptedMaster(), []
    kraken.closed = {"OOLD": _order("OOLD", "closed", "0.2", closetm=time.time() - 60)}  # before the start
    watcher = watcher_for(kraken, await master.pairs(), tmp_path, emitted, lambda: time.time() + 5)
    await watcher.poll()
    kraken.closed["OA"] = _order("OA", "closed", "0.5", closetm=time.time() + 1)  # Kraken's clock: 5 s behind ours
    kraken.xbt = Decimal("0.7")
    await watcher.poll()
    assert [signal.volume_base for signal in emitted] == [Decimal("0.5")]


async def test_polling_as_often_as_asked_never_leaves_a_found_fill_waiting_for_the_rate_counter(exchange, exchange_url,
                                                                                               tmp_path):
    """A Starter key cannot sustain two order reads every 3 s. The watcher waits for room for a whole round with
    fills before each poll, so the round that finds a fill reads balances and orders again without waiting."""
    import asyncio

    short = Tier("short-rest", rest_max=8, rest_decay_per_s=4.0, trading_max=1000, trading_decay_per_s=1000.0,
                 max_open_orders_per_pair=100)
    exchange.set_price(PAIR, Decimal("50000"))
    account = exchange.create_account("starter-whale", {"ZUSD": Decimal("10000")}, tier=short)
    context = KrakenContext(nonces=NonceCoordinator(tmp_path / "nonces"), public_rate_per_s=1000.0)
    client = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=context, tier=short)
    trader = KrakenClient(account.api_key, account.api_secret, base_url=exchange_url, context=context, tier=short)
    pairs = await client.pairs()
    emitted, waits = [], []
    watcher = MasterFillWatcher(client, pairs, lambda s: asyncio.sleep(0, emitted.append(s)), poll_s=0.01,
                                state_path=tmp_path / "fills.json")
    class RecordingPacer(Pacer):  # how long each call of the watcher that had to wait for the counter waited
        async def ready(self, cost):  # (a call whose budget is there at once leaves without calling it)
            started = time.monotonic()
            await super().ready(cost)
            if cost == 1:  # a call's own wait (the watcher's wait for room before a poll asks for more)
                waits.append(time.monotonic() - started)

    watching = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(1.5)  # polls as fast as the counter lets it
        recording = RecordingPacer(short.rest_max, short.rest_decay_per_s, time.monotonic, 0.1)
        recording.counter = client._budget.rest.counter
        client._budget.rest = recording
        await trader.add_order(PAIR, "buy", Decimal("0.01"))
        deadline = asyncio.get_running_loop().time() + 10
        while not emitted:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        watching.cancel()
        await context.close()
    assert len(emitted) == 1 and max(waits, default=0.0) < 0.05  # every call of the round went out at once


@pytest.mark.parametrize("content", ["[]", "{}", '{"since_s": "soon"}', '{"since_s": 1, "seen": {"O": 5}}'])
def test_a_watch_state_of_another_shape_is_refused_with_the_file_and_the_fix(tmp_path, content):
    path = tmp_path / "master_fills.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        MasterFillWatcher(ScriptedMaster(), None, None, state_path=path)
    assert str(path) in str(info.value) and "move the file away" in str(info.value)


async def test_a_wake_before_the_fill_shows_on_rest_is_followed_by_quick_looks_again(master, tmp_path):
    """The channel can announce a trade before REST lists it: the polls after a wake come within seconds, not at
    the next tick, until one finds the fill."""
    import asyncio

    emitted = []
    watcher = watcher_for(master, await master.pairs(), tmp_path, emitted, time.time)
    watcher.poll_s = 600.0  # the tick never comes in this test
    polls = 0
    poll = watcher.poll

    async def counted_poll():
        nonlocal polls
        polls += 1
        return await poll()

    watcher.poll = counted_poll
    running = asyncio.create_task(watcher.run())
    try:
        while polls < 1:  # the first start's poll
            await asyncio.sleep(0.01)
        watcher.wake()  # rung before the trade exists anywhere
        while polls < 2:
            await asyncio.sleep(0.01)
        await master.add_order(PAIR, "buy", Decimal("0.01"))
        deadline = time.monotonic() + 10
        while not emitted:
            assert time.monotonic() < deadline, "the fill was not looked for again soon after the wake"
            await asyncio.sleep(0.02)
        looks = polls
        await asyncio.sleep(1.5)
        assert polls == looks  # once found, the polls go back to the tick
    finally:
        running.cancel()
    [signal] = emitted
    assert signal.side == "buy" and signal.volume_base == Decimal("0.01")


async def test_a_poll_that_fails_while_the_channel_is_up_is_tried_again_at_the_tick_not_the_safety_net(
        master, tmp_path):
    import asyncio

    emitted = []
    watcher = watcher_for(master, await master.pairs(), tmp_path, emitted, time.time)
    watcher.poll_s, watcher.feed_up = 1.0, True  # with the channel up, polls would be 30 s apart
    polls_done, fail_next = [], [False]
    poll = watcher.poll

    async def flaky_poll():
        if fail_next[0]:
            fail_next[0] = False
            raise ConnectionError("one transient REST failure")
        signals = await poll()
        polls_done.append(time.monotonic())
        return signals

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    watcher.poll = flaky_poll
    running = asyncio.create_task(watcher.run())
    try:
        # The first start's poll records what the master executed so far as seen: the trade must come after it.
        await until(lambda: polls_done, "the first poll never finished")
        await master.add_order(PAIR, "buy", Decimal("0.01"))
        watcher.wake()
        await until(lambda: emitted, "the woken poll did not find the fill")  # (and it set found_fills)
        await master.add_order(PAIR, "buy", Decimal("0.01"))
        fail_next[0] = True
        watcher.wake()  # ... and the poll this wake starts fails once
        deadline = time.monotonic() + 10
        while len(emitted) < 2:
            assert time.monotonic() < deadline, "a failed poll waited for the 30 s safety net"
            await asyncio.sleep(0.02)
    finally:
        running.cancel()
