"""APEX v7.1 rate profiles: how often to look, chosen from the master's equity (APEX_V71.md).

A profile only sets intervals; the per-key Kraken counter (nija.kraken.scheduler) still decides when a call leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = ["RateProfile", "PROFILES", "profile_for"]


@dataclass(frozen=True, slots=True)
class RateProfile:
    name: str
    #: the profile applies to master equity below this (None: no upper bound)
    equity_below_usd: Decimal | None
    order_spacing_s: float
    monitoring_tick_s: float
    balance_refresh_s: float
    order_status_refresh_s: float


PROFILES: tuple[RateProfile, ...] = (
    RateProfile("LOW_CAPITAL", Decimal(100), 3.0, 30.0, 60.0, 15.0),
    RateProfile("STANDARD", Decimal(1000), 2.0, 10.0, 10.0, 5.0),
    RateProfile("AGGRESSIVE", None, 1.0, 5.0, 5.0, 3.0),
)


def profile_for(master_equity_usd: Decimal | None) -> RateProfile:
    """The profile for the master's equity; the gentlest one while the equity is unknown."""
    if master_equity_usd is None:
        return PROFILES[0]
    for profile in PROFILES:
        if profile.equity_below_usd is None or master_equity_usd < profile.equity_below_usd:
            return profile
    return PROFILES[-1]
