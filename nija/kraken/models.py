"""Typed results of Kraken calls: pydantic v2 models, money as `Decimal` parsed from Kraken's strings.

Kraken sends money, prices, volumes and fees as strings (sometimes, in examples, as JSON numbers: those are read
through `str()` so no binary float ever reaches a Decimal); times as float seconds; counts as integers.
Field names stay Kraken's where a reader would look them up in Kraken's documentation; properties with units in
their names (`volume_base`, `executed_base`, `avg_price`) say what they mean.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "Money",
    "Balances",
    "AssetBalance",
    "ExtendedBalances",
    "TradeBalance",
    "Ticker",
    "Candle",
    "OHLC",
    "OrderDescription",
    "Order",
    "ClosedOrdersPage",
    "Trade",
    "TradesPage",
    "AddOrderResult",
    "CancelResult",
    "CancelAllAfterResult",
]


def _to_decimal(value: Any) -> Any:
    if isinstance(value, float | int) and not isinstance(value, bool):
        return Decimal(str(value))
    if isinstance(value, str) and value.strip() in ("", "None"):
        return Decimal(0)
    return value


#: a Kraken money string ("171288.6158") as Decimal; floats go through str() first
Money = Annotated[Decimal, BeforeValidator(_to_decimal)]
#: an optional integer that Kraken may send as "" (e.g. an order placed without a userref)
OptionalInt = Annotated[int | None, BeforeValidator(lambda value: None if value == "" else value)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Balances(_Model):
    """Balance: amount per Kraken asset key, suffixed sub-balances (XBT.F, ETH2.S) included as Kraken lists them."""

    by_asset: dict[str, Money]

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> Balances:
        return cls(by_asset=result)

    def get(self, asset: str, default: Decimal | None = None) -> Decimal | None:
        return self.by_asset.get(asset, default)


class AssetBalance(_Model):
    """One BalanceEx entry."""

    balance: Money
    hold_trade: Money = Decimal(0)
    credit: Money = Decimal(0)
    credit_used: Money = Decimal(0)

    @property
    def available(self) -> Decimal:
        """What may be spent now: balance + credit − credit_used − hold_trade (Kraken's formula)."""
        return self.balance + self.credit - self.credit_used - self.hold_trade


class ExtendedBalances(_Model):
    """BalanceEx: balance and amount held by open orders per asset key."""

    by_asset: dict[str, AssetBalance]

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> ExtendedBalances:
        return cls(by_asset=result)


class TradeBalance(_Model):
    """TradeBalance, in the requested asset (ZUSD by default)."""

    equivalent_balance: Money = Field(alias="eb")
    trade_balance: Money = Field(Decimal(0), alias="tb")
    margin: Money = Field(Decimal(0), alias="m")
    unrealized_pnl: Money = Field(Decimal(0), alias="n")
    cost_basis: Money = Field(Decimal(0), alias="c")
    floating_valuation: Money = Field(Decimal(0), alias="v")
    equity: Money = Field(Decimal(0), alias="e")
    free_margin: Money = Field(Decimal(0), alias="mf")
    margin_level: Money | None = Field(None, alias="ml")
    unexecuted_value: Money | None = Field(None, alias="uv")


class Ticker(_Model):
    """One Ticker entry (Kraken's a/b/c/v/p/t/l/h/o arrays unpacked)."""

    pair_key: str
    ask: Money
    bid: Money
    last: Money
    last_volume_base: Money
    volume_today_base: Money
    volume_24h_base: Money
    vwap_today: Money
    vwap_24h: Money
    trades_today: int
    trades_24h: int
    low_today: Money
    low_24h: Money
    high_today: Money
    high_24h: Money
    open_today: Money

    @classmethod
    def from_kraken(cls, pair_key: str, raw: dict[str, Any]) -> Ticker:
        return cls(
            pair_key=pair_key,
            ask=raw["a"][0],
            bid=raw["b"][0],
            last=raw["c"][0],
            last_volume_base=raw["c"][1],
            volume_today_base=raw["v"][0],
            volume_24h_base=raw["v"][1],
            vwap_today=raw["p"][0],
            vwap_24h=raw["p"][1],
            trades_today=raw["t"][0],
            trades_24h=raw["t"][1],
            low_today=raw["l"][0],
            low_24h=raw["l"][1],
            high_today=raw["h"][0],
            high_24h=raw["h"][1],
            open_today=raw["o"],
        )

    @property
    def mid(self) -> Decimal:
        return (self.ask + self.bid) / 2


class Candle(_Model):
    """One OHLC row; `time_s` is the candle's open time (unix seconds)."""

    time_s: int
    open: Money
    high: Money
    low: Money
    close: Money
    vwap: Money
    volume_base: Money
    count: int

    @classmethod
    def from_row(cls, row: list[Any]) -> Candle:
        time_s, open_, high, low, close, vwap, volume, count = row
        return cls(
            time_s=int(time_s), open=open_, high=high, low=low, close=close, vwap=vwap, volume_base=volume,
            count=int(count),
        )


class OHLC(_Model):
    """OHLC: candles oldest first (the last one is still forming) and `last`, the `since` for the next poll."""

    pair_key: str
    candles: list[Candle]
    last: int

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> OHLC:
        keys = [k for k in result if k != "last"]
        if len(keys) != 1:
            raise ValueError(f"OHLC result should hold exactly one pair, got {keys}")
        key = keys[0]
        return cls(pair_key=key, candles=[Candle.from_row(row) for row in result[key]], last=int(result.get("last", 0)))


class OrderDescription(_Model):
    pair: str = ""  # altname
    type: str = ""  # buy | sell
    ordertype: str = ""
    price: Money = Decimal(0)
    price2: Money = Decimal(0)
    leverage: str = "none"
    order: str = ""
    close: str = ""


class Order(_Model):
    """An order as OpenOrders/ClosedOrders/QueryOrders describe it. `txid` is filled in from the result's key."""

    txid: str = ""
    refid: str | None = None
    userref: OptionalInt = None
    cl_ord_id: str | None = None
    status: str  # pending | open | closed (fully filled) | canceled | expired
    reason: str | None = None
    opentm: float = 0.0
    closetm: float | None = None
    starttm: float = 0.0
    expiretm: float = 0.0
    descr: OrderDescription = OrderDescription()
    vol: Money = Decimal(0)
    vol_exec: Money = Decimal(0)
    cost: Money = Decimal(0)
    fee: Money = Decimal(0)
    price: Money = Decimal(0)  # average execution price
    stopprice: Money = Decimal(0)
    limitprice: Money = Decimal(0)
    misc: str = ""
    oflags: str = ""
    trades: list[str] = []

    @classmethod
    def from_kraken(cls, txid: str, raw: dict[str, Any]) -> Order:
        return cls(txid=txid, **raw) if "txid" not in raw else cls(**raw)

    @property
    def volume_base(self) -> Decimal:
        return self.vol

    @property
    def executed_base(self) -> Decimal:
        return self.vol_exec

    @property
    def avg_price(self) -> Decimal:
        return self.price

    @property
    def cost_quote(self) -> Decimal:
        return self.cost

    @property
    def fee_quote(self) -> Decimal:
        return self.fee

    @property
    def is_done(self) -> bool:
        """No further fills can happen (closed, canceled or expired)."""
        return self.status in ("closed", "canceled", "expired")


def orders_from_mapping(mapping: dict[str, Any]) -> dict[str, Order]:
    """{txid: order} as Kraken returns it → {txid: Order}."""
    return {txid: Order.from_kraken(txid, raw) for txid, raw in mapping.items()}


class ClosedOrdersPage(_Model):
    """One ClosedOrders page (50 orders at most) and the total count matching the query."""

    closed: dict[str, Order]
    count: int

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> ClosedOrdersPage:
        closed = orders_from_mapping(result.get("closed", {}))
        return cls(closed=closed, count=int(result.get("count", len(closed))))


class Trade(_Model):
    """One execution (TradesHistory/QueryTrades): part or all of order `ordertxid`, at `time`."""

    tid: str = ""
    ordertxid: str
    pair: str  # the pair key, e.g. XXBTZUSD
    time: float
    type: str  # buy | sell
    ordertype: str = ""
    price: Money = Decimal(0)
    cost: Money = Decimal(0)
    fee: Money = Decimal(0)
    vol: Money = Decimal(0)

    @property
    def volume_base(self) -> Decimal:
        return self.vol


class TradesPage(_Model):
    """One TradesHistory page (50 trades at most, newest first) and the total count matching the query."""

    trades: dict[str, Trade]
    count: int

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> TradesPage:
        trades = {tid: Trade(tid=tid, **raw) for tid, raw in (result.get("trades") or {}).items()}
        return cls(trades=trades, count=int(result.get("count", len(trades))))


class AddOrderResult(_Model):
    """What became of one AddOrder.

    `txid` holds the order id(s) (empty for `validate=True`). `recovered` is True when the reply was lost and the
    order was found afterwards by its `cl_ord_id`; `order` is filled whenever the order was looked up.
    """

    cl_ord_id: str
    txid: list[str] = []
    description: str = ""
    validated_only: bool = False
    recovered: bool = False
    order: Order | None = None
    attempts: int = 1

    @property
    def order_id(self) -> str | None:
        return self.txid[0] if self.txid else None


class CancelResult(_Model):
    count: int
    pending: bool = False


class CancelAllAfterResult(_Model):
    """Dead-man's switch state: Kraken's current time and when all orders will be cancelled (RFC 3339 strings)."""

    current_time: str = Field(alias="currentTime")
    trigger_time: str = Field(alias="triggerTime")
