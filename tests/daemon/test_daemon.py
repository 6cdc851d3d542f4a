"""`nija run` end to end on the embedded exchange: a master fill is copied to every follower from the files."""

import asyncio
import json
from decimal import Decimal

from nija.daemon import run
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.nonce import NonceCoordinator
from nija.settings import load_settings


async def wait_for(condition, timeout_s=15.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_master_fill_is_copied_and_a_bad_follower_file_leaves_only_itself_out(
        exchange, exchange_url, tmp_path, monkeypatch):
    exchange.set_price("XBTUSD", Decimal("50000"))
    master = exchange.create_account("whale", {"ZUSD": Decimal("10000")})
    users = tmp_path / "users"
    users.mkdir()
    (users / "alice.json").write_text(json.dumps({"name": "alice"}))
    (users / "bob.json").write_text(json.dumps({"name": "bob", "risk_multiplier": 0.5}))
    (users / "carol.json").write_text(json.dumps({"name": "carol", "max_risk": 0.2}))  # unknown field
    env = {
        "KRAKEN_API_URL": exchange_url,
        "KRAKEN_MASTER_API_KEY": master.api_key, "KRAKEN_MASTER_API_SECRET": master.api_secret,
        "NIJA_STATE_DIR": str(tmp_path / "state"), "NIJA_USERS_DIR": str(users),
    }
    for name in ("alice", "bob"):
        account = exchange.account(name)
        env[f"KRAKEN_USER_{name.upper()}_API_KEY"] = account.api_key
        env[f"KRAKEN_USER_{name.upper()}_API_SECRET"] = account.api_secret
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env, dotenv_path=None)

    stop = asyncio.Event()
    daemon = asyncio.create_task(run(settings, stop=stop, master_poll_s=0.1))
    await wait_for(lambda: (tmp_path / "state" / "master_fills.json").exists() or daemon.done())
    assert not daemon.done()

    context = KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces"))
    trader = KrakenClient(master.api_key, master.api_secret, base_url=exchange_url, context=context)
    try:
        # The master spends about 10 % of its equity: alice copies ~10 % of hers, bob (multiplier 0.5) ~5 %.
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))

        def held(name):
            return exchange.balances(name).get("XXBT", Decimal(0))

        await wait_for(lambda: held("alice") > 0 and held("bob") > 0)
        alice_usd = held("alice") * Decimal("50000")
        assert Decimal("7.5") < alice_usd <= Decimal("8.46")  # 84.58 × 1000/10000, rounded down to the lot
        bob_usd = held("bob") * Decimal("50000")
        assert Decimal("3.0") < bob_usd <= Decimal("3.30")  # 65.87 × 1000/10000 × 0.5
    finally:
        stop.set()
        assert await asyncio.wait_for(daemon, 30) == 0
        await context.close()
    # Exactly one order per follower for the one master fill.
    for name in ("alice", "bob"):
        assert [len(orders) for orders in exchange.orders_by_cl_ord_id(name).values()] == [1]


async def test_a_second_daemon_on_the_same_keys_refuses_to_start(exchange, exchange_url, tmp_path, monkeypatch):
    master = exchange.account("master")
    (tmp_path / "users").mkdir()
    env = {"KRAKEN_API_URL": exchange_url, "KRAKEN_MASTER_API_KEY": master.api_key,
           "KRAKEN_MASTER_API_SECRET": master.api_secret, "NIJA_STATE_DIR": str(tmp_path / "state"),
           "NIJA_USERS_DIR": str(tmp_path / "users")}
    settings = load_settings(env, dotenv_path=None)
    stop = asyncio.Event()
    first = asyncio.create_task(run(settings, stop=stop, master_poll_s=0.1))
    await wait_for(lambda: (tmp_path / "state" / "master_fills.json").exists())
    from nija.lifecycle import AlreadyRunningError

    try:
        second = asyncio.create_task(run(settings, stop=asyncio.Event()))
        try:
            await asyncio.wait_for(second, 10)
            raise AssertionError("the second daemon started")
        except AlreadyRunningError as exc:
            assert "another NIJA daemon" in str(exc)
    finally:
        stop.set()
        assert await asyncio.wait_for(first, 30) == 0
