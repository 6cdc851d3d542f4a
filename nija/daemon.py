"""`nija run`: the daemon.

    settings + follower files ──► one KrakenContext (session, nonces, rate counters) ──► master + follower clients
    MasterFillWatcher(master) ──signals──► CopyEngine ──orders──► followers          (stored first: nija.store)

It takes the lock for its master key (one daemon per set of keys), logs a balance snapshot of every account, then
copies every master fill until SIGTERM/SIGINT, when it stops taking signals and lets the orders in flight finish
(well inside Render's 30 s). With no master keys it runs in paper mode: the embedded exchange in-process, with a
master and two followers funded like the first NIJA's live accounts; the exchange's URL and keys are written to
`<state dir>/paper.env` so any Kraken client can trade the paper master.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
import time
from contextlib import AsyncExitStack
from decimal import Decimal

from pydantic import SecretStr

from nija import logs
from nija.accounts import Follower, FollowerConfig, load_followers
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.errors import KrakenError
from nija.kraken.nonce import NonceCoordinator
from nija.lifecycle import AlreadyRunningError, InstanceLock, Lifecycle
from nija.settings import Settings, SettingsError, load_settings
from nija.store import Store
from nija.trading.copy import CopyEngine
from nija.trading.kraken_gateway import follower_accounts, ticker_price_source
from nija.trading.master_fills import MasterFillWatcher
from nija.trading.profiles import profile_for

__all__ = ["main", "run"]

HEARTBEAT_S = 60.0
RECONCILE_S = 60.0
#: how long orders in flight may take to finish once a stop is asked for (Render waits 30 s before SIGKILL)
STOP_GRACE_S = 20.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nija run", description="Run the NIJA copy-trading daemon.")
    p.add_argument("--paper", action="store_true",
                   help="paper mode on the embedded exchange even when master keys are set")
    p.add_argument("--speed", type=float, default=1.0, help="paper mode: simulated seconds per real second")
    p.add_argument("--seed", type=int, default=7, help="paper mode: seed of the market's price paths")
    p.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logs.configure()
    log = logs.get_logger("nija.daemon")
    try:
        settings = load_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            log.error("settings_invalid", problem=problem)
        return 2
    try:
        return asyncio.run(run(settings, paper=args.paper or not settings.has_master_keys, speed=args.speed,
                               seed=args.seed, duration_s=args.duration))
    except AlreadyRunningError as exc:
        log.error("already_running", reason=str(exc))
        return 3


async def run(settings: Settings, *, paper: bool = False, speed: float = 1.0, seed: int = 7,
              duration_s: float | None = None, stop: asyncio.Event | None = None,
              master_poll_s: float | None = None) -> int:
    """The daemon until `stop` is set (SIGTERM/SIGINT set it) or `duration_s` passes.

    `master_poll_s` overrides the rate profile's order-status interval for the master-fill watcher.
    """
    log = logs.get_logger("nija.daemon")
    lifecycle = Lifecycle()
    stop = stop or _stop_event()
    async with AsyncExitStack() as stack:
        if paper:
            base_url, master_key, master_secret, followers = await _paper_exchange(stack, settings, speed, seed)
        else:
            base_url, master_key, master_secret = (settings.kraken_api_url, settings.master_api_key,
                                                   settings.master_api_secret)
            followers = _configured_followers(settings, lifecycle)
        stack.enter_context(InstanceLock(settings.state_dir, master_key.get_secret_value()))

        context = await stack.enter_async_context(
            KrakenContext(nonces=NonceCoordinator(settings.state_dir / "nonces")))
        master = KrakenClient(master_key.get_secret_value(), master_secret.get_secret_value(), base_url=base_url,
                              tier=settings.kraken_tier, context=context, name="master")
        pairs = await master.pairs()
        master_equity_usd = await _balance_snapshot(master, "master", lifecycle)

        store = await Store.open(settings.store_path)
        stack.push_async_callback(store.close)
        accounts = follower_accounts(followers, pairs, base_url=base_url, tier=settings.kraken_tier,
                                     context=context, timeout_s=settings.order_timeout_s)
        engine = CopyEngine(store, pairs, accounts, mode=settings.copy_trading_mode,
                            concurrency=settings.copy_concurrency, taker_fee_rate=settings.taker_fee_rate,
                            order_timeout_s=settings.order_timeout_s, refresh_s=settings.balance_refresh_s,
                            price_source=ticker_price_source(master, pairs))
        await engine.start()
        stack.push_async_callback(engine.stop, grace_s=STOP_GRACE_S)
        for account in accounts:
            equity = account.portfolio.equity_usd(engine.prices)
            log.info("balance_snapshot", account=account.name, role="follower",
                     cash_usd=_text(account.portfolio.cash_usd()), equity_usd=_text(equity),
                     copies=account.copies, unusable=account.unusable)
            if account.unusable:
                lifecycle.problem(f"follower:{account.name}", account.unusable)

        tasks = [asyncio.create_task(_heartbeat(lifecycle, engine), name="heartbeat"),
                 asyncio.create_task(_reconcile_loop(engine), name="reconcile")]
        if settings.copies:
            watcher = MasterFillWatcher(master, pairs, engine.submit,
                                        state_path=settings.state_dir / "master_fills.json",
                                        poll_s=master_poll_s or profile_for(master_equity_usd).order_status_refresh_s)
            tasks.append(asyncio.create_task(watcher.run(), name="master-watch"))
        else:
            log.info("copying_off", mode=settings.copy_trading_mode.value)
        # Everything built so far lives as long as the daemon: keep the collector from walking it on every
        # fan-out (measured in docs/benchmarks.md: about a fifth of the fan-out's CPU with 1,000 followers).
        gc.collect()
        gc.freeze()
        lifecycle.started()

        try:
            await asyncio.wait_for(stop.wait(), timeout=duration_s)
            reason = "signal"
        except TimeoutError:
            reason = "duration reached"
        lifecycle.stopping(reason)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lifecycle.stopped()
    return 0


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    return stop


async def _paper_exchange(stack: AsyncExitStack, settings: Settings, speed: float, seed: int):
    from nija.exchange.sim import demo_exchange, env_lines, master_name

    exchange = demo_exchange(seed=seed, speed=speed)
    server = await stack.enter_async_context(exchange.serve(host="127.0.0.1", port=0))
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    env_path = settings.state_dir / "paper.env"
    env_path.write_text("\n".join(env_lines(server.url, exchange)) + "\n")
    env_path.chmod(0o600)
    master = exchange.account(master_name(exchange))
    followers = [
        Follower(FollowerConfig(name=account.name), SecretStr(account.api_key), SecretStr(account.api_secret))
        for account in exchange.accounts() if account.name != master.name
    ]
    logs.get_logger("nija.daemon").info(
        "paper_mode", url=server.url, followers=[f.name for f in followers], keys_file=str(env_path),
        hint="no master keys set: trading on the embedded exchange; trade the paper master with the keys file")
    return server.url, SecretStr(master.api_key), SecretStr(master.api_secret), followers


def _configured_followers(settings: Settings, lifecycle: Lifecycle) -> list[Follower]:
    log = logs.get_logger("nija.daemon")
    loaded = load_followers(settings.users_dir, master_api_key=settings.master_api_key)
    for problem in loaded.problems:
        # One bad file leaves one follower out; every other one runs.
        log.error("follower_config_problem", file=problem.file, field=problem.field, problem=problem.message)
        lifecycle.problem(f"config:{problem.file}", problem.message)
    log.info("followers_loaded", count=len(loaded.followers), names=[f.name for f in loaded.followers],
             left_out=len(loaded.problems))
    return loaded.followers


async def _balance_snapshot(client: KrakenClient, name: str, lifecycle: Lifecycle) -> Decimal | None:
    """Log the account's USD cash and equity; unknown (None), never zero, when they cannot be read."""
    log = logs.get_logger("nija.daemon")
    try:
        balances = await client.balance()
        equity = (await client.trade_balance()).equivalent_balance
    except KrakenError as exc:
        log.error("balance_snapshot", account=name, role=name, error=str(exc), equity_usd=None)
        lifecycle.problem(f"balance:{name}", str(exc))
        return None
    cash = balances.get("ZUSD", Decimal(0))
    log.info("balance_snapshot", account=name, role="master", cash_usd=str(cash), equity_usd=str(equity))
    return equity


async def _heartbeat(lifecycle: Lifecycle, engine: CopyEngine) -> None:
    log = logs.get_logger("nija.daemon")
    started = time.monotonic()
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        log.info("heartbeat", state=lifecycle.state.value, uptime_s=round(time.monotonic() - started),
                 followers=len(engine.followers), signals_copied=len(engine.summaries),
                 problems=sorted(lifecycle.problems) or None)


async def _reconcile_loop(engine: CopyEngine) -> None:
    """Settle intents left unsettled (a lost reply the client could not look up) once a minute, by lookup."""
    log = logs.get_logger("nija.daemon")
    while True:
        await asyncio.sleep(RECONCILE_S)
        try:
            for summary in await engine.reconcile():
                log.info("reconciled", signal_id=summary.signal_id, succeeded=summary.succeeded,
                         failed=summary.failed)
        except Exception:  # the next round tries again; the daemon goes on copying
            log.exception("reconcile_failed")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
