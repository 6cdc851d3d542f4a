"""Keep the embedded exchange and NIJA on separate CPU cores during a benchmark.

The exchange stands in for Kraken's servers, which are other machines. Left to the kernel, the exchange process is
woken on the core of the process that just wrote to it (its socket's wake-up is "affine"), so on a 2-core host the
two often share one core while the other idles, and each request write waits for the exchange's turn. Pinning the
exchange to the last core and the benchmark's own process to the others keeps the exchange's CPU out of NIJA's
figures. It is a no-op on a 1-core host or without `os.sched_setaffinity`.
"""

from __future__ import annotations

import os


def _cores() -> list[int]:
    if not hasattr(os, "sched_setaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def exchange_core() -> int | None:
    """The core the exchange gets (the last one this process may use), or None when pinning would not help."""
    cores = _cores()
    return cores[-1] if len(cores) > 1 else None


def pin_exchange(core: int | None) -> None:
    """In the exchange's process: run on `core` only."""
    if core is not None:
        os.sched_setaffinity(0, {core})


def pin_client(core: int | None) -> None:
    """In the benchmark's process: stay off the exchange's core."""
    if core is not None:
        others = set(os.sched_getaffinity(0)) - {core}
        if others:
            os.sched_setaffinity(0, others)
