"""What each follower holds, kept in memory so no balance call sits between a signal and its orders.

A `Portfolio` is loaded from the follower's balances, updated from each copied fill, and replaced by a fresh read on
the rate profile's schedule. A `PriceBook` (shared by every follower) values holdings in USD from master fills and
a periodic Ticker read. Unknown stays unknown (DESIGN invariant 7): a portfolio never read has no equity, not zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from nija.trading.profiles import profile_for

__all__ = ["PriceBook", "Portfolio", "BalanceRead", "refresh_interval_s", "utc_day", "value_usd", "CASH_ASSET"]

ZERO = Decimal(0)
CASH_ASSET = "USD"

def refresh_interval_s(master_equity_usd: Decimal | None) -> float:
    """Balance refresh interval of the master's rate profile: LOW_CAPITAL 60 s, STANDARD 10 s, AGGRESSIVE 5 s."""
    return profile_for(master_equity_usd).balance_refresh_s


def utc_day(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass(slots=True)
class PriceBook:
    """Last known USD price per asset (common names: BTC, ETH, ...).

    `has_usd_market` tells whether an asset can have a price at all (it has a USD pair); holdings that cannot
    (fee credits, assets with no USD market) are left out of equity instead of making it unknown for ever.
    """

    usd_by_asset: dict[str, Decimal] = field(default_factory=dict)
    has_usd_market: Callable[[str], bool] = lambda asset: True

    def set(self, asset: str, price_usd: Decimal) -> None:
        if price_usd > ZERO:
            self.usd_by_asset[asset] = price_usd

    def get(self, asset: str) -> Decimal | None:
        if asset == CASH_ASSET:
            return Decimal(1)
        return self.usd_by_asset.get(asset)


def value_usd(owned: Mapping[str, Decimal], prices: PriceBook) -> Decimal | None:
    """What `owned` (amounts per common asset name) is worth at `prices`: every account's equity, the master's
    and the followers', is valued this one way, so the ratio an entry is sized by compares like with like. Unknown
    (None) while a holding that has a USD market has no price yet: leaving it out would understate the equity
    (invariant 7). Holdings that cannot have a price (no USD market) are left out."""
    total = ZERO
    for asset, amount in owned.items():
        if amount == ZERO:
            continue
        price = prices.get(asset)
        if price is None:
            if prices.has_usd_market(asset):
                return None
            continue
        total += amount * price
    return total


@dataclass(frozen=True, slots=True)
class BalanceRead:
    """One read of an account's balances, per common asset name (USD, BTC, ...).

    `available`: what can be spent or sold now. `locked`: what the account owns beyond that — held by its own open
    orders, staked, in Earn (less any credit counted in `available`) — part of its equity, never spent or sold.
    """

    available: Mapping[str, Decimal]
    locked: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(slots=True)
class Portfolio:
    """One follower's holdings (available amounts, common asset names) and its daily-loss bookkeeping."""

    holdings: dict[str, Decimal] | None = None  # None until the first successful balance read
    locked: dict[str, Decimal] = field(default_factory=dict)  # owned, not tradable now: counted in equity only
    generation: int = 0  # bumped on every local change; a refresh started before a change is discarded
    loads: int = 0  # balance reads taken: an estimate booked before the latest one is already in it
    day: str | None = None
    day_start_equity_usd: Decimal | None = None
    loss_limit_day: str | None = None  # the UTC day max_daily_loss was reached: no entries for the rest of it

    @property
    def known(self) -> bool:
        return self.holdings is not None

    def load(self, read: BalanceRead) -> None:
        """Replace holdings with a fresh balance read."""
        self.holdings = {asset: amount for asset, amount in read.available.items() if amount != ZERO}
        self.locked = {asset: amount for asset, amount in read.locked.items() if amount != ZERO}
        self.generation += 1
        self.loads += 1

    def forget(self) -> None:
        self.holdings = None
        self.generation += 1

    def cash_usd(self) -> Decimal | None:
        return None if self.holdings is None else self.holdings.get(CASH_ASSET, ZERO)

    def held(self, asset: str) -> Decimal | None:
        return None if self.holdings is None else self.holdings.get(asset, ZERO)

    def equity_usd(self, prices: PriceBook) -> Decimal | None:
        """Everything the account owns at its last price (`value_usd`): cash and holdings, and what is locked in
        open orders, staking or Earn. None while unknown."""
        if self.holdings is None:
            return None
        owned = dict(self.holdings)
        for asset, amount in self.locked.items():
            owned[asset] = owned.get(asset, ZERO) + amount
        return value_usd(owned, prices)

    def apply_fill(self, base: str, side: str, executed_base: Decimal, cost_usd: Decimal, fee_usd: Decimal) -> None:
        """Account for one executed order: base in/out, USD out/in, fee paid in USD (Kraken's default for USD pairs)."""
        if self.holdings is None or executed_base <= ZERO:
            return
        sign = Decimal(1) if side == "buy" else Decimal(-1)
        self.holdings[base] = self.holdings.get(base, ZERO) + sign * executed_base
        self.holdings[CASH_ASSET] = self.holdings.get(CASH_ASSET, ZERO) - sign * cost_usd - fee_usd
        if self.holdings[base] <= ZERO:
            self.holdings.pop(base)
        self.generation += 1

    def correct_fill(self, base: str, side: str, estimated_base: Decimal, estimated_cost_usd: Decimal,
                     estimated_fee_usd: Decimal, actual_base: Decimal, actual_cost_usd: Decimal,
                     actual_fee_usd: Decimal) -> None:
        """Swap a fill booked as an estimate for the real one (a delta, so later fills booked meanwhile stay)."""
        if self.holdings is None:
            return
        sign = Decimal(1) if side == "buy" else Decimal(-1)
        self.holdings[base] = self.holdings.get(base, ZERO) + sign * (actual_base - estimated_base)
        self.holdings[CASH_ASSET] = (self.holdings.get(CASH_ASSET, ZERO) - sign * (actual_cost_usd - estimated_cost_usd)
                                     - (actual_fee_usd - estimated_fee_usd))
        if self.holdings[base] <= ZERO:
            self.holdings.pop(base)
        self.generation += 1

    def daily_loss_reached(self, max_daily_loss: Decimal | None, equity_usd: Decimal | None, today: str) -> bool:
        """True once equity fell by `max_daily_loss` (a fraction) from the start of UTC day `today`, and for the
        rest of that day even if equity comes back. A mark from an earlier day blocks nothing: the block lifts at
        midnight, not at the next balance read."""
        if max_daily_loss is None:
            return False
        if self.loss_limit_day == today:
            return True
        if equity_usd is None or not self.day_start_equity_usd or self.day != today:
            return False
        lost = (self.day_start_equity_usd - equity_usd) / self.day_start_equity_usd
        if lost >= max_daily_loss:
            self.loss_limit_day = today
            return True
        return False
