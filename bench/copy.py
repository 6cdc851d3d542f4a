"""Copy fan-out benchmark: time from a master fill to the last follower acknowledgement, N followers.

The embedded exchange runs in a child process on 127.0.0.1 with a fixed latency per request (default 50 ms), on a
core of its own (`bench/cores.py`), so the engine's process does only NIJA's work. For each N the engine starts (one
balance read per follower), then copies `--signals` master fills (buy, then sells of half the position,
alternating); latency is measured by the engine itself: from the signal's `filled_at_s` (the moment the master fill is known, i.e. when the signal is created) to
the last follower's AddOrder acknowledgement (`copy_summary.latency_ms`). The reference is one AddOrder round trip
of a single account (median of 3), measured right before each signal, so that a slow spell of the machine weighs on
both. Memory per follower is measured with tracemalloc for the largest N: clients, gateways, portfolios and configs
after one balance read and one copied signal.

    .venv/bin/python -m bench.copy                      # N = 1, 10, 100, 1000; 50 ms latency
    .venv/bin/python -m bench.copy --n 10 100 --latency-ms 20 --signals 3
    .venv/bin/python -m bench.copy --no-freeze-gc       # without the gc.freeze() that `nija run` does

Run it as a module from the repository root (bench/ is a package). Run as a script it still works: the guard below
keeps this file, named copy.py as the issue asks, from shadowing the standard library's `copy`.

Nothing here talks to anything but 127.0.0.1, and the child exchange stops by itself after `--max-runtime-s`.
"""

from __future__ import annotations

import os
import sys

# This file is named copy.py: drop its own directory from the import path so `import copy` finds the standard
# library module, not this script.
_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH_DIR]

import argparse
import asyncio
import base64
import gc
import logging
import multiprocessing as mp
import statistics
import tempfile
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr  # noqa: E402

from bench.cores import exchange_core, pin_client, pin_exchange  # noqa: E402
from nija import event_loop  # noqa: E402
from nija.accounts import Follower, FollowerConfig  # noqa: E402
from nija.kraken.client import KrakenClient, KrakenContext  # noqa: E402
from nija.logs import configure  # noqa: E402
from nija.store import Store  # noqa: E402
from nija.trading.copy import CopyEngine  # noqa: E402
from nija.trading.kraken_gateway import follower_accounts  # noqa: E402
from nija.trading.signals import Signal, signal_id_for  # noqa: E402

PAIR = "XBTUSD"
PRICE = Decimal("50000")


def _credentials(count: int) -> list[tuple[str, str, str]]:
    return [(f"f{i:04d}", base64.b64encode(os.urandom(42)).decode(), base64.b64encode(os.urandom(64)).decode())
            for i in range(count)]


def _serve(accounts, latency_ms: float, max_runtime_s: float, url_queue, stop_event, core: int | None) -> None:
    """Child process: the embedded exchange with the benchmark's accounts, until told to stop (or time runs out)."""
    from nija.exchange import Exchange

    pin_exchange(core)

    async def main() -> None:
        exchange = Exchange(seed=7, speed=0)
        exchange.set_price(PAIR, PRICE)
        for name, key, secret in accounts:
            exchange.create_account(name, {"ZUSD": "10000"}, api_key=key, api_secret=secret, tier="pro")
        async with exchange.serve(host="127.0.0.1", port=0, latency_ms=latency_ms) as server:
            url_queue.put(server.url)
            deadline = time.monotonic() + max_runtime_s
            while not stop_event.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)

    event_loop.run(main())


class RoundTrip:
    """One account's AddOrder round trip, the reference the fan-out is compared with. Measured right before each
    signal as well as once up front, so that a slow spell of the (shared) machine inflates both alike."""

    def __init__(self, url: str, context: KrakenContext, name_key_secret) -> None:
        name, key, secret = name_key_secret
        self.client = KrakenClient(key, secret, base_url=url, context=context, tier="pro", name=name)
        self._orders = 0

    async def median_ms(self, samples: int) -> float:
        if not self._orders:
            await self.client.balance_ex()  # warm the connection, like the engine's first balance read does
        times = []
        for _ in range(samples):
            side = "buy" if self._orders % 2 == 0 else "sell"
            self._orders += 1
            start = time.perf_counter()
            await self.client.add_order(PAIR, side, Decimal("0.0001"), oflags="fciq")  # fee in USD, as NIJA's
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def _signal(index: int, n: int) -> Signal:
    side = "buy" if index % 2 == 0 else "sell"
    return Signal(
        signal_id=signal_id_for(f"bench-{n}-{os.getpid()}-{time.time_ns()}", str(index)),
        master_order_id=f"OBENCH-{n}-{index}", pair=PAIR, side=side, volume_base=Decimal("0.02"),
        avg_price_usd=PRICE, fee_usd=Decimal("4"), master_equity_usd=Decimal("10000"),
        position_fraction=Decimal("0.5") if side == "sell" else None, reason="PROFIT_TAKING" if side == "sell" else None,
    )


async def _run_n(url: str, creds, n: int, signals: int, state_dir: Path, round_trip: RoundTrip,
                 profile: bool = False, freeze_gc: bool = False) -> dict:
    # One state dir for every run on these accounts, as for a daemon restarted: the next run starts from the rate
    # counters the last one left (its fill read-backs), instead of meeting Kraken's refusal for them.
    context = KrakenContext(state_dir=state_dir / "followers")
    probe = KrakenClient(creds[0][1], creds[0][2], base_url=url, context=context, tier="pro")
    pairs = await probe.pairs()
    followers = [Follower(FollowerConfig(name=name), SecretStr(key), SecretStr(secret)) for name, key, secret in creds[:n]]
    store = await Store.open(state_dir / f"copy-{n}.sqlite3")
    engine = CopyEngine(store, pairs, follower_accounts(followers, pairs, base_url=url, tier="pro", context=context),
                        concurrency=2000, refresh_s=3600)
    await engine.start()
    if freeze_gc:
        gc.freeze()  # long-lived accounts out of the collector's way, as a daemon would after start-up
    latencies, ratios, errors, cpu_ms = [], [], 0, []
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    for index in range(signals):
        rtt_ms = await round_trip.median_ms(3)
        if profiler:
            profiler.enable()
        cpu_start = time.process_time()
        summary = await engine.copy(_signal(index, n))  # filled_at_s: now, when the fill is known
        cpu_ms.append((time.process_time() - cpu_start) * 1000)
        if profiler:
            profiler.disable()
        await engine.wait_idle()  # fills are read back after the fan-out; master fills are seconds apart anyway
        latencies.append(summary.latency_ms)
        ratios.append(summary.latency_ms / rtt_ms)
        errors += summary.failed + summary.skipped
    await engine.stop()
    await store.close()
    await context.close()
    if profiler:
        import pstats

        pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_TOP", "20")))
    return {"n": n, "latencies_ms": latencies, "rtt_ratios": ratios, "errors": errors,
            "cpu_ms": statistics.median(cpu_ms)}


async def _memory_per_follower(url: str, creds, state_dir: Path) -> float:
    n = len(creds)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    context = KrakenContext(state_dir=state_dir / "followers")
    probe = KrakenClient(creds[0][1], creds[0][2], base_url=url, context=context, tier="pro")
    pairs = await probe.pairs()
    store = await Store.open(state_dir / "copy-mem.sqlite3")
    followers = [Follower(FollowerConfig(name=name), SecretStr(key), SecretStr(secret)) for name, key, secret in creds]
    engine = CopyEngine(store, pairs, follower_accounts(followers, pairs, base_url=url, tier="pro", context=context),
                        concurrency=2000, refresh_s=3600)
    await engine.start()
    await engine.copy(_signal(0, n))
    engine.summaries.clear()  # the last summaries keep every result; a daemon keeps 100 signals, not per follower
    gc.collect()
    after = tracemalloc.take_snapshot()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    tracemalloc.stop()
    await engine.stop()
    await store.close()
    await context.close()
    return used / n / 1024


async def _bench(args) -> None:
    configure("WARNING", json_lines=True)  # copy_result lines would flood the terminal; their cost is tiny anyway
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
    top = max(args.n)
    creds = _credentials(top + 1)  # the extra account measures the single-order round trip
    ctx = mp.get_context("spawn")
    url_queue, stop_event = ctx.Queue(), ctx.Event()
    core = exchange_core()
    server = ctx.Process(target=_serve, args=(creds, args.latency_ms, args.max_runtime_s, url_queue, stop_event, core),
                         daemon=True)
    server.start()
    pin_client(core)
    try:
        url = url_queue.get(timeout=120)
        with tempfile.TemporaryDirectory() as tmp:
            state_dir = Path(tmp)
            rtt_context = KrakenContext(state_dir=state_dir / "nonces-rtt")
            round_trip = RoundTrip(url, rtt_context, creds[-1])
            rtt_ms = await round_trip.median_ms(7)
            print(f"{event_loop.loop_name()} loop; exchange latency {args.latency_ms:g} ms/request; one AddOrder round "
                  f"trip: {rtt_ms:.1f} ms (median); × RTT compares each signal with the round trip measured just before it")
            print(f"{'N':>5} {'median ms':>10} {'max ms':>8} {'× RTT med/max':>13} {'errors':>6} {'NIJA CPU ms':>11}  target")
            for n in args.n:
                result = await _run_n(url, creds, n, args.signals, state_dir, round_trip, args.profile,
                                      args.freeze_gc)
                median = statistics.median(result["latencies_ms"])
                worst = max(result["latencies_ms"])
                ratios = result["rtt_ratios"]
                target = "≤ 1.3 × RTT" if n <= 100 else "≤ 500 ms"
                ok = (max(ratios) <= 1.3 if n <= 100 else worst <= 500) and result["errors"] == 0
                ratio_text = f"{statistics.median(ratios):.2f}/{max(ratios):.2f}"
                print(f"{n:>5} {median:>10.1f} {worst:>8.1f} {ratio_text:>13} {result['errors']:>6} "
                      f"{result['cpu_ms']:>11.1f}  {target} {'met' if ok else 'MISSED'}")
            await rtt_context.close()
            if not args.skip_memory:
                kib = await _memory_per_follower(url, creds[:top], state_dir)
                print(f"memory per follower (N = {top}, after one balance read and one copy): {kib:.1f} KiB "
                      f"(target ≤ 20 KiB) {'met' if kib <= 20 else 'MISSED'}")
    finally:
        stop_event.set()
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 10, 100, 1000], help="follower counts")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="exchange latency per request")
    parser.add_argument("--signals", type=int, default=5, help="signals copied per N (alternating buy/sell)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--no-freeze-gc", dest="freeze_gc", action="store_false",
                        help="skip the gc.freeze() that `nija run` does after start-up (and this bench by default)")
    parser.add_argument("--profile", action="store_true", help="print where the engine's process spends its time")
    parser.add_argument("--max-runtime-s", type=float, default=900.0, help="the child exchange stops after this")
    event_loop.run(_bench(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
