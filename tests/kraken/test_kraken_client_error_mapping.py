"""What `KrakenClient` raises for each kind of reply, and how often it tries, with replies mocked by aioresponses.

The socket-level failures (a dropped connection, a reply after the time limit) and the order lookups run against a
scripted server on 127.0.0.1 in test_kraken_client_http.py.
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

BASE_URL = "https://kraken.invalid"  # never resolves: a reply aioresponses does not script cannot reach a network
BALANCE_URL = f"{BASE_URL}/0/private/Balance"
ADD_ORDER_URL = f"{BASE_URL}/0/private/AddOrder"
ATTEMPTS = 3


@pytest.fixture
def client(context, secret_b64):
    return KrakenClient("mapping-test-key", secret_b64, base_url=BASE_URL, context=context, read_attempts=ATTEMPTS,
                        retry_base_s=0.001)


@pytest.fixture
def kraken():
    with aioresponses() as mocked:
        yield mocked


@pytest.fixture(autouse=True)
def short_rate_limit_waits(monkeypatch):
    monkeypatch.setattr(errors, "RATE_LIMIT_WAIT_S", 0.001)
    monkeypatch.setattr(errors, "LOCKOUT_WAIT_S", 0.001)


def sent(kraken: aioresponses, url: str) -> int:
    return sum(len(calls) for (method, called), calls in kraken.requests.items() if str(called) == url)


def kraken_error(*strings: str) -> dict:
    return {"payload": {"error": list(strings)}}


# reply (aioresponses keyword arguments) → what the caller gets, words its message holds, and whether a read retries
READ_REPLIES = [
    pytest.param({"status": 520, "body": "<!DOCTYPE html><title>520: Web server is returning an unknown error</title>"},
                 TransportError, "HTTP 520 (HTML page)", True, id="cloudflare-520"),
    pytest.param({"status": 502, "payload": {"error": []}}, TransportError, "HTTP 502", True, id="non-200-json"),
    pytest.param({"status": 200, "body": "<html>Scheduled maintenance</html>", "content_type": "text/html"},
                 TransportError, "an HTML page", True, id="html-with-200"),
    pytest.param({"status": 200, "body": "{not json"}, TransportError, "not JSON", True, id="not-json"),
    pytest.param({"status": 200, "payload": ["not", "an", "envelope"]}, TransportError, "not a Kraken envelope",
                 True, id="not-an-envelope"),
    pytest.param({"exception": asyncio.TimeoutError()}, TransportError, "TimeoutError", True, id="timeout"),
    pytest.param({"exception": aiohttp.ServerDisconnectedError()}, TransportError, "ServerDisconnectedError", True,
                 id="disconnected"),
    pytest.param({"exception": aiohttp.ClientOSError(104, "Connection reset by peer")}, TransportError,
                 "ClientOSError", True, id="connection-reset"),
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
async def test_each_reply_raises_the_class_that_says_its_retry_policy(client, kraken, reply, raised, words, retried):
    kraken.post(BALANCE_URL, repeat=True, **reply)
    with pytest.raises(raised) as info:
        await client.balance()
    assert type(info.value) is raised and words in str(info.value)
    assert info.value.retryable is retried
    assert sent(kraken, BALANCE_URL) == (ATTEMPTS if retried else 1)
    assert str(info.value).startswith("Balance: ")


async def test_a_read_that_fails_then_answers_returns_the_answer(client, kraken):
    kraken.post(BALANCE_URL, status=520, body="<html>520</html>")
    kraken.post(BALANCE_URL, exception=aiohttp.ServerDisconnectedError())
    kraken.post(BALANCE_URL, payload={"error": [], "result": {"ZUSD": "12.5"}})
    assert (await client.balance()).get("ZUSD") == Decimal("12.5")
    assert sent(kraken, BALANCE_URL) == 3


async def test_an_invalid_nonce_is_re_signed_at_once(client, kraken):
    kraken.post(BALANCE_URL, **kraken_error("EAPI:Invalid nonce"))
    kraken.post(BALANCE_URL, payload={"error": [], "result": {"ZUSD": "1"}})
    assert (await client.balance()).get("ZUSD") == Decimal("1")
    calls = [call for (_, url), calls in kraken.requests.items() if str(url) == BALANCE_URL for call in calls]
    first, second = (int(call.kwargs["data"].split(b"nonce=")[1].split(b"&")[0]) for call in calls)
    assert second > first


async def test_warnings_beside_a_result_do_not_fail_the_call(client, kraken):
    kraken.post(BALANCE_URL, payload={"error": ["WGeneral:Deprecated"], "result": {"ZUSD": "2"}})
    assert (await client.balance()).get("ZUSD") == Decimal("2")


@pytest.mark.parametrize("reply, raised", [
    (kraken_error("EOrder:Insufficient funds"), InsufficientFundsError),
    (kraken_error("EOrder:Order minimum not met"), OrderMinimumError),
    (kraken_error("EOrder:Cost minimum not met"), OrderMinimumError),
    (kraken_error("EOrder:Tick size check failed"), InvalidOrderError),
    (kraken_error("EGeneral:Invalid arguments:volume"), ConfigurationError),
])
async def test_a_rejected_order_is_raised_once_without_a_lookup(client, kraken, reply, raised):
    kraken.post(ADD_ORDER_URL, repeat=True, **reply)
    with pytest.raises(raised):
        await client.add_order("XBTUSD", "buy", Decimal("0.01"), cl_ord_id="mapping-1")
    assert sent(kraken, ADD_ORDER_URL) == 1
    assert sent(kraken, f"{BASE_URL}/0/private/OpenOrders") == 0


@pytest.mark.parametrize("error", ["EService:Unavailable", "EService:Timeout", "EGeneral:Internal error"])
async def test_an_order_whose_outcome_the_service_left_unknown_is_looked_up_not_dropped(client, kraken, error):
    """Any EService:* failure may come after the order was placed: it is found by its client order id."""
    kraken.post(ADD_ORDER_URL, **kraken_error(error))
    kraken.post(f"{BASE_URL}/0/private/OpenOrders", repeat=True, payload={"error": [], "result": {"open": {
        "OAAAAA-BBBBB-CCCCCC": {"status": "open", "cl_ord_id": "mapping-2", "vol": "0.01", "vol_exec": "0",
                                "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "market"}}}}})
    placed = await client.add_order("XBTUSD", "buy", Decimal("0.01"), cl_ord_id="mapping-2")
    assert placed.recovered and placed.txid == ["OAAAAA-BBBBB-CCCCCC"]
    assert sent(kraken, ADD_ORDER_URL) == 1
