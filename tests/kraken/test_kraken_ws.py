"""Kraken's WebSocket v2 executions channel (nija.kraken.ws) against the embedded exchange over 127.0.0.1."""

import asyncio
import contextlib
import socket
import time
from decimal import Decimal

import pytest

from nija.exchange.engine import WS_TOKEN_TTL_S
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.errors import ConfigurationError
from nija.kraken.nonce import NonceCoordinator
from nija.kraken.ws import WS_AUTH_URL, FeedClosed, FeedRefused, executions, ws_auth_url


@pytest.fixture
async def context(tmp_path):
    async with KrakenContext(nonces=NonceCoordinator(tmp_path / "nonces")) as ctx:
        yield ctx


def client_of(account, url, context) -> KrakenClient:
    return KrakenClient(account.api_key, account.api_secret, base_url=url, context=context)


@contextlib.asynccontextmanager
async def following(client, url, **options):
    """The executions of `client`'s account gathered in a list by a task, once subscribed."""
    items, subscribed = [], asyncio.Event()

    async def follow():
        async for item in executions(client, url, on_subscribed=subscribed.set, **options):
            items.append(item)

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(asyncio.wait({task, asyncio.ensure_future(subscribed.wait())},
                                            return_when=asyncio.FIRST_COMPLETED), 10)
        if task.done():
            task.result()  # raises what ended it
        yield items, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def eventually(condition, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_the_websocket_url_goes_with_the_rest_url():
    assert ws_auth_url("https://api.kraken.com") == WS_AUTH_URL == "wss://ws-auth.kraken.com/v2"
    assert ws_auth_url("https://API.Kraken.com:443/") == WS_AUTH_URL
    assert ws_auth_url("http://127.0.0.1:8517") == "ws://127.0.0.1:8517/v2"
    assert ws_auth_url("https://paper.example:443/") == "wss://paper.example:443/v2"


async def test_a_trade_streams_its_execution_and_another_accounts_trades_do_not(exchange, exchange_url, context):
    exchange.set_price("XBTUSD", Decimal("50000"))
    master = exchange.account("master")
    url = ws_auth_url(exchange_url)
    async with following(client_of(master, exchange_url, context), url) as (items, _):
        other = client_of(exchange.account("alice"), exchange_url, context)
        await other.add_order("XBTUSD", "buy", Decimal("0.0002"))
        placed = await client_of(master, exchange_url, context).add_order("XBTUSD", "buy", Decimal("0.0003"))
        await eventually(lambda: items)
        await asyncio.sleep(0.1)  # alice's trade, had it been streamed, would be here by now
    [item] = items
    assert item["exec_type"] == "trade"
    assert item["order_id"] == placed.order_id
    assert item["symbol"] == "BTC/USD" and item["side"] == "buy"
    assert item["last_qty"] == Decimal("0.0003")  # numbers arrive as Decimal, never float
    assert item["order_status"] == "filled"


async def test_a_token_not_used_within_its_life_is_refused_and_never_shown(exchange, exchange_url, context,
                                                                            monkeypatch):
    client = client_of(exchange.account("master"), exchange_url, context)
    fresh_token = KrakenClient.websockets_token

    async def stale_token(self):
        token = await fresh_token(self)
        later = time.monotonic() + WS_TOKEN_TTL_S + 1
        exchange.mono = lambda: later  # the subscription comes after the token's 15 minutes
        return token

    monkeypatch.setattr(KrakenClient, "websockets_token", stale_token)
    with pytest.raises(FeedRefused, match="ESession:Invalid session") as refused:
        async with following(client, ws_auth_url(exchange_url)):
            pass
    assert "token" not in str(refused.value).lower()


async def test_a_key_without_the_websocket_permission_is_told_by_the_token_call(exchange, exchange_url, context):
    account = exchange.create_account("restful", {"ZUSD": "100"}, permissions=("query", "trade"))
    with pytest.raises(ConfigurationError, match="Permission denied"):
        async with following(client_of(account, exchange_url, context), ws_auth_url(exchange_url)):
            pass


async def test_the_stream_ends_with_feed_closed_when_the_server_closes_or_goes_quiet(
        exchange, exchange_server, exchange_url, context):
    client = client_of(exchange.account("master"), exchange_url, context)
    async with following(client, ws_auth_url(exchange_url)) as (_, task):
        assert await exchange_server.close_websockets() == 1
        with pytest.raises(FeedClosed, match="closed the connection"):
            await asyncio.wait_for(task, 5)
    # Nothing listens there: connecting fails as a FeedClosed, never hangs.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nowhere = f"ws://127.0.0.1:{unused.getsockname()[1]}/v2"
    with pytest.raises(FeedClosed, match="cannot connect"):
        async with following(client, nowhere):
            pass


async def test_silence_longer_than_the_heartbeat_ends_the_stream(exchange, exchange_url, context, monkeypatch):
    from nija.exchange.app import ExchangeServer

    async def mute(self, ws, outbox):  # a server that answers the subscription, then never says a word
        await ws.send_str('{"method": "subscribe", "req_id": 1, "success": true, "result": {}}')
        await asyncio.Event().wait()

    monkeypatch.setattr(ExchangeServer, "_ws_send", mute)
    client = client_of(exchange.account("master"), exchange_url, context)
    async with following(client, ws_auth_url(exchange_url), silence_s=0.3) as (_, task):
        with pytest.raises(FeedClosed, match="said nothing for 0.3 s"):
            await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("answer, ends_with, reason", [
    # Kraken's answer may come without the request's req_id: a refusal is still a refusal, and one that names the
    # key's permission is told as such (the watcher then waits long before trying again).
    ({"method": "subscribe", "success": False, "error": "EGeneral:Permission denied"},
     ConfigurationError, "Permission denied"),
    # The server keeps the line alive but never answers: heartbeats alone do not keep the subscription waiting.
    ({"channel": "heartbeat"}, FeedClosed, "did not answer the subscription within 1.5 s"),
])
async def test_a_subscription_refused_or_never_answered_ends_the_stream(
        exchange, exchange_url, context, monkeypatch, answer, ends_with, reason):
    import nija.kraken.ws
    from nija.exchange.app import ExchangeServer

    monkeypatch.setattr(ExchangeServer, "_ws_answer", lambda self, message, outbox, stops: answer)
    monkeypatch.setattr(nija.kraken.ws, "CONNECT_TIMEOUT_S", 1.5)
    client = client_of(exchange.account("master"), exchange_url, context)
    with pytest.raises(ends_with, match=reason):
        async with following(client, ws_auth_url(exchange_url)):
            pass


async def test_a_connection_whose_messages_pile_up_unsent_is_closed_not_kept(
        exchange, exchange_url, context, monkeypatch):
    """The embedded exchange bounds what waits for one connection: one that stops draining is cut off."""
    import json

    import nija.exchange.app
    from nija.exchange.app import ExchangeServer

    async def stalled(self, ws, outbox):  # the status and the subscription's answer go out, then nothing drains
        for _ in range(2):
            await ws.send_str(json.dumps(await outbox.queue.get()))
        await asyncio.Event().wait()

    monkeypatch.setattr(ExchangeServer, "_ws_send", stalled)
    monkeypatch.setattr(nija.exchange.app, "WS_OUTBOX_MAX", 3)
    exchange.set_price("XBTUSD", Decimal("50000"))
    master = exchange.account("master")
    async with following(client_of(master, exchange_url, context), ws_auth_url(exchange_url),
                         silence_s=60) as (_, task):
        trader = client_of(master, exchange_url, context)
        for _ in range(4):
            await trader.add_order("XBTUSD", "buy", Decimal("0.0002"))
        with pytest.raises(FeedClosed, match="closed the connection"):
            await asyncio.wait_for(task, 5)
