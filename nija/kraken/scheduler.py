"""Rate scheduling: a call waits for budget instead of earning `EAPI:Rate limit exceeded`.

Three kinds of budget, all `nija.kraken.limits.DecayingCounter`s on the event loop's monotonic clock:
  - the REST counter of each API key, sized by the key's tier (Starter 15 at 0.33/s ...), charged `rest_cost`;
  - the trading counter of each (key, pair), charged `trading_cost` for adds, and for cancels, amends and edits
    by the age of the order touched (`KeyBudget.order_charges`);
  - one public pacer per process (Kraken limits public calls per IP), about 1 call/s by default.

A call is charged when it leaves, not when it starts waiting: the server counts arrivals, and a call that queued
behind others on the same key leaves later than it asked. When its reply is in, the charge is moved to that moment
(`settle`): the server counted the call somewhere between our send and its reply, so timing it at the reply is the
pessimistic choice — a stalled event loop or a slow network between charging and arrival can then never leave our
counter below the server's. `safety_margin` keeps our counter a little below the maximum on top of that; on Starter
0.1 of a call is 0.3 s, paid once per burst.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nija.event_loop import TIMER_STEP_S
from nija.kraken.limits import TIERS, DecayingCounter, Tier, rest_cost, trading_cost

__all__ = ["RateScheduler", "KeyBudget", "Pacer"]


class Pacer:
    """A DecayingCounter that callers wait on in FIFO order."""

    __slots__ = ("counter", "_lock", "_clock", "_margin", "waited_s")

    def __init__(self, max_level: float, decay_per_s: float, clock: Callable[[], float], margin: float = 0.0) -> None:
        if decay_per_s <= 0:
            raise ValueError(f"rate counter decay must be positive, got {decay_per_s}")
        self.counter = DecayingCounter(max_level, decay_per_s)
        self._lock: asyncio.Lock | None = None
        self._clock = clock
        self._margin = margin
        self.waited_s = 0.0  # total time callers spent waiting here (for logs, tests and benchmarks)

    def _wait_s(self, cost: float) -> float:
        # margin: act as if the counter were already `margin` fuller than we think
        return self.counter.wait_s(cost + self._margin, self._clock()) if cost else 0.0

    async def take(self, cost: float) -> float:
        """Wait until `cost` fits, then charge it. Returns the seconds waited."""
        if cost <= 0:
            return 0.0
        if self._must_wait(cost):
            return await self._wait_in_turn(cost, charge=True)
        self.counter.add(cost, self._clock())
        return 0.0

    async def ready(self, cost: float) -> None:
        """Wait, in turn with `take`'s waiters, until `cost` fits; charge nothing (`take` does, when the call leaves)."""
        if cost > 0 and self._must_wait(cost):
            await self._wait_in_turn(cost, charge=False)

    def fits(self, cost: float) -> bool:
        """`take(cost)` would charge at once, without waiting (for budget, or behind callers already waiting)."""
        return cost <= 0 or not self._must_wait(cost)

    def charge(self, cost: float, now_s: float) -> None:
        """Charge `cost` at `now_s` without waiting: for a caller that has just seen it `fits`."""
        if cost > 0:
            self.counter.add(cost, now_s)

    def _must_wait(self, cost: float) -> bool:
        return (self._lock is not None and self._lock.locked()) or self._wait_s(cost) > 0

    async def _wait_in_turn(self, cost: float, *, charge: bool) -> float:
        if self._lock is None:
            self._lock = asyncio.Lock()  # created on first contention: most keys never wait
        start = self._clock()
        async with self._lock:
            while (wait_s := self._wait_s(cost)) > 0:
                await asyncio.sleep(wait_s + TIMER_STEP_S)  # once: a timer may fire a little before the budget is back
            if charge:
                self.counter.add(cost, self._clock())
        waited = self._clock() - start
        self.waited_s += waited
        return waited

    def now(self) -> float:
        return self._clock()

    def settle(self, cost: float, charged_at_s: float) -> None:
        """Re-time a charge made at `charged_at_s` to now (the reply came): take back the decay credited since."""
        if cost <= 0:
            return
        now = self._clock()
        credit = min(cost, (now - charged_at_s) * self.counter.decay_per_s)
        if credit > 0:
            self.counter.add(credit, now)

    def fill(self) -> None:
        """The server said we are over the limit (another client on this key, or a lost reply): assume full."""
        now = self._clock()
        level = self.counter.level(now)
        self.counter.add(max(0.0, self.counter.max_level - level), now)


class KeyBudget:
    """One API key's REST counter and its per-pair trading counters, plus the order ages cancels are priced by."""

    __slots__ = ("tier", "rest", "_trading", "_order_placed", "_userref_orders", "_clock", "_margin")

    def __init__(self, tier: Tier, clock: Callable[[], float], margin: float) -> None:
        self.tier = tier
        self.rest = Pacer(tier.rest_max, tier.rest_decay_per_s, clock, margin)
        self._trading: dict[str, Pacer] | None = None
        self._order_placed: dict[str, tuple[str, float]] | None = None  # txid or cl_ord_id → (pair, placed at)
        self._userref_orders: dict[str, list[str]] = {}  # userref → txids of the open orders carrying it
        self._clock = clock
        self._margin = margin

    def fits(self, rest_cost: float, trading: Iterable[tuple[Pacer, float]]) -> bool:
        """A call costing `rest_cost` on the REST counter and each (pacer, cost) of `trading` can leave now."""
        return self.rest.fits(rest_cost) and all(pacer.fits(cost) for pacer, cost in trading)

    def trading(self, pair: str) -> Pacer:
        if self._trading is None:
            self._trading = {}
        pacer = self._trading.get(pair)
        if pacer is None:
            pacer = self._trading[pair] = Pacer(
                self.tier.trading_max, self.tier.trading_decay_per_s, self._clock, self._margin
            )
        return pacer

    def order_charges(self, method: str, params: Mapping[str, Any], pair_key: Callable[[str], str]) -> dict[str, float]:
        """What `method` adds to each pair's trading counter (API.md §3), as {pair key: cost}.

        Cancels, amends and edits are priced by the age of the order they touch. An order this key neither placed
        nor learned from OpenOrders (see `unknown_orders`) is not open: Kraken rejects the call, charging nothing.
        An edit of such an order is priced as if the order were new, the dearest case.
        """
        if method in ("AddOrder", "AddOrderBatch"):
            if not params.get("pair"):
                return {}  # Kraken refuses it, charging nothing
            cost = trading_cost("add") if method == "AddOrder" else trading_cost(
                "batch_add", batch_size=len(params.get("orders") or ()))
            return {pair_key(str(params["pair"])): cost}
        action = _ACTIONS_BY_REF.get(method)
        if action is None:
            return {}
        charges: dict[str, float] = {}
        for ref in order_refs(method, params):
            touched = self._orders_named(ref)
            if not touched and method == "EditOrder" and params.get("pair"):
                touched = [(pair_key(str(params["pair"])), 0.0)]
            for pair, age_s in touched:
                charges[pair] = charges.get(pair, 0.0) + trading_cost(action, age_s)
        return charges

    def unknown_orders(self, method: str, params: Mapping[str, Any]) -> list[str]:
        """The orders `method` touches whose pair and age this key does not know (placed by another process).
        A userref is never known for sure: any open order may carry it."""
        if method not in _ACTIONS_BY_REF:
            return []
        return [ref for ref in order_refs(method, params) if ref not in (self._order_placed or {})]

    def learned_open_orders(self, orders: Iterable[tuple[list[str], str, float, int | None]]) -> None:
        """What OpenOrders says: for each open order its ids, pair, age and userref."""
        self._userref_orders = {}
        for order_ids, pair, age_s, userref in orders:
            self.remember_order(order_ids, pair, age_s)
            if userref is not None and order_ids:
                self._userref_orders.setdefault(str(userref), []).append(order_ids[0])

    def remember_order(self, order_ids: Iterable[str], pair: str, age_s: float = 0.0) -> None:
        """Note an order's pair and age (0: placed now), so that cancelling, amending or editing it is charged at
        Kraken's price. Every id the order is known by (txid, cl_ord_id) may be given."""
        if self._order_placed is None:
            self._order_placed = {}
        now = self._clock()
        # Only amends and edits of older orders still cost something (1, with no penalty): an order forgotten
        # here is learned again from OpenOrders when one of those comes.
        if len(self._order_placed) > 256:
            self._order_placed = {k: v for k, v in self._order_placed.items() if now - v[1] < _CANCEL_FREE_AFTER_S}
        for order_id in order_ids:
            if order_id:
                self._order_placed[order_id] = (pair, now - age_s)

    def note_placed(self, method: str, params: Mapping[str, Any], result: Any,
                    pair_key: Callable[[str], str]) -> None:
        """Remember the orders an AddOrder, AddOrderBatch or EditOrder just placed (its `result`)."""
        if method not in ("AddOrder", "AddOrderBatch", "EditOrder") or not isinstance(result, dict):
            return
        pair = pair_key(str(params.get("pair") or ""))
        if method == "AddOrderBatch":
            requested = params.get("orders") or ()
            for index, placed in enumerate(result.get("orders") or ()):
                if isinstance(placed, dict) and placed.get("txid"):
                    asked = requested[index] if index < len(requested) else {}
                    cl_ord_id = asked.get("cl_ord_id") if isinstance(asked, dict) else None
                    self.remember_order([str(placed["txid"]), cl_ord_id], pair)
            return
        txids = result.get("txid") or ()
        self.remember_order([*(txids if isinstance(txids, list) else [txids]), params.get("cl_ord_id")], pair)

    def _orders_named(self, ref: str) -> list[tuple[str, float]]:
        """(pair, age) of each order `ref` names: one for a txid or cl_ord_id, each open one for a userref."""
        placed_by_id = self._order_placed or {}
        ids = [ref] if ref in placed_by_id else self._userref_orders.get(ref, ())
        now = self._clock()
        return [(placed_by_id[i][0], now - placed_by_id[i][1]) for i in ids if i in placed_by_id]


_ACTIONS_BY_REF = {"CancelOrder": "cancel", "CancelOrderBatch": "cancel", "AmendOrder": "amend", "EditOrder": "edit"}
_CANCEL_FREE_AFTER_S = 300.0


def order_refs(method: str, params: Mapping[str, Any]) -> list[str]:
    """The ids (txid, cl_ord_id or userref) of the orders a cancel, amend or edit touches."""
    if method == "CancelOrderBatch":
        items = [*(params.get("orders") or ()), *(params.get("cl_ord_ids") or ())]
    else:
        items = [params]
    refs = []
    for item in items:
        ref = (item.get("txid") or item.get("cl_ord_id")) if isinstance(item, Mapping) else item
        if ref:
            refs.append(str(ref))
    return refs


class RateScheduler:
    """Every key's budget and the public pacer, shared by all clients of a KrakenContext."""

    def __init__(
        self,
        *,
        public_rate_per_s: float = 1.0,
        public_burst: float = 1.0,
        safety_margin: float = 0.1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if public_rate_per_s <= 0:
            raise ValueError(f"public_rate_per_s must be positive, got {public_rate_per_s}")
        self._clock = clock or time.monotonic  # the same clock asyncio's loop uses
        self._margin = safety_margin
        self._keys: dict[str, KeyBudget] = {}
        self._carried: dict[str, float] = {}  # key id → REST level an earlier run left, as of `_carried_at_s`
        self._carried_at_s = 0.0
        self.public = Pacer(public_burst, public_rate_per_s, self._clock)

    def carry_over(self, rest_levels: Mapping[str, float], saved_at_s: float) -> None:
        """Start from the REST levels an earlier run left at unix time `saved_at_s` (Kraken still counts them),
        each decayed at its key's rate when the key is first used."""
        self._carried, self._carried_at_s = dict(rest_levels), saved_at_s

    def rest_levels(self, now_unix_s: float) -> dict[str, tuple[float, float]]:
        """What a later run should start from, as of unix time `now_unix_s`: key id → (REST counter level, its
        decay per second). Keys this run did not use keep what an earlier run left, decayed at the slowest tier's
        rate (their tier is not known here): never less than Kraken still counts."""
        now = self._clock()
        levels = {key_id: (budget.rest.counter.level(now), budget.tier.rest_decay_per_s)
                  for key_id, budget in self._keys.items()}
        slowest_decay_per_s = min(tier.rest_decay_per_s for tier in TIERS.values())
        for key_id, level in self._carried.items():  # a key's carried level is dropped when the key is used
            levels[key_id] = (level - (now_unix_s - self._carried_at_s) * slowest_decay_per_s, slowest_decay_per_s)
        return {key_id: value for key_id, value in levels.items() if value[0] > 0}

    def budget(self, key_id: str, tier: Tier) -> KeyBudget:
        """The budget of a key; every client of the key must declare the same tier."""
        budget = self._keys.get(key_id)
        if budget is None:
            budget = self._keys[key_id] = KeyBudget(tier, self._clock, self._margin)
            carried = self._carried.pop(key_id, 0.0) - (time.time() - self._carried_at_s) * tier.rest_decay_per_s
            if carried > 0:
                budget.rest.counter.add(min(carried, tier.rest_max), self._clock())
        elif budget.tier != tier:
            raise ValueError(
                f"API key {key_id} is already used with tier {budget.tier.name!r}; a second client asked for "
                f"{tier.name!r}. Give every client of one key the same tier"
            )
        return budget

    async def take_public(self) -> float:
        return await self.public.take(1)

