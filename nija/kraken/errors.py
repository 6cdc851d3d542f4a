"""Kraken's error strings mapped to exceptions whose class *is* the retry policy.

    KrakenError                       anything that went wrong talking to Kraken
    ├── TransportError                no Kraken envelope: timeout, connection reset, non-200, HTML, non-JSON.
    │                                 Reads retry it; for an order the outcome is unknown (look it up).
    └── KrakenAPIError                Kraken answered with `error: [...]`; `.errors` holds the strings
        ├── RetryableError            EService:Unavailable/Busy/Deadline elapsed (and any EService:* not listed
        │                             elsewhere), EGeneral/EDatabase:Internal error.
        │                             Reads retry with backoff; for an order the outcome is unknown (look it up).
        ├── RateLimitedError          EAPI:Rate limit exceeded, EGeneral:Too many requests, EOrder:(Domain) rate
        │   │                         limit exceeded, EAuth:Rate limit exceeded / Too many requests,
        │   │                         EService:Throttled: ts. Retry after `.retry_after_s`.
        │   └── LockoutError          EGeneral:Temporary lockout: back off for minutes.
        ├── InvalidNonceError         EAPI:Invalid nonce: re-sign with a fresh nonce (nothing was executed).
        ├── MarketClosedError         EService:Market in cancel_only/post_only mode, EGeneral:Market in ...: later.
        ├── OrderRejectedError        the order is wrong for this account or market; never retried as is
        │   ├── InsufficientFundsError    EOrder:Insufficient funds
        │   ├── OrderMinimumError         EOrder:Order minimum not met / Cost minimum not met
        │   └── InvalidOrderError         tick size, invalid price, unknown order, orders limit, unknown pair,
        │                                 margin refusals, EBM:limit exceeded (a purchase limit), ...
        ├── ConfigurationError        unknown method, bad request, invalid arguments, a feature disabled: a
        │   │                         fault in configuration or code; never retried.
        │   └── KeyRefusedError       invalid key/signature, permission denied, an account disabled or
        │                             unconfirmed, a trading agreement required: the key or the account's
        │                             standing, which its owner can fix; nothing about the call itself.
        └── UnknownKrakenError        a string this table does not know: raised, never swallowed.

`AmbiguousOrderError` (a KrakenError) is raised by the client when an order's outcome stayed unknown even after
looking it up by its client order id: the caller must not resend it blindly.

Messages never contain request bodies, keys or signatures.
"""

from __future__ import annotations

import re

__all__ = [
    "KrakenError",
    "TransportError",
    "KrakenAPIError",
    "RetryableError",
    "RateLimitedError",
    "LockoutError",
    "InvalidNonceError",
    "MarketClosedError",
    "OrderRejectedError",
    "InsufficientFundsError",
    "OrderMinimumError",
    "InvalidOrderError",
    "ConfigurationError",
    "KeyRefusedError",
    "UnknownKrakenError",
    "AmbiguousOrderError",
    "error_from_kraken",
]


class KrakenError(Exception):
    """Base of every NIJA Kraken error."""

    #: the call may be repeated as is (reads) after `retry_after_s`, if set
    retryable: bool = False
    #: an order sent in a call that failed this way may or may not exist on the exchange
    ambiguous_for_orders: bool = False
    retry_after_s: float | None = None


class TransportError(KrakenError):
    retryable = True
    ambiguous_for_orders = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KrakenAPIError(KrakenError):
    def __init__(self, errors: list[str], *, method: str | None = None) -> None:
        self.errors = list(errors)
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(where + "; ".join(self.errors))


class RetryableError(KrakenAPIError):
    retryable = True
    ambiguous_for_orders = True


class RateLimitedError(KrakenAPIError):
    retryable = True

    def __init__(self, errors: list[str], *, method: str | None = None, retry_after_s: float = 3.0) -> None:
        super().__init__(errors, method=method)
        self.retry_after_s = retry_after_s


class LockoutError(RateLimitedError):
    pass


class InvalidNonceError(KrakenAPIError):
    retryable = True


class MarketClosedError(KrakenAPIError):
    pass


class OrderRejectedError(KrakenAPIError):
    pass


class InsufficientFundsError(OrderRejectedError):
    pass


class OrderMinimumError(OrderRejectedError):
    pass


class InvalidOrderError(OrderRejectedError):
    pass


class ConfigurationError(KrakenAPIError):
    pass


class KeyRefusedError(ConfigurationError):
    pass


class UnknownKrakenError(KrakenAPIError):
    pass


class AmbiguousOrderError(KrakenError):
    """The order may or may not exist: the lookup by client order id could not settle it."""

    def __init__(self, message: str, *, cl_ord_id: str | None = None) -> None:
        super().__init__(message)
        self.cl_ord_id = cl_ord_id


# Prefix of an error string (before any ":detail") → class. Matched longest prefix first.
_BY_PREFIX: dict[str, type[KrakenAPIError]] = {
    "EAPI:Invalid nonce": InvalidNonceError,
    "EAPI:Invalid key": KeyRefusedError,
    "EAPI:Invalid signature": KeyRefusedError,
    "EAPI:Bad request": ConfigurationError,
    "EAPI:Feature disabled": ConfigurationError,
    "EAPI:Rate limit exceeded": RateLimitedError,
    "EGeneral:Invalid arguments": ConfigurationError,
    "EGeneral:Permission denied": KeyRefusedError,
    "EGeneral:Unknown method": ConfigurationError,
    "EGeneral:Too many requests": RateLimitedError,
    "EGeneral:Temporary lockout": LockoutError,
    "EGeneral:Internal error": RetryableError,
    "EDatabase:Internal error": RetryableError,
    "EService:Unavailable": RetryableError,
    "EService:Busy": RetryableError,
    "EService:Deadline elapsed": RetryableError,
    "EService:Throttled": RateLimitedError,
    "EService:Market in cancel_only mode": MarketClosedError,
    "EService:Market in post_only mode": MarketClosedError,
    "EService:Market in limit_only mode": MarketClosedError,
    "EGeneral:Market in cancel_only mode": MarketClosedError,
    "EGeneral:Market in post_only mode": MarketClosedError,
    "EOrder:Rate limit exceeded": RateLimitedError,
    "EOrder:Domain rate limit exceeded": RateLimitedError,  # the limit a master account shares with its subaccounts
    "EAuth:Rate limit exceeded": RateLimitedError,
    "EAuth:Too many requests": RateLimitedError,
    "EAuth:Account temporary disabled": KeyRefusedError,
    "EAuth:Account unconfirmed": KeyRefusedError,
    "EAccount:Invalid permissions": KeyRefusedError,
    "EOrder:Insufficient funds": InsufficientFundsError,
    "EOrder:Insufficient margin": InsufficientFundsError,
    "EOrder:Order minimum not met": OrderMinimumError,
    "EOrder:Cost minimum not met": OrderMinimumError,
    "EOrder:Tick size check failed": InvalidOrderError,
    "EOrder:Invalid price": InvalidOrderError,
    "EOrder:Invalid order": InvalidOrderError,
    "EOrder:Unknown order": InvalidOrderError,
    "EOrder:Orders limit exceeded": InvalidOrderError,
    "EOrder:Positions limit exceeded": InvalidOrderError,
    "EOrder:Trading agreement required": KeyRefusedError,
    "EOrder:Reduce only": InvalidOrderError,
    "EOrder:Post only order": InvalidOrderError,
    "EOrder:Scheduled orders limit exceeded": InvalidOrderError,
    "EOrder:Unknown position": InvalidOrderError,
    "EOrder:Cannot open position": InvalidOrderError,
    "EOrder:Cannot open opposing position": InvalidOrderError,
    "EOrder:Margin allowance exceeded": InvalidOrderError,
    "EOrder:Margin level too low": InvalidOrderError,
    "EOrder:Margin position size exceeded": InvalidOrderError,
    "EBM:limit exceeded": InvalidOrderError,
    "ETrade:Invalid request": InvalidOrderError,
    "EQuery:Unknown asset pair": InvalidOrderError,
    "EQuery:Unknown asset": InvalidOrderError,
    "EQuery:Invalid asset pair": InvalidOrderError,
}
_PREFIXES = sorted(_BY_PREFIX, key=len, reverse=True)
_THROTTLED_TS = re.compile(r"^EService:\s*Throttled:\s*(\d+(?:\.\d+)?)")

#: seconds to wait on a rate-limit error that names no time
RATE_LIMIT_WAIT_S = 3.0
LOCKOUT_WAIT_S = 120.0


def _normalise(message: str) -> str:
    # Kraken writes both "EService: Throttled: ts" and "EService:Throttled:ts".
    return re.sub(r"^(E\w+):\s+", r"\1:", message.strip())


def classify(message: str) -> type[KrakenAPIError]:
    """The exception class for one Kraken error string."""
    text = _normalise(message)
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            return _BY_PREFIX[prefix]
    if text.startswith("EService:"):
        return RetryableError  # the service failed in a way not listed: for an order, the outcome is unknown
    return UnknownKrakenError


def error_from_kraken(errors: list[str], *, method: str | None = None, now_s: float | None = None) -> KrakenAPIError:
    """The exception for a Kraken `error` list (the first string decides the class)."""
    first = errors[0] if errors else "EGeneral:Unknown error (empty error list)"
    cls = classify(first)
    if cls is LockoutError:
        return LockoutError(errors, method=method, retry_after_s=LOCKOUT_WAIT_S)
    if cls is RateLimitedError:
        wait_s = RATE_LIMIT_WAIT_S
        match = _THROTTLED_TS.match(_normalise(first))
        if match and now_s is not None:
            wait_s = max(0.0, float(match.group(1)) - now_s)
        return RateLimitedError(errors, method=method, retry_after_s=wait_s)
    return cls(errors, method=method)
