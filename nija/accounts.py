"""Follower accounts: one JSON file per follower in the users directory, credentials from the environment.

A file like `config/users/alice.json` holds `{"name": "alice"}` plus optional fields (see `FollowerConfig`); the
keys come from `KRAKEN_USER_ALICE_API_KEY` / `KRAKEN_USER_ALICE_API_SECRET`. A bad file, unknown field, wrong type
or missing credential gives one `ConfigProblem` line naming the file, the field and the fix; that follower is left
out and every other one loads. Two accounts sharing one API key is a configuration error for each of them (one key
used by two accounts would break its nonce sequence and its rate counter).

`check_main` is `nija check`: it validates the settings and every follower file and prints a readable report.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from nija import event_loop
from nija.lifecycle import state_dir_problem
from nija.logs import setting_problems
from nija.settings import Settings, SettingsError, load_settings, secret_problem
from nija.validation import plain_fix

__all__ = [
    "FollowerConfig",
    "Follower",
    "ConfigProblem",
    "FollowerLoad",
    "credential_names",
    "load_followers",
    "check_main",
]

_NAME = re.compile(r"^[A-Za-z0-9_]{1,40}$")


class FollowerConfig(BaseModel):
    """One follower's file. Only `name` is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: letters, digits and `_`; upper-cased it names the credential variables
    name: str
    #: false: the follower is loaded but copies nothing
    enabled: bool = True
    #: false: the follower trades on its own and is not a copy target
    copy_from_master: bool = True
    #: scales the master's notional after the equity ratio
    risk_multiplier: Decimal = Field(default=Decimal("1.0"), gt=0, le=10)
    #: largest entry as a fraction of the follower's equity (MAX_USER_RISK)
    max_risk_per_trade: Decimal = Field(default=Decimal("0.10"), gt=0, le=1)
    #: pairs or assets never copied, e.g. ["XBTUSD", "DOGE"]
    disabled_symbols: tuple[str, ...] = ()
    #: fraction of the day's starting equity; once lost, no new entries until the next UTC day (exits still copied)
    max_daily_loss: Decimal | None = Field(default=None, gt=0, le=1)
    #: caps entries as an IOC limit this fraction above the master's price; exits are never capped
    entry_slippage: Decimal | None = Field(default=None, ge=0, lt=Decimal("0.5"))
    #: `ignore`: a follower that starts while the master holds a position does not buy in late
    late_join: Literal["ignore"] = "ignore"

    @field_validator("name")
    @classmethod
    def _name_is_usable_in_env(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use 1-40 letters, digits or _ (it names KRAKEN_USER_<NAME>_API_KEY)")
        return value

    @field_validator("disabled_symbols")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        symbols = tuple(symbol.strip().upper() for symbol in value)
        if "" in symbols:
            raise ValueError("an empty symbol blocks nothing: remove it, or name a pair or asset such as \"DOGE\"")
        return symbols

    @field_validator("risk_multiplier", "max_risk_per_trade", "max_daily_loss", "entry_slippage", mode="before")
    @classmethod
    def _no_float_rounding(cls, value: object) -> object:
        # JSON numbers arrive as floats; go through str so 0.1 stays exactly 0.1.
        return str(value) if isinstance(value, float) else value


@dataclass(frozen=True, slots=True)
class Follower:
    """A follower ready to trade: its validated config and its credentials."""

    config: FollowerConfig
    api_key: SecretStr = field(repr=False)
    api_secret: SecretStr = field(repr=False)
    source: Path | None = None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with one follower file, with the fix."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


@dataclass(slots=True)
class FollowerLoad:
    followers: list[Follower]
    problems: list[ConfigProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


def credential_names(name: str) -> tuple[str, str]:
    """The environment variables holding a follower's key and secret."""
    upper = name.upper()
    return f"KRAKEN_USER_{upper}_API_KEY", f"KRAKEN_USER_{upper}_API_SECRET"


#: what Kraken's API key page must allow, in its own words
FOLLOWER_KEY_PERMISSIONS = "query funds, query open and closed orders and trades, and create and modify orders"
MASTER_KEY_PERMISSIONS = ("query funds, query open and closed orders and trades, and use the WebSocket interface "
                          "(which copies each master trade at once)")


def refused_key_fix(error: str, key_var: str, secret_var: str, permissions: str) -> str:
    """What to do about a key Kraken refused, told by Kraken's error string in `error`."""
    if "EAPI:Invalid key" in error:
        return f"Kraken knows no such key: copy it again into {key_var}, and its secret into {secret_var}"
    if "EAPI:Invalid signature" in error:
        return f"the secret does not belong to the key: copy the secret shown with this key into {secret_var}"
    if "Permission denied" in error or "Invalid permissions" in error:
        return f"give the key the permissions to {permissions} on Kraken's API key page"
    return f"check {key_var} / {secret_var}, and give the key the permissions to {permissions}"


def _problem_from_validation(file: str, error: ValidationError) -> ConfigProblem:
    """One line for the file: its first problem, then every other one, so that all are fixed in one go."""
    found = [(".".join(str(part) for part in e["loc"]) or "(file)", _fix_for(e)) for e in error.errors()]
    (where, message), others = found[0], found[1:]
    if others:
        message += " (also " + "; ".join(f"{field}: {fix}" for field, fix in others) + ")"
    return ConfigProblem(file, where, message)


def _fix_for(error: dict) -> str:
    if error["type"] in ("tuple_type", "list_type"):
        return f"use a list (got {error.get('input')!r}), e.g. [\"DOGE\", \"XRPUSD\"]"
    return plain_fix(error, FollowerConfig)


class _RepeatedField(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose fields each appear once: `json` would silently keep the last of a repeated one."""
    data: dict[str, object] = {}
    for name, value in pairs:
        if name in data:
            raise _RepeatedField(name)
        data[name] = value
    return data


def load_followers(
    users_dir: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    master_api_key: SecretStr | None = None,
) -> FollowerLoad:
    """Every `*.json` in `users_dir` (sorted by file name) validated; the good ones with credentials.

    `master_api_key` lets a follower that reuses the master's key be refused.
    """
    env = os.environ if environ is None else environ
    directory = Path(users_dir)
    problems: list[ConfigProblem] = []
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        problems.append(ConfigProblem(str(directory), "(directory)",
                                      f"{what}: create it or set NIJA_USERS_DIR to the follower directory"))
        return FollowerLoad([], problems)

    candidates: list[Follower] = []
    seen_names: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name.endswith(".example.json"):
            continue  # templates shipped with NIJA, not the operator's followers
        file = str(path)
        try:
            # utf-8-sig: an editor's byte order mark is no syntax error
            data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_object_without_repeats)
        except _RepeatedField as exc:
            problems.append(ConfigProblem(file, exc.field, "appears twice in the file, and only one can count: "
                                                           "keep the one you mean"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(ConfigProblem(file, "(file)", f"cannot be read ({exc.__class__.__name__}): fix its "
                                                          "permissions or encoding (UTF-8)"))
            continue
        except json.JSONDecodeError as exc:
            problems.append(ConfigProblem(file, f"line {exc.lineno}",
                                          f"is not valid JSON ({exc.msg}): fix the syntax"))
            continue
        except RecursionError:
            problems.append(ConfigProblem(file, "(file)", "nests too deep to read: a follower file is one flat "
                                                          "object like {\"name\": \"alice\"}"))
            continue
        if not isinstance(data, dict):
            problems.append(ConfigProblem(file, "(file)", "must hold one JSON object like {\"name\": \"alice\"}"))
            continue
        try:
            config = FollowerConfig.model_validate(data)
        except ValidationError as exc:
            problems.append(_problem_from_validation(file, exc))
            continue
        lowered = config.name.lower()
        if lowered in seen_names:
            problems.append(ConfigProblem(file, "name", f"{config.name!r} is already used by {seen_names[lowered]}: "
                                                        "give each follower its own name"))
            continue
        seen_names[lowered] = file
        key_var, secret_var = credential_names(config.name)
        key, secret = (env.get(key_var) or "").strip(), (env.get(secret_var) or "").strip()
        missing = [var for var, value in ((key_var, key), (secret_var, secret)) if not value]
        if missing:
            them = "it" if len(missing) == 1 else "them"
            problems.append(ConfigProblem(file, "credentials", f"{' and '.join(missing)} not set: set {them} in "
                                                               "the environment or .env"))
            continue
        problem = secret_problem(secret_var, secret)
        if problem is not None:
            problems.append(ConfigProblem(file, "credentials", problem))
            continue
        candidates.append(Follower(config, SecretStr(key), SecretStr(secret), path))

    # Keys shared between accounts: refuse every account involved.
    by_key: dict[str, list[Follower]] = {}
    for follower in candidates:
        by_key.setdefault(follower.api_key.get_secret_value(), []).append(follower)
    master_key = master_api_key.get_secret_value() if master_api_key is not None else None
    followers: list[Follower] = []
    for follower in candidates:
        sharing = by_key[follower.api_key.get_secret_value()]
        key_var = credential_names(follower.name)[0]
        if follower.api_key.get_secret_value() == master_key:
            problems.append(ConfigProblem(str(follower.source), "credentials",
                                          f"{key_var} is the master's key: give the follower its own API key"))
        elif len(sharing) > 1:
            others = ", ".join(other.name for other in sharing if other is not follower)
            problems.append(ConfigProblem(str(follower.source), "credentials",
                                          f"{key_var} is also the key of {others}: give each account its own API key"))
        else:
            followers.append(follower)
    return FollowerLoad(followers, problems)


_CHECK_USAGE = """usage: nija check [--users-dir DIR]

Validates the settings (environment and .env) and every follower file, prints a report and exits 0 when all is
well, 1 otherwise. Nothing is sent to Kraken: disabled_symbols are checked against the pair names the last
`nija run` saved in the state directory."""


def _unusable_state_dir(state_dir: Path) -> str | None:
    """Why NIJA could not keep its state in `state_dir`, or None; a missing one is not created (a run will)."""
    existing = state_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing):  # the run's first write there: can it be made?
            pass
    except OSError as exc:  # named by the directory, not by the probe's temporary file
        return state_dir_problem(OSError(exc.errno, exc.strerror, str(existing)), state_dir)
    return None


def _check_disabled_symbols(followers: list[Follower], settings: Settings, out) -> None:
    """Entries that block nothing (a typo), told from the pair names the last `nija run` saved: a warning, as at
    start, since the file is still used."""
    if not settings.has_master_keys or not any(f.config.disabled_symbols for f in followers):
        return  # paper mode uses no follower files
    from nija import pair_symbols  # loads the Kraken client package: only when there is something to check

    saved = pair_symbols.load(settings.state_dir)
    if saved is None or saved.source != settings.kraken_api_url:
        found = "none saved there yet" if saved is None else f"the names saved there are {saved.source}'s"
        print(f"  (disabled_symbols are checked against {settings.kraken_api_url}'s pairs when nija run starts, "
              f"which saves them in {settings.state_dir} for this check: {found})", file=out)
        return
    for follower in followers:
        for symbol in saved.unknown(follower.config.disabled_symbols):
            print(f"  ! {follower.source or follower.config.name}: disabled_symbols: "
                  f"{pair_symbols.unknown_symbol_problem(symbol)} (pairs as of {saved.saved_at})", file=out)


def check_main(argv: list[str], *, environ: Mapping[str, str] | None = None, out=None) -> int:
    """`nija check`: a readable report of the settings and follower files; non-zero exit when something is wrong."""
    out = out or sys.stdout
    args = list(argv)
    users_dir: str | None = None
    while args:
        arg = args.pop(0)
        if arg in {"-h", "--help"}:
            print(_CHECK_USAGE, file=out)
            return 0
        if arg == "--users-dir" and args:
            users_dir = args.pop(0)
        elif arg.startswith("--users-dir="):
            users_dir = arg.split("=", 1)[1]
        else:
            print(f"nija check: unexpected argument {arg!r}\n\n{_CHECK_USAGE}", file=out)
            return 2

    failed = False
    try:
        settings = load_settings(environ, dotenv_path=".env" if environ is None else None)
    except SettingsError as exc:
        print("settings: FAILED", file=out)
        for problem in exc.problems:
            print(f"  ✗ {problem}", file=out)
        failed = True
        settings = Settings()  # only to find the follower files: nothing above is reported as configured
    else:
        # What a run would only find at start (the state directory) or carry on past with a default (the logs).
        problems = setting_problems(environ) + event_loop.setting_problems(environ)
        unusable = _unusable_state_dir(settings.state_dir)
        if unusable:
            problems.append(unusable)
        print("settings: FAILED" if problems else "settings: ok", file=out)
        for problem in problems:
            print(f"  ✗ {problem}", file=out)
        for warning in settings.warnings:
            print(f"  ! {warning}", file=out)
        failed = bool(problems)
        print(f"  mode             {settings.copy_trading_mode.value}", file=out)
        print(f"  api url          {settings.kraken_api_url if settings.has_master_keys else 'the embedded exchange'}",
              file=out)
        if settings.has_master_keys:
            ws_url = settings.ws_auth_url_for(settings.kraken_api_url)
            print(f"  executions url   {ws_url or 'off (the master is polled only)'}", file=out)
        print(f"  master keys      {'set' if settings.has_master_keys else 'not set (paper mode)'}", file=out)
        print(f"  state dir        {settings.state_dir}", file=out)
        print(f"  copy concurrency {settings.copy_concurrency}", file=out)

    directory = Path(users_dir) if users_dir else settings.users_dir
    load = load_followers(directory, environ, master_api_key=settings.master_api_key)
    print(f"followers in {directory}: {len(load.followers)} ok, {len(load.problems)} with problems", file=out)
    for follower in load.followers:
        c = follower.config
        state = "enabled" if c.enabled and c.copy_from_master else "not copying"
        print(f"  ✓ {c.name:<16} {state}, risk ×{c.risk_multiplier}, max {float(c.max_risk_per_trade) * 100:g} % of "
              "equity", file=out)
    for problem in load.problems:
        print(f"  ✗ {problem}", file=out)
    if load.problems:
        failed = True
    _check_disabled_symbols(load.followers, settings, out)
    if settings.copies and not load.followers and not load.problems:
        print("  (no follower files: nothing will be copied)", file=out)
    print("check: FAILED" if failed else "check: ok", file=out)
    return 1 if failed else 0
