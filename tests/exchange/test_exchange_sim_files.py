"""`nija sim` input and output files: every mistake in --accounts/--state is one clear line and exit code 2,
and only a bind failure is reported as "cannot serve on"."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from decimal import Decimal as D

import pytest

from nija.exchange import Exchange
from nija.exchange.accounts_file import SimFileError, accounts_from_file
from nija.exchange.sim import main
from nija.exchange.state import load_state, save_state

SECRET = "c2VjcmV0LWJ5dGVzLWZvci1hLXRlc3Qtb25seS0xMjM0NTY3ODkwYWJjZGVmZ2hpams="

BAD_ACCOUNTS = {
    "amount not a number": ([{"name": "m", "balances": {"ZUSD": "abc"}}],
                            ["account #1 'm': balances.ZUSD: must be an amount >= 0 like \"100.50\" (got 'abc')"]),
    "balances a list": ([{"name": "m", "balances": ["ZUSD"]}],
                        ["account #1 'm': balances: must be an object of asset → amount, e.g. {\"ZUSD\": \"100\"}"]),
    "negative amount": ([{"name": "m", "balances": {"USD": -3}}], ["account #1 'm': balances.USD: must be an amount"]),
    "unknown asset": ([{"name": "m", "balances": {"ZUDS": "1"}}],
                      ["account #1 'm': balances.ZUDS: unknown asset 'ZUDS': use one of ", "ZUSD"]),
    "names equal upper-cased": ([{"name": "m"}, {"name": "M"}],
                                ["account #2 'M': name: 'M' is already used by account #1 'm'",
                                 "give each account its own name"]),
    "secret not base64": ([{"name": "m", "api_secret": "not base64!"}],
                          ["account #1 'm': api_secret: is not valid base64", "leave it out to generate one"]),
    "permissions a string": ([{"name": "m", "permissions": "trade"}],
                             ["account #1 'm': permissions: use a list drawn from \"query\", \"trade\", "
                              "\"websocket\", e.g. [\"query\", \"trade\", \"websocket\"] (got 'trade')"]),
    "permission unknown": ([{"name": "m", "permissions": ["withdraw"]}], ["account #1 'm': permissions: use a list"]),
    "name with a space": ([{"name": "bad name!"}],
                          ["account #1 'bad name!': name: use 1-40 letters, digits or _ (it names "
                           "KRAKEN_USER_<NAME>_API_KEY)"]),
    "name with a dash": ([{"name": "bob-2"}], ["account #1 'bob-2': name: use 1-40 letters, digits or _"]),
    "name missing": ([{"balances": {"ZUSD": "1"}}],
                     ["account #1: name: is required: add it, e.g. \"name\": \"alice\""]),
    "account not an object": ([5], ["account #1: must be an object like {\"name\": \"alice\""]),
    "unknown field": ([{"name": "x", "balance": 1}],
                      ["account #1 'x': balance: unknown field: remove it or fix its spelling (known: name, balances"]),
    "unknown tier": ([{"name": "x", "tier": "gold"}],
                     ["account #1 'x': tier: use one of starter, intermediate, pro or an object with rest_max"]),
    "custom tier incomplete": ([{"name": "x", "tier": {"rest_max": 3}}],
                               ["account #1 'x': tier: a custom tier needs exactly rest_max, rest_decay_per_s",
                                "missing rest_decay_per_s, trading_max"]),
    "custom tier zero ceiling": ([{"name": "x", "tier": {"rest_max": 0, "rest_decay_per_s": 1, "trading_max": 5,
                                                         "trading_decay_per_s": 1, "max_open_orders_per_pair": 2}}],
                                 ["account #1 'x': tier: custom tier field rest_max must be a number > 0 (got 0)"]),
    "nonce window negative": ([{"name": "x", "nonce_window": -1}],
                              ["account #1 'x': nonce_window: must be a whole number >= 0, e.g. 0 (got -1)"]),
    "api key reused": ([{"name": "a", "api_key": "K1"}, {"name": "b", "api_key": "K1"}],
                       ["account #2 'b': api_key: already used by account #1 'a'"]),
    "map form with a bad amount": ({"alice": "abc"}, ["account #1 'alice': balances.ZUSD: must be an amount"]),
    "no accounts": ([], ["holds no accounts: add at least one"]),
    "not a list": ("master", ["must hold a list of accounts"]),
    "extra top-level field": ({"accounts": [{"name": "m"}], "x": 1}, ["unknown top-level field 'x'"]),
}


def _sim(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main([*argv, "--port", "0", "--duration", "0.1"])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("case", sorted(BAD_ACCOUNTS))
def test_each_accounts_file_mistake_is_one_line_naming_file_account_field_and_fix(case, tmp_path, capsys):
    content, expected = BAD_ACCOUNTS[case]
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(content))
    env = tmp_path / "out.env"
    code, err = _sim(capsys, "--accounts", str(path), "--env-out", str(env))
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"nija sim: {path}: "), err
    for part in expected:
        assert part in err[0], err
    assert not env.exists()  # nothing started, nothing written


def test_every_problem_of_the_file_is_reported_at_once(tmp_path, capsys):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([{"name": "bad name!"}, {"name": "bob-2", "balances": {"ZUSD": "abc"}},
                                {"name": "ok"}, {"name": "x", "tier": "gold", "nonce_window": -1}]))
    code, err = _sim(capsys, "--accounts", str(path))
    assert code == 2
    assert [line.split(": ")[2:4] for line in err] == [
        ["account #1 'bad name!'", "name"], ["account #2 'bob-2'", "name"],
        ["account #2 'bob-2'", "balances.ZUSD"], ["account #4 'x'", "tier"], ["account #4 'x'", "nonce_window"]]


def test_secret_is_not_echoed_in_the_error(tmp_path, capsys):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([{"name": "m", "api_secret": "zzz-secret-zzz"}]))
    code, err = _sim(capsys, "--accounts", str(path))
    assert code == 2 and "zzz-secret-zzz" not in "\n".join(err)


@pytest.mark.parametrize("text, expected", [
    ("", "not valid JSON (line 1 column 1: Expecting value): fix the accounts file"),
    ("[{\"name\": \"m\",}]", "not valid JSON (line 1 column 15: Expecting property name enclosed in double "
     "quotes): fix the accounts file"),
])
def test_accounts_file_that_is_not_json(tmp_path, capsys, text, expected):
    path = tmp_path / "accounts.json"
    path.write_text(text)
    code, err = _sim(capsys, "--accounts", str(path))
    assert (code, err) == (2, [f"nija sim: {path}: {expected}"])


def test_missing_accounts_file(tmp_path, capsys):
    path = tmp_path / "nope.json"
    code, err = _sim(capsys, "--accounts", str(path))
    assert (code, err) == (2, [f"nija sim: {path}: cannot read the accounts file (No such file or directory): "
                               "check the path"])


def test_accounts_file_mistake_gives_no_traceback_from_the_command(tmp_path):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([{"name": "m", "balances": {"ZUSD": "abc"}}]))
    out = subprocess.run([sys.executable, "-m", "nija", "sim", "--port", "0", "--accounts", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"nija sim: {path}: account #1 'm': balances.ZUSD: must be an amount >= 0 "
                                       "like \"100.50\" (got 'abc')"]


def test_the_three_file_forms_give_the_same_exact_accounts(tmp_path):
    forms = {
        "list": [{"name": "master", "balances": {"USD": 60.53}}, {"name": "alice", "balances": {"ZUSD": "84.58"}}],
        "object": {"accounts": [{"name": "master", "balances": {"ZUSD": 60.53}}, {"name": "alice",
                                                                                  "balances": {"ZUSD": 84.58}}]},
        "map": {"master": 60.53, "alice": {"balances": {"ZUSD": "84.58"}, "permissions": ["query"]}},
    }
    for form, content in forms.items():
        path = tmp_path / f"{form}.json"
        path.write_text(json.dumps(content))
        ex = Exchange(seed=1, speed=0)
        for spec in accounts_from_file(path):
            spec.create_in(ex)
        assert {a.name: a.balances for a in ex.accounts()} == {"master": {"ZUSD": D("60.53")},
                                                               "alice": {"ZUSD": D("84.58")}}, form


def test_custom_key_secret_and_tier_are_kept(tmp_path):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([{"name": "m", "api_key": "KEY1", "api_secret": SECRET, "nonce_window": 5,
                                 "tier": {"rest_max": 3, "rest_decay_per_s": 0.1, "trading_max": 5,
                                          "trading_decay_per_s": 0.5, "max_open_orders_per_pair": 2}}]))
    ex = Exchange(seed=1, speed=0)
    acct = accounts_from_file(path)[0].create_in(ex)
    assert (acct.api_key, acct.api_secret, acct.nonce_window, acct.tier.rest_max, acct.tier.name) == (
        "KEY1", SECRET, 5, 3, "custom")


# ---- --state FILE -------------------------------------------------------------------------------------------


def _saved_state(tmp_path) -> tuple[dict, object]:
    ex = Exchange(seed=3, speed=0)
    ex.create_account("alice", {"ZUSD": "1000"})
    ex.set_price("XBTUSD", D("50000"))
    ex.call("alice", "AddOrder", {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "45000.0",
                                  "volume": "0.001"})
    path = tmp_path / "state.json"
    save_state(ex, path)
    return json.loads(path.read_text()), path


@pytest.mark.parametrize("damage, expected", [
    (lambda d: d["accounts"][0]["balances"].update(ZUSD="x"),
     "account #1 'alice': balances.ZUSD: must be an amount >= 0"),
    (lambda d: d["accounts"][0].update(api_secret="!!"), "account #1 'alice': api_secret: is not valid base64"),
    (lambda d: d["accounts"][0].update(highest_nonce="abc"), "account #1 'alice': highest_nonce: malformed"),
    (lambda d: d["accounts"][0]["orders"][0].update(pair="NOPE"),
     "account #1 'alice': orders[0]: malformed (ValueError: unknown pair 'NOPE')"),
    (lambda d: d["accounts"][0]["orders"][0].pop("txid"), "account #1 'alice': orders[0]: missing field 'txid'"),
    (lambda d: d["accounts"][0]["orders"][0].update(vol="lots"),
     "account #1 'alice': orders[0]: an amount is not a decimal number"),
    (lambda d: d["accounts"][0].update(trades={}), "account #1 'alice': trades: must be a list (got dict)"),
    (lambda d: d.update(version=99), "unknown state version 99 (this NIJA writes 1)"),
    (lambda d: d.update(pair_status={"FOO": "online"}), "pair_status.FOO: malformed"),
    (lambda d: d.pop("accounts"), "not a nija sim state file (no \"accounts\" list)"),
])
def test_each_damaged_state_file_is_one_clear_line(tmp_path, capsys, damage, expected):
    data, path = _saved_state(tmp_path)
    damage(data)
    path.write_text(json.dumps(data))
    code, err = _sim(capsys, "--state", str(path))
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"nija sim: {path}: ") and expected in err[0], err


def test_state_file_that_is_not_json(tmp_path, capsys):
    path = tmp_path / "state.json"
    path.write_text('{"accou')
    code, err = _sim(capsys, "--state", str(path))
    assert code == 2 and err == [f"nija sim: {path}: not valid JSON (line 1 column 2: Unterminated string "
                                 "starting at): fix the state file"]


def test_load_state_raises_sim_file_error_listing_every_problem(tmp_path):
    data, path = _saved_state(tmp_path)
    data["accounts"][0]["highest_nonce"] = "abc"
    data["accounts"][0]["trades"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(SimFileError) as info:
        load_state(Exchange(seed=3, speed=0), path)
    assert [p.split(": ")[2] for p in info.value.problems] == ["highest_nonce", "trades"]


# ---- errors that are not the accounts file -----------------------------------------------------------------


def test_only_a_bind_failure_says_cannot_serve(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--duration", "0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nija sim: cannot serve on 127.0.0.1:{port}: ")


def test_unwritable_env_out_is_not_a_serve_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _sim(capsys, "--env-out", str(blocker / "out.env"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"nija sim: cannot write --env-out {blocker / 'out.env'} (")
    assert err[0].endswith("): choose a writable path") and "cannot serve" not in err[0]


def test_reader_going_away_is_not_an_error():
    """`nija sim | head -1`: stdout closes early; the exchange runs to its end without a bind error or traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "nija", "sim", "--port", "0", "--duration", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"NIJA embedded Kraken exchange on http://127.0.0.1:")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)  # hang guard only
    assert (proc.returncode, err.decode()) == (0, "")


@pytest.mark.parametrize("argv, expected", [
    (["--public-limit", "x/1"], "nija sim: --public-limit 'x/1': use BURST/PER_S with positive numbers, e.g. 5/1"),
    (["--pair-status", "FOO=online"], "nija sim: --pair-status 'FOO=online': unknown pair 'FOO', "
                                      "e.g. XBTUSD=cancel_only"),
])
def test_bad_flags_are_clear_errors(capsys, argv, expected):
    code, err = _sim(capsys, *argv)
    assert (code, err) == (2, [expected])
