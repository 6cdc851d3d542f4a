"""Kraken's WebSocket v2 `executions` channel: an account's trades the moment the exchange makes them.

    async for execution in executions(client, ws_auth_url(client.base_url)):
        ...  # one dict per order event, e.g. {"exec_type": "trade", "order_id": ..., "last_qty": ...}

The token comes from REST `GetWebSocketsToken` (the key needs Kraken's "WebSocket interface" permission) and is
used for one connection only. Kraken (wss://ws-auth.kraken.com/v2) and the embedded exchange (ws://host:port/v2)
speak the same messages: a subscribe request carrying the token, its answer, then `{"channel": "executions",
"type": "update", "data": [...]}` per order event and a `heartbeat` every second. Numbers are parsed as Decimal.

The stream never ends quietly: `FeedClosed` when the server closes it, stays silent for `silence_s` or does not
answer the subscription within `CONNECT_TIMEOUT_S` (heartbeats do not count); `FeedRefused` when the subscription is
refused, or a ConfigurationError when the refusal says the key may not (`EGeneral:Permission denied`). The token
never appears in any of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from nija.kraken.client import DEFAULT_BASE_URL, KrakenClient
from nija.kraken.errors import error_from_kraken

__all__ = ["WS_AUTH_URL", "FeedClosed", "FeedNotServed", "FeedRefused", "executions", "ws_auth_url"]

#: Kraken's authenticated WebSocket v2 endpoint
WS_AUTH_URL = "wss://ws-auth.kraken.com/v2"
#: Kraken sends a heartbeat every second on a subscribed connection: this long without any message, it is dead
SILENCE_S = 10.0
#: connecting and subscribing must be done within this long
CONNECT_TIMEOUT_S = 10.0


class FeedClosed(Exception):
    """The WebSocket connection ended (closed by the server, a network error, or silence)."""


class FeedNotServed(FeedClosed):
    """The URL answered HTTP, but with no WebSocket channel (a 404, say): a wrong address, not a network blip."""


class FeedRefused(Exception):
    """The server refused the subscription (e.g. `ESession:Invalid session` for a bad or used token)."""


def ws_auth_url(api_url: str) -> str:
    """The authenticated WebSocket URL that goes with a REST base URL: Kraken's own for api.kraken.com, else the
    same host's `/v2` (the embedded exchange serves both on one port)."""
    parts = urlsplit(api_url)
    kraken = urlsplit(DEFAULT_BASE_URL)
    if (parts.scheme, (parts.hostname or "").lower(), parts.port or 443) == (kraken.scheme, kraken.hostname, 443):
        return WS_AUTH_URL
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v2", "", ""))


async def executions(client: KrakenClient, url: str, *, silence_s: float = SILENCE_S,
                     on_subscribed: Callable[[], None] = lambda: None) -> AsyncIterator[dict]:
    """Every `executions` item of `client`'s account from the moment the subscription is answered (no snapshot).

    Raises KrakenError from the token call (e.g. ConfigurationError: the key lacks the permission), FeedRefused,
    or FeedClosed; the caller decides when to connect again."""
    token = await client.websockets_token()
    session = client.context.session()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            ws = await session.ws_connect(url, autoping=True, max_msg_size=1 << 22)
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status < 500 and exc.status != 429:  # 5xx and 429 pass by themselves
            raise FeedNotServed(f"{url} answered HTTP {exc.status} ({exc.message}), not a WebSocket channel") \
                from None
        raise FeedClosed(f"cannot connect to {url}: HTTP {exc.status} ({exc.message})") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise FeedClosed(f"cannot connect to {url}: {type(exc).__name__}: {exc}") from None
    try:
        await ws.send_str(json.dumps({"method": "subscribe", "req_id": 1, "params": {
            "channel": "executions", "token": token.get_secret_value(), "snap_orders": False,
            "snap_trades": False}}))
        subscribed = False
        loop = asyncio.get_running_loop()
        answer_by = loop.time() + CONNECT_TIMEOUT_S  # heartbeats alone must not keep an unanswered subscription
        unanswered = FeedClosed(f"{url} did not answer the subscription within {CONNECT_TIMEOUT_S:g} s")
        while True:
            wait_s = silence_s if subscribed else answer_by - loop.time()
            if wait_s <= 0:  # (aiohttp takes a timeout of 0 for none at all)
                raise unanswered
            try:
                message = await ws.receive(timeout=wait_s)
            except TimeoutError:
                raise (FeedClosed(f"{url} said nothing for {silence_s:g} s") if subscribed else unanswered) from None
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR):
                raise FeedClosed(f"{url} closed the connection ({message.type.name.lower()})")
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                body = json.loads(message.data, parse_float=Decimal)
            except ValueError:
                continue  # not Kraken's JSON: nothing to act on
            if not isinstance(body, dict):
                continue
            answers = body.get("method") == "subscribe" and body.get("req_id") in (1, None)
            if not subscribed and (answers or body.get("success") is False):  # the answer, or an error for it
                if not body.get("success"):
                    error = str(body.get("error"))
                    if "Permission denied" in error:  # the key lacks the WebSocket permission: a long wait
                        raise error_from_kraken([error], method="subscribe to executions")
                    raise FeedRefused(f"executions subscription refused: {error}")
                subscribed = True
                on_subscribed()
            elif subscribed and body.get("channel") == "executions":
                for item in body.get("data") or ():
                    if isinstance(item, dict):
                        yield item
    except (aiohttp.ClientError, OSError) as exc:
        raise FeedClosed(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        await ws.close()
