"""`nija sim`: run the embedded Kraken-compatible exchange on its own.

    nija sim [--host 127.0.0.1] [--port 8517] [--demo | --accounts FILE] [--speed X] [--seed N]
             [--env-out PATH] [--state FILE] [--latency-ms MS] [--jitter-ms MS] [--fault SPEC ...]

It prints each account's key and secret and the admin token; `--env-out` writes the KRAKEN_* lines NIJA reads
(`KRAKEN_API_URL`, `KRAKEN_MASTER_API_KEY`/`_SECRET`, `KRAKEN_USER_<NAME>_API_KEY`/`_SECRET`). The account named
`master` (else the first one) is the master; the others are followers. It binds 127.0.0.1 unless told otherwise.

The accounts file is validated whole up front (`accounts_file.py`); every mistake is one line naming the file,
the account, the field and the fix, exit code 2. Only a failure to bind is reported as "cannot serve on".

`nija run` in paper mode uses the same pieces in-process: `demo_exchange()`, `Exchange.serve()`, `env_lines()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from nija import event_loop

from .accounts_file import accounts_from_file
from .engine import DEMO_ACCOUNTS, ApiKey, Exchange, KrakenReject
from .faults import FAULT_KINDS, Fault
from .state import load_state, save_state

__all__ = ["main", "demo_exchange", "add_demo_accounts", "env_lines", "parse_fault", "DEFAULT_PORT"]

DEFAULT_PORT = 8517


def add_demo_accounts(ex: Exchange, *, tier: str = "starter", nonce_window: int = 0) -> None:
    """master $60.53, alice $84.58, bob $65.87: the first NIJA's live accounts."""
    for name, usd in DEMO_ACCOUNTS.items():
        ex.create_account(name, {"ZUSD": usd}, tier=tier, nonce_window=nonce_window)


def demo_exchange(seed: int = 7, speed: float = 1.0, **kwargs) -> Exchange:
    ex = Exchange(seed=seed, speed=speed, **kwargs)
    add_demo_accounts(ex)
    return ex


def master_name(ex: Exchange) -> str | None:
    names = [a.name for a in ex.accounts()]
    if "master" in names:
        return "master"
    return names[0] if names else None


#: the state directory `--env-out` points NIJA at
SIM_STATE_DIR = "state/sim"


def env_lines(url: str, ex: Exchange, trader_key: ApiKey | None = None) -> list[str]:
    """The lines NIJA reads as is: base URL, the master's key and secret, each follower's; and `trader_key`, a
    second key of the master for the trader's own client (a key's nonces are one sequence, and NIJA's are in
    nanoseconds, above what most clients send)."""
    lines = [f"KRAKEN_API_URL={url}"]
    master = master_name(ex)
    for acct in ex.accounts():
        if acct.name == master:
            prefix = "KRAKEN_MASTER"
        else:
            prefix = f"KRAKEN_USER_{acct.name.upper()}"
        lines += [f"{prefix}_API_KEY={acct.api_key}", f"{prefix}_API_SECRET={acct.api_secret}"]
    if trader_key is not None:
        lines += [f"PAPER_MASTER_TRADER_API_KEY={trader_key.api_key}",
                  f"PAPER_MASTER_TRADER_API_SECRET={trader_key.api_secret}"]
    return lines


def parse_fault(spec: str) -> Fault:
    """`KIND[:key=value,...]`, e.g. `service_busy:probability=0.1` or `timeout:next_n=2,method=AddOrder`."""
    kind, _, rest = spec.partition(":")
    kwargs: dict = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"fault option {part!r} needs key=value")
        if key in ("next_n",):
            kwargs[key] = int(value)
        elif key in ("probability", "delay_s"):
            kwargs[key] = float(value)
        elif key == "execute":
            kwargs[key] = value.lower() in ("1", "true", "yes")
        elif key in ("account", "method"):
            kwargs[key] = value
        else:
            raise ValueError(f"unknown fault option {key!r}")
    return Fault(kind=kind.strip(), **kwargs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nija sim", description="Run the embedded Kraken-compatible exchange.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--demo", action="store_true", help="master $60.53, alice $84.58, bob $65.87 (the default)")
    src.add_argument("--accounts", metavar="FILE", help="accounts from a JSON file")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)")
    p.add_argument("--seed", type=int, default=7, help="seed of the price paths (default 7)")
    p.add_argument("--env-out", metavar="PATH", help="write KRAKEN_API_URL and the accounts' keys to PATH")
    p.add_argument("--state", metavar="FILE", help="keep accounts, orders and trades in FILE across restarts")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every request")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="random extra latency, uniform in [0, MS]")
    p.add_argument("--public-limit", metavar="BURST/PER_S", default=None,
                   help="limit public calls per client address, e.g. 5/1 (default: no limit)")
    # None: not given, so a restart from --state can tell which of these it does not apply.
    p.add_argument("--tier", default=None, help="tier of --demo accounts: starter (default)|intermediate|pro")
    p.add_argument("--nonce-window", type=int, default=None, help="nonce window of --demo accounts (default 0)")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault: KIND[:next_n=N|probability=P,account=NAME,method=M,execute=true,"
                        f"delay_s=S]; kinds: {', '.join(FAULT_KINDS)}")
    p.add_argument("--market-status", default="online",
                   help="online|cancel_only|post_only|limit_only|maintenance for the whole market")
    p.add_argument("--pair-status", action="append", default=[], metavar="PAIR=STATUS",
                   help="one pair's status, e.g. XBTUSD=cancel_only")
    p.add_argument("--admin-token", default=os.environ.get("NIJA_SIM_ADMIN_TOKEN"),
                   help="token for /admin/* (default: NIJA_SIM_ADMIN_TOKEN or a random one, printed)")
    p.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop after S s
    return p


class CannotServe(OSError):
    """The server could not bind its address (the only OSError reported as "cannot serve on")."""


class CannotWrite(OSError):
    """An output file (--env-out, --state) could not be written."""


def _public_limit(raw: str | None) -> tuple[float, float] | None:
    if not raw:
        return None
    burst, _, rate = raw.partition("/")
    try:
        limit = (float(burst), float(rate or 1))
    except ValueError:
        limit = (-1.0, -1.0)
    if not (limit[0] > 0 and limit[1] > 0):
        raise ValueError(f"--public-limit {raw!r}: use BURST/PER_S with positive numbers, e.g. 5/1")
    return limit


def build_exchange(args: argparse.Namespace) -> Exchange:
    """The exchange the flags describe; ValueError (SimFileError for files) names what to fix."""
    args.public_limit_parsed = _public_limit(args.public_limit)
    if args.accounts and (args.tier is not None or args.nonce_window is not None):
        raise ValueError("--tier and --nonce-window shape the --demo accounts: give each account of "
                         f"{args.accounts} its own \"tier\" and \"nonce_window\" instead")
    ex = Exchange(seed=args.seed, speed=args.speed, admin_token=args.admin_token)
    loaded = bool(args.state) and load_state(ex, args.state)
    # Flags that only shape accounts being created: a restart from --state keeps the stored ones.
    args.not_applied = [flag for flag, value in (("--accounts", args.accounts), ("--tier", args.tier),
                                                 ("--nonce-window", args.nonce_window)) if loaded and value is not None]
    if not loaded:
        if args.accounts:
            for spec in accounts_from_file(args.accounts):
                spec.create_in(ex)
        else:
            add_demo_accounts(ex, tier=args.tier or "starter", nonce_window=args.nonce_window or 0)
    for spec in args.fault:
        ex.inject(parse_fault(spec))
    ex.set_status(None, args.market_status)
    for item in args.pair_status:
        pair, _, status = item.partition("=")
        try:
            ex.set_status(pair, status)
        except KrakenReject:
            raise ValueError(f"--pair-status {item!r}: unknown pair {pair!r}, e.g. XBTUSD=cancel_only") from None
    return ex


class _Out:
    """stdout that survives its reader going away (`nija sim | head`): the exchange keeps serving, silently."""

    def __init__(self) -> None:
        self.closed = False

    def say(self, line: str) -> None:
        if self.closed:
            return
        try:
            print(line, file=sys.stdout, flush=True)
        except BrokenPipeError:
            self.closed = True
            # Point stdout at /dev/null so the interpreter's final flush does not complain either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def write_private(path: Path, lines: list[str]) -> None:
    """Write `lines` to `path`, readable by its owner only from the first byte (they hold API secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its mode otherwise
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _write_env(path: Path, lines: list[str]) -> None:
    try:
        write_private(path, lines)
    except OSError as exc:
        raise CannotWrite(f"cannot write --env-out {path} ({exc.strerror or exc}): choose a writable path") \
            from None


def _save(ex: Exchange, path: str) -> None:
    try:
        save_state(ex, path)
    except OSError as exc:
        raise CannotWrite(f"cannot write --state {path} ({exc.strerror or exc}): choose a writable path") from None


async def _run(ex: Exchange, args: argparse.Namespace) -> None:
    out = _Out()
    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(
                ex.serve(host=args.host, port=args.port, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                         public_limit=args.public_limit_parsed))
        except OSError as exc:
            raise CannotServe(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
        out.say(f"NIJA embedded Kraken exchange on {server.url} (seed {ex.seed}, speed {ex.clock.speed:g})")
        out.say(f"admin token: {ex.admin_token}  (header X-Admin-Token on {server.url}/admin/...)")
        if args.not_applied:
            out.say(f"accounts restored from --state {args.state}: {', '.join(args.not_applied)} not applied (they "
                    "shape new accounts only): move the file away to start afresh")
        master = master_name(ex)
        for acct in ex.accounts():
            role = "master" if acct.name == master else "follower"
            bal = ", ".join(f"{k} {v}" for k, v in acct.balances.items()) or "empty"
            out.say(f"  {acct.name} ({role}, {acct.tier.name}): {bal}")
            out.say(f"    api_key    {acct.api_key}")
            out.say(f"    api_secret {acct.api_secret}")
        # The trader's key outlives a restart with --state: the .env written earlier keeps working.
        trader = (ex.extra_keys(master) or [ex.add_key(master)])[0] if master else None
        if trader is not None:
            out.say(f"  {master}'s second key, for your own client (NIJA keeps the first):")
            out.say(f"    api_key    {trader.api_key}")
            out.say(f"    api_secret {trader.api_secret}")
        if args.env_out:
            path = Path(args.env_out)
            # A state directory of its own: what NIJA keeps of this exchange's accounts (unfinished copies, the
            # watch of the master) must never be resumed against Kraken once live keys take their place.
            _write_env(path, [*env_lines(server.url, ex, trader), f"NIJA_STATE_DIR={SIM_STATE_DIR}"])
            out.say(f"wrote {path}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass
        deadline = loop.time() + args.duration if args.duration else None
        while not stop.is_set():
            wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - loop.time()))
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass
            if args.state:
                _save(ex, args.state)
            if deadline is not None and loop.time() >= deadline:
                break
    if args.state:
        _save(ex, args.state)
    out.say("stopped")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        ex = build_exchange(args)
    except (ValueError, OSError) as exc:  # SimFileError: one line per problem
        for line in str(exc).splitlines():
            print(f"nija sim: {line}", file=sys.stderr)
        return 2
    try:
        event_loop.run(_run(ex, args))
    except CannotServe as exc:
        print(f"nija sim: {exc}", file=sys.stderr)
        return 1
    except CannotWrite as exc:
        print(f"nija sim: {exc}", file=sys.stderr)
        return 2
    return 0
