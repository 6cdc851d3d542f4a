"""Signals: one per master fill (whole or partial), the unit the copy engine mirrors.

A signal's id is derived from the master order id and a fill reference, so the same fill always gives the same
signal (a signal copied once is never copied again). Each follower's client order id is derived from
(signal id, follower name): a UUID string, which Kraken accepts as `cl_ord_id`, so a resend after a crash carries
the same id and can be looked up instead of placed twice.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Literal

__all__ = ["Signal", "Side", "ENTRY_MAX_AGE_S", "signal_id_for", "cl_ord_id_for", "signal_from_master_order"]

Side = Literal["buy", "sell"]

# Fixed namespaces: changing them would change every derived id and break reconciliation of stored intents.
_SIGNAL_NS = uuid.UUID("6f1d2c1e-4b8a-5f0e-9a53-2c7e1d9b0a41")
_ORDER_NS = uuid.UUID("0b9e5d7a-3c12-5e84-8f6d-4a1c2b3e5f60")


#: an entry copied later than this after the master's fill (NIJA was down, or its order's fate was unknown) is not
#: copied: the price it was sized at is gone. Exits are always copied, so no follower keeps a position the master
#: closed.
ENTRY_MAX_AGE_S = 300.0


def _uuid5(namespace: bytes, name: str) -> str:
    """str(uuid.uuid5(UUID(bytes=namespace), name)) without building UUID objects: a fan-out derives one per follower
    before its first order leaves."""
    digest = bytearray(hashlib.sha1(namespace + name.encode()).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def signal_id_for(master_order_id: str, fill_ref: str = "") -> str:
    """A stable id for one master fill; `fill_ref` tells partial fills of one order apart (trade id or vol_exec)."""
    return _uuid5(_SIGNAL_NS.bytes, f"{master_order_id}|{fill_ref}")


def cl_ord_id_for(signal_id: str, follower_name: str) -> str:
    """The follower's client order id for a signal: a UUID string, the same every time it is asked for."""
    return _uuid5(_ORDER_NS.bytes, f"{signal_id}|{follower_name.lower()}")


@dataclass(frozen=True, slots=True)
class Signal:
    """What one master fill asks every follower to do.

    Buys are sized by equity (`notional_usd × follower equity / master_equity_usd`); sells sell
    `position_fraction` of the follower's own position (all of it when `closes_position`).
    """

    signal_id: str
    master_order_id: str
    pair: str  # the pair as the exchange names it (key or altname)
    side: Side
    volume_base: Decimal  # volume the master filled
    avg_price_usd: Decimal  # the master's average fill price
    fee_usd: Decimal
    master_equity_usd: Decimal  # master equity measured before the order
    position_fraction: Decimal | None = None  # sells: share of the master's position this fill closed, in (0, 1]
    closes_position: bool = False  # sells: the master's position is now closed
    reason: str | None = None  # sells: PROFIT_TAKING, STOP_LOSS, ...
    filled_at_s: float = field(default_factory=time.time)  # wall-clock time of the master fill (latency origin)

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ValueError(f"Signal.side must be 'buy' or 'sell', got {self.side!r}")
        for name in ("volume_base", "avg_price_usd", "fee_usd", "master_equity_usd"):
            if not isinstance(getattr(self, name), Decimal):
                raise TypeError(f"Signal.{name} must be a Decimal, got {type(getattr(self, name)).__name__}")
        if self.volume_base <= 0 or self.avg_price_usd <= 0:
            raise ValueError("Signal.volume_base and Signal.avg_price_usd must be > 0")
        if self.side == "sell":
            fraction = Decimal(1) if self.closes_position else self.position_fraction
            if fraction is None or not (Decimal(0) < fraction <= Decimal(1)):
                raise ValueError("a sell Signal needs position_fraction in (0, 1] or closes_position=True")

    @property
    def notional_usd(self) -> Decimal:
        return self.volume_base * self.avg_price_usd

    @property
    def sell_fraction(self) -> Decimal:
        """The share of a follower's position a sell asks for (1 when the master closed its position)."""
        if self.closes_position or self.position_fraction is None:
            return Decimal(1)
        return self.position_fraction

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps({key: (str(value) if isinstance(value, Decimal) else value) for key, value in data.items()})

    @classmethod
    def from_json(cls, text: str) -> Signal:
        data = json.loads(text)
        for name in ("volume_base", "avg_price_usd", "fee_usd", "master_equity_usd", "position_fraction"):
            if data.get(name) is not None:
                data[name] = Decimal(data[name])
        return cls(**data)


def signal_from_master_order(
    order_id: str,
    *,
    pair: str,
    side: Side,
    vol_exec: Decimal,
    cost_usd: Decimal,
    fee_usd: Decimal,
    master_equity_usd: Decimal,
    position_before_base: Decimal | None = None,
    ordermin_base: Decimal = Decimal(0),
    reason: str | None = None,
    filled_at_s: float | None = None,
    fill_ref: str = "",
    fee_base: Decimal = Decimal(0),
) -> Signal:
    """The bridge from a master order's fill (as QueryOrders reports it) to a Signal.

    For sells, `position_before_base` is the master's position before the fill; the fraction closed is what the
    fill took off it, `(vol_exec + fee_base) / position_before_base` (`fee_base`: the fee, when paid in the base
    asset), so a follower keeps the share of its position the master keeps. A fill that leaves less than the
    pair's `ordermin_base` closes the position: what is left is dust no order can sell, and followers must not keep
    a position the master has left.
    """
    if vol_exec <= 0:
        raise ValueError(f"master order {order_id} has no executed volume: nothing to copy")
    fraction: Decimal | None = None
    closes = False
    if side == "sell":
        if position_before_base is None or position_before_base <= 0:
            raise ValueError(f"master sell {order_id}: position_before_base must be the position held before it")
        fraction = min(Decimal(1), (vol_exec + fee_base) / position_before_base)
        left_base = position_before_base - vol_exec - fee_base
        closes = left_base <= 0 or left_base < ordermin_base
    return Signal(
        signal_id=signal_id_for(order_id, fill_ref or str(vol_exec)),
        master_order_id=order_id,
        pair=pair,
        side=side,
        volume_base=vol_exec,
        avg_price_usd=cost_usd / vol_exec,
        fee_usd=fee_usd,
        master_equity_usd=master_equity_usd,
        position_fraction=fraction,
        closes_position=closes,
        reason=reason,
        filled_at_s=time.time() if filled_at_s is None else filled_at_s,
    )

