"""Copy lag of a master that trades every few seconds: the daemon as `nija run` runs it, against the embedded exchange.

The master's own tool (a second key of the master account, as in paper mode) places `--trades` market orders,
`--spacing-s` apart (buys and sells in the pattern of `--sides`: b = buy, s = sell); the daemon watches the master
(each trade streamed on the WebSocket executions channel wakes a REST poll, each within the key's rate counter;
`--no-feed` polls only, as KRAKEN_WS_AUTH_URL=off does) and copies every fill to one follower. The lag of each copy is the
engine's own `copy_summary.latency_ms`: from the master's fill (its close time on the exchange) to the follower's
acknowledgement. On a Starter key the counter decays by 0.33 call/s, so the polls, not the orders, set the lag.

    .venv/bin/python -m bench.master_lag                       # Starter, 10 trades 3 s apart
    .venv/bin/python -m bench.master_lag --tier pro --sides bbsbbsbbsb --spacing-s 3
    .venv/bin/python -m bench.master_lag --no-feed             # polls only

Everything runs in this process on 127.0.0.1, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structlog.testing import capture_logs  # noqa: E402

from nija import event_loop  # noqa: E402
from nija.daemon import run  # noqa: E402
from nija.exchange import Exchange  # noqa: E402
from nija.kraken.client import KrakenClient, KrakenContext  # noqa: E402
from nija.settings import load_settings  # noqa: E402

PAIR = "XBTUSD"


async def _bench(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nija-master-lag-"))
    exchange = Exchange(seed=7)
    exchange.set_price(PAIR, Decimal("50000"))
    master = exchange.create_account("whale", {"ZUSD": "10000"}, tier=args.tier)
    follower = exchange.create_account("lagfollower", {"ZUSD": "1000"}, tier=args.tier)
    trader = exchange.add_key("whale")
    (tmp / "users").mkdir()
    (tmp / "users" / "lagfollower.json").write_text(json.dumps({"name": "lagfollower"}))
    os.environ["KRAKEN_USER_LAGFOLLOWER_API_KEY"] = follower.api_key
    os.environ["KRAKEN_USER_LAGFOLLOWER_API_SECRET"] = follower.api_secret
    async with exchange.serve(host="127.0.0.1", port=0) as server:
        settings = load_settings({
            "KRAKEN_API_URL": server.url, "KRAKEN_MASTER_API_KEY": master.api_key,
            "KRAKEN_MASTER_API_SECRET": master.api_secret, "NIJA_STATE_DIR": str(tmp / "state"),
            "NIJA_USERS_DIR": str(tmp / "users"), "KRAKEN_TIER": args.tier,
            **({} if args.feed else {"KRAKEN_WS_AUTH_URL": "off"})}, dotenv_path=None)
        stop = asyncio.Event()
        with capture_logs() as logs:
            daemon = asyncio.create_task(run(settings, stop=stop))
            while not (tmp / "state" / "master_fills.json").exists():
                await asyncio.sleep(0.1)
            async with KrakenContext(state_dir=tmp / "trader") as context:
                tool = KrakenClient(trader.api_key, trader.api_secret, base_url=server.url, context=context,
                                    tier=args.tier)
                sides = (args.sides * args.trades)[:args.trades]
                for side in sides:
                    await tool.add_order(PAIR, "buy" if side == "b" else "sell", Decimal("0.002"), oflags="fciq")
                    await asyncio.sleep(args.spacing_s)
                give_up_at = time.monotonic() + args.max_wait_s
                while (sum(1 for line in logs if line["event"] == "copy_summary") < len(sides)
                       and time.monotonic() < give_up_at):
                    await asyncio.sleep(0.5)
            stop.set()
            await daemon
    summaries = [line for line in logs if line["event"] == "copy_summary" and line.get("latency_ms") is not None]
    lags_s = [round(line["latency_ms"] / 1000, 1) for line in summaries]
    return {"tier": args.tier, "feed": args.feed, "trades": len(sides), "spacing_s": args.spacing_s, "copied": len(summaries),
            "lag_s": [f"{line['side'][0]}{lag}" for line, lag in zip(summaries, lags_s)],
            "median_s": statistics.median(lags_s) if lags_s else None, "max_s": max(lags_s) if lags_s else None,
            "rate_limit_errors": sum(1 for line in logs if "Rate limit" in json.dumps(line, default=str))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", default="starter", help="the keys' tier: starter, intermediate or pro")
    parser.add_argument("--trades", type=int, default=10)
    parser.add_argument("--spacing-s", type=float, default=3.0)
    parser.add_argument("--sides", default="bbs", help="pattern of buys (b) and sells (s), repeated")
    parser.add_argument("--no-feed", dest="feed", action="store_false", help="poll only (KRAKEN_WS_AUTH_URL=off)")
    parser.add_argument("--max-wait-s", type=float, default=90.0, help="after the last trade, for the last copy")
    print(json.dumps(event_loop.run(_bench(parser.parse_args(argv)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
