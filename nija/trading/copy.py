"""The copy engine: every master fill mirrored on every follower at once — sized right, never twice, never lost.

Path of one signal (DESIGN.md):
  1. `submit` stores the signal (durable) and puts it on the queue; a signal stored before is not copied again.
  2. The consumer inserts one intent per follower, each with its client order id fixed, in one transaction.
  3. Each follower gets its own task. Tasks of one follower on one pair are chained so they keep signal order;
     everything else runs at once, bounded by one global semaphore. Sizing happens inside the task, against the
     follower's in-memory portfolio, so no balance call sits on the path and a sell sees the buy before it.
  4. Each outcome is stored as it comes; when every follower is settled, each outcome is logged (`copy_result`,
     rendered only then so that no log line delays a send) and `copy_summary` with the latency from the master fill
     to the last follower acknowledgement.
Reconciliation (`resume`/`reconcile`): intents left unfinished by a crash or an unsettled failure are looked up on
the exchange by client order id, then recorded as found or sized and sent — never sent twice.
Held signals: while an intent of a follower on a pair is unsettled, that follower's portfolio does not know what the
order did, so the next signal on the same pair first settles it by lookup (retried with backoff) and is sized only
from the settled position; if it stays unknown, the next signal is held (unsettled, not sent) for reconciliation.

Exits are never dropped (invariant 4): an exit whose position cannot be read, or that the exchange refuses for now
(market not online, rate limit, the follower's key refused), stays unsettled and is retried by reconciliation. One
refused for insufficient funds is sent again at once a fee's worth smaller (a whole balance and its fee), then left
to reconciliation, which sizes it from balances read afresh (the follower sold or moved some itself), and fails
after a few such refusals so that it never holds the pair for good. An entry in the same case is skipped or failed:
buying later would be at a later price.

One follower's error, slowness or rate limit never delays another: each has its own task, its own timeout, and
the only shared resource is the semaphore, held just for the order call itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import NamedTuple, Protocol

from nija.accounts import FOLLOWER_KEY_PERMISSIONS, FollowerConfig, credential_names, refused_key_fix
from nija.event_loop import TIMER_STEP_S
from nija.kraken.errors import (
    AmbiguousOrderError,
    ConfigurationError,
    InsufficientFundsError,
    KeyRefusedError,
    KrakenError,
    MarketClosedError,
    RateLimitedError,
)
from nija.logs import get_logger
from nija.settings import CopyTradingMode
from nija.store import IntentRow, Store
from nija.timeouts import RequestTimeouts
from nija.trading.positions import BalanceRead, Portfolio, PriceBook, refresh_interval_s, utc_day
from nija.trading.signals import ENTRY_MAX_AGE_S, Signal, cl_ord_id_for
from nija.trading.sizing import (
    MARKET_BUY_PRICE_BUFFER,
    FollowerBook,
    FollowerLimits,
    OrderPlan,
    PairRules,
    Skip,
    SkipReason,
    size_copy,
)

__all__ = [
    "CopyEngine",
    "FollowerAccount",
    "OrderGateway",
    "Placed",
    "Fill",
    "CopyResult",
    "CopySummary",
]

log = get_logger("nija.copy")

# Followers whose tasks a fan-out starts before it lets their orders leave. One at a time costs an event-loop turn
# per follower; a handful keeps the first orders early at a fraction of the turns (4 was fastest at N = 100).
_STARTED_PER_STEP = 4
#: copy_result lines of followers already answered are written after this long, whoever is still being waited for
RESULT_LOG_AFTER_S = 1.0

ZERO = Decimal(0)


# --- what the engine needs from one account ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fill:
    """An order's execution as the exchange reports it."""

    order_id: str
    status: str  # pending | open | closed | canceled | expired
    executed_base: Decimal
    cost_usd: Decimal
    fee_usd: Decimal

    @property
    def done(self) -> bool:
        return self.status in ("closed", "canceled", "expired")


@dataclass(frozen=True, slots=True)
class Placed:
    """An acknowledged order; `fill` is set when the reply already told how it executed."""

    order_id: str
    fill: Fill | None = None
    recovered: bool = False  # the reply was lost and the order found by its client order id


class OrderGateway(Protocol):
    """One account's order and balance calls (nija.trading.kraken_gateway.KrakenGateway talks to Kraken)."""

    async def place(self, plan: OrderPlan, cl_ord_id: str) -> Placed: ...

    async def find(self, cl_ord_id: str) -> Fill | None:
        """The order carrying `cl_ord_id` as the account shows it now, or None."""

    def settle_delay_s(self, cl_ord_id: str, sent_at_s: float | None = None) -> float:
        """Seconds until a `find` returning None proves the order absent (an AddOrder sent with `cl_ord_id`,
        by this run or — before `sent_at_s`, the intent's stored time — by a previous one, may land until then)."""

    async def fill_of(self, order_id: str) -> Fill | None: ...

    async def read_balances(self) -> BalanceRead:
        """What the account can trade now and what else it owns, per common asset name (USD, BTC, ...)."""


@dataclass(slots=True)
class FollowerAccount:
    config: FollowerConfig
    gateway: OrderGateway
    portfolio: Portfolio = field(default_factory=Portfolio)
    in_flight: int = 0  # copy tasks running for this follower (a balance refresh waits for 0)
    unbooked: int = 0  # orders sent whose fill is not booked yet: a balance read now may hold what the book lacks
    #: cash that buys sent but not booked yet may spend: entries on other pairs, sized meanwhile, must not count it
    committed_usd: Decimal = Decimal(0)
    #: balance reads failed in a row, and why the last one did (the daemon reports the follower unreachable)
    failed_reads: int = 0
    read_problem: str | None = None
    #: the UTC day whose max_daily_loss block is in the store
    loss_limit_stored: str | None = None
    #: why the account cannot trade (its key was rejected); set by a balance read, cleared by the next good one
    unusable: str | None = None
    #: why the account is left out until a restart (its key trades the master's account)
    left_out: str | None = None
    limits: FollowerLimits | None = None  # the config's sizing knobs, built once

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = FollowerLimits.of(self.config)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def copies(self) -> bool:
        return self.config.enabled and self.config.copy_from_master and self.left_out is None


# --- results ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CopyResult:
    """One follower's outcome for one signal. status: succeeded | skipped | failed | unsettled."""

    signal_id: str
    name: str
    pair: str
    side: str
    status: str
    volume_base: Decimal | None = None
    notional_usd: Decimal | None = None
    order_id: str | None = None
    reason: str | None = None
    acked_at_s: float | None = None  # when the exchange answered the order call (success or rejection)


@dataclass(frozen=True, slots=True)
class CopySummary:
    signal_id: str
    succeeded: int
    skipped: int
    failed: int
    unsettled: int
    followers: int
    latency_ms: float | None
    results: tuple[CopyResult, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"succeeded": self.succeeded, "skipped": self.skipped, "failed": self.failed,
                           "unsettled": self.unsettled, "followers": self.followers, "latency_ms": self.latency_ms})


_STORE_STATUS = {"succeeded": "done", "skipped": "skipped", "failed": "failed", "unsettled": "unknown"}
_RESULT_STATUS = {"done": "succeeded", "skipped": "skipped", "failed": "failed", "unknown": "unsettled"}


class _Unsettled(Exception):
    """The order's fate is unknown (timeout, lost reply not settled by lookup): reconcile later by cl_ord_id."""


class _BookedFill(NamedTuple):
    """A follower's fill booked by its copy: the exchange's own (`read`), or a market order's estimate."""

    account: FollowerAccount
    rules: PairRules
    side: str
    fill: Fill
    loads: int  # the portfolio's balance reads when it was booked: a later read holds the real fill already
    read: bool


# --- the engine ------------------------------------------------------------------------------------------------------

class CopyEngine:
    """Consumes `queue` (signals) and mirrors each on every copying follower.

    `pairs` resolves a signal's pair name to its AssetPairs entry (a nija.kraken.pairs.Pairs or any mapping with
    `.get(name)` returning a PairInfo). `price_source`, if given, returns USD prices per common asset name and is
    read on the refresh schedule to value follower holdings.
    """

    def __init__(
        self,
        store: Store,
        pairs,
        followers: Iterable[FollowerAccount],
        *,
        mode: CopyTradingMode = CopyTradingMode.MASTER_FOLLOW,
        concurrency: int = 500,
        taker_fee_rate: Decimal = Decimal("0.004"),
        order_timeout_s: float = 10.0,
        settle_attempts: int = 4,
        settle_retry_s: float = 0.5,
        refresh_s: float | None = None,
        price_source: Callable[[], Awaitable[Mapping[str, Decimal]]] | None = None,
        queue: asyncio.Queue | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pairs = pairs
        self.followers: dict[str, FollowerAccount] = {f.name: f for f in followers}
        self.mode = mode
        self.taker_fee_rate = taker_fee_rate
        self.order_timeout_s = order_timeout_s
        if settle_attempts < 1 or settle_retry_s < 0:
            raise ValueError("CopyEngine: settle_attempts must be >= 1 and settle_retry_s >= 0")
        self.settle_attempts = settle_attempts
        self.settle_retry_s = settle_retry_s
        self.refresh_s = refresh_s
        self.price_source = price_source
        self.prices = PriceBook()
        self.queue: asyncio.Queue[Signal] = queue if queue is not None else asyncio.Queue()
        self.clock = clock
        self._semaphore = asyncio.Semaphore(concurrency)
        self._time_limits = RequestTimeouts(resolution_s=0.1)  # order_timeout_s: one timer per slot, not per call
        self._tails: dict[tuple[str, str], asyncio.Task] = {}  # last copy task per (follower, pair)
        self._copy_tasks: set[asyncio.Task] = set()  # every follower task running
        self._in_flight: dict[str, asyncio.Task] = {}  # signal id → its summary task
        self._dispatching: set[str] = set()  # signal ids claimed by a dispatch not yet in _in_flight
        self._starting = asyncio.Lock()  # held by the fan-out starting its follower tasks
        self._kept_open: set[str] = set()  # signals left open outside MASTER_FOLLOW (logged once)
        # cl_ord_id → the follower's balance-read count when its order was sent, until the order is booked
        self._loads_at_send: dict[str, int] = {}
        self._rules: dict[str, PairRules] = {}
        # (follower, pair) → cl_ord_id → its signal, oldest first: intents whose order may or may not exist
        self._unsettled: dict[tuple[str, str], dict[str, Signal]] = {}
        # cl_ord_id → its outcome, when a later signal's hold settled it (until its own signal is reconciled)
        self._settled_early: dict[str, CopyResult] = {}
        # cl_ord_id → (refusals counted, when the last was) of an exit refused for funds the follower's book counted
        self._exit_refusals: dict[str, tuple[int, float]] = {}
        #: the master's latest equity (from its fills, and the daemon's hourly read): it picks the rate profile
        self.master_equity_usd: Decimal | None = None
        self._today_number, self._today_text = -1, ""  # see _today
        self._background: list[asyncio.Task] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.summaries: list[CopySummary] = []  # most recent last; trimmed to keep memory flat
        #: signals fanned out to the followers since start (each once, however often it is reconciled)
        self.signals_copied = 0
        self._summary_waiters: dict[str, asyncio.Future] = {}
        # signal id → each follower's fill, logged (and, for a market order's estimate, read back) after its fan-out
        self._to_confirm: dict[str, list[_BookedFill]] = {}

    # --- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self, *, refresh_first: bool = True) -> None:
        """Read every follower's balances, resume unfinished work, then consume the queue and refresh on schedule."""
        if refresh_first:
            await self.refresh_all()
        await self.resume()
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._consume(), name="copy-consumer"))
        self._background.append(loop.create_task(self._refresh_loop(), name="copy-refresh"))

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop taking signals, let follower tasks in flight finish (up to `grace_s`), cancel the rest, flush the
        store. A cancelled intent stays unfinished: the next start looks it up by client order id."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        pending = list(self._in_flight.values())
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        late = [task for task in (*self._copy_tasks, *self._in_flight.values()) if not task.done()]
        if late:
            log.warning("copy_tasks_cancelled", tasks=len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)  # none may write to the store once it is closed
        await self.store.flush()

    async def __aenter__(self) -> CopyEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def submit(self, signal: Signal) -> bool:
        """Store the signal, then queue it. False (nothing queued) when it was stored before."""
        if not await self.store.save_signal(signal):
            log.info("signal_already_seen", signal_id=signal.signal_id)
            return False
        self.queue.put_nowait(signal)
        return True

    async def copy(self, signal: Signal) -> CopySummary | None:
        """Store and copy one signal now, bypassing the queue; returns its summary (None if seen before)."""
        if not await self.store.save_signal(signal):
            return None
        waiter = self._waiter(signal.signal_id)
        await self._dispatch(signal)
        return await waiter

    async def summary_of(self, signal_id: str) -> CopySummary:
        """Wait for a signal's summary (submitted through the queue)."""
        for summary in reversed(self.summaries):
            if summary.signal_id == signal_id:
                return summary
        return await self._waiter(signal_id)

    async def wait_idle(self) -> None:
        """Until the queue is empty and every signal taken from it is settled."""
        while True:
            await self.queue.join()
            if self._in_flight:
                await asyncio.wait(list(self._in_flight.values()))
                continue
            if self.queue.empty():
                return

    def _waiter(self, signal_id: str) -> asyncio.Future:
        future = self._summary_waiters.get(signal_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._summary_waiters[signal_id] = future
        return future

    async def _consume(self) -> None:
        while True:
            signal = await self.queue.get()
            try:
                await self._dispatch(signal)
            except Exception:
                log.exception("copy_dispatch_failed", signal_id=signal.signal_id)
            finally:
                self.queue.task_done()

    # --- fan-out ---------------------------------------------------------------------------------------------------

    async def _dispatch(self, signal: Signal, *, resumed: bool = False) -> asyncio.Task | None:
        """Store the intents of `signal` and start one task per follower. Returns once every task is started,
        with the task that summarises them (None when nothing was started).

        A signal is claimed before the first await: the consumer and `resume` (run every minute by the daemon)
        may reach the same signal at once, and only one of them may fan it out.
        """
        signal_id = signal.signal_id
        if signal_id in self._in_flight or signal_id in self._dispatching:
            return None
        self._dispatching.add(signal_id)
        try:
            await self._fan_out(signal, resumed)
        finally:
            self._dispatching.discard(signal_id)
        return self._in_flight.get(signal_id)

    async def _fan_out(self, signal: Signal, resumed: bool) -> None:
        status, existing = await self.store.copy_state(signal.signal_id)
        if status == "done":
            if not resumed:
                log.info("signal_already_copied", signal_id=signal.signal_id)
            return
        # Intents stored before (by a run or a dispatch that got that far) may have orders out: they are read back
        # and looked up by client order id, never sent blind.
        unfinished = sum(1 for r in existing if not r.finished)
        self.master_equity_usd = signal.master_equity_usd
        if self.mode is not CopyTradingMode.MASTER_FOLLOW and unfinished:
            # Orders of unknown outcome from MASTER_FOLLOW: the signal stays open until that mode settles them.
            if signal.signal_id not in self._kept_open:
                self._kept_open.add(signal.signal_id)
                log.warning("copy_signal_kept_open", signal_id=signal.signal_id, unfinished=unfinished,
                            mode=self.mode.value, fix="run with COPY_TRADING_MODE=MASTER_FOLLOW to settle them")
            waiter = self._summary_waiters.pop(signal.signal_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(RuntimeError(f"signal {signal.signal_id} kept open: {unfinished} intents "
                                                  f"of unknown outcome wait for MASTER_FOLLOW"))
            return
        if resumed:
            log.info("copy_resume", signal_id=signal.signal_id, intents=len(existing), unfinished=unfinished)
        if self.mode is not CopyTradingMode.MASTER_FOLLOW:
            summary = CopySummary(signal.signal_id, 0, 0, 0, 0, 0, None)
            await self.store.finish_signal(signal.signal_id, summary.to_json())
            log.info("copy_summary", signal_id=signal.signal_id, succeeded=0, skipped=0, failed=0, followers=0,
                     latency_ms=None, mode=self.mode.value)
            self._publish(summary)
            return

        try:
            rules = self._rules_for(signal.pair)
        except Exception as exc:  # an unknown pair: every follower fails with the reason, nothing is sent
            rules, rules_error = None, f"pair {signal.pair!r} unknown: {exc}"
        else:
            rules_error = None
            self.prices.set(rules.base, signal.avg_price_usd)

        prior: list[CopyResult] = []
        # (account, cl_ord_id, may already exist, unix time the intent was last stored)
        work: list[tuple[FollowerAccount, str, bool, float | None]] = []
        if existing:
            for row in existing:
                account = self.followers.get(row.follower)
                if row.finished:
                    self._settled_early.pop(row.cl_ord_id, None)
                    prior.append(CopyResult(signal.signal_id, row.follower, row.pair, row.side,
                                            _RESULT_STATUS[row.status], row.volume_base, row.notional_usd,
                                            row.order_id, row.reason))
                elif account is None:
                    # Nothing can look its order up any more: finish the intent so that the signal can finish.
                    reason = f"follower_not_configured: {row.follower} is no longer in the accounts file"
                    log.warning("copy_follower_not_configured", name=row.follower, signal_id=signal.signal_id,
                                cl_ord_id=row.cl_ord_id, status=row.status)
                    self.store.record_result(row.cl_ord_id, "skipped", reason=reason)
                    prior.append(CopyResult(signal.signal_id, row.follower, row.pair, row.side, "skipped",
                                            row.volume_base, row.notional_usd, row.order_id, reason))
                else:
                    work.append((account, row.cl_ord_id, True, row.updated_at_s))
        else:
            targets = [account for account in self.followers.values() if account.copies]
            work = [(account, cl_ord_id_for(signal.signal_id, account.name), False, None) for account in targets]
            pair_name = rules.pair if rules else signal.pair
            # Invariant 6: every intent is durable before any of its orders leaves.
            await self.store.add_intents(
                IntentRow(signal.signal_id, account.name, cl, pair_name, signal.side) for account, cl, _, _ in work
            )

        loop = asyncio.get_running_loop()
        tasks = []
        interrupted = False
        # One fan-out starts its tasks at a time, so every follower gets concurrent signals in the same order.
        async with self._starting:
            for account, cl_ord_id, may_exist, sent_at_s in work:
                key = (account.name, rules.pair if rules else signal.pair)
                previous = self._tails.get(key)
                task = loop.create_task(self._copy_one(signal, account, rules, rules_error, cl_ord_id, may_exist,
                                                       previous, sent_at_s))
                self._tails[key] = task
                self._copy_tasks.add(task)
                task.add_done_callback(self._copy_tasks.discard)
                task.add_done_callback(lambda t, key=key: self._tails.pop(key) if self._tails.get(key) is t else None)
                tasks.append(task)
                # Let these orders leave before more followers are prepared: the first orders reach the exchange
                # while later ones are still being signed, rather than all of them after the last.
                if len(tasks) % _STARTED_PER_STEP == 0:
                    try:
                        await asyncio.sleep(0)
                    except asyncio.CancelledError:
                        interrupted = True  # start the rest anyway: each stored intent gets its task, stop() its grace
        if not resumed:
            self.signals_copied += 1
        self._in_flight[signal.signal_id] = loop.create_task(self._summarise(signal, tasks, prior))
        if interrupted:
            raise asyncio.CancelledError

    async def _summarise(self, signal: Signal, tasks: list[asyncio.Task],
                         prior: list[CopyResult]) -> CopySummary | None:
        failure: BaseException | None = None
        try:
            # Results are logged once the fan-out is answered (rendering must not delay sends or acks), or after
            # a second for those in by then, so that one slow follower does not hold back every other's line.
            pending = set(tasks)
            while pending:
                finished, pending = await asyncio.wait(pending, timeout=RESULT_LOG_AFTER_S)
                for task in tasks:
                    if task in finished:
                        _log_result(task.result(), signal.signal_id)
            done = [task.result() for task in tasks]
            results = prior + done
            acks = [r.acked_at_s for r in results if r.acked_at_s is not None]
            latency_ms = round((max(acks) - signal.filled_at_s) * 1000, 1) if acks else None
            counts = {status: sum(1 for r in results if r.status == status)
                      for status in ("succeeded", "skipped", "failed", "unsettled")}
            summary = CopySummary(signal.signal_id, counts["succeeded"], counts["skipped"],
                                  counts["failed"] + counts["unsettled"], counts["unsettled"], len(results),
                                  latency_ms, tuple(results))
            log.info("copy_summary", signal_id=signal.signal_id, succeeded=summary.succeeded,
                     skipped=summary.skipped, failed=summary.failed, unsettled=summary.unsettled,
                     followers=summary.followers, latency_ms=latency_ms, pair=signal.pair, side=signal.side)
            await self.store.flush()
            if not summary.unsettled:  # a signal with unsettled intents stays open for reconciliation
                await self.store.finish_signal(signal.signal_id, summary.to_json())
            self._publish(summary)
            await self._confirm_fills(signal.signal_id)
            return summary
        except Exception as exc:  # a store or bookkeeping failure: the intents stay open for reconciliation
            log.exception("copy_summary_failed", signal_id=signal.signal_id)
            failure = exc
            return None
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        finally:
            self._to_confirm.pop(signal.signal_id, None)
            self._in_flight.pop(signal.signal_id, None)
            waiter = self._summary_waiters.pop(signal.signal_id, None) if failure is not None else None
            if waiter is not None and not waiter.done():  # never leave copy()/summary_of() hanging
                if isinstance(failure, asyncio.CancelledError):
                    waiter.cancel()
                else:
                    waiter.set_exception(RuntimeError(
                        f"copy of signal {signal.signal_id} failed before its summary: {_describe(failure)}"))

    def _publish(self, summary: CopySummary) -> None:
        self.summaries.append(summary)
        del self.summaries[:-100]
        future = self._summary_waiters.pop(summary.signal_id, None)
        if future is not None and not future.done():
            future.set_result(summary)

    async def follower_of(self, cl_ord_id: str) -> str | None:
        """The follower an order was sent for, if this engine sent it (its intents are stored before the send)."""
        return await self.store.follower_of(cl_ord_id)

    def leave_out(self, name: str, reason: str) -> bool:
        """Copy nothing more to follower `name` until a restart; False if it was left out already (or unknown)."""
        account = self.followers.get(name)
        if account is None or account.left_out is not None:
            return False
        account.left_out = reason
        return True

    def set_pairs(self, pairs) -> None:
        """Use freshly loaded pairs (new listings, changed status or minimums) from the next signal on."""
        self.pairs = pairs
        self._rules.clear()

    def _pair_status(self, rules: PairRules) -> str:
        """The pair's trading status as `pairs` has it now (the cached rules may predate a change)."""
        try:
            return self.pairs.get(rules.pair).status
        except Exception:
            return rules.info.status

    def _rules_for(self, pair: str) -> PairRules:
        rules = self._rules.get(pair)
        if rules is None:
            rules = self._rules[pair] = PairRules.of(self.pairs.get(pair))
        return rules

    # --- one follower ----------------------------------------------------------------------------------------------

    async def _copy_one(self, signal: Signal, account: FollowerAccount, rules: PairRules | None,
                        rules_error: str | None, cl_ord_id: str, may_exist: bool,
                        previous: asyncio.Task | None, sent_at_s: float | None = None) -> CopyResult:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))  # keep signal order per follower and pair; its outcome does not matter
        account.in_flight += 1
        base = dict(signal_id=signal.signal_id, name=account.name, pair=rules.pair if rules else signal.pair,
                    side=signal.side)
        key = (account.name, rules.pair if rules else signal.pair)
        try:
            early = self._settled_early.pop(cl_ord_id, None) if may_exist else None
            if early is not None:
                result = early  # settled by a later signal's hold (the store may not have it yet)
            elif rules is None:
                result = CopyResult(**base, status="failed", reason=rules_error)
            else:
                held_by = await self._settle_earlier(account, rules, key, cl_ord_id)
                if held_by is not None:
                    result = CopyResult(**base, status="unsettled", reason=f"held: {held_by}")
                else:
                    result = await self._settle(signal, account, rules, cl_ord_id, may_exist, base, sent_at_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the other followers down
            log.exception("copy_task_crashed", name=account.name, signal_id=signal.signal_id)
            result = CopyResult(**base, status="unsettled", reason=f"internal error: {exc.__class__.__name__}")
        finally:
            account.in_flight -= 1
        if result.status == "unsettled":
            # An intent unsettled before keeps its place: later intents on this pair must settle it first.
            self._unsettled.setdefault(key, {}).setdefault(cl_ord_id, signal)
        else:
            self._forget_unsettled(key, cl_ord_id)
            self._exit_refusals.pop(cl_ord_id, None)
        self.store.record_result(cl_ord_id, _STORE_STATUS[result.status], volume_base=result.volume_base,
                                 notional_usd=result.notional_usd, order_id=result.order_id, reason=result.reason)
        return result  # logged by _summarise once the whole fan-out is answered: rendering must not delay sends

    @property
    def unsettled(self) -> int:
        """Copies waiting for reconciliation (an order's outcome unknown, or an exit the exchange refused for now)."""
        return sum(len(pending) for pending in self._unsettled.values())

    def _forget_unsettled(self, key: tuple[str, str], cl_ord_id: str) -> None:
        pending = self._unsettled.get(key)
        if pending is not None:
            pending.pop(cl_ord_id, None)
            if not pending:
                del self._unsettled[key]

    async def _settle_earlier(self, account: FollowerAccount, rules: PairRules, key: tuple[str, str],
                              own_cl_ord_id: str) -> str | None:
        """Settle this follower's unsettled intents on this pair that precede `own_cl_ord_id`, oldest first, so
        that the position it is sized from is known.

        Each is looked up by client order id (found → its fill is booked; proven absent → sized and sent as
        reconciliation would), retried with backoff. Returns why the position is still unknown, or None.
        """
        while True:
            pending = self._unsettled.get(key)
            if not pending:
                return None
            cl_ord_id, earlier = next(iter(pending.items()))
            if cl_ord_id == own_cl_ord_id:  # everything before this intent is settled
                return None
            base = dict(signal_id=earlier.signal_id, name=account.name, pair=rules.pair, side=earlier.side)
            for attempt in range(self.settle_attempts):
                if attempt:
                    await asyncio.sleep(self.settle_retry_s * 2 ** (attempt - 1))
                result = await self._settle(earlier, account, rules, cl_ord_id, True, base)
                if result.status != "unsettled":
                    break
            if result.status == "unsettled":
                return f"the earlier order {cl_ord_id} on {rules.pair} is still unsettled ({result.reason})"
            self._forget_unsettled(key, cl_ord_id)
            self._exit_refusals.pop(cl_ord_id, None)
            self._settled_early[cl_ord_id] = result
            self.store.record_result(cl_ord_id, _STORE_STATUS[result.status], volume_base=result.volume_base,
                                     notional_usd=result.notional_usd, order_id=result.order_id,
                                     reason=result.reason)
            _log_result(result, earlier.signal_id)  # what the follower's earlier copy did, now that it is known

    async def _settle(self, signal: Signal, account: FollowerAccount, rules: PairRules, cl_ord_id: str,
                      may_exist: bool, base: dict, sent_at_s: float | None = None) -> CopyResult:
        gateway = account.gateway
        if may_exist:
            # Resumed intent: the order may already be on the exchange. Look first, send only if proven absent.
            try:
                found = await self._find_settled(gateway, cl_ord_id, sent_at_s)
            except (KrakenError, TimeoutError) as exc:
                return CopyResult(**base, status="unsettled", reason=f"lookup failed: {_describe(exc)}")
            if found is not None:
                if not found.done:
                    return CopyResult(**base, status="unsettled", order_id=found.order_id,
                                      reason=f"found {found.status}: settled once the exchange closes it")
                if self._loads_at_send.pop(cl_ord_id, None) == account.portfolio.loads:
                    self._apply(account, rules, signal.side, found)  # no balance read since it was sent
                elif not await self._reload_book(account):
                    # A balance read since it was sent (a refresh, a restart) may already hold it: the book is read
                    # afresh rather than added to.
                    return CopyResult(**base, status="unsettled", order_id=found.order_id,
                                      reason="found, but the balances to book it could not be read")
                return CopyResult(**base, status="succeeded", volume_base=found.executed_base or None,
                                  notional_usd=found.cost_usd or None, order_id=found.order_id,
                                  reason="reconciled: found by client order id", acked_at_s=self.clock())

        if not account.copies:
            # Switched off (enabled or copy_from_master false) since this intent was stored: the account is its
            # owner's now. An order already placed is booked above; nothing new is sent.
            return CopyResult(**base, status="skipped",
                              reason=f"copying_off: {account.name} no longer copies the master; nothing sent")
        age_s = self.clock() - signal.filled_at_s
        if signal.side == "buy" and age_s > ENTRY_MAX_AGE_S:
            # Not placed, and the master's entry is old (resumed after an outage, or queued behind a slow follower):
            # buying now would be at today's price.
            return CopyResult(**base, status="skipped",
                              reason=f"stale_entry: master filled {age_s:.0f} s ago (limit {ENTRY_MAX_AGE_S:.0f} s)")

        status = self._pair_status(rules)
        if status != "online":
            # cancel_only, post_only, limit_only, reduce_only: Kraken would refuse a market order.
            if signal.side == "buy":
                return CopyResult(**base, status="skipped",
                                  reason=f"pair_{status}: {rules.pair} is in {status} mode, no order sent")
            # An exit is never dropped (invariant 4): it waits for reconciliation once the pair takes it again.
            return CopyResult(**base, status="unsettled",
                              reason=f"pair_{status}: {rules.pair} is in {status} mode, exit retried once it is back")
        if account.unusable and not account.portfolio.known:
            # The exchange refused this account's key: report that, rather than "balance unknown". An exit is never
            # dropped: it is sent once the key works (in this run, or the next one with the key fixed).
            if signal.side == "sell":
                return CopyResult(**base, status="unsettled",
                                  reason=f"account unusable: {account.unusable}; exit retried once its key works")
            return CopyResult(**base, status="failed", reason=f"account unusable: {account.unusable}")
        book = self._book(account, rules)
        if (signal.side == "sell" and (book.position_base is None or cl_ord_id in self._exit_refusals)
                and await self._reload_book(account)):
            # Unread (the read at start-up failed) or refused before (for funds the book counted, say): what the
            # exit is sized from is read afresh.
            book = self._book(account, rules)
        if book.daily_loss_reached:
            await self._keep_loss_limit(account)
        plan = size_copy(signal, account.limits, book, rules, taker_fee_rate=self.taker_fee_rate)
        if isinstance(plan, Skip):
            if plan.reason is SkipReason.POSITION_UNKNOWN:  # an exit: never dropped, settled once it is known
                return CopyResult(**base, status="unsettled", reason=f"{plan}; exit retried once it is read")
            return CopyResult(**base, status="skipped", reason=str(plan))
        self._loads_at_send[cl_ord_id] = account.portfolio.loads
        committed_usd = self._worst_cost_usd(plan) if plan.side == "buy" else Decimal(0)
        account.unbooked += 1
        account.committed_usd += committed_usd
        try:
            result = await self._send_and_book(signal, account, rules, plan, cl_ord_id, base)
        finally:
            account.unbooked -= 1
            account.committed_usd -= committed_usd
        if result.status != "unsettled":
            self._loads_at_send.pop(cl_ord_id, None)
        return result

    async def _send_and_book(self, signal: Signal, account: FollowerAccount, rules: PairRules, plan: OrderPlan,
                             cl_ord_id: str, base: dict, *, refused_whole: bool = False) -> CopyResult:
        try:
            placed = await self._place(account.gateway, plan, cl_ord_id)
        except _Unsettled as exc:
            return CopyResult(**base, status="unsettled", volume_base=plan.volume_base,
                              notional_usd=plan.notional_usd, reason=str(exc))
        except InsufficientFundsError as exc:
            if plan.side == "sell":
                smaller = None if refused_whole else self._less_the_fee(plan, rules, signal)
                if smaller is not None:
                    # Kraken can refuse selling a whole balance once its fee is counted (API.md §8): nothing was
                    # placed, so the same client order id goes again at once, a fee's worth smaller.
                    return await self._send_and_book(signal, account, rules, smaller, cl_ord_id, base,
                                                     refused_whole=True)
                # The book counts more than the follower has (a sale or transfer of its own): reconciliation reads
                # the balances afresh and sizes the exit again, a few times, before calling it failed.
                return self._exit_refused(base, plan, cl_ord_id, exc, "exit retried once the balances are read again")
            return CopyResult(**base, status="failed", volume_base=plan.volume_base,
                              notional_usd=plan.notional_usd, reason=_describe(exc), acked_at_s=self.clock())
        except _REFUSED_FOR_NOW as exc:
            if plan.side == "sell":  # nothing executed; reconciliation proves it absent, re-sizes and sends it
                return CopyResult(**base, status="unsettled", volume_base=plan.volume_base,
                                  notional_usd=plan.notional_usd, reason=f"exit retried later: {_describe(exc)}")
            return CopyResult(**base, status="failed", volume_base=plan.volume_base, notional_usd=plan.notional_usd,
                              reason=_describe(exc), acked_at_s=self.clock())
        except KrakenError as exc:
            if plan.side == "sell":
                # Any other refusal of an exit (an error string Kraken added, too many open orders, a pair's minimum
                # changed): it executed nothing, and leaving the position held is worse than trying again a few times.
                return self._exit_refused(base, plan, cl_ord_id, exc, "exit retried later")
            return CopyResult(**base, status="failed", volume_base=plan.volume_base, notional_usd=plan.notional_usd,
                              reason=_describe(exc), acked_at_s=self.clock())
        acked_at_s = self.clock()
        fill = placed.fill if placed.fill is not None and placed.fill.done else None
        if fill is None and plan.limit_price_usd is not None:
            # An IOC limit may fill in part or not at all: the next signal on this pair must see what it got.
            fill = await self._final_fill(account, placed.order_id)
            if fill is None:
                return CopyResult(**base, status="unsettled", volume_base=plan.volume_base,
                                  notional_usd=plan.notional_usd, order_id=placed.order_id, acked_at_s=acked_at_s,
                                  reason="placed; what the IOC order got could not be read yet")
        volume_base, notional_usd = plan.volume_base, plan.notional_usd
        if fill is not None:
            self._apply(account, rules, plan.side, fill)
            volume_base, notional_usd = fill.executed_base, fill.cost_usd  # an IOC limit says what it really got
            if not volume_base:
                return CopyResult(**base, status="skipped", volume_base=volume_base, notional_usd=notional_usd,
                                  order_id=placed.order_id, acked_at_s=acked_at_s,
                                  reason=f"beyond_entry_slippage: nothing filled at or below {plan.limit_price_usd}")
            booked = _BookedFill(account, rules, plan.side, fill, account.portfolio.loads, read=True)
        else:
            # A market order fills at once: book the planned volume at the master's price now, and read the real
            # fill once every follower of this signal has its answer (that read must not slow the fan-out).
            estimate = Fill(placed.order_id, "closed", plan.volume_base, plan.notional_usd,
                            plan.notional_usd * self.taker_fee_rate)
            self._apply(account, rules, plan.side, estimate)
            booked = _BookedFill(account, rules, plan.side, estimate, account.portfolio.loads, read=False)
        self._to_confirm.setdefault(signal.signal_id, []).append(booked)
        return CopyResult(**base, status="succeeded", volume_base=volume_base, notional_usd=notional_usd,
                          order_id=placed.order_id, acked_at_s=acked_at_s,
                          reason="recovered after a lost reply" if placed.recovered else None)

    def _exit_refused(self, base: dict, plan: OrderPlan, cl_ord_id: str, exc: KrakenError, retry: str) -> CopyResult:
        """An exit the exchange refused: unsettled, so that reconciliation sizes it again from balances read afresh
        and sends it, until it has been refused EXIT_REFUSALS_BEFORE_FAILING times; then failed."""
        refusals, last_s = self._exit_refusals.get(cl_ord_id, (0, float("-inf")))
        now_s = self.clock()
        if now_s - last_s >= EXIT_REFUSAL_SPACING_S:  # a later signal's hold retries within seconds
            refusals, last_s = refusals + 1, now_s
        self._exit_refusals[cl_ord_id] = (refusals, last_s)
        if refusals < EXIT_REFUSALS_BEFORE_FAILING:
            return CopyResult(**base, status="unsettled", volume_base=plan.volume_base, notional_usd=plan.notional_usd,
                              reason=f"{retry}: {_describe(exc)}")
        return CopyResult(**base, status="failed", volume_base=plan.volume_base, notional_usd=plan.notional_usd,
                          reason=_describe(exc), acked_at_s=now_s)

    async def _find_settled(self, gateway: OrderGateway, cl_ord_id: str, sent_at_s: float | None) -> Fill | None:
        """The order carrying `cl_ord_id`, or None once proven absent. Waiting for the moment a lookup proves it
        holds no global slot: only the lookup calls do."""
        loop = asyncio.get_running_loop()
        settles_at = loop.time() + gateway.settle_delay_s(cl_ord_id, sent_at_s)  # fixed before the first look
        while True:
            async with self._semaphore:
                async with self._time_limits.limit(self.order_timeout_s):
                    # Only a lookup begun once the order can no longer land proves it absent: its first call may
                    # run before that moment and its last after it, with the order landing in between.
                    started_at = loop.time()
                    found = await gateway.find(cl_ord_id)
            if found is not None or started_at >= settles_at:
                return found
            await asyncio.sleep(max(0.0, settles_at - loop.time()) + TIMER_STEP_S)  # never before the moment

    async def _read_fill(self, account: FollowerAccount, order_id: str) -> Fill | None:
        try:
            async with self._semaphore:
                async with self._time_limits.limit(self.order_timeout_s):
                    return await account.gateway.fill_of(order_id)
        except (KrakenError, TimeoutError) as exc:
            log.warning("copy_fill_unknown", name=account.name, order_id=order_id, error=_describe(exc))
            return None

    async def _final_fill(self, account: FollowerAccount, order_id: str) -> Fill | None:
        """The order's fill once the exchange has closed it (a fill read while it is still pending says nothing of
        what it will get), read up to `settle_attempts` times with backoff; None when it never was."""
        for attempt in range(self.settle_attempts):
            if attempt:
                await asyncio.sleep(self.settle_retry_s * 2 ** (attempt - 1))
            fill = await self._read_fill(account, order_id)
            if fill is not None and fill.done:
                return fill
        return None

    async def _confirm_fills(self, signal_id: str) -> None:
        """Log what each follower's order of this signal really got (one `copy_fill` line each). A market order
        was booked at the master's price: its fill is read now and replaces that estimate, unless a balance read
        since already holds the real one. An IOC limit's fill was read before its result."""

        async def confirm(booked: _BookedFill) -> None:
            account, rules, side, fill = booked.account, booked.rules, booked.side, booked.fill
            actual = fill if booked.read else await self._final_fill(account, fill.order_id)
            if actual is None:
                return
            log.info("copy_fill", name=account.name, pair=rules.pair, side=side, order_id=actual.order_id,
                     volume=f"{actual.executed_base:f}", notional=str(_cents(actual.cost_usd)),
                     fee_usd=f"{actual.fee_usd:f}", signal_id=signal_id)
            if not booked.read and account.portfolio.loads == booked.loads:
                account.portfolio.correct_fill(rules.base, side, fill.executed_base, fill.cost_usd, fill.fee_usd,
                                               actual.executed_base, actual.cost_usd, actual.fee_usd)

        await asyncio.gather(*(confirm(booked) for booked in self._to_confirm.pop(signal_id, [])))

    async def _place(self, gateway: OrderGateway, plan: OrderPlan, cl_ord_id: str) -> Placed:
        """Send the order. Rejections that executed nothing (rate limit, nonce) are retried by the client, not here.

        The order's time limit starts once it holds a slot: waiting for one is not the exchange being slow."""
        try:
            async with self._semaphore:
                async with self._time_limits.limit(self.order_timeout_s):
                    return await gateway.place(plan, cl_ord_id)
        except AmbiguousOrderError as exc:
            raise _Unsettled(f"order outcome unknown: {_describe(exc)}") from None
        except TimeoutError:
            raise _Unsettled(f"no answer within {self.order_timeout_s:g} s: outcome unknown") from None
        except KrakenError as exc:
            if exc.ambiguous_for_orders:
                raise _Unsettled(f"order outcome unknown: {_describe(exc)}") from None
            raise

    def _less_the_fee(self, plan: OrderPlan, rules: PairRules, signal: Signal) -> OrderPlan | None:
        """The exit `plan` shrunk so that it and its fee fit in what it asked for; None if that is no order."""
        volume = rules.info.round_volume_down(plan.volume_base / (1 + self.taker_fee_rate))
        if volume >= plan.volume_base or rules.info.minimum_shortfall(volume, signal.avg_price_usd) is not None:
            return None
        return replace(plan, volume_base=volume, notional_usd=volume * signal.avg_price_usd)

    def _worst_cost_usd(self, plan: OrderPlan) -> Decimal:
        """What a buy can spend at most: its IOC limit, or the market buffer sizing allowed for, plus the fee."""
        worst_usd = (plan.volume_base * plan.limit_price_usd if plan.limit_price_usd is not None
                     else plan.notional_usd * (1 + MARKET_BUY_PRICE_BUFFER))
        return worst_usd * (1 + self.taker_fee_rate)

    def _book(self, account: FollowerAccount, rules: PairRules) -> FollowerBook:
        portfolio = account.portfolio
        equity = portfolio.equity_usd(self.prices)
        cash = portfolio.cash_usd()
        return FollowerBook(
            equity_usd=equity,
            free_cash_usd=None if cash is None else cash - account.committed_usd,
            position_base=portfolio.held(rules.base),
            daily_loss_reached=portfolio.daily_loss_reached(account.config.max_daily_loss, equity, self._today()),
        )

    async def _keep_loss_limit(self, account: FollowerAccount) -> None:
        """Store the day a follower reached max_daily_loss, once: a restart later that day keeps the block."""
        portfolio = account.portfolio
        if portfolio.loss_limit_day is not None and portfolio.loss_limit_day != account.loss_limit_stored:
            log.warning("daily_loss_limit_reached", name=account.name, day=portfolio.loss_limit_day,
                        max_daily_loss=str(account.config.max_daily_loss),
                        day_start_equity_usd=str(portfolio.day_start_equity_usd))
            await self.store.mark_loss_limit(account.name, portfolio.loss_limit_day)
            account.loss_limit_stored = portfolio.loss_limit_day

    def _today(self) -> str:
        """The UTC day, formatted once per day (unix time has 86,400 s in every day)."""
        now_s = self.clock()
        if int(now_s // 86_400) != self._today_number:
            self._today_number, self._today_text = int(now_s // 86_400), utc_day(now_s)
        return self._today_text

    def _apply(self, account: FollowerAccount, rules: PairRules, side: str, fill: Fill) -> None:
        account.portfolio.apply_fill(rules.base, side, fill.executed_base, fill.cost_usd, fill.fee_usd)

    # --- reconciliation --------------------------------------------------------------------------------------------

    async def resume(self) -> int:
        """Finish what a previous run (or an unsettled failure) left open: returns how many signals were taken up."""
        return len(await self._resume())

    async def _resume(self) -> list[asyncio.Task]:
        started = []
        for signal in await self.store.unfinished_signals():
            task = await self._dispatch(signal, resumed=True)
            if task is not None:
                started.append(task)
        return started

    async def reconcile(self) -> list[CopySummary]:
        """Settle every unfinished intent now (by lookup first) and wait for the outcome."""
        await self.wait_idle()
        started = await self._resume()
        if not started:
            return []
        await asyncio.wait(started)
        return [task.result() for task in started
                if not task.cancelled() and task.exception() is None and task.result() is not None]

    # --- balances --------------------------------------------------------------------------------------------------

    async def refresh_all(self) -> None:
        """Read every follower's balances (and prices) at once; a failed read leaves that follower as it was."""
        await self._refresh_prices()
        await asyncio.gather(*(self._refresh_one(account) for account in self.followers.values() if account.copies))

    async def _refresh_prices(self) -> None:
        if self.price_source is None:
            return
        try:
            for asset, price in (await self.price_source()).items():
                self.prices.set(asset, price)
        except KrakenError as exc:
            log.warning("price_refresh_failed", error=_describe(exc))

    async def _refresh_one(self, account: FollowerAccount) -> None:
        await self._load_balances(account)

    async def _reload_book(self, account: FollowerAccount) -> bool:
        """Take the follower's balances afresh from within one of its copy tasks, once none of its orders sent
        elsewhere waits to be booked (up to the order time limit). False when no clean read could be had."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.order_timeout_s
        for attempt in range(self.settle_attempts):
            if attempt:
                await asyncio.sleep(self.settle_retry_s * 2 ** (attempt - 1))
            while account.unbooked and loop.time() < give_up_at:
                await asyncio.sleep(min(0.05, self.settle_retry_s or 0.05))
            if await self._load_balances(account, copying=True):
                return True
        return False

    async def _load_balances(self, account: FollowerAccount, *, copying: bool = False) -> bool:
        """Read and load the follower's balances unless, before or after the read, an order of theirs is on its
        way (any copy task, or with `copying` any order sent but not booked) or a fill was booked meanwhile: the
        read might then hold what the book does not, or miss what it does. True when loaded."""
        def busy() -> int:
            return account.unbooked if copying else account.in_flight

        if busy():
            return False  # a copy is changing this portfolio; the next round reads it
        generation = account.portfolio.generation
        try:
            async with self._semaphore:
                async with self._time_limits.limit(self.order_timeout_s):
                    balances = await account.gateway.read_balances()
        except (KrakenError, TimeoutError) as exc:
            log.warning("balance_refresh_failed", name=account.name, error=_describe(exc))
            account.failed_reads += 1
            account.read_problem = _describe(exc)
            if isinstance(exc, ConfigurationError):
                if account.unusable is None:
                    key_var, secret_var = credential_names(account.name)
                    log.error("follower_key_refused", name=account.name, error=_describe(exc),
                              fix=refused_key_fix(str(exc), key_var, secret_var, FOLLOWER_KEY_PERMISSIONS))
                account.unusable = _describe(exc)
            return False  # unknown stays unknown; known stays as last read (never zero)
        account.unusable = None
        account.failed_reads = 0
        if busy() or account.portfolio.generation != generation:
            return False  # a fill landed while we read: our numbers may predate it
        account.portfolio.load(balances)
        await self._mark_day(account)
        # Watched at every read, not only when a signal comes: a dip between two signals blocks entries for the
        # rest of the day even if equity is back by the next one.
        portfolio = account.portfolio
        if portfolio.daily_loss_reached(account.config.max_daily_loss, portfolio.equity_usd(self.prices),
                                        self._today()):
            await self._keep_loss_limit(account)
        return True

    async def _mark_day(self, account: FollowerAccount) -> None:
        portfolio = account.portfolio
        day = utc_day(self.clock())
        if portfolio.day == day:
            return
        # A block stored today holds even while today's starting equity cannot be told (no price yet).
        if account.loss_limit_stored != day and await self.store.loss_limit_reached(account.name, day):
            portfolio.loss_limit_day = account.loss_limit_stored = day
        equity = portfolio.equity_usd(self.prices)
        if equity is None:
            return
        portfolio.day = day
        portfolio.day_start_equity_usd = await self.store.day_start_equity(account.name, day, equity)

    async def _refresh_loop(self) -> None:
        while True:
            interval = self.refresh_s or refresh_interval_s(self.master_equity_usd)
            await asyncio.sleep(interval)
            while self._in_flight:  # never compete with a fan-out for the followers' keys
                await asyncio.wait(list(self._in_flight.values()))
            try:
                await self.refresh_all()
            except Exception:
                log.exception("balance_refresh_crashed")


# Refusals that executed nothing and say nothing against the order: the market not online yet, the trading counter
# full after the client's retries, the follower's key refused (revoked, a permission taken away: an exit waits for
# the key to work again, as it does after a restart with the key fixed; a call Kraken finds malformed is no such
# case, and fails after a few refusals). (Insufficient funds is handled on its own:
# see _send_and_book.)
_REFUSED_FOR_NOW = (MarketClosedError, RateLimitedError, KeyRefusedError)
#: an exit refused (insufficient funds, or any refusal not listed above) this many times, each sized from balances
#: read afresh, fails; refusals closer together than the spacing count once, so that failing takes a couple of
#: reconciliation passes (a minute apart)
EXIT_REFUSALS_BEFORE_FAILING = 3
EXIT_REFUSAL_SPACING_S = 30.0


def _describe(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return f"{exc.__class__.__name__}: {text}"


def _cents(usd: Decimal) -> Decimal:
    """A notional for the logs: to the cent (the order itself is sized by volume, exactly)."""
    return usd.quantize(Decimal("0.01"))


def _log_result(result: CopyResult, signal_id: str) -> None:
    # A follower left without its copy (failed) or waiting for reconciliation is what an operator alerts on.
    emit = log.warning if result.status in ("failed", "unsettled") else log.info
    emit("copy_result", name=result.name, pair=result.pair, side=result.side, status=result.status,
         volume=None if result.volume_base is None else f"{result.volume_base:f}",  # 0.00000000, never 0E-8
         notional=None if result.notional_usd is None else str(_cents(result.notional_usd)),
         order_id=result.order_id, reason=result.reason, signal_id=signal_id)
