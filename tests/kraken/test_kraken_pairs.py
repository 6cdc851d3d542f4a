"""Pair and asset naming, rounding and minimums against Kraken's own AssetPairs/Assets examples."""

import json
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nija.kraken.pairs import (
    PairInfo,
    Pairs,
    UnknownPairError,
    common_asset_name,
    kraken_asset_name,
    split_balance_suffix,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kraken"


@pytest.fixture(scope="module")
def pairs() -> Pairs:
    asset_pairs = json.loads((FIXTURES / "asset_pairs_sample.json").read_text())["result"]
    assets = json.loads((FIXTURES / "official_examples" / "public__assets__info.json").read_text())["result"]
    return Pairs.from_results(asset_pairs, assets)


@pytest.mark.parametrize(
    "name, key",
    [
        ("XXBTZUSD", "XXBTZUSD"),
        ("XBTUSD", "XXBTZUSD"),
        ("XBT/USD", "XXBTZUSD"),
        ("BTC/USD", "XXBTZUSD"),
        ("btc-usd", "XXBTZUSD"),
        ("BTCUSD", "XXBTZUSD"),
        ("BTC/USDT", "XBTUSDT"),
        ("DOGE/USDT", "XDGUSDT"),
        ("DOGEUSDT", "XDGUSDT"),
        ("XDG/USDT", "XDGUSDT"),
        ("ETH/BTC", "XETHXXBT"),
        ("ETHXBT", "XETHXXBT"),
        ("XRP/USD", "XXRPZUSD"),
    ],
)
def test_every_naming_of_a_pair_resolves_to_its_key(pairs, name, key):
    assert pairs.get(name).key == key
    assert name in pairs


def test_unknown_pair_names_the_input_and_the_accepted_forms(pairs):
    with pytest.raises(UnknownPairError) as info:
        pairs.get("FOO/BAR")
    assert "FOO/BAR" in str(info.value) and "altname" in str(info.value)
    assert "FOO/BAR" not in pairs


def test_find_by_assets_in_any_naming(pairs):
    assert pairs.find("XXBT", "ZUSD").altname == "XBTUSD"
    assert pairs.find("BTC", "USD").altname == "XBTUSD"
    assert pairs.find("SOL", "USD") is None


@pytest.mark.parametrize(
    "kraken, common",
    [("XXBT", "BTC"), ("XBT", "BTC"), ("XBT.F", "BTC"), ("XXDG", "DOGE"), ("XDG", "DOGE"), ("ZUSD", "USD"),
     ("USD.M", "USD"), ("USD.HOLD", "USD"), ("ETH2.S", "ETH2"), ("XETH", "ETH"), ("USDT", "USDT"), ("XTZ", "XTZ"),
     ("SOL.B", "SOL"), ("DOT.T", "DOT"), ("BTC", "BTC")],
)
def test_asset_names_normalise_prefixes_aliases_and_suffixes(kraken, common):
    assert common_asset_name(kraken) == common


def test_asset_ids_both_ways(pairs):
    assert pairs.asset_id("BTC") == "XXBT"
    assert pairs.asset_id("DOGE") == "XXDG"
    assert pairs.asset_id("usd") == "ZUSD"
    assert pairs.asset_id("USDT") == "USDT"
    assert kraken_asset_name("BTC") == "XBT" and kraken_asset_name("doge") == "XDG"
    assert split_balance_suffix("XBT.F") == ("XBT", "F")
    assert split_balance_suffix("ZUSD") == ("ZUSD", None)


def test_balances_are_summed_per_asset_and_staked_ones_left_out_unless_asked(pairs):
    # Auto-earn (.F) is traded through its base asset; staked (.S) must be unstaked first.
    raw = {"ZUSD": Decimal("10"), "USD.F": Decimal("2.5"), "XXBT": Decimal("0.1"), "XBT.F": Decimal("0.05"),
           "XBT.S": Decimal("1")}
    assert pairs.normalise_balances(raw) == {"USD": Decimal("12.5"), "BTC": Decimal("0.15")}
    assert pairs.normalise_balances(raw, include_suffixed=True) == {"USD": Decimal("12.5"), "BTC": Decimal("1.15")}


def test_pair_fields_parse_as_decimal(pairs):
    btc = pairs.get("XBTUSD")
    assert btc.ordermin == Decimal("0.0001") and btc.costmin == Decimal("0.5") and btc.tick_size == Decimal("0.1")
    assert (btc.lot_decimals, btc.pair_decimals, btc.wsname, btc.status) == (8, 1, "XBT/USD", "online")
    assert btc.display_name == "BTC/USD"


def test_volume_rounds_down_to_the_lot(pairs):
    btc = pairs.get("XBTUSD")
    assert btc.round_volume_down(Decimal("0.123456789")) == Decimal("0.12345678")
    assert btc.round_volume_down(Decimal("0.999999999")) == Decimal("0.99999999")


def test_price_rounds_to_the_tick(pairs):
    btc = pairs.get("XBTUSD")
    assert btc.round_price(Decimal("30000.06")) == Decimal("30000.1")
    assert btc.round_price(Decimal("30000.06"), ROUND_DOWN) == Decimal("30000.0")
    assert btc.round_price(Decimal("30000.01"), ROUND_UP) == Decimal("30000.1")
    coarse = PairInfo.from_kraken("X", {"base": "A", "quote": "ZUSD", "pair_decimals": 2, "lot_decimals": 0,
                                        "tick_size": "0.05"})
    assert coarse.round_price(Decimal("1.07")) == Decimal("1.05")
    assert coarse.round_price(Decimal("1.08")) == Decimal("1.10")


def test_minimums_give_a_reason(pairs):
    btc = pairs.get("XBTUSD")
    assert btc.check_minimums(Decimal("0.0001"), Decimal("30000")) is None
    reason = btc.check_minimums(Decimal("0.00005"), Decimal("30000"))
    assert "minimum order" in reason and "0.0001" in reason
    reason = btc.check_minimums(Decimal("0.0001"), Decimal("3000"))  # cost 0.3 USD < 0.5
    assert "minimum cost" in reason and "0.5" in reason
    assert btc.check_minimums(Decimal("0.0001"), None) is None  # market order: cost unknown
    assert "not positive" in btc.check_minimums(Decimal("0"), Decimal("1"))


def test_malformed_asset_pair_names_the_field():
    with pytest.raises(ValueError, match=r"AssetPairs\[BAD\].*lot_decimals"):
        PairInfo.from_kraken("BAD", {"base": "A", "quote": "B", "pair_decimals": 1})
    with pytest.raises(ValueError, match=r"AssetPairs\[BAD\]\.ordermin"):
        PairInfo.from_kraken("BAD", {"base": "A", "quote": "B", "pair_decimals": 1, "lot_decimals": 1,
                                     "ordermin": "lots"})


_AMOUNTS = st.decimals(min_value=Decimal("0"), max_value=Decimal("1000000"), places=12, allow_nan=False,
                       allow_infinity=False)


@given(volume=_AMOUNTS, lot_decimals=st.integers(0, 10))
def test_rounded_volume_never_exceeds_what_was_asked(volume, lot_decimals):
    pair = PairInfo.from_kraken("P", {"base": "A", "quote": "ZUSD", "pair_decimals": 2, "lot_decimals": lot_decimals})
    rounded = pair.round_volume_down(volume)
    assert rounded <= volume
    assert volume - rounded < Decimal(1).scaleb(-lot_decimals)
    assert rounded.as_tuple().exponent >= -lot_decimals


@given(price=_AMOUNTS, tick=st.sampled_from(["0.1", "0.05", "0.00001", "1", "0.25"]))
def test_rounded_price_lies_on_the_tick_grid_within_half_a_tick(price, tick):
    tick_size = Decimal(tick)
    decimals = max(0, -tick_size.as_tuple().exponent)
    pair = PairInfo.from_kraken("P", {"base": "A", "quote": "ZUSD", "pair_decimals": decimals, "lot_decimals": 8,
                                      "tick_size": tick})
    rounded = pair.round_price(price)
    assert rounded % tick_size == 0
    assert abs(rounded - price) <= tick_size / 2


def test_an_assets_id_is_never_one_of_its_sub_balances():
    """Assets lists ids alphabetically: USD.HOLD before ZUSD, XBT.M before XXBT."""
    assets = {"USD.HOLD": {"altname": "USD.HOLD"}, "XBT.M": {"altname": "XBT.M"}, "XXBT": {"altname": "XBT"},
              "ZUSD": {"altname": "USD"}, "ETH2.S": {"altname": "ETH2.S"}, "ETH2": {"altname": "ETH2"}}
    asset_pairs = {"XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD",
                                "pair_decimals": 1, "lot_decimals": 8, "ordermin": "0.0001", "costmin": "0.5",
                                "tick_size": "0.1"}}
    pairs = Pairs.from_results(asset_pairs, assets)
    assert (pairs.asset_id("BTC"), pairs.asset_id("USD"), pairs.asset_id("ETH2")) == ("XXBT", "ZUSD", "ETH2")

