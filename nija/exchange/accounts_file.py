"""`nija sim --accounts FILE`: the accounts file, validated whole before anything is created.

The file holds a list of accounts, an object `{"accounts": [...]}`, or an object name → account (or name → USD
amount). Each account is `{name, balances?, tier?, nonce_window?, permissions?, api_key?, api_secret?}`. Every
mistake in the file becomes one `SimFileError` line naming the file, the account (index and name), the field
and the fix, so one run shows everything to correct.
"""

from __future__ import annotations

import binascii
import base64
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..kraken.limits import TIERS, Tier
from ..validation import plain_fix
from .engine import PERMISSIONS, Account, Exchange
from .pairs import ASSETS

__all__ = ["AccountSpec", "SimFileError", "accounts_from_file", "check_account_name", "asset_hint"]

#: The follower-name rule of `nija.accounts`: the upper-cased name goes into KRAKEN_USER_<NAME>_API_KEY.
NAME_RULE = re.compile(r"^[A-Za-z0-9_]{1,40}$")
_TIER_FIELDS = ("rest_max", "rest_decay_per_s", "trading_max", "trading_decay_per_s", "max_open_orders_per_pair")
_ASSET_NAMES = {a.id for a in ASSETS.values()} | {a.altname for a in ASSETS.values()}


class SimFileError(ValueError):
    """Everything wrong with one file, one line per problem (`str()` joins them)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def check_account_name(value: object) -> str:
    if not isinstance(value, str) or not NAME_RULE.match(value):
        raise ValueError("use 1-40 letters, digits or _ (it names KRAKEN_USER_<NAME>_API_KEY)")
    return value


def asset_hint() -> str:
    return ", ".join(sorted(a.id for a in ASSETS.values()))


Amount = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


def _known_asset(value: str) -> str:
    if value not in _ASSET_NAMES:
        raise ValueError(f"unknown asset {value!r}: use one of {asset_hint()}")
    return value


Asset = Annotated[str, AfterValidator(_known_asset)]


class AccountSpec(BaseModel):
    """One account of the file; only `name` is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    balances: dict[Asset, Amount] = Field(default_factory=dict)
    tier: str | Tier = "starter"
    nonce_window: Annotated[int, Field(ge=0, strict=True)] = 0
    permissions: tuple[str, ...] = PERMISSIONS
    api_key: str | None = None
    api_secret: str | None = None

    @field_validator("name", mode="plain")
    @classmethod
    def _name(cls, value: Any) -> str:
        return check_account_name(value)

    @field_validator("balances", mode="before")
    @classmethod
    def _amounts_exactly(cls, value: Any) -> Any:
        # JSON numbers arrive as floats; go through str so 60.53 stays exactly 60.53.
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, float) else v for k, v in value.items()}
        return value

    @field_validator("tier", mode="plain")
    @classmethod
    def _tier(cls, value: Any) -> str | Tier:
        if isinstance(value, str) and value.strip().lower() in TIERS:
            return value.strip().lower()
        if isinstance(value, dict):
            return _custom_tier(value)
        raise ValueError(f"use one of {', '.join(TIERS)} or an object with {', '.join(_TIER_FIELDS)} "
                         f"(got {value!r})")

    @field_validator("permissions", mode="plain")
    @classmethod
    def _permissions(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or any(p not in PERMISSIONS for p in value):
            raise ValueError(f"use a list drawn from {', '.join(map(json.dumps, PERMISSIONS))}, "
                             f"e.g. {json.dumps(list(PERMISSIONS))} (got {value!r})")
        return tuple(value)

    @field_validator("api_key", mode="plain")
    @classmethod
    def _api_key(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and value.strip() and value == value.strip()):
            return value
        raise ValueError("use a non-empty string without spaces, or leave it out to generate one")

    @field_validator("api_secret", mode="plain")
    @classmethod
    def _api_secret(cls, value: Any) -> str | None:
        if value is None:
            return None
        try:
            if isinstance(value, str) and base64.b64decode(value, validate=True):
                return value
        except (binascii.Error, ValueError):
            pass
        # Never echo the secret itself.
        raise ValueError("is not valid base64 (Kraken's secret format): copy it again, or leave it out to "
                         "generate one")

    def create_in(self, ex: Exchange) -> Account:
        return ex.create_account(self.name, dict(self.balances), tier=self.tier, nonce_window=self.nonce_window,
                                 permissions=self.permissions, api_key=self.api_key, api_secret=self.api_secret)


def _custom_tier(raw: dict) -> Tier:
    missing = [f for f in _TIER_FIELDS if f not in raw]
    unknown = sorted(set(raw) - set(_TIER_FIELDS) - {"name"})
    if missing or unknown:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise ValueError(f"a custom tier needs exactly {', '.join(_TIER_FIELDS)} ({'; '.join(parts)})")
    values = {}
    for f in _TIER_FIELDS:
        v = raw[f]
        whole = f == "max_open_orders_per_pair"
        positive = whole or f.endswith("_max")  # a zero ceiling would refuse every call
        number = not isinstance(v, bool) and isinstance(v, int if whole else (int, float)) and v == v
        if not number or v < 0 or (positive and v == 0):
            kind = "a whole number > 0" if whole else ("a number > 0" if positive else "a number >= 0")
            raise ValueError(f"custom tier field {f} must be {kind} (got {v!r})")
        values[f] = v
    name = raw.get("name", "custom")
    if not isinstance(name, str):
        raise ValueError(f"custom tier name must be a string (got {name!r})")
    return Tier(name=name, **values)


def _label(index: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"account #{index + 1}" + (f" {name!r}" if isinstance(name, str) and name else "")


def _message(error: dict) -> str:
    kind, loc = error["type"], error["loc"]
    if loc and loc[0] == "balances":
        if len(loc) == 1 and kind == "dict_type":
            return f'must be an object of asset → amount, e.g. {{"ZUSD": "100"}} (got {error["input"]!r})'
        if len(loc) == 3 and loc[2] == "[key]":
            return str(error["msg"]).removeprefix("Value error, ")
        if len(loc) > 1:
            return f'must be an amount >= 0 like "100.50" (got {error["input"]!r})'
    if loc and loc[0] == "nonce_window":
        return f"must be a whole number >= 0, e.g. 0 (got {error['input']!r})"
    return plain_fix(error, AccountSpec)


def specs_from_items(items: list[Any], where: str) -> tuple[list[AccountSpec], list[str]]:
    """Each item validated, then the file as a whole (names unique case-insensitively, keys unique)."""
    specs: list[AccountSpec] = []
    problems: list[str] = []
    seen_names: dict[str, str] = {}
    seen_keys: dict[str, str] = {}
    for i, item in enumerate(items):
        label = _label(i, item)
        if not isinstance(item, dict):
            problems.append(f"{where}: {label}: must be an object like {{\"name\": \"alice\", "
                            f"\"balances\": {{\"ZUSD\": \"100\"}}}} (got {item!r})")
            continue
        try:
            spec = AccountSpec.model_validate(item)
        except ValidationError as exc:
            reported: set[tuple] = set()
            for error in exc.errors():
                loc = error["loc"]
                if loc in reported:
                    continue
                reported.add(loc)
                field = ".".join(str(p) for p in loc if p != "[key]") or "(account)"
                problems.append(f"{where}: {label}: {field}: {_message(error)}")
            continue
        upper = spec.name.upper()
        if upper in seen_names:
            problems.append(f"{where}: {label}: name: {spec.name!r} is already used by {seen_names[upper]} "
                            "(names are compared upper-cased, as in KRAKEN_USER_<NAME>_*): give each account "
                            "its own name")
            continue
        seen_names[upper] = label
        if spec.api_key is not None:
            if spec.api_key in seen_keys:
                problems.append(f"{where}: {label}: api_key: already used by {seen_keys[spec.api_key]}: give each "
                                "account its own key, or leave it out to generate one")
                continue
            seen_keys[spec.api_key] = label
        specs.append(spec)
    return specs, problems


def read_json(path: Path, what: str) -> Any:
    """The parsed file, or an SimFileError naming the file, what went wrong and the fix."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SimFileError([f"{path}: cannot read the {what} ({reason}): check the path"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SimFileError([f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}): "
                                 f"fix the {what}"]) from None


def accounts_from_file(path: str | Path) -> list[AccountSpec]:
    """Every account of the file validated; SimFileError lists every problem when any is wrong."""
    path = Path(path)
    raw = read_json(path, "accounts file")
    if isinstance(raw, dict) and isinstance(raw.get("accounts"), list):
        extra = sorted(set(raw) - {"accounts"})
        if extra:
            raise SimFileError([f"{path}: unknown top-level field {', '.join(map(repr, extra))}: the file holds "
                                     'only "accounts" (or is a list of accounts)'])
        raw = raw["accounts"]
    elif isinstance(raw, dict):
        raw = [{"name": k, **(v if isinstance(v, dict) else {"balances": {"ZUSD": v}})} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise SimFileError([f"{path}: must hold a list of accounts, e.g. "
                                 f'[{{"name": "master", "balances": {{"ZUSD": "100"}}}}] (got {type(raw).__name__})'])
    if not raw:
        raise SimFileError([f"{path}: holds no accounts: add at least one, e.g. "
                                 '{"name": "master", "balances": {"ZUSD": "100"}}'])
    specs, problems = specs_from_items(raw, str(path))
    if problems:
        raise SimFileError(problems)
    return specs
