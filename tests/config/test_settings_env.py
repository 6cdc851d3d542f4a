"""Settings from the environment: defaults, parsing, and errors that name the variable and the fix."""

from decimal import Decimal
from pathlib import Path

import pytest

from nija.settings import CopyTradingMode, SettingsError, load_settings


def test_defaults():
    settings = load_settings({}, dotenv_path=None)
    assert settings.state_dir == Path("state") and settings.users_dir == Path("config/users")
    assert settings.copy_trading_mode is CopyTradingMode.MASTER_FOLLOW and settings.copies
    assert not settings.has_master_keys


def test_values_are_parsed():
    settings = load_settings({
        "NIJA_STATE_DIR": "/tmp/s", "COPY_TRADING_MODE": "independent", "KRAKEN_API_URL": "http://127.0.0.1:9/",
        "KRAKEN_MASTER_API_KEY": "k", "KRAKEN_MASTER_API_SECRET": "c2VjcmV0", "NIJA_COPY_CONCURRENCY": "8",
        "NIJA_TAKER_FEE_RATE": "0.0026", "KRAKEN_TIER": "Pro",
    }, dotenv_path=None)
    assert settings.copy_trading_mode is CopyTradingMode.INDEPENDENT and not settings.copies
    assert settings.kraken_api_url == "http://127.0.0.1:9" and settings.copy_concurrency == 8
    assert settings.taker_fee_rate == Decimal("0.0026") and settings.kraken_tier == "pro"
    assert "c2VjcmV0" not in repr(settings)


def test_every_bad_variable_is_reported_with_its_fix():
    with pytest.raises(SettingsError) as caught:
        load_settings({"COPY_TRADING_MODE": "MIRROR", "NIJA_COPY_CONCURRENCY": "0",
                       "KRAKEN_MASTER_API_KEY": "k", "KRAKEN_API_URL": "api.kraken.com"}, dotenv_path=None)
    text = str(caught.value)
    assert len(caught.value.problems) == 4
    assert "COPY_TRADING_MODE='MIRROR'" in text and "MASTER_FOLLOW or INDEPENDENT" in text
    assert "NIJA_COPY_CONCURRENCY" in text and "KRAKEN_MASTER_API_SECRET is not set" in text
    assert "KRAKEN_API_URL" in text


def test_a_master_secret_that_is_not_base64_is_named_without_echoing_it():
    with pytest.raises(SettingsError) as caught:
        load_settings({"KRAKEN_MASTER_API_KEY": "k", "KRAKEN_MASTER_API_SECRET": "secret!with*stars"},
                      dotenv_path=None)
    assert "KRAKEN_MASTER_API_SECRET is not valid base64" in str(caught.value)
    assert "secret!with*stars" not in str(caught.value)
    # Quoted in a dashboard that keeps quotes (Railway, Render, systemd): the quotes are named, not the secret.
    with pytest.raises(SettingsError) as caught:
        load_settings({"KRAKEN_MASTER_API_KEY": "k", "KRAKEN_MASTER_API_SECRET": "'c2VjcmV0'"}, dotenv_path=None)
    assert "KRAKEN_MASTER_API_SECRET starts or ends with a quote" in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)


def test_timings_outside_what_a_daemon_can_live_with_and_urls_with_credentials_are_refused():
    with pytest.raises(SettingsError) as caught:
        load_settings({"NIJA_ORDER_TIMEOUT_S": "inf", "NIJA_BALANCE_REFRESH_S": "1e-9",
                       "KRAKEN_API_URL": "https://user:hunter2@proxy.example"}, dotenv_path=None)
    text = str(caught.value)
    assert "NIJA_ORDER_TIMEOUT_S='inf' must be a number of seconds from 1 to 300" in text
    assert "NIJA_BALANCE_REFRESH_S='1e-9' must be a number of seconds from 1 to 3600" in text
    assert "KRAKEN_API_URL carries a user name or password" in text and "hunter2" not in text
    for bad in ("http://", "http://[::1", "https//op:hunter2@api.kraken.com"):
        with pytest.raises(SettingsError) as caught:
            load_settings({"KRAKEN_API_URL": bad}, dotenv_path=None)
        assert "is not an http(s) URL" in str(caught.value) and "hunter2" not in str(caught.value)


def test_the_websocket_url_goes_with_the_api_url_unless_set_or_switched_off():
    def ws_url(**env):
        settings = load_settings(env, dotenv_path=None)
        return settings.ws_auth_url_for(settings.kraken_api_url)

    assert ws_url() == "wss://ws-auth.kraken.com/v2"
    assert ws_url(KRAKEN_API_URL="http://127.0.0.1:8517") == "ws://127.0.0.1:8517/v2"  # the embedded exchange
    assert ws_url(KRAKEN_WS_AUTH_URL="wss://beta-ws-auth.kraken.com/v2") == "wss://beta-ws-auth.kraken.com/v2"
    assert ws_url(KRAKEN_WS_AUTH_URL="OFF") is None
    # Paper mode: the REST calls go to the embedded exchange, and so does the channel.
    assert load_settings({}, dotenv_path=None).ws_auth_url_for("http://127.0.0.1:4000") == "ws://127.0.0.1:4000/v2"
    for bad in ("https://ws-auth.kraken.com/v2", "wss://op:hunter2@ws-auth.kraken.com/v2", "ws-auth.kraken.com"):
        with pytest.raises(SettingsError) as caught:
            ws_url(KRAKEN_WS_AUTH_URL=bad)
        assert "KRAKEN_WS_AUTH_URL" in str(caught.value) and "hunter2" not in str(caught.value)
        assert "wss://ws-auth.kraken.com/v2, or off" in str(caught.value)


def test_log_settings_in_dot_env_are_followed(tmp_path):
    """`.env` is read before logging is set up, so its NIJA_LOG_FORMAT applies to the very first line."""
    import os
    import subprocess
    import sys

    (tmp_path / ".env").write_text("NIJA_LOG_FORMAT=console\nNIJA_ORDER_TIMEOUT_S=inf\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIJA_", "KRAKEN_"))}
    done = subprocess.run([sys.executable, "-m", "nija", "run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    line = done.stdout.strip().splitlines()[-1]
    assert "settings_invalid" in line and "NIJA_ORDER_TIMEOUT_S" in line and not line.startswith("{")


def test_a_state_dir_that_cannot_be_written_stops_the_start_naming_it(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "afile").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIJA_", "KRAKEN_"))}
    env.update(NIJA_STATE_DIR="afile", NIJA_LOG_FORMAT="json")
    done = subprocess.run([sys.executable, "-m", "nija", "run", "--duration", "5"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "startup_failed" in done.stdout and "NIJA_STATE_DIR=afile must be a directory" in done.stdout


def test_a_line_of_dot_env_that_cannot_be_read_is_a_problem_to_fix(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("KRAKEN_TIER=pro\nKRAKEN_MASTER_API_SECRET hunter2\n# a comment\n")
    monkeypatch.delenv("KRAKEN_TIER", raising=False)  # what load_dotenv sets goes again after the test
    with pytest.raises(SettingsError) as caught:
        load_settings(dotenv_path=tmp_path / ".env")
    assert caught.value.problems == [
        f"{tmp_path / '.env'} line 2 cannot be read: write it as NAME=value, or start it with # to keep it as a "
        "comment"]  # never the line itself: it may hold a secret


def test_misspelt_variables_and_plain_text_to_another_host_are_warned_with_the_likely_fix():
    settings = load_settings({
        "KRAKEN_MASTER_KEY": "k", "KRAKEN_API_SECRET": "s", "NIJA_STATEDIR": "/tmp/s", "NIJA_SOMETHING": "1",
        "KRAKEN_USER_BOB_API_KEY": "k", "KRAKEN_USER_BOB_API_SECRET": "c2VjcmV0", "NIJA_LOG_LEVEL": "info",
        "KRAKEN_API_URL": "http://10.0.0.5:8517", "KRAKEN_WS_AUTH_URL": "ws://localhost:8517/v2", "PATH": "/bin",
    }, dotenv_path=None)
    assert settings.warnings == (
        "KRAKEN_API_SECRET is not a variable NIJA reads: did you mean KRAKEN_MASTER_API_SECRET?",
        "KRAKEN_MASTER_KEY is not a variable NIJA reads: did you mean KRAKEN_MASTER_API_KEY?",
        "NIJA_SOMETHING is not a variable NIJA reads: fix its spelling, or remove it if it is another tool's",
        "NIJA_STATEDIR is not a variable NIJA reads: did you mean NIJA_STATE_DIR?",
        "KRAKEN_API_URL sends API keys, signed calls and balances unencrypted to 10.0.0.5: use https:// unless that "
        "network is yours alone",
    )
    assert "c2VjcmV0" not in " ".join(settings.warnings)
    for local in ("http://127.0.0.1:9", "http://localhost.:9", "http://[::1]:9", "http://[::ffff:127.0.0.1]:9",
                  "http://0.0.0.0:9"):
        assert load_settings({"KRAKEN_API_URL": local}, dotenv_path=None).warnings == (), local


def test_an_endpoint_given_for_the_base_url_is_refused():
    with pytest.raises(SettingsError) as caught:
        load_settings({"KRAKEN_API_URL": "https://api.kraken.com/0/public"}, dotenv_path=None)
    assert "KRAKEN_API_URL='https://api.kraken.com/0/public' names an endpoint: give the base URL alone" in str(
        caught.value)
