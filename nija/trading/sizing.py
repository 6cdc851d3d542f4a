"""Sizing a follower's copy of one signal: a pure function, Decimal throughout, no I/O.

Buy (DESIGN invariant 5): notional = master notional × follower equity / master equity × risk_multiplier, capped at
max_risk_per_trade × follower equity and at what the follower's free cash pays *including the taker fee*; the volume
is rounded down to the pair's lot. With `entry_slippage` the buy is an IOC limit at most that far above the master's
price, and the cash cap is computed at that limit price.

Sell (invariant 4): volume = the signal's fraction × the follower's own position (all of it when the master closed
its position), never more than the follower holds, rounded down to the lot. Exits are market orders, never capped.

Anything that cannot or must not be sent (below `ordermin`/`costmin`, disabled symbol, no position, daily loss
reached, unknown balance) is returned as a `Skip` with a reason: a skip is not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from enum import Enum

from nija.kraken.pairs import PairInfo, kraken_asset_name
from nija.trading.signals import Side, Signal

__all__ = [
    "PairRules",
    "FollowerBook",
    "FollowerLimits",
    "OrderPlan",
    "Skip",
    "SkipReason",
    "size_copy",
]

ZERO = Decimal(0)
ONE = Decimal(1)
#: extra room kept when a market buy is sized against free cash: a market order can fill above the master's price
MARKET_BUY_PRICE_BUFFER = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class PairRules:
    """A pair as sizing sees it: its AssetPairs entry (lots, minimums, ticks: PairInfo's own rules), the name its
    base asset has in the follower's book, and every name `disabled_symbols` may use for it."""

    info: PairInfo
    base: str  # common name, e.g. BTC (XXBT in AssetPairs)
    symbols: frozenset[str] = frozenset()  # upper-case

    @classmethod
    def of(cls, info: PairInfo) -> PairRules:
        """Orders go out under the altname; holdings use common asset names."""
        base_common = info.base_common or info.base
        bases = {base_common, info.base, kraken_asset_name(base_common)}  # BTC, XXBT, XBT
        quotes = {info.quote_common or info.quote, info.quote, kraken_asset_name(info.quote_common or info.quote)}
        names = {info.key, info.altname, info.wsname, *bases}
        for base in bases:  # BTC/USD, XBTUSD, BTC-USD, XXBT_ZUSD, ...: every spelling Pairs.get resolves
            for quote in quotes:
                names.update(f"{base}{separator}{quote}" for separator in ("/", "", "-", "_", ":"))
        return cls(info, base_common, frozenset(name.upper() for name in names if name))

    @property
    def pair(self) -> str:
        """The name orders are sent with."""
        return self.info.altname


@dataclass(frozen=True, slots=True)
class FollowerBook:
    """The follower's state when its copy is sized. None means unknown (never treated as zero)."""

    equity_usd: Decimal | None
    free_cash_usd: Decimal | None
    position_base: Decimal | None  # what the follower holds of the pair's base asset
    daily_loss_reached: bool = False


@dataclass(frozen=True, slots=True)
class FollowerLimits:
    """The follower's own knobs that sizing uses (a subset of FollowerConfig)."""

    risk_multiplier: Decimal = ONE
    max_risk_per_trade: Decimal = Decimal("0.10")
    disabled_symbols: frozenset[str] = frozenset()
    entry_slippage: Decimal | None = None

    @classmethod
    def of(cls, config) -> FollowerLimits:
        return cls(config.risk_multiplier, config.max_risk_per_trade, frozenset(config.disabled_symbols),
                   config.entry_slippage)


class SkipReason(str, Enum):
    DISABLED_SYMBOL = "disabled_symbol"
    DAILY_LOSS_REACHED = "daily_loss_reached"
    EQUITY_UNKNOWN = "equity_unknown"
    NO_CASH = "no_cash"
    POSITION_UNKNOWN = "position_unknown"
    NO_POSITION = "no_position"
    BELOW_ORDERMIN = "below_ordermin"
    BELOW_COSTMIN = "below_costmin"
    MASTER_EQUITY_INVALID = "master_equity_invalid"


@dataclass(frozen=True, slots=True)
class Skip:
    reason: SkipReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """An order to send: market, or an IOC limit when `limit_price_usd` is set."""

    pair: str
    side: Side
    volume_base: Decimal
    notional_usd: Decimal  # volume × the master's price: what the copy is worth
    limit_price_usd: Decimal | None = None

    @property
    def ordertype(self) -> str:
        return "market" if self.limit_price_usd is None else "limit"


def _minimums(volume_base: Decimal, price: Decimal, rules: PairRules, what: str) -> Skip | None:
    shortfall = rules.info.minimum_shortfall(volume_base, price)
    if shortfall is None:
        return None
    which, why = shortfall
    return Skip(SkipReason.BELOW_ORDERMIN if which == "ordermin" else SkipReason.BELOW_COSTMIN, f"{what} {why}")


def size_copy(
    signal: Signal,
    limits: FollowerLimits,
    book: FollowerBook,
    rules: PairRules,
    *,
    taker_fee_rate: Decimal = Decimal("0.004"),
) -> OrderPlan | Skip:
    """The follower's order for `signal`, or why it is skipped."""
    disabled = limits.disabled_symbols
    if disabled and not (disabled.isdisjoint(rules.symbols) and rules.pair.upper() not in disabled
                         and signal.pair.upper() not in disabled):
        return Skip(SkipReason.DISABLED_SYMBOL, f"{rules.pair} is in disabled_symbols")
    price = signal.avg_price_usd
    if signal.side == "sell":
        return _size_sell(signal, book, rules, price)
    return _size_buy(signal, limits, book, rules, price, taker_fee_rate)


def _size_sell(signal: Signal, book: FollowerBook, rules: PairRules, price: Decimal) -> OrderPlan | Skip:
    held = book.position_base
    if held is None:
        return Skip(SkipReason.POSITION_UNKNOWN, f"{rules.base} balance could not be read")
    if held <= ZERO:
        return Skip(SkipReason.NO_POSITION, f"holds no {rules.base}")
    all_of_it = rules.info.round_volume_down(held)
    volume = all_of_it if signal.closes_position else min(rules.info.round_volume_down(signal.sell_fraction * held),
                                                          all_of_it)
    left = all_of_it - volume
    if (left > ZERO and rules.info.minimum_shortfall(volume, price) is None
            and rules.info.minimum_shortfall(left, price) is not None):
        volume = all_of_it  # what would be left could never be sold on its own: sell it with this step
    skipped = _minimums(volume, price, rules, "sell")
    if skipped:
        return skipped
    return OrderPlan(rules.pair, "sell", volume, volume * price)


def _size_buy(signal: Signal, limits: FollowerLimits, book: FollowerBook, rules: PairRules, price: Decimal,
              taker_fee_rate: Decimal) -> OrderPlan | Skip:
    if book.daily_loss_reached:
        return Skip(SkipReason.DAILY_LOSS_REACHED, "max_daily_loss reached: no new entries until the next UTC day")
    if book.equity_usd is None or book.free_cash_usd is None:
        return Skip(SkipReason.EQUITY_UNKNOWN, "balance could not be read")
    if signal.master_equity_usd <= ZERO:
        return Skip(SkipReason.MASTER_EQUITY_INVALID, f"master equity {signal.master_equity_usd} is not > 0")
    if book.equity_usd <= ZERO or book.free_cash_usd <= ZERO:
        return Skip(SkipReason.NO_CASH, f"equity {book.equity_usd}, free cash {book.free_cash_usd}")

    scaled_usd = signal.notional_usd * book.equity_usd / signal.master_equity_usd * limits.risk_multiplier
    risk_cap_usd = limits.max_risk_per_trade * book.equity_usd

    limit_price: Decimal | None = None
    if limits.entry_slippage is not None:
        limit_price = rules.info.round_price(price * (ONE + limits.entry_slippage), ROUND_DOWN)
        worst_price = limit_price
    else:
        worst_price = price * (ONE + MARKET_BUY_PRICE_BUFFER)
    # Cash cap: the worst fill price plus the taker fee must still be paid from free cash.
    cash_cap_base = book.free_cash_usd / (worst_price * (ONE + taker_fee_rate))

    # An IOC limit may fill at its limit: the risk cap must hold at that price, not only at the master's.
    wanted_base = rules.info.round_volume_down(min(scaled_usd / price, risk_cap_usd / (limit_price or price)))
    volume = rules.info.round_volume_down(min(wanted_base, cash_cap_base))
    skipped = _minimums(volume, price, rules, "buy")
    if skipped and volume < wanted_base and _minimums(wanted_base, price, rules, "buy") is None:
        # The size was fine; the cash was short: say so rather than blame the pair's minimum.
        return Skip(SkipReason.NO_CASH, f"free cash {book.free_cash_usd:.2f} USD buys {volume} {rules.base}, "
                                        f"below the pair's minimum ({skipped.detail})")
    if skipped:
        return skipped
    return OrderPlan(rules.pair, "buy", volume, volume * price, limit_price)
