"""`nija balances`: every account's USD cash and equity, read now from Kraken, then exit.

    nija balances

The master (KRAKEN_MASTER_API_KEY/_SECRET) and every follower file's account are read at once. Like the daemon it
takes each key's lock in the state directory first: while a daemon runs on these keys it refuses (two processes on
one key would break its nonce sequence); the daemon's own `balance_snapshot` and `heartbeat` lines are the place to
look then. An account that cannot be read is shown as unknown with the reason, never as 0; the exit code is then 1.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

from nija import event_loop, logs
from nija.accounts import load_followers
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.errors import KrakenError
from nija.kraken.nonce import NonceCoordinator
from nija.lifecycle import AlreadyRunningError, key_locks, state_dir_problem
from nija.settings import Settings, SettingsError, load_settings

__all__ = ["AccountBalance", "read_balances", "main"]

USAGE = """usage: nija balances

Reads the master's and every follower's USD cash and equity from Kraken and prints them. Exit code 1 when an
account cannot be read, 2 when the settings are wrong or no master keys are set."""


@dataclass(frozen=True, slots=True)
class AccountBalance:
    name: str
    role: str
    cash_usd: Decimal | None = None
    equity_usd: Decimal | None = None
    problem: str | None = None


def _lock_key(locks: ExitStack, state_dir: Path, api_key: SecretStr) -> None:
    """Every lock of one key, or none of them (AlreadyRunningError)."""
    with ExitStack() as taken:
        for lock in key_locks(state_dir, api_key.get_secret_value(), holder="nija balances"):
            taken.enter_context(lock)
        locks.enter_context(taken.pop_all())


async def read_balances(settings: Settings, environ: Mapping[str, str] | None = None) -> list[AccountBalance]:
    """The master first, then the followers in file order; unreadable accounts carry their problem.

    Raises AlreadyRunningError when a daemon holds the master's key."""
    assert settings.master_api_key is not None and settings.master_api_secret is not None
    loaded = load_followers(settings.users_dir, environ, master_api_key=settings.master_api_key)
    rows: list[AccountBalance] = []
    with ExitStack() as locks:
        _lock_key(locks, settings.state_dir, settings.master_api_key)
        accounts = [("master", "master", settings.master_api_key, settings.master_api_secret)]
        for follower in loaded.followers:
            try:  # taken at once or not at all: another `nija balances` would wait for this one
                _lock_key(locks, settings.state_dir, follower.api_key)
            except AlreadyRunningError:
                rows.append(AccountBalance(follower.name, "follower", problem="its key is in use by a running daemon"))
                continue
            accounts.append((follower.name, "follower", follower.api_key, follower.api_secret))
        async with KrakenContext(nonces=NonceCoordinator.for_state_dir(settings.state_dir)) as context:
            read = await asyncio.gather(*(
                _read(KrakenClient(key.get_secret_value(), secret.get_secret_value(),
                                   base_url=settings.kraken_api_url, tier=settings.kraken_tier, context=context,
                                   name=name, read_attempts=2), name, role)
                for name, role, key, secret in accounts))
    return list(read) + rows + [AccountBalance(str(p.file), "follower", problem=f"{p.field}: {p.message}")
                                for p in loaded.problems]


async def _read(client: KrakenClient, name: str, role: str) -> AccountBalance:
    try:
        cash = (await client.balance()).get("ZUSD", Decimal(0))
        equity = (await client.trade_balance()).equivalent_balance
    except KrakenError as exc:
        return AccountBalance(name, role, problem=f"{type(exc).__name__}: {exc}")
    return AccountBalance(name, role, cash, equity)


def main(argv: list[str], *, environ: Mapping[str, str] | None = None, out=None) -> int:
    out = out or sys.stdout
    if argv:
        print(USAGE, file=out)
        return 0 if argv[0] in {"-h", "--help"} else 2
    try:
        settings = load_settings(environ, dotenv_path=".env" if environ is None else None)
    except SettingsError as exc:
        print(str(exc), file=out)
        return 2
    logs.configure(to_stderr=True)  # the table on stdout, retries and warnings apart from it
    if not settings.has_master_keys:
        print("no master keys: set KRAKEN_MASTER_API_KEY and KRAKEN_MASTER_API_SECRET (paper mode has no "
              "accounts to read outside a running daemon)", file=out)
        return 2
    try:
        rows = event_loop.run(read_balances(settings, environ), environ=environ)
    except AlreadyRunningError as exc:
        print(f"{exc}\nThe running daemon logs every account's balances at start and every hour: see its "
              "balance_snapshot lines.", file=out)
        return 3
    except OSError as exc:
        print(state_dir_problem(exc, settings.state_dir), file=out)
        return 2
    print(f"{'account':<20} {'role':<9} {'cash_usd':>14} {'equity_usd':>14}", file=out)
    for row in rows:
        if row.problem:
            print(f"{row.name:<20} {row.role:<9} {'unknown':>14} {'unknown':>14}  {row.problem}", file=out)
        else:
            cents = Decimal("0.01")  # as the daemon's balance_snapshot lines show them
            print(f"{row.name:<20} {row.role:<9} {row.cash_usd.quantize(cents):>14} "
                  f"{row.equity_usd.quantize(cents):>14}", file=out)
    return 1 if any(row.problem for row in rows) else 0
