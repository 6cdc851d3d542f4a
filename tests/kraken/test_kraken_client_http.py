"""Narrow client tests against a scripted HTTP server on 127.0.0.1: signing, encoding, socket-level failures,
retries, order lookup, secrets. What each kind of reply raises is in test_kraken_client_error_mapping.py."""

import asyncio
import json
import re
from datetime import datetime
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from nija.kraken import errors
from nija.kraken.client import KrakenClient, derive_cl_ord_id
from nija.kraken.limits import Tier
from nija.kraken.errors import (
    AmbiguousOrderError,
    TransportError,
)
from tests.kraken.scripted import DROP, HANG, Raw, Recorder, envelope

API_KEY = "test-api-key-for-unit-tests"


@pytest.fixture
def client(context, secret_b64, kraken):
    return KrakenClient(API_KEY, secret_b64, base_url=kraken.url, context=context, retry_base_s=0.001, name="alice",
                        timeout_s=0.15, order_deadline_s=2, deadline_margin_s=0.05)


async def test_private_call_is_signed_with_a_nanosecond_nonce(client, kraken, secret_b64):
    recorder = Recorder(secret_b64, envelope({"ZUSD": "171288.6158", "XXBT": "0.5", "XBT.F": "0.01"}))
    kraken.on("Balance", recorder)
    balances = await client.balance()
    assert balances.get("ZUSD") == Decimal("171288.6158")
    request = recorder.requests[0]
    assert request["signature_valid"] and request["headers"]["API-Key"] == API_KEY
    assert int(request["fields"]["nonce"]) > 10**18  # ns since the epoch: above ms and 1e-8 s generators
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_params_are_encoded_as_kraken_expects(client, kraken, secret_b64):
    recorder = Recorder(secret_b64, envelope({"descr": {"order": "buy 0.5 XBTUSD @ limit 30000.1"}, "txid": ["O1"]}))
    kraken.on("AddOrder", recorder)
    result = await client.add_order("XBTUSD", "buy", Decimal("0.50000000"), ordertype="limit",
                                    price=Decimal("30000.1"), oflags=["post", "fciq"], cl_ord_id="copy-1",
                                    validate=True)
    fields = recorder.requests[0]["fields"]
    assert fields["volume"] == "0.50000000" and fields["price"] == "30000.1" and fields["oflags"] == "post,fciq"
    assert fields["validate"] == "true" and fields["cl_ord_id"] == "copy-1" and "price2" not in fields
    assert result.validated_only and result.cl_ord_id == "copy-1"


async def test_float_money_is_refused(client):
    with pytest.raises(TypeError, match="Decimal"):
        await client.add_order("XBTUSD", "buy", 0.5)


async def test_reads_retry_and_are_re_signed_with_a_fresh_nonce(client, kraken, secret_b64):
    recorder = Recorder(secret_b64, envelope(error=["EService:Unavailable"]),
                        Raw(502, body="<html>Bad gateway</html>", content_type="text/html"),
                        envelope({"ZUSD": "1.0"}))
    kraken.on("Balance", recorder)
    balances = await client.balance()
    assert balances.get("ZUSD") == Decimal("1.0")
    nonces = [int(r["fields"]["nonce"]) for r in recorder.requests]
    signatures = {r["headers"]["API-Sign"] for r in recorder.requests}
    assert len(nonces) == 3 and nonces == sorted(set(nonces)) and len(signatures) == 3
    assert all(r["signature_valid"] for r in recorder.requests)


@pytest.mark.parametrize("reply, fragment", [(DROP, "ServerDisconnectedError"), (HANG, "TimeoutError")])
async def test_socket_failures_become_transport_errors_after_the_retries(client, kraken, secret_b64, reply, fragment):
    recorder = Recorder(secret_b64, reply)
    kraken.on("Balance", recorder)
    with pytest.raises(TransportError) as info:
        await client.balance()
    assert fragment in str(info.value)
    assert len(recorder.requests) == client.read_attempts


async def test_rate_limited_reads_wait_then_succeed_and_fill_the_counter(context, kraken, secret_b64, monkeypatch):
    monkeypatch.setattr(errors, "RATE_LIMIT_WAIT_S", 0.01)
    fast_tier = Tier("fast-test", rest_max=3, rest_decay_per_s=30.0, trading_max=10, trading_decay_per_s=10.0,
                     max_open_orders_per_pair=10)
    client = KrakenClient(API_KEY, secret_b64, base_url=kraken.url, context=context, tier=fast_tier)
    recorder = Recorder(secret_b64, envelope(error=["EAPI:Rate limit exceeded"]), envelope({"ZUSD": "3"}))
    kraken.on("Balance", recorder)
    with capture_logs() as logs:
        assert (await client.balance()).get("ZUSD") == Decimal("3")
    assert [e["event"] for e in logs].count("kraken_retry") == 1 and len(recorder.requests) == 2
    # The server said "full": our counter was filled, so the retry waited for it to decay (~1/30 s a call).
    assert client._budget.rest.waited_s > 0


async def test_public_calls_are_plain_gets(client, kraken, secret_b64):
    ticker = kraken.on("Ticker", Recorder(secret_b64, envelope(
        {"XXBTZUSD": {"a": ["1", "1", "1"], "b": ["0.9", "1", "1"], "c": ["1", "0.1"], "v": ["1", "2"],
                      "p": ["1", "1"], "t": [1, 2], "l": ["0.5", "0.5"], "h": ["2", "2"], "o": "1"}})))
    tickers = await client.ticker("XBTUSD")
    assert tickers["XXBTZUSD"].bid == Decimal("0.9")
    assert ticker.requests[0]["fields"] == {"pair": "XBTUSD"} and "API-Sign" not in ticker.requests[0]["headers"]


ORDER = {"refid": None, "userref": 0, "cl_ord_id": "c-1", "status": "closed", "opentm": 1.0, "closetm": 2.0,
         "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "price": "0", "order": "buy 0.1 XBTUSD @ market"},
         "vol": "0.1", "vol_exec": "0.1", "cost": "3000", "fee": "12", "price": "30000", "misc": "", "oflags": "fciq"}


async def test_ambiguous_add_order_found_by_lookup_is_returned_not_resent(client, kraken, secret_b64):
    add = Recorder(secret_b64, Raw(502, body="<html>502</html>", content_type="text/html"))
    open_orders = Recorder(secret_b64, envelope({"open": {}}))
    closed_orders = Recorder(secret_b64, envelope({"closed": {"OFOUND-1": ORDER}, "count": 1}))
    kraken.on("AddOrder", add)
    kraken.on("OpenOrders", open_orders)
    kraken.on("ClosedOrders", closed_orders)
    result = await client.add_order("XBTUSD", "buy", Decimal("0.1"), cl_ord_id="c-1")
    assert len(add.requests) == 1
    assert result.recovered and result.order_id == "OFOUND-1" and result.order.executed_base == Decimal("0.1")
    assert open_orders.requests[0]["fields"]["cl_ord_id"] == "c-1"
    assert int(open_orders.requests[0]["fields"]["nonce"]) > int(add.requests[0]["fields"]["nonce"])


async def test_ambiguous_add_order_proven_absent_is_sent_again_with_the_same_id(client, kraken, secret_b64):
    add = Recorder(secret_b64, HANG, envelope({"descr": {"order": "buy"}, "txid": ["ONEW-1"]}))
    empty_open = Recorder(secret_b64, envelope({"open": {}}))
    empty_closed = Recorder(secret_b64, envelope({"closed": {}, "count": 0}))
    kraken.on("AddOrder", add)
    kraken.on("OpenOrders", empty_open)
    kraken.on("ClosedOrders", empty_closed)
    result = await client.add_order("XBTUSD", "buy", Decimal("0.1"))
    assert len(add.requests) == 2
    assert add.requests[0]["fields"]["cl_ord_id"] == add.requests[1]["fields"]["cl_ord_id"] == result.cl_ord_id
    assert result.order_id == "ONEW-1" and not result.recovered and result.attempts == 2
    # The lost request could still be executed until its deadline: the lookup that proved it absent came after.
    first_deadline = datetime.fromisoformat(add.requests[0]["fields"]["deadline"].replace("Z", "+00:00"))
    assert len(empty_open.requests) == 2
    assert empty_open.requests[1]["received_at"] > first_deadline.timestamp()
    assert add.requests[1]["received_at"] > first_deadline.timestamp()


async def test_every_add_order_carries_a_deadline_kraken_accepts(client, kraken, secret_b64):
    add = kraken.on("AddOrder", Recorder(secret_b64, envelope({"descr": {"order": "buy"}, "txid": ["O1"]})))
    await client.add_order("XBTUSD", "buy", Decimal("0.1"))
    fields = add.requests[0]["fields"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["deadline"])  # RFC3339, UTC
    ahead_s = datetime.fromisoformat(fields["deadline"].replace("Z", "+00:00")).timestamp() \
        - add.requests[0]["received_at"]
    assert 2 <= ahead_s <= 60  # Kraken's accepted range
    with pytest.raises(ValueError, match="order_deadline_s"):
        KrakenClient(API_KEY, secret_b64, base_url=kraken.url, order_deadline_s=1)


async def test_add_order_whose_lookup_fails_is_ambiguous_and_not_resent(client, kraken, secret_b64):
    add = Recorder(secret_b64, envelope(error=["EGeneral:Internal error"]))
    failing = Recorder(secret_b64, Raw(503, body="down"))
    kraken.on("AddOrder", add)
    kraken.on("OpenOrders", failing)
    with pytest.raises(AmbiguousOrderError) as info:
        await client.add_order("XBTUSD", "buy", Decimal("0.1"), cl_ord_id="c-9")
    assert len(add.requests) == 1 and info.value.cl_ord_id == "c-9"


async def test_raw_private_add_order_is_never_repeated_after_an_ambiguous_failure(client, kraken, secret_b64):
    add = Recorder(secret_b64, Raw(504, body="gateway timeout"))
    kraken.on("AddOrder", add)
    with pytest.raises(AmbiguousOrderError) as info:  # the lookup by client order id could not settle it
        await client.private("AddOrder", pair="XBTUSD", type="buy", ordertype="market", volume="1")
    assert len(add.requests) == 1
    assert info.value.cl_ord_id == add.requests[0]["fields"]["cl_ord_id"]


async def test_raw_private_add_order_carries_a_client_order_id_and_returns_krakens_result(client, kraken, secret_b64):
    add = kraken.on("AddOrder", Recorder(secret_b64, envelope(
        {"descr": {"order": "buy 1.00000000 XBTUSD @ market"}, "txid": ["OUF4EM-FRGI2-MQMWZD"]})))
    result = await client.private("AddOrder", pair="XBTUSD", type="buy", ordertype="market", volume="1")
    assert result == {"descr": {"order": "buy 1.00000000 XBTUSD @ market"}, "txid": ["OUF4EM-FRGI2-MQMWZD"]}
    assert add.requests[0]["fields"]["cl_ord_id"] and add.requests[0]["fields"]["deadline"]


async def test_a_withdrawal_whose_reply_was_lost_is_not_sent_again(client, kraken, secret_b64):
    """Only reads and cancels are repeated after an unknown outcome: a second Withdraw could pay out twice."""
    withdraw = kraken.on("Withdraw", Recorder(secret_b64, Raw(502, body="bad gateway")))
    with pytest.raises(TransportError):
        await client.private("Withdraw", asset="XBT", key="cold", amount="0.1")
    assert len(withdraw.requests) == 1


def test_derived_client_order_ids_are_stable_uuids():
    a = derive_cl_ord_id("signal-42", "bob")
    assert a == derive_cl_ord_id("signal-42", "bob") != derive_cl_ord_id("signal-42", "carol")
    assert len(a) == 36 and a.count("-") == 4
    assert derive_cl_ord_id() != derive_cl_ord_id()


async def test_a_uuid_client_order_id_is_sent_in_one_spelling_however_it_was_written(client, kraken, secret_b64):
    add = kraken.on("AddOrder", Recorder(secret_b64, envelope({"descr": {"order": "buy"}, "txid": ["OX"]})))
    written = "{6D3F2D1A-0B6E-4F7A-9C1B-2E5F8A7D4C3B}"
    placed = await client.add_order("XBTUSD", "buy", Decimal("1"), cl_ord_id=written)
    assert add.requests[0]["fields"]["cl_ord_id"] == placed.cl_ord_id == "6d3f2d1a-0b6e-4f7a-9c1b-2e5f8a7d4c3b"


async def test_a_public_rate_limit_slows_every_public_call_of_the_process(context, kraken, secret_b64):
    kraken.on("Ticker", Recorder(secret_b64, envelope(error=["EGeneral:Too many requests"])))
    client = KrakenClient(API_KEY, secret_b64, base_url=kraken.url, context=context, read_attempts=1)
    with pytest.raises(errors.RateLimitedError):
        await client.public("Ticker", pair="XBTUSD")
    assert not context.scheduler.public.fits(1)  # the next public call, of any client, waits its turn


async def test_bad_client_order_id_is_refused_before_sending(client):
    with pytest.raises(ValueError, match="cl_ord_id"):
        await client.add_order("XBTUSD", "buy", Decimal("1"), cl_ord_id="x" * 19)


async def test_secrets_never_appear_in_repr_errors_or_logs(client, kraken, secret_b64):
    busy = kraken.on("Balance", Recorder(secret_b64, envelope(error=["EService:Busy"])))
    with capture_logs() as logs:
        with pytest.raises(errors.RetryableError) as info:
            await client.balance()
    signatures = [r["headers"]["API-Sign"] for r in busy.requests]
    assert len(signatures) == client.read_attempts and logs
    texts = [repr(client), str(client), str(info.value), repr(info.value), json.dumps(logs, default=str)]
    for text in texts:
        assert secret_b64 not in text and API_KEY not in text
        assert not any(signature in text for signature in signatures)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(client)


def test_malformed_secret_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        KrakenClient("key", "%%%not-base64%%%")
    assert "%%%not-base64%%%" not in str(info.value)


async def test_no_exception_chained_to_a_transport_error_holds_the_key_or_signature(context, secret_b64):
    """A reply that is not HTTP makes aiohttp raise an error whose request headers hold API-Key and API-Sign: it
    must not stay reachable as the TransportError's __context__ or __cause__."""
    async def garbage(reader, writer):
        await reader.read(1)
        writer.write(b"NOT-HTTP garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = KrakenClient(API_KEY, secret_b64, base_url=f"http://127.0.0.1:{port}", context=context,
                          read_attempts=1)
    try:
        with pytest.raises(TransportError) as info:
            await client.balance()
    finally:
        server.close()
    chained, error = [], info.value
    while error is not None:
        chained.append(repr(error) + str(getattr(error, "request_info", "")))
        error = error.__cause__ or error.__context__
    assert not any(API_KEY in text for text in chained), chained
