"""Benchmark of the embedded exchange: private calls per second on one core, and memory over 100,000 orders.

    .venv/bin/python bench/exchange.py                 # both parts, human-readable report
    .venv/bin/python bench/exchange.py --seconds 5 --json

Throughput: the exchange runs in a child process pinned to one CPU core (`sched_setaffinity`); the load generator
(aiohttp, in this process, on the other core) drives `--keys` distinct API keys, one request in flight per key, each
request signed with its own strictly increasing nonce, so every call goes through key lookup, HMAC-SHA512 signature
check, nonce check and the REST counter. Three mixes: Balance; AddOrder (market, alternating buy/sell); and
Balance with 50 ms of exchange latency (the fan-out benchmarks' setting: latency is an asyncio sleep, not CPU).

Memory: 100,000 market orders with client order ids through `Exchange.call` in this process; RSS is sampled every
10,000 orders. Closed orders are kept up to `closed_orders_kept` per account, so after that RSS must stay flat.

Only 127.0.0.1 is used; every loop is bounded in count and time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: a bench/copy.py there would shadow the standard library's `copy`.
ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import os
import resource
import subprocess
import time
import urllib.parse
from decimal import Decimal

from bench.cores import exchange_core, pin_client, pin_exchange  # noqa: E402
from nija import event_loop  # noqa: E402
from nija.kraken.auth import sign  # noqa: E402
from nija.kraken.limits import Tier  # noqa: E402

UNLIMITED = Tier("bench", rest_max=1e12, rest_decay_per_s=1e9, trading_max=1e12, trading_decay_per_s=1e9,
                 max_open_orders_per_pair=10**9)


def _keys(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        key = base64.b64encode(hashlib.sha384(f"bench-key-{i}".encode()).digest()[:42]).decode()
        secret = base64.b64encode(hashlib.sha512(f"bench-secret-{i}".encode()).digest()).decode()
        out.append((key, secret))
    return out


# ---- the server child ---------------------------------------------------------------------------------------------
def serve_child(keys: int, core: int | None) -> None:
    pin_exchange(core)
    from nija.exchange import Exchange

    async def run() -> None:
        ex = Exchange(seed=7, speed=1.0)
        for i, (key, secret) in enumerate(_keys(keys)):
            ex.create_account(f"k{i}", {"ZUSD": "100000000", "XXBT": "1000"}, tier=UNLIMITED, api_key=key,
                              api_secret=secret)
        ex.set_price("XBTUSD", Decimal("50000"))
        async with ex.serve(host="127.0.0.1", port=0) as server:
            print(json.dumps({"url": server.url, "token": ex.admin_token}), flush=True)
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closes stdin to stop us
            await asyncio.wait_for(stop.wait(), 3600)

    event_loop.run(run())


# ---- the load generator -------------------------------------------------------------------------------------------
async def load(url: str, keys: list[tuple[str, str]], seconds: float, method: str, token: str,
               latency_ms: float = 0.0) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        if latency_ms:
            async with session.post(f"{url}/admin/latency", headers={"X-Admin-Token": token},
                                    json={"latency_ms": latency_ms}) as resp:
                assert resp.status == 200, await resp.text()
        ok = errors = 0
        error_kinds: dict[str, int] = {}
        deadline = time.monotonic() + seconds
        lat: list[float] = []

        async def worker(i: int, key: str, secret_b64: str) -> None:
            nonlocal ok, errors
            secret = base64.b64decode(secret_b64)
            nonce = time.time_ns()
            path = f"/0/private/{method}"
            side = ("buy", "sell")
            n = 0
            while time.monotonic() < deadline:
                nonce += 1
                if method == "AddOrder":
                    body = urllib.parse.urlencode({"nonce": nonce, "pair": "XBTUSD", "type": side[n % 2],
                                                   "ordertype": "market", "volume": "0.0001", "oflags": "fciq",
                                                   "cl_ord_id": f"b{i}-{n}"})
                else:
                    body = f"nonce={nonce}"
                n += 1
                headers = {"API-Key": key, "API-Sign": sign(path, nonce, body, secret),
                           "Content-Type": "application/x-www-form-urlencoded"}
                t0 = time.perf_counter()
                async with session.post(url + path, data=body, headers=headers) as resp:
                    data = await resp.json(content_type=None)
                lat.append(time.perf_counter() - t0)
                if data.get("error"):
                    errors += 1
                    e = data["error"][0]
                    error_kinds[e] = error_kinds.get(e, 0) + 1
                else:
                    ok += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i, k, s) for i, (k, s) in enumerate(keys)))
        elapsed = time.monotonic() - started
        if latency_ms:
            async with session.post(f"{url}/admin/latency", headers={"X-Admin-Token": token},
                                    json={"latency_ms": 0}) as resp:
                await resp.read()
    lat.sort()
    return {"method": method, "keys": len(keys), "latency_ms": latency_ms, "seconds": round(elapsed, 2),
            "ok": ok, "errors": errors, "error_kinds": error_kinds, "calls_per_s": round(ok / elapsed),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(args: argparse.Namespace) -> list[dict]:
    keys = _keys(args.keys)
    core = exchange_core()
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--keys", str(args.keys)]
                             + ([] if core is None else ["--core", str(core)]),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        pin_client(core)
        results = []
        for method, latency in (("Balance", 0.0), ("AddOrder", 0.0), ("Balance", 50.0)):
            cpu0 = _cpu_seconds(child.pid)
            r = event_loop.run(load(info["url"], keys, args.seconds, method, info["token"], latency))
            r["server_cpu_s"] = round(_cpu_seconds(child.pid) - cpu0, 2)
            r["server_cpu_per_call_us"] = round(r["server_cpu_s"] / max(1, r["ok"] + r["errors"]) * 1e6, 1)
            r["calls_per_server_cpu_s"] = round((r["ok"] + r["errors"]) / max(r["server_cpu_s"], 1e-9))
            results.append(r)
        return results
    finally:
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(args: argparse.Namespace) -> dict:
    from nija.exchange import Exchange

    ex = Exchange(seed=7, speed=1.0)
    ex.create_account("m", {"ZUSD": "1000000000", "XXBT": "100000"}, tier=UNLIMITED)
    ex.set_price("XBTUSD", Decimal("50000"))
    samples = []
    gc.collect()
    base = _rss_mb()
    started = time.perf_counter()
    side = ("buy", "sell")
    for i in range(args.orders):
        ex.call("m", "AddOrder", {"pair": "XBTUSD", "type": side[i % 2], "ordertype": "market", "volume": "0.0001",
                                  "oflags": "fciq", "cl_ord_id": f"mem-{i}"})
        if (i + 1) % 10_000 == 0:
            gc.collect()
            samples.append((i + 1, round(_rss_mb() - base, 1)))
    elapsed = time.perf_counter() - started
    kept = ex.closed_orders_kept
    cap = max(kept, ex.cl_ord_ids_kept)
    after_cap = [mb for n, mb in samples if n >= cap]
    return {"orders": args.orders, "seconds": round(elapsed, 2), "orders_per_s_in_process": round(args.orders / elapsed),
            "closed_orders_kept": kept, "cl_ord_ids_kept": ex.cl_ord_ids_kept, "rss_growth_mb_by_orders": samples,
            "bytes_per_kept_order": round(samples[1][1] * 2**20 / 20_000) if len(samples) > 1 else None,
            "growth_after_caps_mb": round(after_cap[-1] - after_cap[0], 1) if len(after_cap) > 1 else None,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per throughput mix")
    p.add_argument("--keys", type=int, default=200, help="distinct API keys (one request in flight each)")
    p.add_argument("--orders", type=int, default=100_000, help="orders for the memory part")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve_child(args.keys, args.core)
        return 0
    report: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if not args.skip_throughput:
        report["throughput"] = throughput(args)
    if not args.skip_memory:
        report["memory"] = memory(args)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"embedded exchange benchmark (Python {report['python']}, {report['cpus']} CPUs)")
    for r in report.get("throughput", []):
        print(f"  {r['method']:<9} keys={r['keys']:<5} latency={r['latency_ms']:>4g} ms  {r['calls_per_s']:>6} calls/s"
              f"  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  server CPU {r['server_cpu_per_call_us']} µs/call"
              f" (= {r['calls_per_server_cpu_s']} calls per server-core-second)  errors {r['errors']}"
              f" {r['error_kinds'] or ''}")
    m = report.get("memory")
    if m:
        print(f"  memory: {m['orders']} orders in {m['seconds']} s; RSS growth by orders {m['rss_growth_mb_by_orders']}"
              f"; ~{m['bytes_per_kept_order']} B per kept order; growth once the caps are reached"
              f" ({m['closed_orders_kept']} closed orders, {m['cl_ord_ids_kept']} cl_ord_ids): {m['growth_after_caps_mb']} MB")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
