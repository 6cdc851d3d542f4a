"""`nija run`: the daemon.

    settings + follower files ──► one KrakenContext (session, nonces, rate counters) ──► master + follower clients
    MasterFillWatcher(master) ──signals──► CopyEngine ──orders──► followers          (stored first: nija.store)

It takes the lock for its master key (one daemon per set of keys), logs a balance snapshot of every account, then
copies every master fill until SIGTERM/SIGINT/SIGHUP, when it stops taking signals and lets the orders in flight finish
(well inside Render's 30 s). With no master keys it runs in paper mode: the embedded exchange in-process, with a
master and two followers funded like the first NIJA's live accounts; the exchange's URL and keys are written to
`<state dir>/paper/keys.env`, with a second key of the master for the trader's own Kraken client.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import resource
import signal
import sys
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

from nija import event_loop, logs, pair_symbols
from nija.accounts import (MASTER_KEY_PERMISSIONS, Follower, FollowerConfig, credential_names, load_followers,
                           refused_key_fix)
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.errors import ConfigurationError, KrakenError
from nija.kraken.nonce import NonceCoordinator
from nija.kraken.pairs import Pairs
from nija.lifecycle import AlreadyRunningError, InstanceLock, Lifecycle, State, key_locks, state_dir_problem
from nija.settings import Settings, SettingsError, load_settings
from nija.store import Store, StoreError
from nija.trading.copy import CopyEngine
from nija.trading.kraken_gateway import follower_accounts, ticker_price_source
from nija.trading.master_fills import MasterFillWatcher
from nija.trading.positions import value_usd
from nija.trading.profiles import profile_for

__all__ = ["main", "run", "StartupError"]

log = logs.get_logger("nija.daemon")

HEARTBEAT_S = 60.0
RECONCILE_S = 60.0
HEALTH_S = 5.0
#: the master's equity is read again this often to choose the rate profile (every minute while unknown)
MASTER_EQUITY_S, MASTER_EQUITY_RETRY_S = 3600.0, 60.0
PAIRS_REFRESH_S = 900.0
#: how often the follower directory is looked at for changes (which apply at the next start)
FOLLOWER_FILES_CHECK_S = 30.0
STORE_FILE_CHECK_S = 30.0  # how often the store file is checked to still be the one NIJA writes
#: a host clock this far from Kraken's is told (`clock_skew`); order deadlines follow Kraken's clock either way
CLOCK_SKEW_WARN_S = 1.0
#: how long orders in flight may take to finish once a stop is asked for (Render waits 30 s before SIGKILL)
STOP_GRACE_S = 20.0
PAPER_PUBLIC_RATE_PER_S = 1000.0  # public calls to a paper run's own exchange, which limits none
#: the open-files soft limit the daemon asks for (two lock files and a connection per account, with room to spare)
_MAX_OPEN_FILES = 65536


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nija run", description="Run the NIJA copy-trading daemon.")
    p.add_argument("--paper", action="store_true",
                   help="paper mode on the embedded exchange even when master keys are set")
    p.add_argument("--speed", type=float, default=1.0, help="paper mode: simulated seconds per real second")
    p.add_argument("--seed", type=int, default=7, help="paper mode: seed of the market's price paths")
    p.add_argument("--duration", type=_positive_s, default=None, help="stop by itself after this many seconds")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not (args.speed >= 0 and math.isfinite(args.speed)):
        print(f"nija run: --speed {args.speed} must be a finite number ≥ 0 (1 = real time)", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        logs.configure()
        for problem in exc.problems:
            log.error("settings_invalid", problem=problem)
        return 2
    logs.configure()  # after load_settings: `.env` may set NIJA_LOG_LEVEL and NIJA_LOG_FORMAT
    if not args.paper and not settings.has_master_keys and _has_follower_files(settings):
        # Follower files say a live run was meant: paper mode would look like NIJA ignoring them.
        log.warning("master_keys_missing", users_dir=str(settings.users_dir),
                    consequence="paper mode on the embedded exchange; the follower files are not used",
                    fix="set KRAKEN_MASTER_API_KEY and KRAKEN_MASTER_API_SECRET (environment or .env) for a live run")
    try:
        return event_loop.run(run(settings, paper=args.paper or not settings.has_master_keys, speed=args.speed,
                                  seed=args.seed, duration_s=args.duration))
    except AlreadyRunningError as exc:
        log.error("already_running", reason=str(exc))
        return 3
    except StartupError as exc:
        log.error("startup_failed", reason=str(exc))
        return 2
    except OSError as exc:  # the state directory: locks, nonce marks, the store
        log.error("startup_failed", reason=state_dir_problem(exc, settings.state_dir))
        return 2


def _has_follower_files(settings: Settings) -> bool:
    try:
        return any(not path.name.endswith(".example.json") for path in settings.users_dir.glob("*.json"))
    except OSError:
        return False


class StartupError(RuntimeError):
    """The daemon cannot start as configured; the message names the setting and the fix."""


async def run(settings: Settings, *, paper: bool = False, speed: float = 1.0, seed: int = 7,
              duration_s: float | None = None, stop: asyncio.Event | None = None,
              master_poll_s: float | None = None) -> int:
    """The daemon until `stop` is set (SIGTERM/SIGINT/SIGHUP set it) or `duration_s` passes; returns the exit code.

    `master_poll_s` overrides the rate profile's order-status interval for the master-fill watcher.
    """
    lifecycle = Lifecycle(event_loop=event_loop.loop_name())
    stop = stop or _stop_event()
    # A stop asked for while starting (Kraken slow to answer) cancels the start instead of waiting for it.
    start_guard = asyncio.create_task(_cancel_start_on_stop(stop, asyncio.current_task(), lifecycle))
    try:
        return await _run(settings, lifecycle, stop, start_guard, paper=paper, speed=speed, seed=seed,
                          duration_s=duration_s, master_poll_s=master_poll_s)
    except asyncio.CancelledError:
        if not (stop.is_set() and lifecycle.state is State.STARTING):
            raise
        asyncio.current_task().uncancel()
        lifecycle.stopping("signal during start-up")
        lifecycle.stopped()
        return 0
    finally:
        start_guard.cancel()


async def _cancel_start_on_stop(stop: asyncio.Event, main: asyncio.Task, lifecycle: Lifecycle) -> None:
    await stop.wait()
    if lifecycle.state is State.STARTING:
        main.cancel()


async def _run(settings: Settings, lifecycle: Lifecycle, stop: asyncio.Event, start_guard: asyncio.Task, *,
               paper: bool, speed: float, seed: int, duration_s: float | None, master_poll_s: float | None) -> int:
    for warning in settings.warnings:
        log.warning("settings_warning", warning=warning)
    if paper:
        # Paper trading keeps its own store and marks: it never mixes with a live account's state.
        settings = replace(settings, state_dir=settings.state_dir / "paper")
    _allow_open_files()
    async with AsyncExitStack() as stack:
        if paper:
            await _lock(stack, InstanceLock(settings.state_dir, "paper"))
            _forget_last_paper_run(settings)
            base_url, master_key, master_secret, followers = await _paper_exchange(stack, settings, speed, seed)
        else:
            base_url, master_key, master_secret = (settings.kraken_api_url, settings.master_api_key,
                                                   settings.master_api_secret)
            await _lock_key(stack, settings.state_dir, master_key.get_secret_value())
            follower_files = _follower_files(settings.users_dir)
            followers = await _lock_follower_keys(stack, settings, _configured_followers(settings, lifecycle),
                                                  lifecycle)

        # Kraken limits public calls per address, about one a second; a paper run's own exchange limits none, and
        # pacing them would only add seconds to its start.
        pacing = {"public_rate_per_s": PAPER_PUBLIC_RATE_PER_S} if paper else {}
        context = await stack.enter_async_context(KrakenContext(nonces=_state(
            lambda: NonceCoordinator.for_state_dir(settings.state_dir)), **pacing))
        master = KrakenClient(master_key.get_secret_value(), master_secret.get_secret_value(), base_url=base_url,
                              tier=settings.kraken_tier, context=context, name="master")
        pairs, master_equity_usd = await _connect_master(master, base_url, lifecycle)
        symbols_state_dir = None if paper else settings.state_dir  # paper runs use no follower files
        await _check_disabled_symbols(followers, pairs, symbols_state_dir, base_url)

        try:
            store = await Store.open(settings.store_path)
            stack.push_async_callback(store.close)
            if not paper:  # each paper run is a fresh exchange on a new port, with nothing to resume
                await store.bind_exchange(base_url)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        # The engine's limit per order covers queueing for the key plus the client's own lookup after a lost
        # reply, so one HTTP attempt gets a third of it.
        accounts = follower_accounts(followers, pairs, base_url=base_url, tier=settings.kraken_tier,
                                     context=context, timeout_s=max(1.0, settings.order_timeout_s / 3))
        engine = CopyEngine(store, pairs, accounts, mode=settings.copy_trading_mode,
                            concurrency=settings.copy_concurrency, taker_fee_rate=settings.taker_fee_rate,
                            order_timeout_s=settings.order_timeout_s, refresh_s=settings.balance_refresh_s,
                            # the engine's current pairs: a pair listed later gets a price too
                            price_source=lambda: ticker_price_source(master, engine.pairs)())
        engine.prices.has_usd_market = lambda asset: engine.pairs.find(asset, "USD") is not None
        # Registered first: a stop that cancels the start while it resumes old work still ends those copies.
        stack.push_async_callback(engine.stop, grace_s=STOP_GRACE_S)
        await engine.start()
        _follower_snapshots(engine)

        engine.master_equity_usd = master_equity_usd
        watcher = _state(lambda: MasterFillWatcher(
            master, pairs, engine.submit, state_path=settings.state_dir / "master_fills.json",
            poll_s=master_poll_s or profile_for(master_equity_usd).order_status_refresh_s,
            report=lambda problem: (lifecycle.problem("master", problem) if problem
                                    else lifecycle.recovered("master")),
            pairs_changed=engine.set_pairs,
            value_usd=lambda owned: value_usd(owned, engine.prices),
            own_copy=lambda cl_ord_id: _own_copy(engine, cl_ord_id)))
        tasks = [asyncio.create_task(_heartbeat(lifecycle, engine), name="heartbeat"),
                 asyncio.create_task(_pairs_refresh_loop(master, watcher, engine, symbols_state_dir),
                                     name="pairs-refresh"),
                 asyncio.create_task(_reconcile_loop(engine), name="reconcile"),
                 asyncio.create_task(_follower_health(lifecycle, engine), name="follower-health"),
                 asyncio.create_task(_master_equity_loop(master, lifecycle, engine, watcher, master_poll_s),
                                     name="master-equity")]
        tasks.append(asyncio.create_task(_watch_store_file(settings.store_path, lifecycle), name="store-file"))
        if not paper:
            tasks.append(asyncio.create_task(_watch_follower_files(settings.users_dir, follower_files),
                                             name="follower-files"))
        if settings.copies:
            tasks.append(asyncio.create_task(watcher.run(), name="master-watch"))
            ws_url = settings.ws_auth_url_for(base_url)
            if ws_url is not None:
                # The master's trades as Kraken makes them: each one wakes the watcher, whose polls then slow down.
                tasks.append(asyncio.create_task(watcher.follow_executions(ws_url), name="master-executions"))
            else:
                log.info("master_feed_off", polls_every_s=watcher.poll_s, reason="KRAKEN_WS_AUTH_URL=off")
        else:
            log.info("copying_off", mode=settings.copy_trading_mode.value)
            # The master's trades of this time are its own: never copied once copying is switched on again.
            watcher.forget(f"COPY_TRADING_MODE={settings.copy_trading_mode.value}: the master trades on its own")
        # Everything built so far lives as long as the daemon: keep the collector from walking it on every
        # fan-out (measured in docs/benchmarks.md: about a fifth of the fan-out's CPU with 1,000 followers).
        gc.collect()
        gc.freeze()
        start_guard.cancel()
        lifecycle.started()

        exit_code, reason = await _until_stopped(stop, tasks, duration_s)
        lifecycle.stopping(reason)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lifecycle.stopped()
    return exit_code


async def _own_copy(engine: CopyEngine, cl_ord_id: str) -> bool:
    """Whether a master order is a copy NIJA placed: the follower's key then trades the master's Kraken account
    (a second key of it), and every copy would come back as a master fill. That follower is left out."""
    name = await engine.follower_of(cl_ord_id)
    if name is None:
        return False
    problem = f"{name}'s key trades the master's Kraken account: its copies came back as master fills"
    if engine.leave_out(name, problem):  # the health loop keeps the daemon degraded from now on
        key_var, _ = credential_names(name)
        log.error("follower_is_master_account", name=name, problem=problem,
                  fix=f"set {key_var} and its secret to a key of {name}'s own Kraken account, then restart; "
                      f"{name} copies nothing until then")
    return True


def _state(load):
    """`load()` of a state file; an unreadable one stops the start with its message (it names the file and the fix)."""
    try:
        return load()
    except ValueError as exc:
        raise StartupError(str(exc)) from None


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task], duration_s: float | None) -> tuple[int, str]:
    """Wait for a stop signal, the duration, or a component that ended (none should): (exit code, reason)."""
    stopper = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        done, _ = await asyncio.wait([stopper, *tasks], timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not done:
        return 0, "duration reached"
    if stopper in done:
        return 0, "signal"
    task = next(iter(done))
    exc = task.exception() if not task.cancelled() else None
    if isinstance(exc, ConfigurationError):
        log.error("component_failed", component=task.get_name(), error=str(exc),
                  fix="check KRAKEN_MASTER_API_KEY / KRAKEN_MASTER_API_SECRET and the key's permissions")
        return 2, f"{task.get_name()} failed"
    log.error("component_failed", component=task.get_name(), error=repr(exc))
    return 1, f"{task.get_name()} failed"


async def _connect_master(master: KrakenClient, base_url: str, lifecycle: Lifecycle) -> tuple[Pairs, Decimal | None]:
    """Pairs and the master's balance snapshot; a master that cannot be used at all stops the start."""
    try:
        pairs = await master.pairs()
    except KrakenError as exc:
        raise StartupError(f"cannot load Kraken's pairs from KRAKEN_API_URL={base_url} ({exc}): check the URL "
                           "and the network") from None
    await _check_clock(master)  # before any order: unfinished copies are resumed as soon as the engine starts
    try:
        equity = await _balance_snapshot(master, "master", lifecycle)
    except ConfigurationError as exc:
        fix = refused_key_fix(str(exc), "KRAKEN_MASTER_API_KEY", "KRAKEN_MASTER_API_SECRET", MASTER_KEY_PERMISSIONS)
        raise StartupError(f"the master's key was refused ({exc}): {fix}") from None
    return pairs, equity


def _allow_open_files() -> None:
    """Each follower holds two lock files and a pooled connection for the daemon's life: a few hundred followers
    outgrow the common soft limit of 1,024 open files, so the soft limit goes up to what the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("open_files_limit", soft=soft, hard=hard, error=str(exc),
                        fix="raise the service's open-files limit (ulimit -n, or LimitNOFILE= for systemd)")


async def _lock(stack: AsyncExitStack, lock: InstanceLock) -> None:
    await lock.acquire_async()
    stack.callback(lock.release)


async def _lock_key(stack: AsyncExitStack, state_dir, api_key: str) -> None:
    """Every lock of one key, or none of them: a key left out must not stay locked by this daemon."""
    async with AsyncExitStack() as taken:
        for lock in key_locks(state_dir, api_key):
            await _lock(taken, lock)
        stack.push_async_exit(taken.pop_all())


async def _lock_follower_keys(stack: AsyncExitStack, settings: Settings, followers: list[Follower],
                              lifecycle: Lifecycle) -> list[Follower]:
    """Lock each follower's key too, so two daemons (with different masters) never trade one follower's key."""
    kept = []
    for follower in followers:
        try:
            await _lock_key(stack, settings.state_dir, follower.api_key.get_secret_value())
        except AlreadyRunningError as exc:
            log.error("follower_left_out", name=follower.name, reason=str(exc))
            lifecycle.problem(f"follower:{follower.name}", "its key is used by another NIJA daemon")
            continue
        kept.append(follower)
    return kept


def _positive_s(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0, e.g. 60")
    return seconds


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: a terminal closed (an SSH session ended) stops NIJA cleanly rather than killing it mid-copy;
    # unless it is ignored (`nohup`), which asks NIJA to outlive the terminal.
    hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    for signum in (signal.SIGTERM, signal.SIGINT, *hangup):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    return stop


def _forget_last_paper_run(settings: Settings) -> None:
    """Each paper run trades on a fresh embedded exchange with new keys: the last run's copies and master watch
    belong to an exchange that is gone (resumed, they would be looked for and sent again on the new one)."""
    watch = settings.state_dir / "master_fills.json"
    store = settings.store_path
    for path in (watch, store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        path.unlink(missing_ok=True)


async def _paper_exchange(stack: AsyncExitStack, settings: Settings, speed: float, seed: int):
    from nija.exchange.sim import demo_exchange, env_lines, master_name, write_private

    exchange = demo_exchange(seed=seed, speed=speed)
    server = await stack.enter_async_context(exchange.serve(host="127.0.0.1", port=0))
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    env_path = settings.state_dir / "keys.env"
    master = exchange.account(master_name(exchange))
    trader = exchange.add_key(master.name)  # the trader's own client: NIJA's nonces are on another scale
    write_private(env_path, env_lines(server.url, exchange, trader))
    followers = [
        Follower(FollowerConfig(name=account.name), SecretStr(account.api_key), SecretStr(account.api_secret))
        for account in exchange.accounts() if account.name != master.name
    ]
    log.info(
        "paper_mode", url=server.url, followers=[f.name for f in followers], keys_file=str(env_path),
        hint="no master keys set: trading on the embedded exchange; trade the paper master with the keys file")
    return server.url, SecretStr(master.api_key), SecretStr(master.api_secret), followers


def _follower_files(directory: Path) -> dict[str, tuple[int, int]]:
    """Each follower file's (modification time, size), by name: what tells that the directory changed."""
    stamps = {}
    try:
        for path in directory.glob("*.json"):
            with suppress(OSError):  # gone between the listing and the look
                stat = path.stat()
                stamps[path.name] = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        pass
    return stamps


async def _watch_follower_files(directory: Path, loaded: dict[str, tuple[int, int]]) -> None:
    """Tell the operator, once per change, that follower files changed since start: they apply at the next start
    only, so a follower switched off or removed meanwhile is still copied to until then."""
    told = loaded
    while True:
        await asyncio.sleep(FOLLOWER_FILES_CHECK_S)
        now = _follower_files(directory)
        if now == told:
            continue
        log.warning("follower_files_changed", directory=str(directory),
                    added=sorted(now.keys() - loaded.keys()), removed=sorted(loaded.keys() - now.keys()),
                    edited=sorted(name for name in now.keys() & loaded.keys() if now[name] != loaded[name]),
                    fix="restart NIJA to apply them; until then the followers loaded at start copy as they were")
        told = now


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


async def _watch_store_file(path: Path, lifecycle: Lifecycle) -> None:
    """Tell the operator when the store file is deleted or replaced while NIJA runs (a cleanup script, a volume
    remounted): SQLite goes on writing to the file it opened, so whatever is recorded from then on — copies, their
    outcomes, what is left to reconcile — is gone at the next start. The daemon stays degraded until the file is
    back."""
    opened = _file_identity(path)
    while True:
        await asyncio.sleep(STORE_FILE_CHECK_S)
        now = _file_identity(path)
        if now == opened:
            lifecycle.recovered("store")
            continue
        if "store" not in lifecycle.problems:
            log.error("store_file_missing", path=str(path), problem="deleted" if now is None else "replaced",
                      consequence="copies recorded from now on are lost when NIJA stops",
                      fix=f"keep {path.parent} for NIJA alone; stop NIJA (it finishes the copies under way) and "
                          "start it again, then check the followers' open orders on Kraken")
        lifecycle.problem("store", f"{path} was {'deleted' if now is None else 'replaced'} while NIJA runs")


def _configured_followers(settings: Settings, lifecycle: Lifecycle) -> list[Follower]:
    loaded = load_followers(settings.users_dir, master_api_key=settings.master_api_key)
    for problem in loaded.problems:
        # One bad file leaves one follower out; every other one runs.
        log.error("follower_config_problem", file=problem.file, field=problem.field, problem=problem.message)
        lifecycle.problem(f"config:{problem.file}", problem.message)
    if loaded.followers:
        log.info("followers_loaded", count=len(loaded.followers), names=[f.name for f in loaded.followers],
                 left_out=len(loaded.problems))
    else:  # a daemon that copies to no one is most likely pointed at the wrong directory
        log.warning("followers_loaded", count=0, names=[], left_out=len(loaded.problems),
                    fix=f"add one JSON file per follower to {settings.users_dir} (see config/users/*.example.json), "
                        "or set NIJA_USERS_DIR to the directory that holds them")
    return loaded.followers


async def _balance_snapshot(client: KrakenClient, name: str, lifecycle: Lifecycle | None) -> Decimal | None:
    """Log the account's USD cash and equity; unknown (None), never zero, when they cannot be read (a problem of
    `lifecycle`, if given, until _master_equity_loop reads them)."""
    try:
        balances = await client.balance()
        equity = (await client.trade_balance()).equivalent_balance
    except ConfigurationError:
        raise
    except KrakenError as exc:
        log.error("balance_snapshot", account=name, role=name, error=str(exc), equity_usd=None)
        if lifecycle is not None:
            lifecycle.problem(f"balance:{name}", str(exc))
        return None
    cash = balances.get("ZUSD", Decimal(0))
    pairs = client.context.loaded_pairs(client.base_url)  # common names (BTC) once loaded; Kraken's (XXBT) before
    normalised = pairs.normalise_balances(balances.by_asset) if pairs is not None else dict(balances.by_asset)
    log.info("balance_snapshot", account=name, role="master", cash_usd=_cents(cash), equity_usd=_cents(equity),
             holdings=_holdings(normalised))
    return equity


def _holdings(amounts: dict[str, Decimal]) -> dict[str, str]:
    """What an account holds besides USD, for the snapshot lines: an operator checks exits against it."""
    return {asset: f"{amount:f}" for asset, amount in sorted(amounts.items())
            if amount and asset not in ("USD", "ZUSD")}


def _follower_snapshots(engine: CopyEngine) -> None:
    """Each copying follower's cash and equity as the engine holds them (kept current from fills and balance
    reads); a follower that copies nothing is not read, and says so rather than showing unknown balances."""
    for account in engine.followers.values():
        if not account.copies:
            log.info("balance_snapshot", account=account.name, role="follower", copies=False,
                     note="not copying (enabled or copy_from_master is false): balances not read")
            continue
        log.info("balance_snapshot", account=account.name, role="follower",
                 cash_usd=_cents(account.portfolio.cash_usd()),
                 equity_usd=_cents(account.portfolio.equity_usd(engine.prices)),
                 holdings=None if account.portfolio.holdings is None else _holdings(account.portfolio.holdings),
                 copies=True, unusable=account.unusable)


async def _check_disabled_symbols(followers: list[Follower], pairs: Pairs, state_dir: Path | None,
                                  base_url: str) -> None:
    """A misspelt disabled symbol blocks nothing: say so at start (the file stays in use). The names are saved for
    `nija check` in `state_dir` (None: not saved)."""
    symbols = pair_symbols.blocking_symbols(pairs)
    for follower in followers:
        for symbol in follower.config.disabled_symbols:
            if symbol not in symbols:
                log.warning("follower_config_problem", file=str(follower.source or follower.name),
                            field="disabled_symbols", problem=pair_symbols.unknown_symbol_problem(symbol))
    await _save_pair_symbols(state_dir, base_url, symbols)


async def _save_pair_symbols(state_dir: Path | None, base_url: str, symbols: frozenset[str]) -> None:
    if state_dir is None:
        return
    try:
        await asyncio.to_thread(pair_symbols.save, state_dir, base_url, symbols)
    except OSError as exc:  # only `nija check` goes without them
        log.warning("pair_symbols_not_saved", path=str(state_dir / pair_symbols.FILE_NAME), error=str(exc))


async def _heartbeat(lifecycle: Lifecycle, engine: CopyEngine) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        log.info("heartbeat", state=lifecycle.state.value, uptime_s=round(time.monotonic() - started),
                 followers=len(engine.followers), signals_copied=engine.signals_copied,
                 unsettled=engine.unsettled, problems=sorted(lifecycle.problems) or None)


async def _pairs_refresh_loop(master: KrakenClient, watcher: MasterFillWatcher, engine: CopyEngine,
                             symbols_state_dir: Path | None) -> None:
    """Load Kraken's pairs again now and then: new listings, and status changes (a pair in cancel_only is
    skipped with its reason instead of being sent orders that fail). Kraken's clock is read as often. The names
    `disabled_symbols` can use are saved again for `nija check` (see `nija.pair_symbols`)."""
    while True:
        await asyncio.sleep(PAIRS_REFRESH_S)
        await _check_clock(master)
        try:
            pairs = await master.pairs(refresh=True)
        except Exception as exc:  # noqa: BLE001 — keep the pairs we have; the next round tries again
            log.warning("pairs_refresh_failed", error=str(exc))
            continue
        watcher.pairs = pairs
        engine.set_pairs(pairs)
        await _save_pair_symbols(symbols_state_dir, master.base_url, pair_symbols.blocking_symbols(pairs))


async def _check_clock(master: KrakenClient) -> None:
    """Stamp order deadlines in Kraken's time, and tell a host clock that is off. Kraken refuses an order whose
    deadline its own clock has passed, and a lookup proves an order absent only once that clock is past it."""
    try:
        reading = await master.read_clock()
    except Exception as exc:  # noqa: BLE001 — the last offset stays; the next round reads again
        log.warning("clock_check_failed", error=str(exc), error_class=type(exc).__name__)
        return
    master.context.clock_offset_s = reading.lowest_s  # never later than Kraken's clock: see KrakenContext
    if abs(reading.off_by_s) >= CLOCK_SKEW_WARN_S:
        log.warning("clock_skew", kraken_minus_host_s=round(reading.off_by_s, 1),
                    consequence="order deadlines are stamped in Kraken's time meanwhile",
                    fix="keep this host's clock in sync (NTP: `timedatectl set-ntp true`, or chrony)")


async def _follower_health(lifecycle: Lifecycle, engine: CopyEngine) -> None:
    """Mirror each follower's health into the lifecycle: degraded while its key is refused or its balances could not
    be read twice in a row (one miss is the network's business), recovered after."""
    while True:
        for account in engine.followers.values():
            if account.left_out or account.unusable:
                lifecycle.problem(f"follower:{account.name}", account.left_out or account.unusable)
            elif account.failed_reads >= 2:
                lifecycle.problem(f"follower:{account.name}", f"cannot be reached: {account.read_problem}")
            else:
                lifecycle.recovered(f"follower:{account.name}")
        await asyncio.sleep(HEALTH_S)


async def _master_equity_loop(master: KrakenClient, lifecycle: Lifecycle, engine: CopyEngine,
                              watcher: MasterFillWatcher, poll_override_s: float | None) -> None:
    """Read the master's balances every hour (every minute while unknown), log a balance snapshot of every account,
    and choose the rate profile again (APEX_V71.md), so that the polling and refresh intervals follow the account as
    it grows or shrinks."""
    chosen = None if engine.master_equity_usd is None else profile_for(engine.master_equity_usd).name
    read = engine.master_equity_usd is not None
    while True:
        await asyncio.sleep(MASTER_EQUITY_S if read else MASTER_EQUITY_RETRY_S)
        # A missed read is tried again in a minute; the master's reachability is the watcher's to report.
        try:
            equity = await _balance_snapshot(master, "master", None)
        except ConfigurationError as exc:
            log.error("balance_snapshot", account="master", role="master", error=str(exc), equity_usd=None)
            equity = None
        read = equity is not None
        if equity is None:
            continue
        _follower_snapshots(engine)  # an hourly snapshot of every account, as at start
        lifecycle.recovered("balance:master")
        engine.master_equity_usd = equity
        profile = profile_for(equity)
        if profile.name != chosen:
            chosen = profile.name
            log.info("rate_profile", profile=profile.name, master_equity_usd=str(equity),
                     order_status_refresh_s=profile.order_status_refresh_s,
                     balance_refresh_s=profile.balance_refresh_s)
            if poll_override_s is None:
                watcher.poll_s = profile.order_status_refresh_s


async def _reconcile_loop(engine: CopyEngine) -> None:
    """Settle intents left unsettled (a lost reply the client could not look up) once a minute, by lookup."""
    while True:
        await asyncio.sleep(RECONCILE_S)
        try:
            for summary in await engine.reconcile():
                log.info("reconciled", signal_id=summary.signal_id, succeeded=summary.succeeded,
                         failed=summary.failed)
        except Exception:  # the next round tries again; the daemon goes on copying
            log.exception("reconcile_failed")


def _cents(usd: Decimal | None) -> str | None:
    """USD for a log line, to the cent; unknown stays None (never 0)."""
    return None if usd is None else str(usd.quantize(Decimal("0.01")))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
