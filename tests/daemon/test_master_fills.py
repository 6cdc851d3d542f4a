"""The master-fill watcher against the embedded exchange over real HTTP: every fill becomes one signal."""

import time
from decimal import Decimal

import pytest

from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.models import Balances, ClosedOrdersPage, Order, TradeBalance
from nija.kraken.limits import Tier
from nija.kraken.nonce import NonceCoordinator
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

    # The master now holds 0.05 BTC; selling 0.02 closes 40 % of it.
    sold = await master.add_order(PAIR, "sell", Decimal("0.02"))
    [exit_] = await watcher.poll()
    assert exit_.side == "sell" and exit_.master_order_id == sold.order_id
    assert exit_.position_fraction == Decimal("0.4") and not exit_.closes_position

    # Nothing new: nothing emitted; a restarted watcher does not emit the old fills again.
    assert await watcher.poll() == []
    restarted = watcher_for(master, pairs, tmp_path, emitted, clock)
    assert await restarted.poll() == []

    # Selling the rest closes the position.
    await master.add_order(PAIR, "sell", Decimal("0.03"))
    [last] = await restarted.poll()
    assert last.closes_position and last.sell_fraction == 1
    assert len(emitted) == 3


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


class PartlyFilledMaster:
    """A master whose one open limit order fills in steps (as Kraken's OpenOrders shows it)."""

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

    async def balance(self):
        return Balances(by_asset={"ZUSD": "100000", "XXBT": str(self.vol_exec)})

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
