"""The client's send path: private calls keep their time limit without a timer per request (RequestTimeouts), and
the connection pool stays warm between balance refreshes."""

import asyncio

import pytest
from aiohttp import web

from nija.kraken.client import KrakenClient
from nija.kraken.errors import TransportError


@pytest.fixture
async def slow_kraken():
    """Answers Balance after `delay_s` (settable), on 127.0.0.1."""
    state = {"delay_s": 0.0, "calls": 0}

    async def balance(_request: web.Request) -> web.Response:
        state["calls"] += 1
        await asyncio.sleep(state["delay_s"])
        return web.json_response({"error": [], "result": {"ZUSD": "1.0"}})

    app = web.Application()
    app.router.add_post("/0/private/Balance", balance)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield state
    await runner.cleanup()


def _client(context, secret_b64, url, **kwargs):
    return KrakenClient("timeout-test-key", secret_b64, base_url=url, context=context, read_attempts=1,
                        tier="pro", **kwargs)


async def test_a_private_call_past_its_time_limit_is_a_transport_error_and_the_task_goes_on(
    context, secret_b64, slow_kraken
):
    slow_kraken["delay_s"] = 5.0
    client = _client(context, secret_b64, slow_kraken["url"], timeout_s=0.1)
    with pytest.raises(TransportError, match="TimeoutError"):
        await client.private("Balance")
    # The cancellation used to stop the request is undone: the task can keep working.
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0.01)
    slow_kraken["delay_s"] = 0.0
    assert await client.private("Balance") == {"ZUSD": "1.0"}


async def test_a_call_within_its_limit_is_not_cut_short_by_an_earlier_calls_timer(context, secret_b64, slow_kraken):
    slow_kraken["delay_s"] = 0.05
    client = _client(context, secret_b64, slow_kraken["url"], timeout_s=0.2)
    for _ in range(6):  # 0.3 s in all: the first call's deadline passes while later calls are in flight
        assert await client.private("Balance") == {"ZUSD": "1.0"}


async def test_cancelling_a_call_from_outside_still_cancels_it(context, secret_b64, slow_kraken):
    slow_kraken["delay_s"] = 5.0
    client = _client(context, secret_b64, slow_kraken["url"], timeout_s=0.1)
    task = asyncio.ensure_future(client.private("Balance"))
    while slow_kraken["calls"] == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Its deadline passing later must not cancel anything else.
    await asyncio.sleep(0.2)
    assert asyncio.current_task().cancelling() == 0


async def test_pooled_connections_outlive_the_slowest_balance_refresh(tmp_path):
    """Balance refreshes keep every follower's connection open, so a fan-out after a quiet spell starts warm."""
    from decimal import Decimal

    from nija.kraken.client import KrakenContext
    from nija.trading.positions import refresh_interval_s

    slowest_refresh_s = max(refresh_interval_s(x) for x in (None, Decimal(0), Decimal(10) ** 9))
    async with KrakenContext(state_dir=tmp_path) as context:
        connector = context.session().connector
        assert connector is not None
        assert connector._keepalive_timeout > slowest_refresh_s  # noqa: SLF001 - aiohttp keeps it private
        assert connector.limit >= 1000 and connector.limit_per_host == 0  # a 1,000-follower fan-out leaves at once
