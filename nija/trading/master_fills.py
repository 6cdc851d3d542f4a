"""The master account's fills, whoever placed the orders, turned into signals.

Each poll reads the master's open orders (partial fills) and the orders closed since the watermark; every increase
of an order's executed volume is one fill and becomes one Signal. A poll's signals are written
to the state file (with the volumes they account for) before they are emitted, and cleared once emitted; a restart
in between emits them again, and the copy engine's store, keyed by signal id, refuses the ones it already has. So a
fill is never signalled twice under two ids, and never lost.

For a sell, the fraction of the master's position it closed needs the position *before* the fill; it is the
balance read right after the poll plus what the fills since then sold (minus what they bought). The master's
equity before the fill is its equity now plus the fees paid since, as a trade at market leaves equity unchanged but
for its fee; it is valued as the followers' equity is (same prices, staked and Earn balances included), so that
an entry sized by their ratio compares like with like. The balances are read (one BalanceEx, for both) only when
a poll finds fills, and when a sell is among them the orders are read again after them: a fill landing in between
would be in the balances but not in the fills worked back, so the poll reads again. A poll that found entries only
needs the equity alone: a fill landing meanwhile moves it by a fee, and the next poll finds that fill.

On the first start, what the open orders have executed so far is history too, like the orders closed before it.
A partial fill of an open order has no time of its own: it is placed at the poll that saw it, but after a gap (a
restart, a stall) its age counts from the last poll before the gap, so an old entry is never taken for a fresh one.
An entry that this makes too old to copy is dated by the master's executions instead (TradesHistory, read only
then): a resting buy that filled just before NIJA came back is copied, one that filled early in the gap is not.

State (watermark and per-order executed volume) lives in one small JSON file in the state directory, stamped with
the master key's fingerprint: a state file of another master key (a key rotated, paper keys swapped for live ones)
is set aside as a first start, so that master's earlier trades are never taken for fills made while NIJA was down.
`forget` does the same when NIJA runs without copying (COPY_TRADING_MODE=INDEPENDENT): the master's trades of that
time are not copied once copying starts again.

Polls are a safety net when Kraken's WebSocket `executions` channel is followed (`follow_executions`): every master
trade it streams wakes the watcher for a poll at once (again after a short wait while REST does not show the fill
yet), and the regular polls slow down to `FEED_UP_POLL_S`, which leaves a Starter key's REST budget for those
polls. While the channel is down the regular interval applies; the fills themselves always come from the polls.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from nija.kraken import KrakenClient
from nija.kraken.errors import ConfigurationError
from nija.kraken.models import Order, Trade
from nija.kraken.pairs import PairInfo, Pairs, UnknownPairError
from nija.kraken.ws import WS_AUTH_URL, FeedClosed, FeedNotServed, executions
from nija.logs import get_logger
from nija.trading.signals import ENTRY_MAX_AGE_S, Signal, signal_from_master_order

__all__ = ["MasterFillWatcher", "MasterFill"]

log = get_logger("nija.master_fills")

#: orders closed this long before the watermark are still asked for, against clock skew between us and Kraken
_OVERLAP_S = 120.0
#: reads of orders and balances made before a poll gives up on a master that keeps trading meanwhile
_READ_ATTEMPTS = 3
#: a poll this long after the previous one follows a gap (a restart, a stall) rather than the usual interval
_GAP_S = 60.0
#: REST calls of a poll that finds fills: the order reads, the balances, the order reads again
_POLL_WITH_FILLS_CALLS = 5
#: TradesHistory pages (50 executions each, 2 on the REST counter) read to date the entries found after a gap
_TRADE_PAGES = 4
#: seconds between the safety-net polls while the executions channel is followed
FEED_UP_POLL_S = 30.0
#: after a trade on the channel, polls that find nothing new (REST may lag the channel) look again after these waits:
#: for about 16 s, so that a REST lag of seconds costs seconds, not the 30 s safety net
_RECHECK_AFTER_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: waits before connecting to the channel again: doubling up to the last; a refused key's permission, much longer
_FEED_RETRY_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)
_FEED_NOT_PERMITTED_RETRY_S = 900.0
#: a channel up this long before it drops starts the waits afresh
_FEED_STEADY_S = 60.0


@dataclass(frozen=True, slots=True)
class MasterFill:
    """One increase of a master order's executed volume, seen at `at_s` (its close time once closed).

    `earliest_s` is the earliest it can have happened: `at_s`, but for a fill found after a gap in the polls, the
    last poll before the gap (or the order's opening, if later), unless its executions tell. Fills are ordered by
    `at_s`; an entry's age counts from `earliest_s`."""

    order: Order
    volume_base: Decimal
    cost_usd: Decimal
    fee_usd: Decimal
    at_s: float
    earliest_s: float


class MasterFillWatcher:
    """Polls the master account and hands every new fill, as a Signal, to `emit` (e.g. CopyEngine.submit)."""

    def __init__(
        self,
        client: KrakenClient,
        pairs: Pairs,
        emit: Callable[[Signal], Awaitable[object]],
        *,
        state_path: Path,
        poll_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        report: Callable[[str | None], None] = lambda problem: None,
        pairs_changed: Callable[[Pairs], None] = lambda pairs: None,
        value_usd: Callable[[Mapping[str, Decimal]], Decimal | None] = lambda owned: None,
        own_copy: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.client = client
        self.pairs = pairs
        self.emit = emit
        self.state_path = Path(state_path)
        self.poll_s = poll_s
        self.clock = clock
        #: told the problem when a poll fails, None when one succeeds again (the daemon's degraded/recovered)
        self.report = report
        #: told when the watcher loaded the pairs again (a pair listed after start-up), e.g. CopyEngine.set_pairs
        self.pairs_changed = pairs_changed
        #: the master's holdings (per common asset name, staked included) in USD as the followers' equity is valued
        #: (e.g. positions.value_usd at the engine's prices); None while a price is missing
        self.value_usd = value_usd
        #: whether an order (by client order id) is a copy NIJA placed for a follower: then that follower's key
        #: trades the master's account, and the fill is no signal (it would be copied again, for ever)
        self.own_copy = own_copy
        self._since_s: float | None = None
        self._polled_s: float | None = None  # the last poll (partial fills seen after a gap are dated to it)
        self._saved_polled_s: float | None = None
        # order id → (executed volume, cost, fee) already turned into signals
        self._seen: dict[str, tuple[Decimal, Decimal, Decimal]] = {}
        # signals accounted for in `_seen` but maybe not emitted yet (a crash between the two)
        self._pending: list[Signal] = []
        self._master = client.key_id  # the master key's fingerprint, never the key
        self._woken = asyncio.Event()
        self._look_again = False  # whether the wake came from a trade, which REST may not show yet
        self._rechecks: list[float] = []  # waits left before looking again for a trade the channel announced
        self.found_fills = False  # whether the last poll found any
        #: whether the executions channel is followed right now (polls then come every FEED_UP_POLL_S)
        self.feed_up = False
        self._load()

    # --- state -----------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from None
        try:
            self._take(data)
        except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError) as exc:  # JSON of another shape
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: Exception) -> ValueError:
        return ValueError(
            f"{self.state_path}: master fill state is unreadable ({type(exc).__name__}: {exc}); move the file away "
            "to start watching from now (fills made while NIJA was down are then not copied)")

    def _take(self, data: dict) -> None:
        master = data.get("master")  # absent from files written before it was kept: taken as this master's
        if master is not None and master != self._master:
            log.warning("master_watch_reset", path=str(self.state_path), reason="the master key changed",
                        previous_master=master, master=self._master,
                        consequence="fills from before this start are not copied")
            return
        self._since_s = float(data["since_s"])
        polled_s = data.get("polled_s")  # absent from files written before it was kept: no gap is assumed
        self._polled_s = self._saved_polled_s = None if polled_s is None else float(polled_s)
        self._seen = {txid: tuple(Decimal(v) for v in values) for txid, values in data.get("seen", {}).items()}
        self._pending = [Signal.from_json(text) for text in data.get("pending", [])]

    async def _save(self) -> None:
        data = {"master": self._master, "since_s": self._since_s, "polled_s": self._polled_s,
                "seen": {t: [str(v) for v in vals] for t, vals in self._seen.items()},
                "pending": [signal.to_json() for signal in self._pending]}
        # On a worker thread: replacing a file can wait milliseconds for the disk, and the event loop meanwhile
        # carries the followers' orders of earlier fills.
        await asyncio.to_thread(self._write_state, json.dumps(data))
        self._saved_polled_s = self._polled_s

    def _write_state(self, text: str) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.state_path)  # atomic: a crash leaves the old file or the new one

    def forget(self, reason: str) -> None:
        """Drop the watch state: the next watch starts as a first start, copying nothing from before it."""
        if self._since_s is None and not self.state_path.exists():
            return
        self.state_path.unlink(missing_ok=True)
        self._since_s = self._polled_s = self._saved_polled_s = None
        self._seen, self._pending = {}, []
        log.info("master_watch_reset", path=str(self.state_path), reason=reason,
                 consequence="fills from before copying starts again are not copied")

    # --- polling ---------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll for ever. A failed poll is logged, reported and tried again at the next tick; only a configuration
        error (the master's key rejected) ends the watch, as polling on could get the key locked out."""
        failing = False
        while True:
            try:
                # On a Starter key two order reads every 3 s already outrun the counter's decay: wait for room for
                # a whole round with fills, so that a fill found is read out and signalled at once.
                await self.client.rest_room(_POLL_WITH_FILLS_CALLS)
                await self.poll()
                if failing:
                    log.warning("master_watch_recovered")
                    self.report(None)
                    failing = False
            except ConfigurationError:
                raise
            except Exception as exc:  # noqa: BLE001 — the watch must outlive any one bad poll
                failing = True
                log.warning("master_watch_failed", error=str(exc), error_class=type(exc).__name__)
                self.report(f"{type(exc).__name__}: {exc}")
            await self._until_next_poll(failed=failing)

    def wake(self, *, look_again: bool = True) -> None:
        """Poll now, not at the next tick: the master traded (the executions channel says so; `look_again` keeps
        looking for a few seconds while REST does not show the fill yet), or the channel came up or went down."""
        self._look_again = self._look_again or look_again
        self._woken.set()

    async def _until_next_poll(self, failed: bool) -> None:
        if self.found_fills:
            self._rechecks = []
        if self._rechecks:
            wait_s = self._rechecks.pop(0)
        elif self.feed_up and not failed:
            wait_s = max(self.poll_s, FEED_UP_POLL_S)
        else:
            wait_s = self.poll_s  # a failed poll, or no channel: the regular interval
        try:
            await asyncio.wait_for(self._woken.wait(), wait_s)
        except TimeoutError:
            return
        self._woken.clear()
        self._rechecks = list(_RECHECK_AFTER_S) if self._look_again else []
        self._look_again = False

    def _signalled(self, execution: dict) -> bool:
        """Whether a streamed execution's fill is already in a signal (a poll got to it first)."""
        seen = self._seen.get(str(execution.get("order_id")))
        cum_qty = execution.get("cum_qty")
        return seen is not None and isinstance(cum_qty, (Decimal, int)) and seen[0] >= cum_qty

    async def follow_executions(self, url: str) -> None:
        """Follow the master's executions on Kraken's WebSocket channel at `url`, waking the watcher on each trade.
        Connects again after any failure, for ever; meanwhile the regular polls carry on."""
        failures, up_since = 0, None

        def subscribed() -> None:
            nonlocal up_since
            up_since = asyncio.get_running_loop().time()
            self.feed_up = True
            log.info("master_feed_up", polls_every_s=max(self.poll_s, FEED_UP_POLL_S))
            self.wake(look_again=False)  # a trade made while the channel was down is looked for now

        while True:
            try:
                async for item in executions(self.client, url, on_subscribed=subscribed):
                    if item.get("exec_type") == "trade" and not self._signalled(item):
                        self.wake()
                raise FeedClosed(f"{url} ended the stream")  # executions() never ends quietly; kept for safety
            except ConfigurationError as exc:
                retry_s = _FEED_NOT_PERMITTED_RETRY_S
                log.warning("master_feed_unavailable", error=str(exc), retry_in_s=retry_s, polls_every_s=self.poll_s,
                            fix="give the master API key the 'WebSocket interface' permission on Kraken, or set "
                                "KRAKEN_WS_AUTH_URL=off to poll only")
            except FeedNotServed as exc:
                retry_s = _FEED_NOT_PERMITTED_RETRY_S
                log.warning("master_feed_unavailable", error=str(exc), retry_in_s=retry_s, polls_every_s=self.poll_s,
                            fix=f"set KRAKEN_WS_AUTH_URL to the channel's address ({WS_AUTH_URL} for Kraken), or "
                                "leave it unset to take the one that goes with KRAKEN_API_URL, or off to poll only")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — the channel is an extra: polls carry on without it
                # A channel that was up a good while starts the waits afresh; one that keeps dropping at once backs
                # off, as each connection costs a token call on the master's REST counter.
                if up_since is not None and asyncio.get_running_loop().time() - up_since >= _FEED_STEADY_S:
                    failures = 0
                retry_s = _FEED_RETRY_S[min(failures, len(_FEED_RETRY_S) - 1)]
                failures += 1
                log.warning("master_feed_down", error=str(exc), error_class=type(exc).__name__,
                            retry_in_s=retry_s, polls_every_s=self.poll_s)
            finally:
                if self.feed_up:  # the polls go back to the regular interval now, not after a 30 s wait
                    self.feed_up = False
                    self.wake(look_again=False)
                up_since = None
            await asyncio.sleep(retry_s)

    async def _pair_of(self, fill: MasterFill) -> PairInfo | None:
        """The fill's pair; a name not known yet (listed after start-up) loads the pairs again, once."""
        name = fill.order.descr.pair
        try:
            return self.pairs.get(name)
        except UnknownPairError:
            pass
        self.pairs = await self.client.pairs(refresh=True)  # a failure fails the poll: tried again next tick
        self.pairs_changed(self.pairs)
        try:
            return self.pairs.get(name)
        except UnknownPairError as exc:
            log.warning("master_fill_not_copied", order_id=fill.order.txid, pair=name,
                        reason=f"pair not known to AssetPairs: {exc}")
            return None

    async def poll(self) -> list[Signal]:
        """One look at the master account; returns the signals of the new fills (stale entries are not emitted)."""
        now_s = self.clock()
        self.found_fills = False
        if self._since_s is None:
            # First start ever: fills from before NIJA ran are not copied. What the open orders and the orders
            # closed lately executed so far is recorded as seen, and the watermark starts an overlap back: our clock
            # may run ahead of Kraken's, whose close times every later watermark is.
            since_s = now_s - _OVERLAP_S
            for order in await self._orders_since(since_s):
                self._seen[order.txid] = (order.vol_exec, order.cost, order.fee)
            self._since_s, self._polled_s = since_s, now_s
            await self._save()
            log.info("master_watch_started", since_s=now_s)
            return []
        await self._emit_pending(now_s)
        orders = await self._orders_since(self._since_s - _OVERLAP_S)
        fills = self._fills_in(orders, now_s)
        self.found_fills = bool(fills)
        signals: list[Signal] = []
        if fills and not any(fill.order.descr.type == "sell" for fill in fills):
            # Entries only: sized from the master's equity, which a fill landing meanwhile moves by its fee alone.
            # No second look at the orders: 3 calls instead of 5, 6 s of a Starter key's decay.
            balances, equity_now = await self._holdings_and_equity()
            signals = await self._signals_for(await self._dated_by_trades(fills, now_s), balances, equity_now)
        elif fills:
            for _ in range(_READ_ATTEMPTS):
                balances, equity_now = await self._holdings_and_equity()
                again = await self._orders_since(self._since_s - _OVERLAP_S)
                if _executed(again) == _executed(orders):
                    break  # no fill landed while the balances were read: they hold exactly the fills listed
                orders, fills = again, self._fills_in(again, now_s)
            else:
                raise RuntimeError("the master kept trading while its balances were read; reading again next poll")
            signals = await self._signals_for(await self._dated_by_trades(fills, now_s), balances, equity_now)
        for fill in fills:
            vol, cost, fee = self._seen.get(fill.order.txid, (Decimal(0), Decimal(0), Decimal(0)))
            self._seen[fill.order.txid] = (vol + fill.volume_base, cost + fill.cost_usd, fee + fill.fee_usd)
        self._advance(orders, now_s)
        self._pending = signals
        self._polled_s = now_s
        if fills or orders or now_s - (self._saved_polled_s or 0.0) >= _GAP_S / 2:
            await self._save()
        await self._emit_pending(now_s)
        return signals

    async def _holdings_and_equity(self) -> tuple[dict[str, Decimal], Decimal]:
        """What the master can trade, per common asset name (its position for a sell's fraction), and its equity
        now, valued by `value_usd` as the followers' equity is. Kraken's TradeBalance `eb` stands in only while a
        holding has no price yet: its valuation is Kraken's, not the one the followers' equity gets."""
        raw = {key: entry.balance for key, entry in (await self.client.balance_ex()).by_asset.items()}
        equity = self.value_usd(self.pairs.normalise_balances(raw, include_suffixed=True))
        if equity is None:
            equity = (await self.client.trade_balance()).equivalent_balance
        return self.pairs.normalise_balances(raw), equity

    async def _emit_pending(self, now_s: float) -> None:
        if not self._pending:
            return
        for signal in self._pending:
            age_s = now_s - signal.filled_at_s
            if signal.side == "buy" and age_s > ENTRY_MAX_AGE_S:
                log.warning("master_fill_not_copied", order_id=signal.master_order_id, pair=signal.pair,
                            reason=f"entry filled {age_s:.0f} s ago (limit {ENTRY_MAX_AGE_S:.0f} s)")
                continue
            await self.emit(signal)
        self._pending = []
        await self._save()

    async def _orders_since(self, since_s: float) -> list[Order]:
        """Open orders, then the orders closed since `since_s`: one entry per order, the later read winning (an
        order can close between the two reads and show in both)."""
        orders = dict(await self.client.open_orders())
        offset = 0
        while True:
            page = await self.client.closed_orders(start=int(since_s), closetime="close", ofs=offset or None)
            orders.update(page.closed)
            offset += len(page.closed)
            if not page.closed or offset >= page.count:
                return list(orders.values())

    def _fills_in(self, orders: Iterable[Order], now_s: float) -> list[MasterFill]:
        return sorted(self._new_fills(orders, now_s), key=lambda fill: fill.at_s)

    def _new_fills(self, orders: Iterable[Order], now_s: float) -> Iterable[MasterFill]:
        after_gap = self._polled_s is not None and now_s - self._polled_s > max(_GAP_S, 3 * self.poll_s)
        for order in orders:
            if order.is_done and (order.closetm or 0) < self._since_s and order.txid not in self._seen:
                continue  # closed before the watermark: copied in an earlier run, or from before NIJA ran
            vol, cost, fee = self._seen.get(order.txid, (Decimal(0), Decimal(0), Decimal(0)))
            if order.vol_exec > vol:
                # A closed order's time is its close; a partial fill has none of its own in OpenOrders: seen now.
                at_s = order.closetm if order.is_done and order.closetm else now_s
                earliest_s = at_s
                if after_gap:
                    # Anywhere between the last look (or the order's opening, if later) and then: a fill partly
                    # made long ago (a limit filled in part, then canceled) must not pass for a fresh one.
                    earliest_s = min(at_s, max(order.opentm, self._polled_s))
                yield MasterFill(order, order.vol_exec - vol, order.cost - cost, order.fee - fee, at_s, earliest_s)

    async def _dated_by_trades(self, fills: list[MasterFill], now_s: float) -> list[MasterFill]:
        """Entries that a gap dated too far back to copy, dated instead by the first execution of their new volume.

        The executions of a fill are the newest of its order's, up to its volume; if the pages read do not hold
        them all, the fill keeps its earliest possible time (and is not copied)."""
        doubtful = {fill.order.txid for fill in fills if fill.order.descr.type == "buy"
                    and fill.earliest_s < fill.at_s and now_s - fill.earliest_s > ENTRY_MAX_AGE_S}
        if not doubtful:
            return fills
        assert self._polled_s is not None  # a fill is dated back only after a gap since a known poll
        trades = await self._trades_of(doubtful, since_s=self._polled_s - _OVERLAP_S)
        dated = []
        for fill in fills:
            first_s = _first_execution_s(trades.get(fill.order.txid, []), fill.volume_base)
            if fill.order.txid in doubtful and first_s is not None:
                fill = replace(fill, earliest_s=min(fill.at_s, first_s))
            dated.append(fill)
        return dated

    async def _trades_of(self, txids: set[str], *, since_s: float) -> dict[str, list[Trade]]:
        """The executions of orders `txids` since `since_s`, newest first, from at most `_TRADE_PAGES` pages."""
        found: dict[str, list[Trade]] = {}
        offset = 0
        for _ in range(_TRADE_PAGES):
            page = await self.client.trades_history(start=int(since_s), ofs=offset or None)
            for trade in page.trades.values():
                if trade.ordertxid in txids:
                    found.setdefault(trade.ordertxid, []).append(trade)
            offset += len(page.trades)
            if not page.trades or offset >= page.count:
                break
        return found

    def _advance(self, orders: list[Order], now_s: float) -> None:
        newest_done = max((o.closetm or 0 for o in orders if o.is_done), default=0.0)
        self._since_s = max(self._since_s or 0.0, min(newest_done, now_s))
        # Keep what the next poll can still return (open orders, and done ones inside the look-back window).
        horizon = self._since_s - 2 * _OVERLAP_S
        listed = {o.txid: (o.closetm if o.is_done else None) for o in orders}
        self._seen = {
            txid: values for txid, values in self._seen.items()
            if txid in listed and (listed[txid] is None or listed[txid] >= horizon)
        }

    async def _signals_for(self, fills: list[MasterFill], balances: dict[str, Decimal],
                           equity_now: Decimal) -> list[Signal]:
        # Walk back from now: position and equity before each fill, newest first.
        held = {asset: amount for asset, amount in balances.items()}
        equity = equity_now
        signals: list[Signal] = []
        for fill in reversed(fills):
            pair = await self._pair_of(fill)
            if pair is None:
                continue
            side = fill.order.descr.type
            base = pair.base_common
            after = held.get(base, Decimal(0))
            # The fee, when paid in the base asset (`fcib`, Kraken's default for sells), moved the position too; it
            # is reported in USD either way.
            fee_base = _fee_in_base(fill)
            before = (after + fill.volume_base + fee_base if side == "sell"
                      else max(Decimal(0), after - fill.volume_base + fee_base))
            held[base] = before
            if pair.quote_common != "USD":
                log.warning("master_fill_not_copied", order_id=fill.order.txid, pair=pair.altname,
                            reason="only USD-quoted pairs are copied")
                continue
            equity += fill.fee_usd
            if self.own_copy is not None and fill.order.cl_ord_id and await self.own_copy(fill.order.cl_ord_id):
                log.warning("master_fill_not_copied", order_id=fill.order.txid, pair=pair.altname,
                            reason="a copy NIJA placed for a follower whose key trades the master's account")
                continue
            signals.append(signal_from_master_order(
                fill.order.txid,
                pair=pair.key,
                side=side,
                vol_exec=fill.volume_base,
                cost_usd=fill.cost_usd,
                fee_usd=fill.fee_usd,
                master_equity_usd=equity,
                position_before_base=before if side == "sell" else None,
                ordermin_base=pair.ordermin,
                reason=None,
                filled_at_s=fill.earliest_s,
                fill_ref=str(fill.order.vol_exec),  # one fill per order per poll: its cumulative volume
                fee_base=fee_base if side == "sell" else Decimal(0),
            ))
        signals.reverse()
        return signals


def _fee_in_base(fill: MasterFill) -> Decimal:
    """The fill's fee in the base asset when it was paid in it: `fcib`, which is also a sell's default when the
    order names neither fee currency."""
    flags = fill.order.oflags.split(",")
    in_base = "fcib" in flags or (fill.order.descr.type == "sell" and "fciq" not in flags)
    if not in_base or not fill.cost_usd:
        return Decimal(0)
    return fill.fee_usd * fill.volume_base / fill.cost_usd


def _first_execution_s(trades_newest_first: list[Trade], volume_base: Decimal) -> float | None:
    """When the newest executions adding up to `volume_base` began; None if these do not add up to it."""
    total = Decimal(0)
    for trade in trades_newest_first:
        total += trade.volume_base
        if total >= volume_base:
            return trade.time
    return None


def _executed(orders: Iterable[Order]) -> dict[str, Decimal]:
    """What each order has executed; orders that executed nothing (a new resting order) change no balance."""
    return {order.txid: order.vol_exec for order in orders if order.vol_exec}
