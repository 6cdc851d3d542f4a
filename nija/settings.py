"""NIJA's process-wide settings: read once from the environment (and `.env`), validated, frozen.

Every knob lives here with its default and meaning. A bad value raises `SettingsError`, whose message has one line
per problem naming the variable and the fix, so an operator can correct all of them in one go.

    variable                      default                  meaning
    NIJA_STATE_DIR                state/                   SQLite store, nonce marks and other state files
    NIJA_USERS_DIR                config/users             one JSON file per follower (see nija.accounts)
    COPY_TRADING_MODE             MASTER_FOLLOW            MASTER_FOLLOW mirrors the master; INDEPENDENT copies nothing
    KRAKEN_API_URL                https://api.kraken.com   base URL (the embedded exchange's URL in paper mode)
    KRAKEN_WS_AUTH_URL            (goes with the API URL)  WebSocket v2 URL where the master's executions are
                                                           followed (wss://ws-auth.kraken.com/v2 for Kraken, the
                                                           same host's /v2 otherwise); `off` polls only
    KRAKEN_MASTER_API_KEY         (none)                   the master account's API key
    KRAKEN_MASTER_API_SECRET      (none)                   its secret (base64, as Kraken shows it)
    KRAKEN_TIER                   starter                  verification tier of the keys: starter|intermediate|pro
    NIJA_COPY_CONCURRENCY         500                      follower orders in flight at once, across all followers
    NIJA_TAKER_FEE_RATE           0.004                    fee fraction reserved when sizing a follower's buy
    NIJA_BALANCE_REFRESH_S        (rate profile)           seconds between follower balance refreshes; unset = the
                                                           master's rate profile decides (60/10/5 s, APEX_V71.md)
    NIJA_ORDER_TIMEOUT_S          10                       seconds one follower order may take before it counts as
                                                           failed (the order itself is settled by reconciliation)

Follower credentials (`KRAKEN_USER_<NAME>_API_KEY` / `_API_SECRET`) are read by nija.accounts, not here.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from nija.kraken.auth import decode_secret
from nija.kraken.client import DEFAULT_BASE_URL
from nija.kraken.limits import TIERS
from nija.kraken.ws import ws_auth_url

__all__ = ["CopyTradingMode", "Settings", "SettingsError", "load_settings", "secret_is_valid"]


class CopyTradingMode(str, Enum):
    MASTER_FOLLOW = "MASTER_FOLLOW"
    INDEPENDENT = "INDEPENDENT"


class SettingsError(ValueError):
    """One or more environment variables are wrong; `.problems` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated settings. Secrets are SecretStr: their repr shows stars, never the value."""

    state_dir: Path = Path("state")
    users_dir: Path = Path("config/users")
    copy_trading_mode: CopyTradingMode = CopyTradingMode.MASTER_FOLLOW
    kraken_api_url: str = DEFAULT_BASE_URL
    kraken_ws_auth_url: str | None = None  # None: the one that goes with kraken_api_url
    follows_executions: bool = True
    master_api_key: SecretStr | None = field(default=None, repr=False)
    master_api_secret: SecretStr | None = field(default=None, repr=False)
    kraken_tier: str = "starter"
    copy_concurrency: int = 500
    taker_fee_rate: Decimal = Decimal("0.004")
    balance_refresh_s: float | None = None
    order_timeout_s: float = 10.0
    #: what NIJA runs with but the operator most likely did not mean (see `setting_warnings`)
    warnings: tuple[str, ...] = ()

    @property
    def has_master_keys(self) -> bool:
        return self.master_api_key is not None and self.master_api_secret is not None

    @property
    def copies(self) -> bool:
        """True when followers mirror the master (COPY_TRADING_MODE=MASTER_FOLLOW)."""
        return self.copy_trading_mode is CopyTradingMode.MASTER_FOLLOW

    def ws_auth_url_for(self, api_url: str) -> str | None:
        """Where the master's executions are followed when its REST calls go to `api_url` (the embedded exchange's
        in paper mode), or None to poll only (KRAKEN_WS_AUTH_URL=off)."""
        if not self.follows_executions:
            return None
        return self.kraken_ws_auth_url or ws_auth_url(api_url)

    @property
    def store_path(self) -> Path:
        return self.state_dir / "nija.sqlite3"


def secret_is_valid(secret_b64: str) -> bool:
    """A Kraken API secret decodes as base64 (checked at load time, so a bad one names its variable)."""
    try:
        decode_secret(secret_b64)
    except ValueError:
        return False
    return True


def secret_problem(variable: str, secret: str) -> str | None:
    """Why the Kraken API secret in `variable` cannot be used, or None; never shows the value."""
    if secret_is_valid(secret):
        return None
    if secret[:1] in ("'", '"') or secret[-1:] in ("'", '"'):
        # .env drops matching quotes; Railway, Render and systemd keep them as part of the value.
        return f"{variable} starts or ends with a quote, which is not part of a Kraken secret: remove the quotes"
    return f"{variable} is not valid base64: copy the private key again from Kraken's API key page"


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _url_problem(name: str, raw: str, schemes: tuple[str, ...], example: str) -> str | None:
    try:
        url = urlsplit(raw)
        has_host = bool(url.hostname)
    except ValueError:  # e.g. an unclosed [IPv6] bracket
        url, has_host = None, False
    if url is None or url.scheme not in schemes or not has_host:
        shown = raw if "@" not in raw else "…@" + raw.rsplit("@", 1)[1]  # what comes before @ may be a password
        kind = f"an {schemes[0]}(s)" if schemes[0] == "http" else f"a {schemes[0]}(s)"
        return f"{name}={shown!r} is not {kind} URL: set it like {example}"
    if url.username or url.password:
        # It would be shown in log lines; Kraken takes no credentials in the URL anyway.
        return f"{name} carries a user name or password: leave them out, e.g. {example}"
    return None


def _unparsed_dotenv_lines(path: Path) -> list[str]:
    """A line of `.env` that python-dotenv cannot parse is skipped with a mere warning: it may hold a setting the
    operator counts on, so it is a problem to fix."""
    from dotenv.parser import parse_stream

    with path.open(encoding="utf-8", errors="replace") as stream:
        # The line itself is not shown: it may hold a secret.
        return [f"{path} line {binding.original.line} cannot be read: write it as NAME=value, or start it with # "
                "to keep it as a comment" for binding in parse_stream(stream) if binding.error]


def load_settings(environ: Mapping[str, str] | None = None, *, dotenv_path: str | Path | None = ".env") -> Settings:
    """Settings from `environ` (default: os.environ), after loading `dotenv_path` if it exists.

    Values already in the environment win over `.env`. Pass `dotenv_path=None` to skip `.env` (tests do).
    """
    problems: list[str] = []
    if environ is None:
        if dotenv_path is not None and Path(dotenv_path).is_file():
            from dotenv import load_dotenv

            problems += _unparsed_dotenv_lines(Path(dotenv_path))
            load_dotenv(dotenv_path, override=False)
        environ = os.environ
    env = environ
    values: dict[str, object] = {}

    for name, key in (("NIJA_STATE_DIR", "state_dir"), ("NIJA_USERS_DIR", "users_dir")):
        raw = _text(env, name)
        if raw is not None:
            values[key] = Path(raw)

    raw = _text(env, "COPY_TRADING_MODE")
    if raw is not None:
        try:
            values["copy_trading_mode"] = CopyTradingMode(raw.upper())
        except ValueError:
            problems.append(f"COPY_TRADING_MODE={raw!r} is not a mode: set it to MASTER_FOLLOW or INDEPENDENT")

    raw = _text(env, "KRAKEN_API_URL")
    if raw is not None:
        problem = _url_problem("KRAKEN_API_URL", raw, ("http", "https"), "https://api.kraken.com")
        if problem is None and "/0/" in urlsplit(raw).path + "/":
            problem = (f"KRAKEN_API_URL={raw!r} names an endpoint: give the base URL alone, e.g. "
                       "https://api.kraken.com (NIJA adds /0/public/... and /0/private/...)")
        if problem:
            problems.append(problem)
        else:
            values["kraken_api_url"] = raw.rstrip("/")

    raw = _text(env, "KRAKEN_WS_AUTH_URL")
    if raw is not None:
        if raw.lower() == "off":
            values["follows_executions"] = False
        else:
            problem = _url_problem("KRAKEN_WS_AUTH_URL", raw, ("ws", "wss"), "wss://ws-auth.kraken.com/v2, or off")
            if problem:
                problems.append(problem)
            else:
                values["kraken_ws_auth_url"] = raw

    key, secret = _text(env, "KRAKEN_MASTER_API_KEY"), _text(env, "KRAKEN_MASTER_API_SECRET")
    if (key is None) != (secret is None):
        missing = "KRAKEN_MASTER_API_SECRET" if secret is None else "KRAKEN_MASTER_API_KEY"
        problems.append(f"{missing} is not set while its pair is: set both master credentials or neither")
    elif key is not None:
        problem = secret_problem("KRAKEN_MASTER_API_SECRET", secret)
        if problem is None:
            values["master_api_key"], values["master_api_secret"] = SecretStr(key), SecretStr(secret)
        else:
            problems.append(problem)

    raw = _text(env, "KRAKEN_TIER")
    if raw is not None:
        if raw.lower() not in TIERS:
            problems.append(f"KRAKEN_TIER={raw!r} is not a Kraken tier: set it to one of {', '.join(TIERS)}")
        else:
            values["kraken_tier"] = raw.lower()

    raw = _text(env, "NIJA_COPY_CONCURRENCY")
    if raw is not None:
        try:
            limit = int(raw)
            if limit < 1:
                raise ValueError
            values["copy_concurrency"] = limit
        except ValueError:
            problems.append(f"NIJA_COPY_CONCURRENCY={raw!r} must be a whole number ≥ 1, e.g. 500")

    raw = _text(env, "NIJA_TAKER_FEE_RATE")
    if raw is not None:
        try:
            rate = Decimal(raw)
            if not (Decimal(0) <= rate < Decimal("0.1")):
                raise InvalidOperation
            values["taker_fee_rate"] = rate
        except InvalidOperation:
            problems.append(f"NIJA_TAKER_FEE_RATE={raw!r} must be a fraction in [0, 0.1), e.g. 0.004 for 0.40 %")

    # Bounds a trading daemon can live with: refreshes faster than 1 s would spend the followers' rate budget on
    # balance reads, and an order that may take hours to count as failed holds its follower's pair that long.
    for name, key, low_s, high_s, example in (("NIJA_BALANCE_REFRESH_S", "balance_refresh_s", 1, 3600, "10"),
                                              ("NIJA_ORDER_TIMEOUT_S", "order_timeout_s", 1, 300, "10")):
        raw = _text(env, name)
        if raw is None:
            continue
        try:
            seconds = float(raw)
            if not low_s <= seconds <= high_s:  # also refuses nan and inf
                raise ValueError
            values[key] = seconds
        except ValueError:
            problems.append(f"{name}={raw!r} must be a number of seconds from {low_s} to {high_s}, e.g. {example}")

    if problems:
        raise SettingsError(problems)
    return Settings(**values, warnings=tuple(setting_warnings(env)))


#: every variable NIJA reads (besides the followers' KRAKEN_USER_<NAME>_API_KEY / _API_SECRET)
KNOWN_VARIABLES = ("NIJA_STATE_DIR", "NIJA_USERS_DIR", "COPY_TRADING_MODE", "KRAKEN_API_URL", "KRAKEN_WS_AUTH_URL",
                   "KRAKEN_MASTER_API_KEY", "KRAKEN_MASTER_API_SECRET", "KRAKEN_TIER", "NIJA_COPY_CONCURRENCY",
                   "NIJA_TAKER_FEE_RATE", "NIJA_BALANCE_REFRESH_S", "NIJA_ORDER_TIMEOUT_S", "NIJA_LOG_LEVEL",
                   "NIJA_LOG_FORMAT", "NIJA_EVENT_LOOP", "NIJA_SIM_ADMIN_TOKEN")
_FOLLOWER_CREDENTIAL = re.compile(r"KRAKEN_USER_.+_API_(KEY|SECRET)")


def setting_warnings(env: Mapping[str, str]) -> list[str]:
    """What NIJA runs with but an operator most likely did not mean: a NIJA_/KRAKEN_ variable it does not read (a
    misspelt one leaves its setting at the default, or the run in paper mode), and keys sent unencrypted to a host
    that is not this one."""
    warnings = []
    for name in sorted(env):
        if (name.startswith(("NIJA_", "KRAKEN_")) and name not in KNOWN_VARIABLES
                and not _FOLLOWER_CREDENTIAL.fullmatch(name)):
            # A misspelt key is most likely meant as a key: look among the variables of its kind first.
            same_kind = [known for known in KNOWN_VARIABLES if known.rsplit("_", 1)[-1] == name.rsplit("_", 1)[-1]]
            near = difflib.get_close_matches(name, same_kind, n=1, cutoff=0.6) or difflib.get_close_matches(
                name, KNOWN_VARIABLES, n=1, cutoff=0.75)
            warnings.append(f"{name} is not a variable NIJA reads: " + (
                f"did you mean {near[0]}?" if near else "fix its spelling, or remove it if it is another tool's"))
    for name in ("KRAKEN_API_URL", "KRAKEN_WS_AUTH_URL"):
        raw = _text(env, name)
        url = urlsplit(raw) if raw else None
        host = (url.hostname or "") if url else ""
        if url and url.scheme in ("http", "ws") and host and not _is_loopback(host):
            warnings.append(f"{name} sends API keys, signed calls and balances unencrypted to {host}: use "
                            f"{url.scheme}s:// unless that network is yours alone")
    return warnings


def _is_loopback(host: str) -> bool:
    """Whether `host` is this machine: localhost, a loopback address, or 0.0.0.0 (where `nija sim --host` listens)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or (mapped is not None and mapped.is_loopback)
