"""The event loop every NIJA command runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop runs the loop, its sockets and its callbacks in C (libuv) where asyncio's loop runs them in Python, and much
of NIJA's work is that: a connection per account, a request written and a reply read per order. On uvloop NIJA
spends ≈ 10–15 % less CPU on a copy fan-out or on a fan-out to 1,000 keys on new connections, and the embedded
exchange ≈ 35 % less to accept and answer those 1,000 (docs/benchmarks/client.md, docs/benchmarks/copy.md).

`NIJA_EVENT_LOOP=asyncio` runs on asyncio's own loop instead (uvloop is not made for Windows or PyPy, where that is
what runs anyway). The test suite runs on uvloop, and the tests that depend most on how a loop handles sockets, timers
and signals run on both.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["ENV", "TIMER_STEP_S", "loop_factory", "loop_name", "run", "setting_problems"]

ENV = "NIJA_EVENT_LOOP"
_CHOICES = ("uvloop", "asyncio")

#: uvloop's timers and `loop.time()` move in whole milliseconds: a sleep may end up to this much before the moment
#: it was asked to reach. A wait that must not end early (one that proves an order absent) sleeps this much longer.
TIMER_STEP_S = 0.001

T = TypeVar("T")


def _choice(environ: Mapping[str, str]) -> str:
    return (environ.get(ENV) or "uvloop").strip().lower()


def setting_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with NIJA_EVENT_LOOP (a run carries on with the default; `nija check` reports it)."""
    choice = _choice(os.environ if environ is None else environ)
    if choice not in _CHOICES:
        return [f"{ENV}={choice!r} is not an event loop: use uvloop (the default) or asyncio"]
    return []


def loop_factory(environ: Mapping[str, str] | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop NIJA_EVENT_LOOP asks for; None for asyncio's own (also when uvloop is missing)."""
    environ = os.environ if environ is None else environ
    factory = None
    if _choice(environ) != "asyncio":
        try:
            import uvloop
        except ImportError:  # not installed on this platform: asyncio's loop does the same work, with more CPU
            pass
        else:
            factory = uvloop.new_event_loop
    for problem in setting_problems(environ):
        print(f"{problem}; using {'uvloop' if factory else 'asyncio'}", file=sys.stderr)
    return factory


def run(main: Coroutine[Any, Any, T], *, environ: Mapping[str, str] | None = None) -> T:
    """`asyncio.run(main)` on the loop NIJA_EVENT_LOOP asks for."""
    with asyncio.Runner(loop_factory=loop_factory(environ)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio": what the running loop (or `loop`) is, for the start-up log line."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
