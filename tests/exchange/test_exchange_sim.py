"""`nija sim` and `--state`: accounts from a file or the demo, the env file NIJA reads, state across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D

import pytest

from nija.exchange import Exchange, Fault
from nija.exchange.sim import env_lines, main, parse_fault
from nija.exchange.state import load_state, save_state
from nija.kraken.limits import Tier


def test_state_round_trip_keeps_accounts_nonces_orders_and_holds(tmp_path):
    ex = Exchange(seed=3, speed=0)
    tiny = Tier("tiny", 5, 0.5, 5, 0.5, 3)
    a = ex.create_account("a", {"ZUSD": "1000"}, tier=tiny, nonce_window=7)
    a.accept_nonce(12345)
    ex.set_price("XBTUSD", D("50000"))
    ex.call("a", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.001",
                              "cl_ord_id": "m1"})
    resting = ex.call("a", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit",
                                        "price": "45000.0", "volume": "0.001", "cl_ord_id": "l1"})["txid"][0]
    path = tmp_path / "state.json"
    save_state(ex, path)

    ex2 = Exchange(seed=3, speed=0)
    assert load_state(ex2, path)
    b = ex2.account("a")
    assert (b.api_key, b.api_secret, b.tier, b.nonce_window) == (a.api_key, a.api_secret, tiny, 7)
    assert not b.accept_nonce(12345)
    assert ex2.balances("a") == ex.balances("a")
    assert b.holds == a.holds and resting in b.open_orders
    assert set(ex2.orders_by_cl_ord_id("a")) == {"m1", "l1"}
    ex2.set_price("XBTUSD", D("44000"))  # the restored resting order is on the book again
    assert b.orders[resting].status == "closed" and b.holds == {}
    assert ex2.call("a", "TradesHistory")["count"] == 2


def test_parse_fault_specs():
    f = parse_fault("timeout:next_n=2,method=AddOrder,delay_s=1.5,execute=false,account=alice")
    assert (f.kind, f.next_n, f.method, f.delay_s, f.execute, f.account) == ("timeout", 2, "AddOrder", 1.5,
                                                                              False, "alice")
    assert parse_fault("service_busy:probability=0.25").probability == 0.25
    with pytest.raises(ValueError):
        parse_fault("nonsense")


def test_env_lines_name_master_and_followers():
    ex = Exchange(seed=1)
    for name in ("master", "alice"):
        ex.create_account(name, {"ZUSD": "1"})
    lines = env_lines("http://127.0.0.1:1", ex)
    assert lines[0] == "KRAKEN_API_URL=http://127.0.0.1:1"
    assert [line.split("=", 1)[0] for line in lines[1:]] == [
        "KRAKEN_MASTER_API_KEY", "KRAKEN_MASTER_API_SECRET", "KRAKEN_USER_ALICE_API_KEY",
        "KRAKEN_USER_ALICE_API_SECRET"]


def test_bad_accounts_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "accounts.json"
    bad.write_text(json.dumps([{"name": "x", "balance": 1}]))
    assert main(["--accounts", str(bad), "--port", "0"]) == 2
    assert "account #1 'x': balance: unknown field: remove it or fix its spelling" in capsys.readouterr().err


def test_demo_only_flags_with_an_accounts_file_are_a_clear_error(tmp_path, capsys):
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps([{"name": "master", "balances": {"ZUSD": "500"}}]))
    assert main(["--accounts", str(accounts), "--tier", "pro", "--port", "0"]) == 2
    assert f'give each account of {accounts} its own "tier"' in capsys.readouterr().err


def test_nija_sim_runs_writes_env_and_keeps_state(tmp_path):
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"accounts": [{"name": "master", "balances": {"ZUSD": "500"},
                                                  "tier": {"rest_max": 3, "rest_decay_per_s": 0.1, "trading_max": 5,
                                                           "trading_decay_per_s": 0.5,
                                                           "max_open_orders_per_pair": 2}},
                                                 {"name": "carol", "balances": {"ZUSD": "70"}, "tier": "pro"}]}))
    env = tmp_path / "out.env"
    state = tmp_path / "state.json"
    cmd = [sys.executable, "-m", "nija", "sim", "--port", "0", "--accounts", str(accounts), "--env-out", str(env),
           "--state", str(state), "--speed", "60", "--seed", "11", "--duration", "0.5",
           "--fault", "service_busy:probability=0.5"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # hang guard: --duration stops it
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("stopped")
    assert "speed 60" in out.stdout and "carol (follower, pro)" in out.stdout
    lines = env.read_text().splitlines()
    assert lines[0].startswith("KRAKEN_API_URL=http://127.0.0.1:")
    assert any(line.startswith("KRAKEN_USER_CAROL_API_SECRET=") for line in lines)
    assert "NIJA_STATE_DIR=state/sim" in lines  # apart from a live run's state: nothing of it resumed on Kraken
    saved = json.loads(state.read_text())
    assert [a["name"] for a in saved["accounts"]] == ["master", "carol"]
    assert saved["accounts"][0]["tier"]["rest_max"] == 3
    key = next(line.split("=", 1)[1] for line in lines if line.startswith("KRAKEN_MASTER_API_KEY="))
    assert saved["accounts"][0]["api_key"] == key
    # A restart with the same state file keeps the same keys (accounts come from the state, not the file), and
    # says that a flag for new accounts is not applied to the stored ones.
    again = subprocess.run([sys.executable, "-m", "nija", "sim", "--port", "0", "--state", str(state),
                            "--tier", "intermediate", "--duration", "0.2"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and key in again.stdout
    assert "carol (follower, pro)" in again.stdout
    assert f"accounts restored from --state {state}: --tier not applied" in again.stdout
    # ... the master trader's second key too: the .env written before still trades the master.
    trader_key = next(line.split("=", 1)[1] for line in lines if line.startswith("PAPER_MASTER_TRADER_API_KEY="))
    assert trader_key in again.stdout


def test_injected_fault_kinds_are_validated():
    with pytest.raises(ValueError):
        Fault(kind="meteor")
    with pytest.raises(ValueError):
        Fault(kind="timeout", probability=2)
