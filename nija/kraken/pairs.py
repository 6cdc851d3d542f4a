"""Kraken pair and asset names, order rounding and minimums: pure, built once from AssetPairs + Assets.

Kraken names one thing several ways (API.md §4, §7):
  asset  XXBT (id) / XBT (altname) / BTC (what everyone else says); XXDG / XDG / DOGE; ZUSD / USD
  pair   XXBTZUSD (key) / XBTUSD (altname) / XBT/USD (wsname) / BTC/USD, BTC-USD, BTCUSD (everyone else)
  balance keys may carry a suffix: XBT.F (auto-earn), ETH2.S (staked), USD.M, .B, .T, .HOLD
Everything here maps those names to one `PairInfo` or one common asset name ("BTC", "USD", "DOGE").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

__all__ = [
    "PairInfo",
    "Pairs",
    "UnknownPairError",
    "common_asset_name",
    "kraken_asset_name",
    "split_balance_suffix",
    "is_tradable_balance",
    "BALANCE_SUFFIXES",
]

#: suffixes Kraken appends to balance keys for earn/staking/hold sub-balances; not tradable as such
BALANCE_SUFFIXES = ("F", "S", "M", "B", "T", "HOLD")

# Kraken altname → the name the rest of the world uses.
_COMMON_BY_ALTNAME = {"XBT": "BTC", "XDG": "DOGE"}
_ALTNAME_BY_COMMON = {common: alt for alt, common in _COMMON_BY_ALTNAME.items()}

# Legacy 4-letter Kraken asset ids (X… crypto, Z… fiat) → altname. Used when no Assets result is at hand; an
# Assets result always wins. New assets (USDT, SOL, BEAM) have no prefix, so a bare "X"/"Z" is never stripped blindly.
_LEGACY_IDS = {
    "XXBT": "XBT", "XETH": "ETH", "XXDG": "XDG", "XXRP": "XRP", "XLTC": "LTC", "XXLM": "XLM", "XXMR": "XMR",
    "XZEC": "ZEC", "XETC": "ETC", "XMLN": "MLN", "XREP": "REP", "XICN": "ICN", "XNMC": "NMC", "XXVN": "XVN",
    "ZUSD": "USD", "ZEUR": "EUR", "ZGBP": "GBP", "ZJPY": "JPY", "ZCAD": "CAD", "ZAUD": "AUD", "ZCHF": "CHF",
}


class UnknownPairError(KeyError):
    """A pair name that the loaded AssetPairs do not know."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else "unknown pair"


def split_balance_suffix(balance_key: str) -> tuple[str, str | None]:
    """("XBT", "F") for "XBT.F"; ("ZUSD", None) for "ZUSD". Unknown suffixes are kept in the name."""
    name, dot, suffix = balance_key.partition(".")
    if dot and suffix.upper() in BALANCE_SUFFIXES:
        return name, suffix.upper()
    return balance_key, None


def is_tradable_balance(balance_key: str) -> bool:
    """Whether orders in the asset draw on this balance: a spot balance, or Kraken Rewards' auto-earn `.F` (read-only
    as a key, but "use USDT to transact with your USDT and USDT.F balances", says Kraken's BalanceEx documentation).
    Staked, opt-in and allocated balances (`.S`, `.M`, `.B`, ...) must be released first."""
    return split_balance_suffix(balance_key)[1] in (None, "F")


def common_asset_name(kraken_name: str, asset_altnames: Mapping[str, str] | None = None) -> str:
    """The common name of a Kraken asset id, altname or balance key: XXBT, XBT, XBT.F, BTC → "BTC"; ZUSD → "USD".

    `asset_altnames` (asset id → altname, from Assets) takes precedence over the built-in legacy table.
    """
    name, _suffix = split_balance_suffix(kraken_name.strip().upper())
    if asset_altnames and name in asset_altnames:
        name = asset_altnames[name].upper()
    elif name in _LEGACY_IDS:
        name = _LEGACY_IDS[name]
    return _COMMON_BY_ALTNAME.get(name, name)


def kraken_asset_name(common_name: str) -> str:
    """The Kraken altname for a common asset name: BTC → "XBT", DOGE → "XDG", USD → "USD"."""
    name = common_name.strip().upper()
    return _ALTNAME_BY_COMMON.get(name, name)


def _decimal(raw: Any, field: str, key: str) -> Decimal:
    try:
        value = Decimal(str(raw))
    except Exception:
        raise ValueError(f"AssetPairs[{key}].{field}: {raw!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"AssetPairs[{key}].{field}: {raw!r} is not a finite number")
    return value


@dataclass(frozen=True, slots=True)
class PairInfo:
    """One tradable pair as AssetPairs describes it. Prices are in quote units, volumes in base units."""

    key: str  # XXBTZUSD
    altname: str  # XBTUSD
    wsname: str  # XBT/USD
    base: str  # Kraken asset id: XXBT
    quote: str  # ZUSD
    pair_decimals: int  # price decimals
    lot_decimals: int  # volume decimals
    cost_decimals: int
    ordermin: Decimal  # minimum volume, base units
    costmin: Decimal | None  # minimum cost, quote units
    tick_size: Decimal  # price increment
    status: str = "online"
    base_common: str = ""  # BTC
    quote_common: str = ""  # USD

    @classmethod
    def from_kraken(cls, key: str, raw: Mapping[str, Any], asset_altnames: Mapping[str, str] | None = None) -> PairInfo:
        """Build from one AssetPairs result entry; a missing or malformed field raises ValueError naming it."""
        try:
            pair_decimals = int(raw["pair_decimals"])
            lot_decimals = int(raw["lot_decimals"])
            base, quote = str(raw["base"]), str(raw["quote"])
        except KeyError as exc:
            raise ValueError(f"AssetPairs[{key}] lacks field {exc.args[0]!r}") from None
        tick_raw = raw.get("tick_size")
        tick_size = _decimal(tick_raw, "tick_size", key) if tick_raw not in (None, "") else Decimal(1).scaleb(
            -pair_decimals
        )
        costmin_raw = raw.get("costmin")
        altname = str(raw.get("altname", key))
        base_common = common_asset_name(base, asset_altnames)
        quote_common = common_asset_name(quote, asset_altnames)
        return cls(
            key=key,
            altname=altname,
            wsname=str(raw.get("wsname") or f"{kraken_asset_name(base_common)}/{kraken_asset_name(quote_common)}"),
            base=base,
            quote=quote,
            pair_decimals=pair_decimals,
            lot_decimals=lot_decimals,
            cost_decimals=int(raw.get("cost_decimals", pair_decimals)),
            ordermin=_decimal(raw.get("ordermin", "0"), "ordermin", key),
            costmin=_decimal(costmin_raw, "costmin", key) if costmin_raw not in (None, "") else None,
            tick_size=tick_size,
            status=str(raw.get("status", "online")),
            base_common=base_common,
            quote_common=quote_common,
        )

    @property
    def display_name(self) -> str:
        """BTC/USD."""
        return f"{self.base_common}/{self.quote_common}"

    def round_volume_down(self, volume: Decimal) -> Decimal:
        """Volume rounded *down* to lot_decimals, so a sell never asks for more than the account holds."""
        return Decimal(volume).quantize(Decimal(1).scaleb(-self.lot_decimals), rounding=ROUND_DOWN)

    def round_price(self, price: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
        """Price on the pair's tick grid (nearest tick by default; pass ROUND_DOWN/ROUND_UP to choose a side)."""
        price = Decimal(price)
        ticks = (price / self.tick_size).quantize(Decimal(1), rounding=rounding)
        return (ticks * self.tick_size).quantize(Decimal(1).scaleb(-self.pair_decimals), rounding=ROUND_DOWN)

    def check_minimums(self, volume_base: Decimal, price: Decimal | None) -> str | None:
        """A reason why an order of `volume_base` at `price` would be refused, or None when it meets the minimums.

        `price` None (a market order without a reference price) skips the cost check.
        """
        shortfall = self.minimum_shortfall(volume_base, price)
        return None if shortfall is None else shortfall[1]

    def minimum_shortfall(self, volume_base: Decimal, price: Decimal | None) -> tuple[str, str] | None:
        """Which minimum an order misses ("ordermin" or "costmin") and why, or None (see `check_minimums`)."""
        volume_base = Decimal(volume_base)
        if volume_base <= 0:
            return "ordermin", f"volume {volume_base} {self.base_common} is not positive"
        if volume_base < self.ordermin:
            return "ordermin", (
                f"volume {volume_base} {self.base_common} is below {self.altname}'s minimum order "
                f"{self.ordermin} {self.base_common}"
            )
        if self.costmin is not None and price is not None:
            cost = volume_base * Decimal(price)
            if cost < self.costmin:
                return "costmin", (
                    f"cost {cost.normalize():f} {self.quote_common} is below {self.altname}'s minimum cost "
                    f"{self.costmin} {self.quote_common}"
                )
        return None

    @property
    def tradable(self) -> bool:
        """Whether new orders of any kind may be placed (not cancel_only)."""
        return self.status in ("online", "post_only", "limit_only", "reduce_only")


class Pairs:
    """Registry of every pair, resolvable by key, altname, wsname or a common name like "BTC/USD" or "BTC-USD"."""

    def __init__(self, pairs: Iterable[PairInfo], asset_altnames: Mapping[str, str] | None = None) -> None:
        self._by_key: dict[str, PairInfo] = {}
        self._by_name: dict[str, PairInfo] = {}
        self._by_assets: dict[tuple[str, str], PairInfo] = {}
        self._asset_altnames = {k.upper(): v.upper() for k, v in (asset_altnames or {}).items()}
        self._asset_ids_by_common: dict[str, str] = {}
        for pair in pairs:
            self._by_key[pair.key] = pair
            for name in (pair.key, pair.altname, pair.wsname):
                self._by_name.setdefault(name.upper(), pair)
            self._by_assets.setdefault((pair.base_common, pair.quote_common), pair)
            for asset_id in (pair.base, pair.quote):
                self._asset_ids_by_common.setdefault(common_asset_name(asset_id, self._asset_altnames), asset_id)
        # Then assets no pair trades. Sub-balance ids (XBT.M, USD.HOLD) are never an asset's own id.
        for asset_id in self._asset_altnames:
            if not split_balance_suffix(asset_id)[1]:
                self._asset_ids_by_common.setdefault(common_asset_name(asset_id, self._asset_altnames), asset_id)

    @classmethod
    def from_results(cls, asset_pairs: Mapping[str, Any], assets: Mapping[str, Any] | None = None) -> Pairs:
        """From the `result` objects of AssetPairs and (optionally, recommended) Assets."""
        altnames = {asset_id: str(info.get("altname", asset_id)) for asset_id, info in (assets or {}).items()}
        pairs = [PairInfo.from_kraken(key, raw, altnames) for key, raw in asset_pairs.items()]
        return cls(pairs, altnames)

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):
        return iter(self._by_key.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def get(self, name: str) -> PairInfo:
        """The pair for any of its names; UnknownPairError (a KeyError) says what was tried."""
        pair = self._find(name)
        if pair is None:
            raise UnknownPairError(
                f"unknown Kraken pair {name!r}: use a key (XXBTZUSD), altname (XBTUSD), wsname (XBT/USD) "
                f"or BASE/QUOTE (BTC/USD) of a pair AssetPairs lists ({len(self._by_key)} loaded)"
            )
        return pair

    __getitem__ = get

    def find(self, base: str, quote: str) -> PairInfo | None:
        """The pair trading `base` against `quote`, in any naming (BTC/XBT/XXBT, USD/ZUSD)."""
        return self._by_assets.get((self.asset_name(base), self.asset_name(quote)))

    def asset_name(self, kraken_name: str) -> str:
        """Common name of an asset id, altname or balance key: XXBT, XBT.F → "BTC"."""
        return common_asset_name(kraken_name, self._asset_altnames)

    def asset_id(self, name: str) -> str:
        """Kraken's asset id for any name: BTC → "XXBT", USD → "ZUSD", SOL → "SOL"."""
        common = self.asset_name(name)
        return self._asset_ids_by_common.get(common, kraken_asset_name(common))

    def normalise_balances(
        self, balances: Mapping[str, Decimal], *, include_suffixed: bool = False
    ) -> dict[str, Decimal]:
        """Balances summed per common asset name: what orders can trade (spot and auto-earn `.F`), plus with
        `include_suffixed` what is staked or allocated (ETH2.S, DOT.B), which cannot be sold as it is."""
        totals: dict[str, Decimal] = {}
        for key, amount in balances.items():
            if not include_suffixed and not is_tradable_balance(key):
                continue
            common = self.asset_name(key)
            totals[common] = totals.get(common, Decimal(0)) + Decimal(amount)
        return totals

    def _find(self, name: str) -> PairInfo | None:
        text = name.strip().upper()
        pair = self._by_name.get(text)
        if pair is not None:
            return pair
        for separator in ("/", "-", "_", ":"):
            if separator in text:
                base, _, quote = text.partition(separator)
                return self.find(base, quote)
        # Glued common names such as BTCUSD or DOGEUSDT: try every split point.
        for cut in range(2, len(text) - 1):
            pair = self.find(text[:cut], text[cut:])
            if pair is not None:
                return pair
        return None
