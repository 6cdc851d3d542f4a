"""Every Kraken error string of API.md §6 lands in the class whose name is its retry policy."""

import pytest

from nija.kraken import errors as e

TABLE = [
    ("EGeneral:Invalid arguments", e.ConfigurationError),
    ("EGeneral:Invalid arguments:volume", e.ConfigurationError),
    ("EGeneral:Permission denied", e.KeyRefusedError),
    ("EGeneral:Unknown method", e.ConfigurationError),
    ("EAPI:Invalid key", e.KeyRefusedError),
    ("EAPI:Invalid signature", e.KeyRefusedError),
    ("EAPI:Bad request", e.ConfigurationError),
    ("EAPI:Invalid nonce", e.InvalidNonceError),
    ("EAPI:Rate limit exceeded", e.RateLimitedError),
    ("EGeneral:Too many requests", e.RateLimitedError),
    ("EOrder:Rate limit exceeded", e.RateLimitedError),
    ("EOrder:Domain rate limit exceeded", e.RateLimitedError),  # Kraken's spot error list, beyond API.md §6
    ("EAuth:Rate limit exceeded", e.RateLimitedError),
    ("EAuth:Too many requests", e.RateLimitedError),
    ("EAuth:Account temporary disabled", e.KeyRefusedError),
    ("EAccount:Invalid permissions", e.KeyRefusedError),
    ("EBM:limit exceeded:CAL", e.InvalidOrderError),
    ("EOrder:Margin level too low", e.InvalidOrderError),
    ("EService: Throttled: 1700000010", e.RateLimitedError),
    ("EService:Throttled:1700000010", e.RateLimitedError),
    ("EGeneral:Temporary lockout", e.LockoutError),
    ("EService:Unavailable", e.RetryableError),
    ("EService:Busy", e.RetryableError),
    ("EGeneral:Internal error", e.RetryableError),
    ("EDatabase:Internal error", e.RetryableError),
    ("EService:Deadline elapsed", e.RetryableError),
    ("EService:Timeout", e.RetryableError),  # any EService:* not listed: the service failed, maybe after acting
    ("EService:Market in cancel_only mode", e.MarketClosedError),
    ("EService:Market in post_only mode", e.MarketClosedError),
    ("EOrder:Insufficient funds", e.InsufficientFundsError),
    ("EOrder:Order minimum not met", e.OrderMinimumError),
    ("EOrder:Cost minimum not met", e.OrderMinimumError),
    ("EOrder:Tick size check failed", e.InvalidOrderError),
    ("EOrder:Invalid price", e.InvalidOrderError),
    ("EOrder:Unknown order", e.InvalidOrderError),
    ("EOrder:Orders limit exceeded", e.InvalidOrderError),
    ("EQuery:Unknown asset pair", e.InvalidOrderError),
    ("EFuture:Something new", e.UnknownKrakenError),
]


@pytest.mark.parametrize(("message", "cls"), TABLE)
def test_each_error_string_maps_to_its_policy_class(message, cls):
    error = e.error_from_kraken([message], method="AddOrder")
    assert type(error) is cls
    assert message in str(error) and "AddOrder" in str(error)


def test_policy_flags_follow_the_class():
    assert e.error_from_kraken(["EService:Unavailable"]).ambiguous_for_orders
    assert e.TransportError("timeout").ambiguous_for_orders
    assert not e.error_from_kraken(["EOrder:Insufficient funds"]).retryable
    assert not e.error_from_kraken(["EAPI:Invalid key"]).retryable
    assert e.error_from_kraken(["EAPI:Invalid nonce"]).retryable
    assert not e.error_from_kraken(["EAPI:Invalid nonce"]).ambiguous_for_orders


def test_throttled_waits_until_the_time_kraken_names():
    error = e.error_from_kraken(["EService: Throttled: 1700000010"], now_s=1700000004.5)
    assert error.retry_after_s == pytest.approx(5.5)
    assert e.error_from_kraken(["EAPI:Rate limit exceeded"]).retry_after_s > 0
    assert e.error_from_kraken(["EGeneral:Temporary lockout"]).retry_after_s >= 60
