"""NIJA's Kraken layer: signing, nonces, rate scheduling, errors, pairs, typed models and the async client."""

from nija.kraken.client import DEFAULT_BASE_URL, KrakenClient, KrakenContext, default_context, derive_cl_ord_id
from nija.kraken.errors import (
    AmbiguousOrderError,
    ConfigurationError,
    InsufficientFundsError,
    InvalidNonceError,
    InvalidOrderError,
    KeyRefusedError,
    KrakenAPIError,
    KrakenError,
    LockoutError,
    MarketClosedError,
    OrderMinimumError,
    OrderRejectedError,
    RateLimitedError,
    RetryableError,
    TransportError,
    UnknownKrakenError,
)
from nija.kraken.limits import TIERS, Tier, tier_named
from nija.kraken.models import (
    OHLC,
    AddOrderResult,
    AssetBalance,
    Balances,
    CancelAllAfterResult,
    CancelResult,
    Candle,
    ClosedOrdersPage,
    ExtendedBalances,
    Order,
    OrderDescription,
    Ticker,
    TradeBalance,
)
from nija.kraken.nonce import NonceCoordinator, NonceLane
from nija.kraken.pairs import PairInfo, Pairs, UnknownPairError, common_asset_name, kraken_asset_name, split_balance_suffix
from nija.kraken.scheduler import RateScheduler

__all__ = [
    "DEFAULT_BASE_URL", "KrakenClient", "KrakenContext", "default_context", "derive_cl_ord_id",
    "AmbiguousOrderError", "ConfigurationError", "InsufficientFundsError", "InvalidNonceError", "InvalidOrderError",
    "KeyRefusedError", "KrakenAPIError", "KrakenError", "LockoutError", "MarketClosedError", "OrderMinimumError",
    "OrderRejectedError", "RateLimitedError", "RetryableError", "TransportError", "UnknownKrakenError",
    "TIERS", "Tier", "tier_named",
    "OHLC", "AddOrderResult", "AssetBalance", "Balances", "CancelAllAfterResult", "CancelResult", "Candle",
    "ClosedOrdersPage", "ExtendedBalances", "Order", "OrderDescription", "Ticker", "TradeBalance",
    "NonceCoordinator", "NonceLane", "PairInfo", "Pairs", "UnknownPairError", "common_asset_name",
    "kraken_asset_name", "split_balance_suffix", "RateScheduler",
]
