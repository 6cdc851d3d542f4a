"""The names a disabled_symbols entry can block with: what sizing matches, on the pairs NIJA copies, and the copy
of them that `nija check` reads."""

import io
import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from nija import pair_symbols
from nija.accounts import check_main
from nija.kraken.pairs import Pairs
from nija.trading.signals import Signal
from nija.trading.sizing import FollowerBook, FollowerLimits, PairRules, Skip, size_copy

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kraken" / "asset_pairs_sample.json"
# XBTUSD and XRPUSD; ETHXBT, and XBT, ETH, XRP and XDG against USDT: the master's fills there are not copied.
PAIRS = Pairs.from_results(json.loads(FIXTURE.read_text())["result"])


def blocked_by_sizing(symbol: str) -> bool:
    """Whether the entry makes sizing skip a copy on any pair NIJA copies (USD-quoted)."""
    limits = FollowerLimits(disabled_symbols=frozenset({symbol}))
    for info in PAIRS:
        if info.quote_common != "USD":
            continue
        signal = Signal("s1", "O1", info.altname, "buy", D("100"), D("1"), D("0"), D("10000"))
        plan = size_copy(signal, limits, FollowerBook(D("1000"), D("1000"), D("0")), PairRules.of(info))
        if isinstance(plan, Skip) and plan.reason.value == "disabled_symbol":
            return True
    return False


@pytest.mark.parametrize("symbol", ["XBTUSD", "BTC/USD", "XXBTZUSD", "BTC", "XBT", "XXBT", "XRP", "XRP-USD",
                                    "XXRPZUSD", "ETH", "ETHXBT", "ETH/BTC", "XDG", "DOGE", "XRPUSDT", "USDT", "USD",
                                    "DOGEE"])
def test_an_entry_is_told_to_block_something_exactly_when_sizing_would_skip_a_copy_for_it(symbol):
    assert (symbol in pair_symbols.blocking_symbols(PAIRS)) is blocked_by_sizing(symbol)


def test_check_says_when_the_saved_names_are_another_exchanges(tmp_path):
    """Names saved by a run on another URL (a sim, say) are not used to judge this one's entries."""
    state = tmp_path / "state"
    pair_symbols.save(state, "http://127.0.0.1:9999", frozenset({"XBTUSD"}))
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "alice.json").write_text(json.dumps({"name": "alice", "disabled_symbols": ["DOGEE"]}))
    env = {"KRAKEN_MASTER_API_KEY": "km", "KRAKEN_MASTER_API_SECRET": "c2VjcmV0", "NIJA_STATE_DIR": str(state),
           "NIJA_USERS_DIR": str(tmp_path / "users"), "KRAKEN_USER_ALICE_API_KEY": "ka",
           "KRAKEN_USER_ALICE_API_SECRET": "c2VjcmV0"}
    out = io.StringIO()
    assert check_main([], environ=env, out=out) == 0
    assert "the names saved there are http://127.0.0.1:9999's" in out.getvalue()
    assert "DOGEE" not in out.getvalue()
