"""Kraken's rate counters as plain arithmetic, no I/O and no clock of its own.

Both sides use this one model: the client's scheduler to decide when a call may leave, the embedded exchange to
decide when to answer `EAPI:Rate limit exceeded` / `EOrder:Rate limit exceeded`.

A counter starts at 0, each call adds its cost, and it decays continuously at `decay_per_s`. A call is allowed when
the counter after adding its cost stays at or below `max_level`. So a Starter key (15, 0.33/s) may make 15 calls at
once and then one every 1/0.33 = 3.03 s.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tier", "TIERS", "tier_named", "DecayingCounter", "rest_cost", "trading_cost"]


@dataclass(frozen=True, slots=True)
class Tier:
    """A Kraken verification tier's limits (API.md §3)."""

    name: str
    rest_max: float
    rest_decay_per_s: float
    trading_max: float
    trading_decay_per_s: float
    max_open_orders_per_pair: int


TIERS: dict[str, Tier] = {
    "starter": Tier("starter", 15, 0.33, 60, 1.0, 60),
    "intermediate": Tier("intermediate", 20, 0.5, 125, 2.34, 80),
    "pro": Tier("pro", 20, 1.0, 180, 3.75, 225),
}


def tier_named(name: str | Tier) -> Tier:
    """The tier for a name such as "starter" (case-insensitive); a Tier passes through unchanged."""
    if isinstance(name, Tier):
        return name
    try:
        return TIERS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown Kraken tier {name!r}: use one of {', '.join(TIERS)}") from None


# REST counter costs: ledger and trade history cost 2, placing, changing and cancelling one order (or a batch)
# cost nothing here (they count on the trading counter instead), every other private call costs 1 — CancelAll and
# CancelAllOrdersAfter included, as Kraken lists only the former as free.
_REST_COST_2 = frozenset({"Ledgers", "QueryLedgers", "TradesHistory", "QueryTrades"})
_REST_COST_0 = frozenset(
    {"AddOrder", "AddOrderBatch", "CancelOrder", "CancelOrderBatch", "EditOrder", "AmendOrder"}
)


def rest_cost(method: str) -> int:
    """What a private call adds to the key's REST counter."""
    if method in _REST_COST_2:
        return 2
    if method in _REST_COST_0:
        return 0
    return 1


# (age below which the penalty applies in seconds, extra cost), youngest first.
_CANCEL_PENALTY = ((5, 8), (10, 6), (15, 5), (45, 4), (90, 2), (300, 1))
_EDIT_PENALTY = ((5, 6), (10, 5), (15, 4), (45, 2), (90, 1))
_AMEND_PENALTY = ((5, 3), (10, 2), (15, 1))


def _penalty(table: tuple[tuple[int, int], ...], age_s: float) -> int:
    for below_s, cost in table:
        if age_s < below_s:
            return cost
    return 0


def trading_cost(action: str, order_age_s: float = 0.0, batch_size: int = 1) -> float:
    """What an order action adds to the per-pair trading counter.

    `action` is "add", "batch_add", "cancel", "edit" or "amend"; `order_age_s` is the age of the order touched.
    """
    if action == "add":
        return 1
    if action == "batch_add":
        return batch_size / 2
    if action == "cancel":
        return _penalty(_CANCEL_PENALTY, order_age_s)
    if action == "edit":
        return 1 + _penalty(_EDIT_PENALTY, order_age_s)
    if action == "amend":
        return 1 + _penalty(_AMEND_PENALTY, order_age_s)
    raise ValueError(f"unknown trading action {action!r}")


class DecayingCounter:
    """One Kraken counter. Times are seconds on any monotonic clock the caller chooses."""

    __slots__ = ("max_level", "decay_per_s", "_level", "_at_s")

    def __init__(self, max_level: float, decay_per_s: float) -> None:
        self.max_level = max_level
        self.decay_per_s = decay_per_s
        self._level = 0.0
        self._at_s: float | None = None

    def level(self, now_s: float) -> float:
        if self._at_s is None:
            return 0.0
        return max(0.0, self._level - (now_s - self._at_s) * self.decay_per_s)

    def wait_s(self, cost: float, now_s: float) -> float:
        """Seconds until `cost` fits under the maximum (0 when it fits now)."""
        excess = self.level(now_s) + cost - self.max_level
        if excess <= 1e-9:
            return 0.0
        return excess / self.decay_per_s

    def add(self, cost: float, now_s: float) -> None:
        """Count a call unconditionally (what the server saw, even if it was over the limit)."""
        self._level = self.level(now_s) + cost
        self._at_s = now_s

    def try_add(self, cost: float, now_s: float) -> bool:
        """Count the call if it fits; False (and nothing counted) when it would exceed the maximum."""
        if self.wait_s(cost, now_s) > 0:
            return False
        self.add(cost, now_s)
        return True
