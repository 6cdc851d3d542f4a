"""What `KrakenClient` raises for each kind of reply, and how often it tries.

Private calls go to a scripted Kraken on 127.0.0.1 (tests.kraken.scripted): they are written straight onto the
session's pooled connections, below what aioresponses can mock. Public calls go through `session.get`, and their
replies, socket failures included, are mocked by aioresponses.
"""

import asyncio
from decimal import Decimal

import aiohttp
import pytest
from aioresponses import aioresponses

from nija.kraken import errors
from nija.kraken.client import KrakenClient
from nija.kraken.errors import (
    ConfigurationError,
    InsufficientFundsError,
    InvalidOrderError,
    KeyRefusedError,
    LockoutError,
    MarketClosedError,
    OrderMinimumError,
    RateLimitedError,
    RetryableError,
    TransportError,
    UnknownKrakenError,
)
from tests.kraken.scripted import DROP, HANG, RESET, Raw, Recorder, envelope

ATTEMPTS = 3


@pytest.fixture
def client(context, secret_b64, kraken):
    return KrakenClient("mapping-test-key", secret_b64, base_url=kraken.url, context=context, read_attempts=ATTEMPTS,
                        retry_base_s=0.001, timeout_s=0.15)


@pytest.fixture(autouse=True)
def short_rate_limit_waits(monkeypatch):
    monkeypatch.setattr(errors, "RATE_LIMIT_WAIT_S", 0.001)
    monkeypatch.setattr(errors, "LOCKOUT_WAIT_S", 0.001)


def kraken_error(*strings: str) -> dict:
    return envelope(error=strings)


HTML_520 = "<!DOCTYPE html><title>520: Web server is returning an unknown error</title>"

# reply (as tests.kraken.scripted serves it) → the class raised, words in its message, whether a read retries
READ_REPLIES = [
    pytest.param(Raw(520, HTML_520), TransportError, "HTTP 520 (HTML page)", True, id="cloudflare-520"),
    pytest.param(Raw(502, '{"error": []}', "application/json"), TransportError, "HTTP 502", True, id="non-200-json"),
    pytest.param(Raw(200, "<html>Scheduled maintenance</html>"), TransportError, "an HTML page", True,
                 id="html-with-200"),
    pytest.param(Raw(200, "{not json", "application/json"), TransportError, "not JSON", True, id="not-json"),
    pytest.param(["not", "an", "envelope"], TransportError, "not a Kraken envelope", True, id="not-an-envelope"),
    pytest.param(HANG, TransportError, "TimeoutError", True, id="timeout"),
    pytest.param(DROP, TransportError, "ServerDisconnectedError", True, id="disconnected"),
    pytest.param(RESET, TransportError, "ClientOSError", True, id="connection-reset"),
    pytest.param(kraken_error("EService:Unavailable"), RetryableError, "EService:Unavailable", True, id="unavailable"),
    pytest.param(kraken_error("EGeneral:Internal error"), RetryableError, "Internal error", True, id="internal"),
    pytest.param(kraken_error("EService:Timeout"), RetryableError, "EService:Timeout", True, id="eservice-unlisted"),
    pytest.param(kraken_error("EAPI:Rate limit exceeded"), RateLimitedError, "Rate limit", True, id="rate-limit"),
    pytest.param(kraken_error("EGeneral:Temporary lockout"), LockoutError, "lockout", True, id="lockout"),
    pytest.param(kraken_error("EAPI:Invalid key"), KeyRefusedError, "EAPI:Invalid key", False, id="invalid-key"),
    pytest.param(kraken_error("EAPI:Invalid signature"), KeyRefusedError, "Invalid signature", False,
                 id="invalid-signature"),
    pytest.param(kraken_error("EGeneral:Permission denied"), KeyRefusedError, "Permission denied", False,
                 id="permission"),
    pytest.param(kraken_error("EService:Market in cancel_only mode"), MarketClosedError, "cancel_only", False,
                 id="market-closed"),
    pytest.param(kraken_error("EFuture:Something new"), UnknownKrakenError, "EFuture:Something new", False,
                 id="unknown-string"),
]


@pytest.mark.parametrize("reply, raised, words, retried", READ_REPLIES)
async def test_each_reply_raises_the_class_that_says_its_retry_policy(client, kraken, secret_b64, reply, raised,
                                                                     words, retried):
    balance = kraken.on("Balance", Recorder(secret_b64, reply))
    with pytest.raises(raised) as info:
        await client.balance()
    assert type(info.value) is raised and words in str(info.value)
    assert info.value.retryable is retried
    assert len(balance.requests) == (ATTEMPTS if retried else 1)
    assert str(info.value).startswith("Balance: ")


async def test_a_read_that_fails_then_answers_returns_the_answer(client, kraken, secret_b64):
    balance = kraken.on("Balance", Recorder(secret_b64, Raw(520, "<html>520</html>"), DROP,
                                            envelope({"ZUSD": "12.5"})))
    assert (await client.balance()).get("ZUSD") == Decimal("12.5")
    assert len(balance.requests) == 3


async def test_an_invalid_nonce_is_re_signed_at_once(client, kraken, secret_b64):
    balance = kraken.on("Balance", Recorder(secret_b64, kraken_error("EAPI:Invalid nonce"), envelope({"ZUSD": "1"})))
    assert (await client.balance()).get("ZUSD") == Decimal("1")
    first, second = (int(request["fields"]["nonce"]) for request in balance.requests)
    assert second > first


async def test_warnings_beside_a_result_do_not_fail_the_call(client, kraken, secret_b64):
    kraken.on("Balance", Recorder(secret_b64, {"error": ["WGeneral:Deprecated"], "result": {"ZUSD": "2"}}))
    assert (await client.balance()).get("ZUSD") == Decimal("2")


@pytest.mark.parametrize("reply, raised", [
    (kraken_error("EOrder:Insufficient funds"), InsufficientFundsError),
    (kraken_error("EOrder:Order minimum not met"), OrderMinimumError),
    (kraken_error("EOrder:Cost minimum not met"), OrderMinimumError),
    (kraken_error("EOrder:Tick size check failed"), InvalidOrderError),
    (kraken_error("EGeneral:Invalid arguments:volume"), ConfigurationError),
])
async def test_a_rejected_order_is_raised_once_without_a_lookup(client, kraken, secret_b64, reply, raised):
    add = kraken.on("AddOrder", Recorder(secret_b64, reply))
    lookup = kraken.on("OpenOrders", Recorder(secret_b64, envelope({"open": {}})))
    with pytest.raises(raised):
        await client.add_order("XBTUSD", "buy", Decimal("0.01"), cl_ord_id="mapping-1")
    assert len(add.requests) == 1 and not lookup.requests


@pytest.mark.parametrize("error", ["EService:Unavailable", "EService:Timeout", "EGeneral:Internal error"])
async def test_an_order_whose_outcome_the_service_left_unknown_is_looked_up_not_dropped(client, kraken, secret_b64,
                                                                                         error):
    """Any EService:* failure may come after the order was placed: it is found by its client order id."""
    add = kraken.on("AddOrder", Recorder(secret_b64, kraken_error(error)))
    kraken.on("OpenOrders", Recorder(secret_b64, envelope({"open": {
        "OAAAAA-BBBBB-CCCCCC": {"status": "open", "cl_ord_id": "mapping-2", "vol": "0.01", "vol_exec": "0",
                                "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "market"}}}})))
    placed = await client.add_order("XBTUSD", "buy", Decimal("0.01"), cl_ord_id="mapping-2")
    assert placed.recovered and placed.txid == ["OAAAAA-BBBBB-CCCCCC"]
    assert len(add.requests) == 1


# --- public calls: through session.get, mocked by aioresponses ------------------------------------------------------

PUBLIC_BASE_URL = "https://kraken.invalid"  # never resolves: a reply aioresponses does not script cannot leave
TICKER_URL = f"{PUBLIC_BASE_URL}/0/public/Ticker?pair=XBTUSD"


@pytest.fixture
def public_client(context, secret_b64):
    return KrakenClient("mapping-test-key", secret_b64, base_url=PUBLIC_BASE_URL, context=context,
                        read_attempts=ATTEMPTS, retry_base_s=0.001)


@pytest.fixture
def mocked():
    with aioresponses() as mocked:
        yield mocked


@pytest.mark.parametrize("reply, raised, words, retried", [
    pytest.param({"status": 520, "body": HTML_520}, TransportError, "HTTP 520 (HTML page)", True, id="cloudflare-520"),
    pytest.param({"status": 200, "body": "{not json"}, TransportError, "not JSON", True, id="not-json"),
    pytest.param({"exception": asyncio.TimeoutError()}, TransportError, "TimeoutError", True, id="timeout"),
    pytest.param({"exception": aiohttp.ServerDisconnectedError()}, TransportError, "ServerDisconnectedError", True,
                 id="disconnected"),
    pytest.param({"exception": aiohttp.ClientOSError(104, "Connection reset by peer")}, TransportError,
                 "ClientOSError", True, id="connection-reset"),
    pytest.param({"payload": {"error": ["EService:Unavailable"]}}, RetryableError, "EService:Unavailable", True,
                 id="unavailable"),
    pytest.param({"payload": {"error": ["EQuery:Unknown asset pair"]}}, errors.KrakenAPIError, "Unknown asset pair",
                 False, id="unknown-pair"),
])
async def test_each_public_reply_raises_the_class_that_says_its_retry_policy(public_client, mocked, reply, raised,
                                                                            words, retried):
    mocked.get(TICKER_URL, repeat=True, **reply)
    with pytest.raises(raised) as info:
        await public_client.ticker("XBTUSD")
    assert isinstance(info.value, raised) and words in str(info.value)
    assert info.value.retryable is retried
    assert sum(len(calls) for calls in mocked.requests.values()) == (ATTEMPTS if retried else 1)
