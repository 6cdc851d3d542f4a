"""Follower portfolios in memory: fills, estimate corrections, daily loss, unknown never zero, rate profiles."""

from decimal import Decimal as D

from nija.trading.positions import BalanceRead, Portfolio, PriceBook, refresh_interval_s


def test_unknown_until_read():
    portfolio = Portfolio()
    assert portfolio.equity_usd(PriceBook()) is None and portfolio.cash_usd() is None and portfolio.held("BTC") is None
    portfolio.apply_fill("BTC", "buy", D("1"), D("10"), D("0"))  # ignored: nothing known to update
    assert not portfolio.known


def test_fills_and_a_corrected_estimate():
    prices = PriceBook({"BTC": D("50000")})
    portfolio = Portfolio()
    portfolio.load(BalanceRead({"USD": D("1000"), "BTC": D("0")}))
    portfolio.apply_fill("BTC", "buy", D("0.002"), D("100"), D("0.4"))  # estimate
    portfolio.apply_fill("BTC", "sell", D("0.001"), D("50"), D("0.2"))  # a later fill booked meanwhile
    portfolio.correct_fill("BTC", "buy", D("0.002"), D("100"), D("0.4"), D("0.002"), D("100.01"), D("0.41"))
    assert portfolio.held("BTC") == D("0.001")
    assert portfolio.cash_usd() == D("1000") - D("100.01") - D("0.41") + D("50") - D("0.2")
    assert portfolio.equity_usd(prices) == portfolio.cash_usd() + D("50")


def test_daily_loss():
    portfolio = Portfolio(day="2026-11-21", day_start_equity_usd=D("1000"))
    assert not portfolio.daily_loss_reached(D("0.05"), D("951"), "2026-11-21")
    assert portfolio.daily_loss_reached(D("0.05"), D("950"), "2026-11-21")
    assert not portfolio.daily_loss_reached(None, D("1"), "2026-11-21")
    assert not portfolio.daily_loss_reached(D("0.05"), D("950"), "2026-11-22")  # yesterday's mark blocks nothing


def test_the_daily_loss_block_holds_for_the_rest_of_the_day_even_if_equity_comes_back():
    portfolio = Portfolio(day="2026-11-21", day_start_equity_usd=D("1000"))
    assert portfolio.daily_loss_reached(D("0.05"), D("940"), "2026-11-21")
    assert portfolio.daily_loss_reached(D("0.05"), D("990"), "2026-11-21")  # still down, but less: still blocked
    assert portfolio.daily_loss_reached(D("0.05"), D("1010"), "2026-11-21")
    assert not portfolio.daily_loss_reached(D("0.05"), D("990"), "2026-11-22")


def test_equity_counts_what_open_orders_hold_and_earn_balances_but_they_are_not_spent_or_sold():
    portfolio = Portfolio()
    # 10,000 USD of which 3,012 held by the follower's own limit buy; 0.1 BTC in Earn; 0.05 BTC free, 0.01 held
    portfolio.load(BalanceRead({"USD": D("6988"), "BTC": D("0.05")}, {"USD": D("3012"), "BTC": D("0.11")}))
    assert portfolio.equity_usd(PriceBook({"BTC": D("50000")})) == D("10000") + D("0.16") * 50000
    assert portfolio.cash_usd() == D("6988") and portfolio.held("BTC") == D("0.05")


def test_rate_profiles():
    assert refresh_interval_s(D("60.53")) == 60 and refresh_interval_s(D("500")) == 10
    assert refresh_interval_s(D("1000")) == 5 and refresh_interval_s(None) == 60


def test_equity_is_unknown_while_a_holding_has_no_price():
    portfolio = Portfolio()
    portfolio.load(BalanceRead({"USD": D("100"), "SOL": D("2")}))
    assert portfolio.equity_usd(PriceBook()) is None  # not $100: the SOL is worth something
    assert portfolio.equity_usd(PriceBook({"SOL": D("150")})) == D("400")


def test_a_holding_with_no_usd_market_is_left_out_not_blocking():
    portfolio = Portfolio()
    portfolio.load(BalanceRead({"USD": D("100"), "KFEE": D("250"), "SOL": D("2")}))
    prices = PriceBook({"SOL": D("150")}, has_usd_market=lambda asset: asset != "KFEE")
    assert portfolio.equity_usd(prices) == D("400")
