"""Shared pytest fixtures: the embedded Kraken-compatible exchange, in-process and on 127.0.0.1.

    def test_x(exchange):            # an Exchange(seed=7): market + accounts, no I/O
        exchange.account("alice").api_key
    async def test_y(exchange_url):  # the same exchange served on http://127.0.0.1:<port>, stopped after the test
        client = KrakenClient(base_url=exchange_url, key=..., secret=...)

Accounts on `exchange` (all Kraken "starter" tier, nonce window 0, permissions query+trade+websocket), funded like the
first NIJA's live accounts:
    master  ZUSD 60.53      alice  ZUSD 84.58      bob  ZUSD 65.87
Each has a generated `api_key` and base64 `api_secret` (`exchange.account(name)`). Make more with
`exchange.create_account(name, balances={...}, tier="pro" | limits.Tier(...), nonce_window=N)`.

Moving the market: `exchange.set_price("XBTUSD", Decimal("50000"))` pins the pair there (resting limits it crosses
fill at once) until `exchange.release("XBTUSD")`. Faults: `exchange.inject(Fault(kind=..., next_n=1))`.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from nija.event_loop import loop_factory
from nija.exchange import Exchange
from nija.exchange.app import ExchangeServer

#: the fixture accounts and their USD balances
FIXTURE_ACCOUNTS: dict[str, Decimal] = {"master": Decimal("60.53"), "alice": Decimal("84.58"),
                                        "bob": Decimal("65.87")}


def pytest_asyncio_loop_factories(config, item):
    """Async tests run on the loop NIJA runs on (nija.event_loop: uvloop where installed, asyncio's own with
    NIJA_EVENT_LOOP=asyncio). A test or module marked `pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])`
    runs on both, or on the one it names."""
    factory = loop_factory()
    factories = {"uvloop" if factory is not None else "asyncio": factory or asyncio.new_event_loop}
    marker = item.get_closest_marker("asyncio")
    if marker is not None and marker.kwargs.get("loop_factories"):
        factories["asyncio"] = asyncio.new_event_loop
    return factories


@pytest.fixture(autouse=True)
def host_lock_dir(tmp_path, monkeypatch):
    """Each test's own directory for the host-wide key locks (nija.lifecycle.host_lock_dir), so that tests never
    leave lock files in the machine's temporary directory."""
    path = tmp_path / "host-locks"
    monkeypatch.setattr("nija.lifecycle.host_lock_dir", lambda: path)
    return path


@pytest.fixture
def exchange() -> Exchange:
    """An `Exchange(seed=7)` (real-time clock) with accounts master, alice and bob (see the module docstring)."""
    ex = Exchange(seed=7)
    for name, usd in FIXTURE_ACCOUNTS.items():
        ex.create_account(name, balances={"ZUSD": usd})
    return ex


@pytest.fixture
async def exchange_server(exchange: Exchange):
    """`exchange` served on 127.0.0.1 (random free port, no latency); yields the ExchangeServer (`.url`,
    `.latency_ms`/`.jitter_ms` may be changed during the test). Stopped, promptly, when the test ends."""
    async with exchange.serve(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def exchange_url(exchange_server: ExchangeServer) -> str:
    """The base URL of `exchange_server`, e.g. "http://127.0.0.1:41234" (paths /0/public/..., /0/private/...)."""
    return exchange_server.url
