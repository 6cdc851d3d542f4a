"""`nija balances` on the embedded exchange: every account's cash and equity, unknown (never 0) when unreadable."""

import json
from decimal import Decimal

import pytest

from nija.balances import read_balances
from nija.lifecycle import AlreadyRunningError, InstanceLock
from nija.settings import load_settings


def environment(exchange, url, tmp_path, *, alice_key=None):
    users = tmp_path / "users"
    users.mkdir(exist_ok=True)
    for name in ("alice", "bob"):
        (users / f"{name}.json").write_text(json.dumps({"name": name}))
    (users / "carol.json").write_text("{broken")
    master, alice, bob = (exchange.account(n) for n in ("master", "alice", "bob"))
    return {"KRAKEN_API_URL": url, "NIJA_STATE_DIR": str(tmp_path / "state"), "NIJA_USERS_DIR": str(users),
            "KRAKEN_MASTER_API_KEY": master.api_key, "KRAKEN_MASTER_API_SECRET": master.api_secret,
            "KRAKEN_USER_ALICE_API_KEY": alice_key or alice.api_key, "KRAKEN_USER_ALICE_API_SECRET": alice.api_secret,
            "KRAKEN_USER_BOB_API_KEY": bob.api_key, "KRAKEN_USER_BOB_API_SECRET": bob.api_secret}


async def test_every_account_is_read_and_an_unreadable_one_is_unknown_with_its_reason(
        exchange, exchange_url, tmp_path):
    env = environment(exchange, exchange_url, tmp_path, alice_key="a-key-kraken-does-not-know")
    rows = {row.name: row for row in await read_balances(load_settings(env, dotenv_path=None), env)}
    assert rows["master"].cash_usd == Decimal("60.53") and rows["master"].equity_usd == Decimal("60.53")
    assert rows["bob"].role == "follower" and rows["bob"].equity_usd == Decimal("65.87")
    assert rows["alice"].equity_usd is None and "Invalid key" in rows["alice"].problem
    [broken] = [row for row in rows.values() if row.name.endswith("carol.json")]
    assert broken.equity_usd is None and "not valid JSON" in broken.problem


async def test_it_refuses_while_a_daemon_holds_the_keys(exchange, exchange_url, tmp_path):
    env = environment(exchange, exchange_url, tmp_path)
    settings = load_settings(env, dotenv_path=None)
    with InstanceLock(settings.state_dir, env["KRAKEN_MASTER_API_KEY"]):
        with pytest.raises(AlreadyRunningError):
            await read_balances(settings, env)
