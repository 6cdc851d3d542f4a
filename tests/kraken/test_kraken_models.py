"""Kraken's own example responses parse into models with Decimal money."""

import json
from decimal import Decimal
from pathlib import Path

from nija.kraken.models import (
    OHLC,
    AddOrderResult,
    Balances,
    CancelAllAfterResult,
    ClosedOrdersPage,
    ExtendedBalances,
    Ticker,
    TradeBalance,
    TradesPage,
    orders_from_mapping,
)
from nija.kraken.pairs import PairInfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kraken"
OFFICIAL = FIXTURES / "official_examples"
INLINE = json.loads((FIXTURES / "kraken_openapi_inline_examples.json").read_text())


def _inline(name):
    return INLINE[name]["response_examples"]["200"]["result"]


def test_ticker_example():
    result = json.loads((OFFICIAL / "public__ticker.json").read_text())["result"]
    ticker = Ticker.from_kraken("XXBTZUSD", result["XXBTZUSD"])
    assert ticker.ask == Decimal("3537.50000") and ticker.bid == Decimal("3537.40000")
    assert ticker.last == Decimal("3537.50000") and ticker.open_today == Decimal("3530.60000")
    assert ticker.trades_24h == 6815 and isinstance(ticker.volume_24h_base, Decimal)
    assert ticker.mid == Decimal("3537.45")


def test_ohlc_example():
    result = json.loads((OFFICIAL / "public__ohlc.json").read_text())["result"]
    ohlc = OHLC.from_result(result)
    assert ohlc.pair_key == "XXBTZUSD" and ohlc.last == 1548111600 and len(ohlc.candles) == 2
    candle = ohlc.candles[0]
    assert (candle.time_s, candle.open, candle.close, candle.volume_base, candle.count) == (
        1548115200, Decimal("3533.4"), Decimal("3539.4"), Decimal("83.09287787"), 232)


def test_asset_pairs_example():
    result = json.loads((OFFICIAL / "public__assets__pairs.json").read_text())["result"]
    infos = {key: PairInfo.from_kraken(key, raw) for key, raw in result.items()}
    assert infos["XETHXXBT"].ordermin == Decimal("0.01") and infos["XETHXXBT"].tick_size == Decimal("0.00001")
    assert infos["XETHXXBT"].base_common == "ETH" and infos["XETHXXBT"].quote_common == "BTC"


def test_balance_examples_keep_decimals_exact():
    balances = Balances.from_result(_inline("POST /private/Balance"))
    assert balances.get("XXBT") == Decimal("1011.1908877900")
    assert balances.get("ETH2.S") == Decimal("198.3970800000")
    assert balances.get("NOPE") is None
    extended = ExtendedBalances.from_result(_inline("POST /private/BalanceEx"))
    # the example sends JSON numbers: read via str(), so 25435.21 stays exactly 25435.21
    assert extended.by_asset["ZUSD"].balance == Decimal("25435.21")
    assert extended.by_asset["ZUSD"].available == Decimal("25435.21") - Decimal("8249.76")


def test_trade_balance_example():
    trade = TradeBalance.model_validate(_inline("POST /private/TradeBalance"))
    assert trade.equivalent_balance == Decimal("1101.3425") and trade.unrealized_pnl == Decimal("-10.0232")
    assert trade.margin_level == Decimal("5432.57") and trade.unexecuted_value is None


def test_order_examples():
    opened = orders_from_mapping(_inline("POST /private/OpenOrders")["open"])
    order = opened["OQCLML-BW3P3-BUCMWZ"]
    assert order.txid == "OQCLML-BW3P3-BUCMWZ" and order.status == "open"
    assert order.volume_base == Decimal("1.25000000") and order.executed_base == Decimal("0.37500000")
    assert order.descr.pair == "XBTUSD" and order.descr.price == Decimal("30010.0") and not order.is_done
    closed = ClosedOrdersPage.from_result(_inline("POST /private/ClosedOrders"))
    assert closed.count == 2 and closed.closed["O37652-RJWRT-IMO74O"].reason == "User requested"
    queried = orders_from_mapping(_inline("POST /private/QueryOrders"))
    market = queried["OMMDB2-FSB6Z-7W3HPO"]
    assert market.avg_price == Decimal("30000.0") and market.fee_quote == Decimal("7.5") and market.is_done


def test_trades_history_example():
    page = TradesPage.from_result(json.loads((OFFICIAL / "user__trades__history.json").read_text())["result"])
    assert page.count == 2
    trade = page.trades["TBGB6I-IMYKU-WWA2SK"]
    assert trade.tid == "TBGB6I-IMYKU-WWA2SK" and trade.ordertxid == "OJTVFU-UWBXK-7AC6ML"
    assert trade.pair == "XXBTZUSD" and trade.type == "sell" and trade.time == 1428084298.0986
    assert trade.volume_base == Decimal("0.10000000") and trade.cost == Decimal("0.92500")
    assert trade.fee == Decimal("0.00296") and trade.price == Decimal("9.25000")


def test_add_order_and_dead_mans_switch_examples():
    add = json.loads((OFFICIAL / "trading__orders__add.json").read_text())["result"]
    result = AddOrderResult(cl_ord_id="x", txid=add["txid"], description=add["descr"]["order"])
    assert result.order_id == "OUF4EM-FRGI2-MQMWZD"
    switch = CancelAllAfterResult.model_validate(_inline("POST /private/CancelAllOrdersAfter"))
    assert switch.trigger_time == "2023-03-24T17:42:56Z"


def test_open_orders_example_with_an_empty_userref():
    result = json.loads((OFFICIAL / "user__orders__open.json").read_text())["result"]
    order = orders_from_mapping(result["open"])["O7ICPO-F4CLJ-MVBLHC"]
    assert order.status == "open" and order.volume_base == Decimal("3.00000000") and order.userref is None
