"""Time limits for many calls in flight with few timers.

`asyncio.timeout` arms a loop timer per use (on asyncio's own loop, left cancelled in its heap until due): a fan-out of 1,000 orders
would arm 1,000 timers, and each costs about 5 µs more than a slot here. Every private Kraken call and every copy
engine call to the exchange take their limit from a `RequestTimeouts` instead.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["RequestTimeouts"]


class RequestTimeouts:
    """Time limits for many requests in flight with few timers.

    Each request joins the slot of its deadline rounded up to `resolution_s`; one loop timer per slot cancels the
    requests still in it, like `asyncio.timeout` does, and `leave` tells the request it was its time that ran out.
    A fan-out of 1,000 requests then arms a handful of timers instead of 1,000. A request may run up to
    `resolution_s` past its limit.

    `enter`/`leave` bracket a request by hand; `async with timeouts.limit(s):` is `asyncio.timeout(s)` on them.
    Limits of several instances nest in one task as `asyncio.timeout`s do: the one whose time ran out raises. A task
    holds at most one window of one instance at a time (its windows are filed by task).
    """

    __slots__ = ("resolution_s", "_slots", "_expired")

    def __init__(self, resolution_s: float = 0.05) -> None:
        self.resolution_s = resolution_s
        self._slots: dict[int, dict[asyncio.Task, int]] = {}  # slot → {task: its cancel count on entry}
        self._expired: dict[asyncio.Task, int] = {}

    def enter(self, timeout_s: float) -> tuple[int, asyncio.Task]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a time limit applies to a task"
        slot = math.ceil((loop.time() + timeout_s) / self.resolution_s)
        tasks = self._slots.get(slot)
        if tasks is None:
            tasks = self._slots[slot] = {}
            loop.call_at(slot * self.resolution_s, self._expire, slot)
        tasks[task] = task.cancelling()
        return slot, task

    def leave(self, slot: int, task: asyncio.Task) -> bool:
        """Close the request's window; True when its time ran out and the cancellation was ours (now undone)."""
        tasks = self._slots.get(slot)
        if tasks is not None:
            tasks.pop(task, None)
        entered = self._expired.pop(task, None)
        return entered is not None and task.uncancel() <= entered

    def limit(self, timeout_s: float) -> _Limit:
        """An async context manager that raises TimeoutError once `timeout_s` has run out, as `asyncio.timeout`."""
        return _Limit(self, timeout_s)

    def _expire(self, slot: int) -> None:
        for task, entered in self._slots.pop(slot, {}).items():
            if not task.done():
                self._expired[task] = entered
                task.cancel()


class _Limit:
    __slots__ = ("_timeouts", "_timeout_s", "_window")

    def __init__(self, timeouts: RequestTimeouts, timeout_s: float) -> None:
        self._timeouts = timeouts
        self._timeout_s = timeout_s

    async def __aenter__(self) -> None:
        self._window = self._timeouts.enter(self._timeout_s)

    async def __aexit__(self, exc_type, exc, traceback) -> None:
        if self._timeouts.leave(*self._window) and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
