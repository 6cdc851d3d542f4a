"""Which names a follower's `disabled_symbols` can use, and a copy of them in the state directory.

NIJA copies the master's trades on USD-quoted pairs only, and sizing skips a copy whose pair answers to an entry:
an entry blocks something when it spells a USD pair (XBTUSD, BTC/USD, XXBTZUSD, ...) or names the asset one buys
and sells (DOGE, XDG, BTC, XBT). A misspelt
entry ("DOGEE") blocks nothing, silently. `nija run` says so in its log when it loads the pairs, and saves the
names here each time, so that `nija check`, which sends nothing to Kraken, can say so too before a restart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nija.kraken.pairs import Pairs
from nija.trading.sizing import PairRules

__all__ = ["FILE_NAME", "SavedSymbols", "blocking_symbols", "load", "save", "unknown_symbol_problem"]

FILE_NAME = "pair_symbols.json"


def blocking_symbols(pairs: Pairs) -> frozenset[str]:
    """Every upper-case name a `disabled_symbols` entry can use to block a copy on one of `pairs`: exactly the names
    sizing matches an entry against (a pair's spellings and its base asset's names), of the pairs NIJA copies."""
    return frozenset().union(*(PairRules.of(info).symbols for info in pairs if info.quote_common == "USD"))


def unknown_symbol_problem(symbol: str) -> str:
    return (f"{symbol!r} names no USD pair and no asset traded against USD, so it blocks nothing: fix its spelling "
            "(e.g. \"DOGE\", \"XBTUSD\", \"BTC/USD\")")


@dataclass(frozen=True)
class SavedSymbols:
    source: str  # the exchange they came from: its URL, or "embedded" for paper trading
    saved_at: str  # UTC, e.g. 2026-11-22T09:00:05Z
    symbols: frozenset[str]

    def unknown(self, disabled: Iterable[str]) -> list[str]:
        return [symbol for symbol in disabled if symbol not in self.symbols]


def save(state_dir: Path, source: str, symbols: frozenset[str]) -> None:
    """Replace the saved names (a private temporary file, then an atomic rename: a reader sees old or new).

    Not fsynced: a copy lost in a crash only leaves `nija check` without it until the next start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"source": source, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "symbols": sorted(symbols)}))
    os.replace(tmp, path)


def load(state_dir: Path) -> SavedSymbols | None:
    """The names `nija run` saved last in `state_dir`; None when there are none (or they cannot be read)."""
    try:
        saved = json.loads((state_dir / FILE_NAME).read_text())
        return SavedSymbols(str(saved["source"]), str(saved["saved_at"]), frozenset(map(str, saved["symbols"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None
