"""Client lifecycle: the default shared context, `async with`, shared per-key state, one pairs load."""

import asyncio
from decimal import Decimal

from nija.kraken.client import KrakenClient, KrakenContext, default_context
from nija.kraken.nonce import NonceCoordinator


async def test_clients_without_a_context_share_the_loops_default_one(exchange, exchange_url, tmp_path, monkeypatch):
    monkeypatch.setenv("NIJA_STATE_DIR", str(tmp_path / "default-state"))
    alice, bob = exchange.account("alice"), exchange.account("bob")
    async with KrakenClient(alice.api_key, alice.api_secret, base_url=exchange_url) as first, \
            KrakenClient(bob.api_key, bob.api_secret, base_url=exchange_url) as second:
        assert first.context is second.context is default_context()
        assert (await first.balance()).get("ZUSD") == Decimal("84.58")
        assert (await second.balance()).get("ZUSD") == Decimal("65.87")
        session = first.context.session()
        assert session is second.context.session()
    assert session.closed  # the last client out closed the shared session
    # The same place the daemon keeps its mark: <state dir>/nonces/
    assert (tmp_path / "default-state" / "nonces" / "nonce_high_water").exists()


async def test_clients_of_one_key_share_lane_and_budget(exchange, tmp_path):
    alice = exchange.account("alice")
    context = KrakenContext(nonces=NonceCoordinator(tmp_path))
    first = KrakenClient(alice.api_key, alice.api_secret, context=context)
    second = KrakenClient(alice.api_key, alice.api_secret, context=context)
    assert first._lane is second._lane and first._budget is second._budget
    try:
        KrakenClient(alice.api_key, alice.api_secret, context=context, tier="pro")
    except ValueError as exc:
        assert "same tier" in str(exc)
    else:
        raise AssertionError("a second tier for one key must be refused")
    await context.close()


async def test_pairs_are_loaded_once_for_many_clients(exchange, exchange_server, context):
    before = exchange_server.requests
    clients = [KrakenClient(exchange.account(n).api_key, exchange.account(n).api_secret, base_url=exchange_server.url,
                            context=context) for n in ("master", "alice", "bob")]
    loaded = await asyncio.gather(*(c.pairs() for c in clients))
    assert loaded[0] is loaded[1] is loaded[2]
    assert exchange_server.requests - before == 2  # Assets + AssetPairs, once
    assert loaded[0].get("DOGE/USD").altname == "XDGUSD"
