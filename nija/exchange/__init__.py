"""The embedded Kraken-compatible exchange: NIJA's paper-trading default, its test bed and its fault injector.

    from nija.exchange import Exchange, Fault
    ex = Exchange(seed=7, speed=1.0)
    acct = ex.create_account("alice", balances={"ZUSD": Decimal("100")}, tier="starter")
    async with ex.serve(host="127.0.0.1", port=0, latency_ms=0, jitter_ms=0) as server:
        ...  # server.url is the base URL for any Kraken client

`engine.py` holds state and rules (no I/O), `market.py` the price paths and book, `faults.py` the fault injector,
`app.py` the aiohttp application, `sim.py` the `nija sim` command.
"""

from .engine import DEMO_ACCOUNTS, Account, Exchange, KrakenReject, Order, Trade
from .faults import FAULT_KINDS, Fault
from .pairs import ASSETS, PAIRS, resolve_pair

__all__ = ["Exchange", "Fault", "FAULT_KINDS", "Account", "Order", "Trade", "KrakenReject", "DEMO_ACCOUNTS",
           "ASSETS", "PAIRS", "resolve_pair"]
