"""Benchmark of NIJA's Kraken client, side by side with ccxt and python-kraken-sdk, against the embedded exchange.

    .venv/bin/python -m bench.client run [--quick] [--out results.json]     everything but the Starter test
    .venv/bin/python -m bench.client starter [--out results.json]           60 Balance calls on a Starter key (~2.5 min)

The exchange runs in a child process (`bench/client.py serve SPEC`) on 127.0.0.1, on a core of its own
(`bench/cores.py`), so that client CPU is measured alone; every server is stopped when its scenario ends. Nothing leaves the machine.

Scenarios
  cpu          sequential private Balance calls on one key, no server latency: client CPU µs per call and calls/s
  same-key     200 concurrent Balance calls on one key, server jitter 0-2 ms before its nonce check
  fan-out      one AddOrder on each of N distinct keys at once, 50 ms server latency: wall time to the last
               acknowledgement, errors, memory per extra account client
  starter      60 Balance calls as fast as allowed on a Starter key: wall time vs the ideal 136.4 s, rate-limit errors
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where sibling benchmarks (e.g. bench/copy.py) would shadow
# standard modules: put the repository root there instead, before anything else is imported.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import asyncio
import base64
import gc
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from decimal import Decimal

from bench.cores import exchange_core, pin_client, pin_exchange  # noqa: E402
from nija import event_loop  # noqa: E402
from nija.kraken.limits import Tier  # noqa: E402

ROOMY = {"name": "roomy-bench", "rest_max": 1e9, "rest_decay_per_s": 1e6, "trading_max": 1e9,
         "trading_decay_per_s": 1e6, "max_open_orders_per_pair": 1_000_000}
STARTER = "starter"
LIBS = ("nija", "ccxt", "python-kraken-sdk")


# ---- the exchange in a child process ---------------------------------------------------------------------------

def new_credentials(prefix: str, count: int) -> list[dict]:
    return [{"name": f"{prefix}{i}", "key": base64.b64encode(os.urandom(42)).decode(),
             "secret": base64.b64encode(os.urandom(64)).decode()} for i in range(count)]


def serve_main(spec_path: str) -> int:
    """Child process: build the exchange from SPEC, print the URL, serve until stdin closes."""
    from nija.exchange import Exchange

    spec = json.loads(Path(spec_path).read_text())
    pin_exchange(spec.get("core"))
    exchange = Exchange(seed=7)
    for account in spec["accounts"]:
        tier = account["tier"] if isinstance(account["tier"], str) else Tier(**account["tier"])
        exchange.create_account(account["name"], balances={"ZUSD": Decimal("1000000")}, tier=tier,
                                nonce_window=account.get("window", 0), api_key=account["key"],
                                api_secret=account["secret"])

    async def run() -> None:
        async with exchange.serve(host="127.0.0.1", port=0, latency_ms=spec.get("latency_ms", 0),
                                  jitter_ms=spec.get("jitter_ms", 0)) as server:
            print(server.url, flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin (or dies) → stop

    event_loop.run(run())
    return 0


class ServerProcess:
    def __init__(self, accounts: list[dict], *, latency_ms: float = 0, jitter_ms: float = 0) -> None:
        handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        self.core = exchange_core()
        json.dump({"accounts": accounts, "latency_ms": latency_ms, "jitter_ms": jitter_ms, "core": self.core}, handle)
        handle.close()
        self.spec_path = handle.name
        self.process: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.client", "serve", self.spec_path],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=Path(__file__).resolve().parents[1])
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"bench server did not start (said {self.url!r})")
        pin_client(self.core)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.process is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.unlink(self.spec_path)


# ---- the three clients behind one interface --------------------------------------------------------------------

class NijaLib:
    name = "nija"

    def __init__(self, url: str, creds: dict, *, tier=ROOMY, context=None, nonce_window: int = 0) -> None:
        from nija.kraken import KrakenClient

        self.client = KrakenClient(creds["key"], creds["secret"], base_url=url, context=context,
                                   tier=tier if isinstance(tier, str) else Tier(**tier), nonce_window=nonce_window,
                                   read_attempts=1, order_attempts=1, timeout_s=30)

    async def balance(self):
        return await self.client.private("Balance")

    async def add_order(self, cl_ord_id: str):
        return await self.client.add_order("XBTUSD", "buy", Decimal("0.0001"), ordertype="limit",
                                           price=Decimal("10000"), cl_ord_id=cl_ord_id)

    async def close(self):
        pass


class CcxtLib:
    name = "ccxt"

    def __init__(self, url: str, creds: dict, *, rate_limit: bool = False) -> None:
        import ccxt.async_support as ccxt

        self.client = ccxt.kraken({"apiKey": creds["key"], "secret": creds["secret"], "enableRateLimit": rate_limit,
                                   "timeout": 30_000})
        self.client.urls["api"] = {"public": url, "private": url}
        # The ccxt releases that allow aiohttp 3.13 (the test extra's line) sign with the bare millisecond clock, which
        # repeats when calls come faster than one a millisecond; later releases keep it strictly increasing, as here.
        millis, last = self.client.nonce, [0]

        def increasing() -> int:
            last[0] = max(last[0] + 1, millis())
            return last[0]

        self.client.nonce = increasing

    async def balance(self):
        return await self.client.private_post_balance()

    async def add_order(self, cl_ord_id: str):
        return await self.client.private_post_addorder({"pair": "XBTUSD", "type": "buy", "ordertype": "limit",
                                                        "volume": "0.0001", "price": "10000",
                                                        "cl_ord_id": cl_ord_id})

    async def close(self):
        await self.client.close()


class SdkLib:
    name = "python-kraken-sdk"

    def __init__(self, url: str, creds: dict) -> None:
        from kraken.base_api import SpotAsyncClient

        self.client = SpotAsyncClient(key=creds["key"], secret=creds["secret"], url=url)

    async def balance(self):
        return await self.client.request("POST", "/0/private/Balance")

    async def add_order(self, cl_ord_id: str):
        return await self.client.request("POST", "/0/private/AddOrder", params={
            "pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.0001", "price": "10000",
            "cl_ord_id": cl_ord_id})

    async def close(self):
        await self.client.close()


def make(lib: str, url: str, creds: dict, **kwargs):
    if lib == "nija":
        return NijaLib(url, creds, **kwargs)
    if lib == "ccxt":
        return CcxtLib(url, creds, **{k: v for k, v in kwargs.items() if k == "rate_limit"})
    return SdkLib(url, creds)


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for marker in ("Invalid nonce", "Rate limit exceeded", "Timeout", "timeout"):
        if marker in text:
            return marker
    return text[:80]


# ---- scenarios -------------------------------------------------------------------------------------------------

def _cpu_s() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def bench_cpu(calls: int, rounds: int = 7) -> dict:
    """Client CPU per sequential Balance call. The libraries take turns in `rounds` rounds of `calls / rounds`
    calls each, so a burst of load from elsewhere on the machine hits them alike; the median round counts.

    CPU is split into user and system time: on a virtual machine the loopback `send` also pays for waking the
    exchange's process on the other CPU, a system cost that is the same for every library and can dwarf the
    library's own work."""
    creds = {lib: new_credentials(f"cpu-{lib}-", 1)[0] for lib in LIBS}
    accounts = [{**c, "tier": ROOMY} for c in creds.values()]
    per_round = max(1, calls // rounds)
    kinds = (*LIBS, "nija typed balance()")
    samples: dict[str, list[tuple[float, float]]] = {lib: [] for lib in kinds}  # (user, system) µs per call
    walls: dict[str, float] = {lib: 0.0 for lib in LIBS}
    with ServerProcess(accounts) as server:
        from nija.kraken import KrakenContext

        async with KrakenContext(state_dir=tempfile.mkdtemp(prefix="nija-bench-")) as context:
            clients = {lib: make(lib, server.url, creds[lib], **({"context": context} if lib == "nija" else {}))
                       for lib in LIBS}
            for client in clients.values():
                for _ in range(20):  # warm up: connection, imports, caches
                    await client.balance()
            typed = clients["nija"].client
            for _ in range(rounds):
                for lib in kinds:
                    call = typed.balance if lib == "nija typed balance()" else clients[lib].balance
                    gc.collect()
                    (user0, sys0), wall0 = _cpu_s(), time.perf_counter()
                    for _ in range(per_round):
                        await call()
                    user1, sys1 = _cpu_s()
                    samples[lib].append(((user1 - user0) / per_round * 1e6, (sys1 - sys0) / per_round * 1e6))
                    if lib in walls:
                        walls[lib] += time.perf_counter() - wall0
            for client in clients.values():
                await client.close()

    def median(lib: str, part=lambda user, system: user + system) -> float:
        return statistics.median(part(*sample) for sample in samples[lib])

    results = {lib: {"calls": per_round * rounds, "cpu_us_per_call": round(median(lib), 1),
                     "user_us_per_call": round(median(lib, lambda user, _: user), 1),
                     "system_us_per_call": round(median(lib, lambda _, system: system), 1),
                     "cpu_us_min_round": round(min(sum(sample) for sample in samples[lib]), 1)} for lib in kinds}
    for lib, wall_s in walls.items():
        results[lib]["calls_per_s"] = round(per_round * rounds / wall_s, 1)
    nija, ccxt = results["nija"], results["ccxt"]
    # Each round runs the libraries back to back: its own ratio is the least touched by the machine's slow spells.
    per_round = statistics.median(sum(n) / sum(c) for n, c in zip(samples["nija"], samples["ccxt"]))
    return {"results": results, "nija_vs_ccxt_cpu": round(nija["cpu_us_per_call"] / ccxt["cpu_us_per_call"], 2),
            "nija_vs_ccxt_cpu_median_of_rounds": round(per_round, 2),
            "nija_vs_ccxt_cpu_min_rounds": round(nija["cpu_us_min_round"] / ccxt["cpu_us_min_round"], 2),
            "nija_vs_ccxt_user_cpu": round(nija["user_us_per_call"] / ccxt["user_us_per_call"], 2)}


async def bench_same_key(calls: int = 200) -> dict:
    variants = [("nija", {}), ("nija window 5 ms", {"nonce_window": 5_000_000}), ("ccxt", {}),
                ("python-kraken-sdk", {})]
    creds = {label: new_credentials(f"same-{i}-", 1)[0] for i, (label, _) in enumerate(variants)}
    accounts = [{**creds[label], "tier": ROOMY, "window": kw.get("nonce_window", 0)} for label, kw in variants]
    out = {}
    with ServerProcess(accounts, jitter_ms=2) as server:
        from nija.kraken import KrakenContext

        async with KrakenContext(state_dir=tempfile.mkdtemp(prefix="nija-bench-")) as context:
            for label, kwargs in variants:
                lib = label.split()[0]
                extra = {"context": context, **kwargs} if lib == "nija" else {}
                client = make(lib, server.url, creds[label], **extra)
                started = time.perf_counter()
                replies = await asyncio.gather(*(client.balance() for _ in range(calls)), return_exceptions=True)
                wall_s = time.perf_counter() - started
                errors: dict[str, int] = {}
                for reply in replies:
                    if isinstance(reply, BaseException):
                        errors[short_error(reply)] = errors.get(short_error(reply), 0) + 1
                await client.close()
                out[label] = {"calls": calls, "ok": calls - sum(errors.values()), "errors": errors,
                              "wall_s": round(wall_s, 3), "ok_per_s": round((calls - sum(errors.values())) / wall_s)}
    return out


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def bench_fan_out(sizes: list[int], latency_ms: float = 50.0, with_ccxt: bool = True,
                        idle_s: float = 20.0) -> dict:
    """Cold round (new pool), warm round, and for the largest N a round after `idle_s` without traffic (aiohttp
    would have closed the pool after its default 15 s; NIJA's context keeps it for `KrakenContext.keepalive_s`)."""
    biggest = max(sizes)
    nija_creds = new_credentials("fan-nija-", biggest)
    ccxt_creds = new_credentials("fan-ccxt-", biggest) if with_ccxt else []
    accounts = [{**c, "tier": STARTER} for c in nija_creds + ccxt_creds]
    out: dict = {}
    with ServerProcess(accounts, latency_ms=latency_ms) as server:
        from nija.kraken import KrakenClient, KrakenContext

        for n in sizes:
            async with KrakenContext(state_dir=tempfile.mkdtemp(prefix="nija-bench-")) as context:
                # memory of the account clients themselves (including their per-key nonce lane and rate budget)
                gc.collect()
                tracemalloc.start()
                before = tracemalloc.take_snapshot()
                clients = [KrakenClient(c["key"], c["secret"], base_url=server.url, context=context,
                                        order_attempts=1, timeout_s=30) for c in nija_creds[:n]]
                after = tracemalloc.take_snapshot()
                tracemalloc.stop()
                client_bytes = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
                rounds = []
                round_count = 3 if n == biggest and idle_s > 0 else 2
                for round_no in range(round_count):  # cold (new connections), warm (pooled), after an idle spell
                    if round_no == 2:
                        await asyncio.sleep(idle_s)
                    started = time.perf_counter()
                    cpu0 = time.process_time()
                    replies = await asyncio.gather(
                        *(c.add_order("XBTUSD", "buy", Decimal("0.0001"), ordertype="limit", price=Decimal("10000"),
                                      cl_ord_id=f"f{n}-{round_no}-{i}") for i, c in enumerate(clients)),
                        return_exceptions=True)
                    wall_s = time.perf_counter() - started
                    errors = [short_error(r) for r in replies if isinstance(r, BaseException)]
                    rounds.append({"wall_s": round(wall_s, 3), "cpu_s": round(time.process_time() - cpu0, 3),
                                   "errors": len(errors), "error_kinds": sorted(set(errors))[:3]})
                out[f"nija N={n}"] = {"cold": rounds[0], "warm": rounds[1],
                                      "client_bytes_per_account": round(client_bytes / n)}
                if len(rounds) > 2:
                    out[f"nija N={n}"][f"after {idle_s:g} s idle"] = rounds[2]
                del clients
            if with_ccxt:
                import ccxt.async_support as ccxt

                clients = []
                for c in ccxt_creds[:n]:
                    client = ccxt.kraken({"apiKey": c["key"], "secret": c["secret"], "enableRateLimit": False,
                                          "timeout": 30_000})
                    client.urls["api"] = {"public": server.url, "private": server.url}
                    clients.append(client)
                started = time.perf_counter()
                cpu0 = time.process_time()
                replies = await asyncio.gather(
                    *(c.private_post_addorder({"pair": "XBTUSD", "type": "buy", "ordertype": "limit",
                                               "volume": "0.0001", "price": "10000"}) for c in clients),
                    return_exceptions=True)
                wall_s = time.perf_counter() - started
                errors = [short_error(r) for r in replies if isinstance(r, BaseException)]
                out[f"ccxt N={n}"] = {"cold": {"wall_s": round(wall_s, 3), "cpu_s": round(time.process_time() - cpu0, 3),
                                               "errors": len(errors), "error_kinds": sorted(set(errors))[:3]}}
                await asyncio.gather(*(c.close() for c in clients))
    return out


async def bench_starter(calls: int = 60) -> dict:
    creds = {lib: new_credentials(f"starter-{lib}-", 1)[0] for lib in LIBS}
    accounts = [{**c, "tier": STARTER} for c in creds.values()]
    ideal_s = (calls - 15) / 0.33
    out: dict = {"ideal_s": round(ideal_s, 1)}
    with ServerProcess(accounts) as server:
        from nija.kraken import KrakenContext

        async with KrakenContext(state_dir=tempfile.mkdtemp(prefix="nija-bench-")) as context:

            async def run(lib: str) -> None:
                client = make(lib, server.url, creds[lib], **({"context": context, "tier": STARTER} if lib == "nija"
                                                              else {"rate_limit": True}))
                errors: dict[str, int] = {}
                started = time.perf_counter()
                for _ in range(calls):  # as fast as the library allows, one after the other
                    try:
                        await client.balance()
                    except Exception as exc:  # noqa: BLE001 - counted
                        errors[short_error(exc)] = errors.get(short_error(exc), 0) + 1
                wall_s = time.perf_counter() - started
                await client.close()
                out[lib] = {"wall_s": round(wall_s, 1), "vs_ideal": round(wall_s / ideal_s, 3), "errors": errors}

            await asyncio.gather(*(run(lib) for lib in LIBS))
    return out


# ---- entry -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/client.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="(internal) run the exchange child process")
    serve.add_argument("spec")
    run = sub.add_parser("run", help="CPU, same-key concurrency and fan-out scenarios")
    run.add_argument("--quick", action="store_true", help="smaller N for a smoke run")
    run.add_argument("--no-ccxt-fan-out", action="store_true")
    run.add_argument("--idle-s", type=float, default=20.0, help="quiet spell before the last fan-out round")
    run.add_argument("--out", help="write the results as JSON here too")
    cpu = sub.add_parser("cpu", help="client CPU per call alone (about 15 s)")
    cpu.add_argument("--calls", type=int, default=2000)
    cpu.add_argument("--out")
    starter = sub.add_parser("starter", help="60 Balance calls on a Starter key per library (~2.5 minutes)")
    starter.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_main(args.spec)
    import structlog
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.command == "run":
        results = {
            "machine": f"{os.cpu_count()} CPU, Python {sys.version.split()[0]}",
            "cpu": event_loop.run(bench_cpu(200 if args.quick else 2000)),
            "same_key": event_loop.run(bench_same_key(200)),
            "fan_out": event_loop.run(bench_fan_out([10, 100] if args.quick else [10, 100, 1000],
                                                 with_ccxt=not args.no_ccxt_fan_out, idle_s=args.idle_s)),
        }
    elif args.command == "cpu":
        results = {"cpu": event_loop.run(bench_cpu(args.calls))}
    else:
        results = {"starter": event_loop.run(bench_starter())}
    results["event_loop"] = "uvloop" if event_loop.loop_factory() else "asyncio"
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
