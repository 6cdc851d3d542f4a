"""Sizing a follower's copy: the equity ratio, the caps, lot rounding and every skip reason."""

import dataclasses
import json
from decimal import ROUND_DOWN, Decimal as D
from pathlib import Path

from hypothesis import example, given, settings, strategies as st

from nija.kraken.pairs import Pairs
from nija.trading.signals import Signal
from nija.trading.sizing import FollowerBook, FollowerLimits, OrderPlan, PairRules, Skip, SkipReason, size_copy

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kraken" / "asset_pairs_sample.json"
XBT_INFO = Pairs.from_results(json.loads(FIXTURE.read_text())["result"]).get("XBTUSD")  # lot 1e-8, ordermin 0.0001
XBT = PairRules.of(XBT_INFO)
FEE = D("0.004")


def round_volume_down(volume, lot_decimals):
    """The test's own oracle for lot rounding."""
    return volume.quantize(D(1).scaleb(-lot_decimals), rounding=ROUND_DOWN)


def buy(volume="0.01", price="50000", master_equity="10000"):
    return Signal("s1", "OAAA", "XBTUSD", "buy", D(volume), D(price), D("2"), D(master_equity))


def sell(fraction=None, closes=False, price="50000"):
    return Signal("s2", "OBBB", "XBTUSD", "sell", D("0.001"), D(price), D("0.2"), D("10000"),
                  position_fraction=None if fraction is None else D(fraction), closes_position=closes)


def test_buy_scales_by_equity_ratio_and_multiplier():
    # master spends 500 of 10 000 (5 %); follower with 2 000 equity and ×1.5 → 150 USD → 0.003 XBT
    plan = size_copy(buy(), FollowerLimits(risk_multiplier=D("1.5")),
                     FollowerBook(D("2000"), D("2000"), D(0)), XBT, taker_fee_rate=FEE)
    assert isinstance(plan, OrderPlan)
    assert plan.volume_base == D("0.003") and plan.notional_usd == D("150") and plan.ordertype == "market"


def test_buy_is_capped_at_max_risk_of_equity():
    # master puts 50 % of equity in: follower capped at 10 % of 1 000 = 100 USD
    plan = size_copy(buy(volume="0.1"), FollowerLimits(), FollowerBook(D("1000"), D("1000"), D(0)), XBT)
    assert plan.volume_base == D("0.002")


def test_buy_is_capped_by_free_cash_including_fee():
    # 10 % of 10 000 equity would be 1 000 USD, but only 300 USD cash: 300 / (50000·1.01·1.004)
    plan = size_copy(buy(volume="0.1"), FollowerLimits(), FollowerBook(D("10000"), D("300"), D(0)), XBT,
                     taker_fee_rate=FEE)
    assert plan.volume_base == round_volume_down(D(300) / (D(50000) * D("1.01") * D("1.004")), 8)
    assert plan.volume_base * D(50000) * D("1.01") * (1 + FEE) <= D(300)


def test_buy_with_entry_slippage_is_an_ioc_limit_above_master_price():
    plan = size_copy(buy(), FollowerLimits(entry_slippage=D("0.005")),
                     FollowerBook(D("2000"), D("2000"), D(0)), XBT)
    assert plan.ordertype == "limit" and plan.limit_price_usd == D("50250")


def test_an_entry_capped_by_max_risk_stays_within_it_at_its_ioc_limit_price():
    # master puts 50 % in; 10 % of 2 000 = 200 USD at most, even if the IOC fills at its limit 1 % above
    plan = size_copy(buy(volume="0.1"), FollowerLimits(entry_slippage=D("0.01")),
                     FollowerBook(D("2000"), D("2000"), D(0)), XBT)
    assert plan.limit_price_usd == D("50500")
    assert plan.volume_base * plan.limit_price_usd <= D("200") < (plan.volume_base + D("0.00000001")) * D("50500")


def test_too_small_follower_is_skipped_with_reason():
    result = size_copy(buy(volume="0.001"), FollowerLimits(), FollowerBook(D("50"), D("50"), D(0)), XBT)
    assert isinstance(result, Skip) and result.reason is SkipReason.BELOW_ORDERMIN
    assert "ordermin" in str(result)


def test_costmin_skip():
    rules = PairRules.of(dataclasses.replace(XBT_INFO, ordermin=D("0.00000001"), costmin=D("5")))
    result = size_copy(buy(volume="0.001"), FollowerLimits(), FollowerBook(D("50"), D("50"), D(0)), rules)
    assert result.reason is SkipReason.BELOW_COSTMIN


def test_disabled_symbol_by_any_name():
    for name in ("BTC", "XBT", "XXBT", "XBTUSD", "XXBTZUSD", "XBT/USD", "BTC/USD", "BTCUSD", "BTC-USD", "XBT-USD"):
        result = size_copy(buy(), FollowerLimits(disabled_symbols=frozenset({name})),
                           FollowerBook(D("2000"), D("2000"), D(0)), XBT)
        assert result.reason is SkipReason.DISABLED_SYMBOL, name
    doge = PairRules.of(Pairs.from_results(json.loads(FIXTURE.read_text())["result"]).get("XDGUSDT"))
    assert {"DOGE", "XDG", "XXDG", "DOGE/USDT", "XDGUSDT", "DOGE-USDT"} <= doge.symbols


def test_daily_loss_blocks_entries_but_not_exits():
    book = FollowerBook(D("2000"), D("2000"), D("0.01"), daily_loss_reached=True)
    assert size_copy(buy(), FollowerLimits(), book, XBT).reason is SkipReason.DAILY_LOSS_REACHED
    assert isinstance(size_copy(sell("0.5"), FollowerLimits(), book, XBT), OrderPlan)


def test_unknown_balance_is_never_zero():
    assert size_copy(buy(), FollowerLimits(), FollowerBook(None, None, None), XBT).reason is SkipReason.EQUITY_UNKNOWN
    assert size_copy(sell("0.5"), FollowerLimits(), FollowerBook(None, None, None), XBT).reason \
        is SkipReason.POSITION_UNKNOWN


def test_an_entry_the_follower_lacks_the_cash_for_is_skipped_as_no_cash_not_below_the_minimum():
    # 10 % of 2,000 USD would be 200 USD (0.004 BTC), but only 2 USD are free: 0.00003994 BTC, under the minimum.
    result = size_copy(buy(), FollowerLimits(), FollowerBook(D("2000"), D("2"), D(0)), XBT, taker_fee_rate=FEE)
    assert result.reason is SkipReason.NO_CASH and "free cash 2.00 USD" in result.detail


def test_sell_without_position_is_skipped():
    result = size_copy(sell("0.5"), FollowerLimits(), FollowerBook(D(1), D(1), D(0)), XBT)
    assert result.reason is SkipReason.NO_POSITION


def test_sell_fraction_of_own_position_rounded_down():
    plan = size_copy(sell("0.15"), FollowerLimits(), FollowerBook(D(1), D(1), D("0.0123456789")), XBT)
    assert plan.side == "sell" and plan.volume_base == D("0.00185185")


def test_closing_sell_sells_everything_held():
    plan = size_copy(sell(closes=True), FollowerLimits(), FollowerBook(D(1), D(1), D("0.0123456789")), XBT)
    assert plan.volume_base == D("0.01234567") and plan.limit_price_usd is None


def test_a_partial_exit_that_would_leave_an_unsellable_remainder_sells_everything():
    # 55 % of 0.00019 leaves 0.0000855 BTC, below XBTUSD's ordermin of 0.0001: that could never be sold later.
    plan = size_copy(sell("0.55"), FollowerLimits(), FollowerBook(D(1), D(1), D("0.00019")), XBT)
    assert plan.volume_base == D("0.00019")
    plan = size_copy(sell("0.25"), FollowerLimits(), FollowerBook(D(1), D(1), D("0.01")), XBT)
    assert plan.volume_base == D("0.0025")  # a sellable remainder stays
    # Half of 0.00015 is below the minimum itself: skipped, not turned into a sale of everything (the position
    # can still be sold whole when the master exits again).
    skipped = size_copy(sell("0.5"), FollowerLimits(), FollowerBook(D(1), D(1), D("0.00015")), XBT)
    assert skipped.reason is SkipReason.BELOW_ORDERMIN


def test_exit_is_never_capped_by_entry_slippage():
    plan = size_copy(sell("0.5"), FollowerLimits(entry_slippage=D("0.001")),
                     FollowerBook(D(1), D(1), D("0.01")), XBT)
    assert plan.ordertype == "market"


money = st.decimals(min_value=D("0.01"), max_value=D("1000000"), places=2)
fraction = st.decimals(min_value=D("0.001"), max_value=D("1"), places=3)


@settings(max_examples=300, deadline=None)
@given(master_volume=st.decimals(min_value=D("0.0001"), max_value=D("10"), places=8),
       price=st.decimals(min_value=D("1"), max_value=D("100000"), places=1),
       master_equity=money, equity=money, cash_share=fraction, multiplier=st.decimals(D("0.1"), D("5"), places=2),
       max_risk=st.decimals(D("0.01"), D("1"), places=2))
# exactly proportional, where a bound computed with a division rounds below the true value
@example(master_volume=D("0.0001"), price=D("256.6"), master_equity=D("1.34"), equity=D("25.66"), cash_share=D("1"),
         multiplier=D("1.34"), max_risk=D("1"))
def test_buy_properties(master_volume, price, master_equity, equity, cash_share, multiplier, max_risk):
    cash = (equity * cash_share).quantize(D("0.01"))
    signal = Signal("s", "O", "XBTUSD", "buy", master_volume, price, D(0), master_equity)
    limits = FollowerLimits(risk_multiplier=multiplier, max_risk_per_trade=max_risk)
    result = size_copy(signal, limits, FollowerBook(equity, cash, D(0)), XBT, taker_fee_rate=FEE)
    if isinstance(result, Skip):
        assert result.reason in {SkipReason.BELOW_ORDERMIN, SkipReason.BELOW_COSTMIN, SkipReason.NO_CASH}
        return
    notional = result.volume_base * price
    assert result.volume_base == round_volume_down(result.volume_base, XBT.info.lot_decimals)
    assert result.volume_base >= XBT.info.ordermin and notional >= XBT.info.costmin
    assert notional <= max_risk * equity  # risk cap
    assert notional * (1 + FEE) <= cash  # fees fit in free cash
    # never more than proportional (cross-multiplied: a division here would round the bound itself)
    assert notional * master_equity <= master_volume * price * equity * multiplier
    # rounding down loses less than one lot against the tightest cap
    lot = D("0.00000001")
    tightest = min(master_volume * price * equity / master_equity * multiplier, max_risk * equity) / price
    cash_cap = cash / (price * D("1.01") * (1 + FEE))
    assert min(tightest, cash_cap) - result.volume_base < lot


@settings(max_examples=300, deadline=None)
@given(held=st.decimals(min_value=D("0"), max_value=D("100"), places=10), fraction=fraction,
       closes=st.booleans())
def test_sell_properties(held, fraction, closes):
    signal = Signal("s", "O", "XBTUSD", "sell", D("1"), D("50000"), D(0), D("1000"),
                    position_fraction=fraction, closes_position=closes)
    result = size_copy(signal, FollowerLimits(), FollowerBook(D(1), D(1), held), XBT)
    if isinstance(result, Skip):
        assert result.reason in {SkipReason.NO_POSITION, SkipReason.BELOW_ORDERMIN, SkipReason.BELOW_COSTMIN}
        return
    assert result.volume_base <= held  # never more than held
    assert result.volume_base == round_volume_down(result.volume_base, 8)
    everything = round_volume_down(held, 8)
    if result.volume_base == everything:
        return  # closed, or the remainder could not have been sold on its own
    assert not closes
    assert held * fraction - result.volume_base < D("0.00000001")
    left = everything - result.volume_base  # a sellable remainder
    assert left >= XBT_INFO.ordermin and left * D("50000") >= XBT_INFO.costmin
