"""The embedded exchange's catalogue: Kraken's real asset and pair names with plausible metadata.

Every pair is quoted in USD (`ZUSD`). Legacy assets keep Kraken's 4-letter ids (`XXBT`, `XETH`, `XXDG`, `XXRP`,
`XLTC`, `XXLM`, `ZUSD`) and pairs of two legacy assets keep the legacy key (`XXBTZUSD`, altname `XBTUSD`); newer
pairs use the altname as key (`SOLUSD`, `BEAMUSD`). `ordermin`/`costmin`/`tick_size`/decimals are close to what
Kraken published in 2024–2025; the market model's reference price, volatility and liquidity sit beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["AssetSpec", "PairSpec", "ASSETS", "PAIRS", "TAKER_FEES", "MAKER_FEES", "resolve_pair"]


@dataclass(frozen=True, slots=True)
class AssetSpec:
    id: str            # Kraken's asset id, e.g. "XXBT"
    altname: str       # e.g. "XBT"
    decimals: int
    display_decimals: int
    collateral_value: float | None = None


@dataclass(frozen=True, slots=True)
class PairSpec:
    key: str                 # e.g. "XXBTZUSD"
    altname: str             # e.g. "XBTUSD"
    base: str                # asset id
    quote: str               # asset id
    pair_decimals: int       # price decimals
    lot_decimals: int        # volume decimals
    cost_decimals: int
    ordermin: Decimal        # base units
    costmin: Decimal         # quote units
    tick_size: Decimal
    # market model (not part of Kraken's metadata)
    ref_price: float         # where the seeded price path ends at start-up
    vol_per_min: float       # standard deviation of a one-minute log return in the normal regime
    spread: float            # (ask - bid) / mid
    depth_usd: float         # notional at the best level of each side; deeper levels grow
    volume_usd_per_min: float
    wsname: str = field(default="")

    @property
    def tick(self) -> Decimal:
        return self.tick_size


def _asset(id_: str, alt: str, dec: int, disp: int, coll: float | None = None) -> AssetSpec:
    return AssetSpec(id_, alt, dec, disp, coll)


ASSETS: dict[str, AssetSpec] = {
    a.id: a
    for a in (
        _asset("ZUSD", "USD", 4, 2),
        _asset("USDT", "USDT", 8, 4, 1.0),
        _asset("XXBT", "XBT", 10, 5, 1.0),
        _asset("XETH", "ETH", 10, 5, 1.0),
        _asset("SOL", "SOL", 10, 5, 0.75),
        _asset("XXDG", "XDG", 8, 2, 0.5),
        _asset("ADA", "ADA", 8, 6, 0.9),
        _asset("XXRP", "XRP", 8, 5, 0.9),
        _asset("BEAM", "BEAM", 10, 5),
        _asset("XLTC", "LTC", 10, 5, 0.85),
        _asset("DOT", "DOT", 10, 8, 0.75),
        _asset("LINK", "LINK", 10, 5, 0.75),
        _asset("AVAX", "AVAX", 10, 5, 0.75),
        _asset("XXLM", "XLM", 8, 5, 0.5),
        _asset("ATOM", "ATOM", 8, 6, 0.5),
        _asset("PEPE", "PEPE", 5, 2),
    )
}


def _pair(key: str, alt: str, base: str, quote: str, pdec: int, ldec: int, cdec: int, ordermin: str,
          tick: str, ref: float, vol: float, spread: float, depth: float, volume: float,
          costmin: str = "0.5") -> PairSpec:
    b, q = ASSETS[base].altname, ASSETS[quote].altname
    return PairSpec(key, alt, base, quote, pdec, ldec, cdec, Decimal(ordermin), Decimal(costmin), Decimal(tick),
                    ref, vol, spread, depth, volume, wsname=f"{b}/{q}")


# vol_per_min: 0.0012 is ~0.12 % per minute (~0.27 % per 5 minutes) in the normal regime; the volatile regime
# doubles it. Spreads stay under APEX's 0.15 % gate for the liquid pairs and near or above it for the thin ones.
PAIRS: dict[str, PairSpec] = {
    p.key: p
    for p in (
        _pair("XXBTZUSD", "XBTUSD", "XXBT", "ZUSD", 1, 8, 5, "0.00005", "0.1", 65000.0, 0.0011, 0.00002, 250000, 900000),
        _pair("XETHZUSD", "ETHUSD", "XETH", "ZUSD", 2, 8, 5, "0.002", "0.01", 3200.0, 0.0014, 0.00004, 150000, 500000),
        _pair("SOLUSD", "SOLUSD", "SOL", "ZUSD", 2, 8, 5, "0.02", "0.01", 150.0, 0.0022, 0.0001, 60000, 180000),
        _pair("XDGUSD", "XDGUSD", "XXDG", "ZUSD", 7, 8, 5, "13", "0.0000001", 0.16, 0.0026, 0.0004, 30000, 90000),
        _pair("ADAUSD", "ADAUSD", "ADA", "ZUSD", 6, 8, 5, "5", "0.000001", 0.45, 0.0024, 0.0003, 25000, 60000),
        _pair("XXRPZUSD", "XRPUSD", "XXRP", "ZUSD", 5, 8, 5, "2", "0.00001", 0.55, 0.0020, 0.0002, 40000, 120000),
        _pair("BEAMUSD", "BEAMUSD", "BEAM", "ZUSD", 6, 8, 5, "250", "0.000001", 0.021, 0.0040, 0.0012, 3000, 6000),
        _pair("XLTCZUSD", "LTCUSD", "XLTC", "ZUSD", 2, 8, 5, "0.05", "0.01", 82.0, 0.0018, 0.0002, 20000, 40000),
        _pair("DOTUSD", "DOTUSD", "DOT", "ZUSD", 4, 8, 5, "0.6", "0.0001", 6.5, 0.0022, 0.0003, 15000, 35000),
        _pair("LINKUSD", "LINKUSD", "LINK", "ZUSD", 5, 8, 5, "0.3", "0.00001", 14.0, 0.0022, 0.0003, 15000, 40000),
        _pair("AVAXUSD", "AVAXUSD", "AVAX", "ZUSD", 2, 8, 5, "0.15", "0.01", 30.0, 0.0025, 0.0003, 12000, 30000),
        _pair("XXLMZUSD", "XLMUSD", "XXLM", "ZUSD", 6, 8, 5, "20", "0.000001", 0.11, 0.0021, 0.0004, 10000, 20000),
        _pair("ATOMUSD", "ATOMUSD", "ATOM", "ZUSD", 4, 8, 5, "0.6", "0.0001", 7.5, 0.0023, 0.0004, 8000, 15000),
        _pair("PEPEUSD", "PEPEUSD", "PEPE", "ZUSD", 9, 2, 5, "500000", "0.000000001", 0.0000105, 0.0035, 0.0008,
              10000, 30000),
        _pair("USDTZUSD", "USDTUSD", "USDT", "ZUSD", 5, 8, 5, "5", "0.00001", 1.0, 0.00004, 0.00002, 200000, 300000),
    )
}

# Kraken Pro's schedule by 30-day USD volume; the entry tier is 0.40 % taker / 0.25 % maker.
TAKER_FEES: list[list[float]] = [[0, 0.40], [10000, 0.35], [50000, 0.24], [100000, 0.22], [250000, 0.20],
                                 [500000, 0.18], [1000000, 0.16], [2500000, 0.14], [5000000, 0.12],
                                 [10000000, 0.10]]
MAKER_FEES: list[list[float]] = [[0, 0.25], [10000, 0.20], [50000, 0.14], [100000, 0.12], [250000, 0.10],
                                 [500000, 0.08], [1000000, 0.06], [2500000, 0.04], [5000000, 0.02],
                                 [10000000, 0.0]]

_BY_NAME: dict[str, PairSpec] = {}
for _p in PAIRS.values():
    _BY_NAME[_p.key.upper()] = _p
    _BY_NAME[_p.altname.upper()] = _p
    _BY_NAME[_p.wsname.upper()] = _p


def resolve_pair(name: str) -> PairSpec | None:
    """The pair for a key (`XXBTZUSD`), an altname (`XBTUSD`) or a wsname (`XBT/USD`); None when unknown."""
    return _BY_NAME.get(name.strip().upper())
