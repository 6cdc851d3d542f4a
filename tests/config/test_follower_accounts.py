"""Follower files: validation, credentials, one bad file never stops the others, and `nija check`."""

import io
import json
from decimal import Decimal

from pydantic import SecretStr

from nija.accounts import check_main, load_followers


def write(directory, name, data):
    path = directory / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


ENV = {"KRAKEN_USER_ALICE_API_KEY": "ka", "KRAKEN_USER_ALICE_API_SECRET": "c2Etc2VjcmV0",
       "KRAKEN_USER_BOB_API_KEY": "kb", "KRAKEN_USER_BOB_API_SECRET": "c2Itc2VjcmV0"}


def test_good_files_load_with_defaults_and_credentials(tmp_path):
    write(tmp_path, "alice", {"name": "alice"})
    write(tmp_path, "bob", {"name": "bob", "risk_multiplier": 0.5, "disabled_symbols": ["doge"],
                            "max_daily_loss": 0.05, "entry_slippage": 0.005})
    write(tmp_path, "carol.example", {"name": "carol"})  # templates are ignored
    load = load_followers(tmp_path, ENV)
    assert load.ok and [f.name for f in load.followers] == ["alice", "bob"]
    alice, bob = load.followers
    assert alice.config.max_risk_per_trade == Decimal("0.10") and alice.config.late_join == "ignore"
    assert bob.config.risk_multiplier == Decimal("0.5") and bob.config.disabled_symbols == ("DOGE",)
    assert bob.config.entry_slippage == Decimal("0.005")
    assert alice.api_secret.get_secret_value() == "c2Etc2VjcmV0" and "c2Etc2VjcmV0" not in repr(alice)


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path):
    (tmp_path / "alice.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "alice"}).encode())
    load = load_followers(tmp_path, ENV)
    assert load.ok and [f.name for f in load.followers] == ["alice"]


def test_both_missing_credentials_are_named_in_one_line(tmp_path):
    write(tmp_path, "carol", {"name": "carol"})
    [problem] = load_followers(tmp_path, ENV).problems
    assert "KRAKEN_USER_CAROL_API_KEY and KRAKEN_USER_CAROL_API_SECRET not set: set them" in problem.message


def test_one_bad_file_is_left_out_with_one_clear_line(tmp_path):
    write(tmp_path, "alice", {"name": "alice", "risk_multipler": 2})  # typo
    write(tmp_path, "bob", {"name": "bob"})
    write(tmp_path, "carl", "{not json")
    write(tmp_path, "dora", {"name": "dora", "max_risk_per_trade": "lots"})
    write(tmp_path, "eve", {"name": "eve"})  # no credentials
    load = load_followers(tmp_path, ENV)
    assert [f.name for f in load.followers] == ["bob"]
    lines = [str(p) for p in load.problems]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert "alice.json: risk_multipler: unknown field" in lines[0]
    assert "carl.json: line 1: is not valid JSON" in lines[1]
    assert "dora.json: max_risk_per_trade:" in lines[2] and "correct the value" in lines[2]
    assert "eve.json: credentials: KRAKEN_USER_EVE_API_KEY and KRAKEN_USER_EVE_API_SECRET not set" in lines[3]


def test_a_file_nested_too_deep_to_read_is_left_out_alone(tmp_path):
    write(tmp_path, "bob", {"name": "bob"})
    write(tmp_path, "deep", "[" * 100_000 + "]" * 100_000)
    load = load_followers(tmp_path, ENV)
    assert [f.name for f in load.followers] == ["bob"]
    assert "deep.json: (file): nests too deep to read" in str(load.problems[0])


def test_shared_keys_are_a_configuration_error(tmp_path):
    write(tmp_path, "alice", {"name": "alice"})
    write(tmp_path, "bob", {"name": "bob"})
    env = dict(ENV, KRAKEN_USER_BOB_API_KEY="ka")
    load = load_followers(tmp_path, env)
    assert load.followers == [] and len(load.problems) == 2
    assert "also the key of bob" in str(load.problems[0])
    load = load_followers(tmp_path, ENV, master_api_key=SecretStr("kb"))
    assert [f.name for f in load.followers] == ["alice"] and "master's key" in str(load.problems[0])


def test_missing_name_and_bad_name(tmp_path):
    write(tmp_path, "x", {"enabled": True})
    write(tmp_path, "y", {"name": "bad name!"})
    problems = [str(p) for p in load_followers(tmp_path, ENV).problems]
    assert "x.json: name: is required" in problems[0] and "y.json: name:" in problems[1]


def test_check_reports_and_exit_codes(tmp_path):
    write(tmp_path, "alice", {"name": "alice"})
    out = io.StringIO()
    assert check_main(["--users-dir", str(tmp_path)], environ=ENV, out=out) == 0
    assert "✓ alice" in out.getvalue() and "check: ok" in out.getvalue()
    write(tmp_path, "bob", {"name": "bob", "enabled": "sometimes"})
    out = io.StringIO()
    assert check_main(["--users-dir", str(tmp_path)], environ=ENV, out=out) == 1
    assert "bob.json: enabled:" in out.getvalue() and "check: FAILED" in out.getvalue()
    assert "sa-secret" not in out.getvalue()
    out = io.StringIO()
    assert check_main([], environ={"COPY_TRADING_MODE": "x", "NIJA_USERS_DIR": str(tmp_path)}, out=out) == 1
    assert "COPY_TRADING_MODE" in out.getvalue()


def test_a_secret_that_is_not_base64_leaves_only_its_follower_out(tmp_path):
    write(tmp_path, "alice", {"name": "alice"})
    write(tmp_path, "bob", {"name": "bob"})
    load = load_followers(tmp_path, dict(ENV, KRAKEN_USER_ALICE_API_SECRET="not*base64*at*all"))
    assert [f.name for f in load.followers] == ["bob"]
    [problem] = load.problems
    assert "alice.json: credentials: KRAKEN_USER_ALICE_API_SECRET is not valid base64" in str(problem)
    assert "not*base64*at*all" not in str(problem)


def test_a_field_written_twice_is_a_problem_not_a_silent_last_wins(tmp_path):
    write(tmp_path, "alice", '{"name": "alice", "max_risk_per_trade": 0.05, "max_risk_per_trade": 0.9}')
    write(tmp_path, "bob", {"name": "bob"})
    load = load_followers(tmp_path, ENV)
    assert [f.name for f in load.followers] == ["bob"]
    [problem] = load.problems
    assert problem.file.endswith("alice.json") and problem.field == "max_risk_per_trade"
    assert "appears twice" in problem.message


def test_an_empty_disabled_symbol_is_a_problem(tmp_path):
    write(tmp_path, "alice", {"name": "alice", "disabled_symbols": ["DOGE", " "]})
    [problem] = load_followers(tmp_path, ENV).problems
    assert problem.field.startswith("disabled_symbols") and "empty symbol" in problem.message


def test_every_problem_of_a_file_is_named_in_its_one_line_in_plain_words(tmp_path):
    write(tmp_path, "bob", {"name": "bad name!", "risk_multiplier": "two", "disabled_symbols": "XDG"})
    [problem] = load_followers(tmp_path, ENV).problems
    text = str(problem)
    assert problem.field == "name" and "use 1-40 letters, digits or _" in text and "Value error" not in text
    assert "risk_multiplier: Input should be a valid decimal (got 'two')" in text
    assert "disabled_symbols: use a list (got 'XDG'), e.g. [\"DOGE\"" in text


def test_check_reports_what_a_run_would_only_find_at_start(tmp_path):
    """A state directory NIJA cannot write, and log settings a run would replace by defaults."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**ENV, "NIJA_STATE_DIR": str(blocker / "state"), "NIJA_LOG_LEVEL": "verbose", "NIJA_LOG_FORMAT": "xml",
           "NIJA_USERS_DIR": str(tmp_path)}
    out = io.StringIO()
    assert check_main([], environ=env, out=out) == 1
    report = out.getvalue()
    assert f"NIJA_STATE_DIR={blocker / 'state'} must be a directory NIJA can create and write" in report
    assert "NIJA_LOG_LEVEL='VERBOSE' is not a level" in report and "NIJA_LOG_FORMAT='xml' is not a format" in report
    assert not (blocker / "state").exists()
    out = io.StringIO()
    assert check_main([], environ={**ENV, "NIJA_STATE_DIR": str(tmp_path / "new" / "state"),
                                   "NIJA_USERS_DIR": str(tmp_path), "NIJA_STATEDIR": "x"}, out=out) == 0, out.getvalue()
    assert not (tmp_path / "new").exists()  # checked, not created
    # A misspelt variable is told, without failing the check: the run goes on with the default.
    assert "  ! NIJA_STATEDIR is not a variable NIJA reads: did you mean NIJA_STATE_DIR?" in out.getvalue()
