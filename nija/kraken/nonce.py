"""Nonces: one strictly increasing sequence per API key in the process, never below a persisted high-water mark.

Scale: nanoseconds since the epoch (~1.7e18). That is above every common library's scale (ccxt and krakenex use
milliseconds, python-kraken-sdk 1e-8 s), so a key used before by another tool keeps working with NIJA.

Persistence, cheaply: the coordinator *reserves* nonces ahead (`reserve_ns`, 5 s by default) and writes only the
end of the reservation to `<NIJA state dir>/nonces/nonce_high_water`. A nonce is issued only below a mark already on
disk, so after a restart — even with the clock stepped back — every key starts above every nonce ever issued. One
mark serves every key (it bounds all of them), so fan-out to a thousand accounts still costs one small write per
reservation, not one per call or per key. Once half a reservation is used, the next one is written on a thread of
its own (so under steady use about one write every 2.5 s), and the event loop does not wait for the disk (a write
and two fsyncs, milliseconds) in the middle of a fan-out; a call waits for a write only when the nonces outrun it.

The reservation is kept short because a restart starts from the mark: nonces then run ahead of the clock by up to
the reservation, and if the state dir is ever lost every key would see `EAPI:Invalid nonce` until the clock caught
up. On `EAPI:Invalid nonce` the client moves the key's sequence a reservation ahead of the clock (`jump_ahead`),
which gets past what an earlier run used without waiting.

Send order: `NonceLane` makes private calls on one key leave in nonce order. With nonce window 0 only one call is in
flight at a time, because the server checks nonces in arrival order and two requests in flight can overtake each
other. With a window W (in nonce units, i.e. nanoseconds here) several calls may be in flight as long as the newest
nonce stays within W of the oldest unanswered one; those calls take consecutive nonces so that a small window goes
a long way.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

__all__ = ["NonceCoordinator", "NonceLane", "default_state_dir", "nonce_dir", "MARK_FILE_NAME", "NONCE_SUBDIR"]

MARK_FILE_NAME = "nonce_high_water"
NONCE_SUBDIR = "nonces"
DEFAULT_RESERVE_NS = 5 * 1_000_000_000


def default_state_dir() -> Path:
    """NIJA_STATE_DIR, or `state/` in the working directory."""
    return Path(os.environ.get("NIJA_STATE_DIR") or "state")


def nonce_dir(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the nonce mark of a NIJA state dir lives: `<state_dir>/nonces/` (default state dir when None)."""
    return Path(state_dir if state_dir is not None else default_state_dir()) / NONCE_SUBDIR


class NonceCoordinator:
    """Issues nonces per key id. Thread-safe; shared by every client in the process through `for_state_dir`.

    `NonceCoordinator(directory)` keeps its mark in `directory` itself; `for_state_dir(state_dir)` is the one for a
    NIJA state dir (mark in `<state_dir>/nonces/`), which the daemon and `default_context()` both use.
    """

    _shared: dict[Path, NonceCoordinator] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        reserve_ns: int = DEFAULT_RESERVE_NS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if reserve_ns <= 0:
            raise ValueError(f"NonceCoordinator reserve_ns must be positive, got {reserve_ns}")
        self._path = Path(state_dir if state_dir is not None else default_state_dir()) / MARK_FILE_NAME
        self._reserve_ns = reserve_ns
        self._clock_ns = clock_ns
        self._lock = threading.Lock()  # issuing nonces
        self._write_lock = threading.Lock()  # writing the mark; taken after `_lock`, never before it
        self._last_by_key: dict[str, int] = {}
        self._floor = self._read_mark()  # every nonce issued by this process is above it
        self._reserved_until = self._floor  # issued nonces stay at or below this, and it is on disk
        self._extending = False  # a thread is writing the next reservation
        self.mark_writes = 0  # for tests and benchmarks: how often the mark hit the disk

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str] | None = None) -> NonceCoordinator:
        """The process-wide coordinator of a NIJA state dir (created on first use), mark in `<state_dir>/nonces/`."""
        path = nonce_dir(state_dir).resolve()
        with cls._shared_lock:
            coordinator = cls._shared.get(path)
            if coordinator is None:
                coordinator = cls._shared[path] = cls(path)
            return coordinator

    @property
    def mark_path(self) -> Path:
        return self._path

    @property
    def high_water_mark(self) -> int:
        """The mark on disk: no nonce issued by this process, now or before a restart, exceeds it."""
        return self._reserved_until

    def next_nonce(self, key_id: str, *, compact: bool = False, at_most: int | None = None) -> int | None:
        """The next nonce for `key_id`: the clock in ns, or last + 1 when the clock is behind (or `compact`).

        With `at_most`, returns None (and issues nothing) when the next nonce would exceed it.
        """
        with self._lock:
            last = self._last_by_key.get(key_id, self._floor)
            nonce = last + 1 if compact else max(last + 1, self._clock_ns())
            if at_most is not None and nonce > at_most:
                return None
            if nonce > self._reserved_until:
                self._write_mark(nonce + self._reserve_ns, covering=nonce)
            elif nonce > self._reserved_until - self._reserve_ns // 2 and not self._extending:
                self._extending = True
                try:
                    threading.Thread(target=self._extend, args=(nonce + self._reserve_ns,), name="nonce-mark",
                                     daemon=True).start()
                except RuntimeError:  # no thread to be had: this nonce is covered; a later call writes the mark
                    self._extending = False
            self._last_by_key[key_id] = nonce
            return nonce

    def jump_ahead(self, key_id: str) -> int:
        """After `EAPI:Invalid nonce`: move `key_id`'s sequence a reservation ahead of the clock (or of its last
        nonce, if that is later), past what an earlier run with a lost mark may have used. Returns the new last."""
        with self._lock:
            last = self._last_by_key.get(key_id, self._floor)
            target = max(last, self._clock_ns()) + self._reserve_ns
        self.skip_past(key_id, target)
        return target

    def skip_past(self, key_id: str, nonce: int) -> None:
        """Make every later nonce of `key_id` exceed `nonce` (used to out-rank a request whose fate is unknown)."""
        with self._lock:
            if nonce > self._reserved_until:
                self._write_mark(nonce + self._reserve_ns, covering=nonce)
            if nonce > self._last_by_key.get(key_id, self._floor):
                self._last_by_key[key_id] = nonce

    def last_nonce(self, key_id: str) -> int | None:
        with self._lock:
            return self._last_by_key.get(key_id)

    def _read_mark(self) -> int:
        try:
            text = self._path.read_text(errors="replace").strip()  # damaged bytes fail the int check below
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            raise ValueError(
                f"{self._path}: nonce high-water mark {text[:40]!r} is not an integer. Restore it from a backup, or "
                f"write a value above the last nonce used (e.g. the current time in ns: {time.time_ns()})"
            ) from None

    def _extend(self, mark: int) -> None:
        """The next reservation, written ahead of need. A failure here is not reported: the write a call then
        waits for raises it to that call."""
        try:
            self._write_mark(mark, covering=mark)
        except OSError:
            pass
        finally:
            self._extending = False

    def _write_mark(self, mark: int, *, covering: int) -> None:
        """Put `mark` on disk unless the mark there covers `covering` already (a write ahead that finished while
        this call waited for it). Written before any nonce below it is handed out; atomic replace, so a crash leaves
        the old mark or the new one. One writer at a time, and the mark on disk only ever rises."""
        with self._write_lock:
            if covering <= self._reserved_until:
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "w") as handle:
                handle.write(f"{mark}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
            # The rename itself must survive a power loss too, or the previous (lower) mark could come back.
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._reserved_until = mark
            self.mark_writes += 1


class NonceLane:
    """Send permission for one key: grants nonces in FIFO order and keeps calls in flight within the nonce window.

    Use: `nonce = await lane.acquire()`, sign and send with it, then `lane.release(nonce)` once the reply (or the
    failure) is in. All clients of a key share one lane.
    """

    __slots__ = ("_nonces", "_key_id", "window", "max_in_flight", "_in_flight", "_waiters")

    def __init__(self, nonces: NonceCoordinator, key_id: str, *, window: int = 0, max_in_flight: int = 64) -> None:
        if window < 0:
            raise ValueError(f"nonce_window must be >= 0, got {window}")
        self._nonces = nonces
        self._key_id = key_id
        self.window = window
        self.max_in_flight = 1 if window == 0 else max(1, min(max_in_flight, window + 1))
        self._in_flight: list[int] = []  # nonces sent and unanswered, increasing (a list: small per key)
        self._waiters: deque[asyncio.Future[int]] | None = None  # created on first contention

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _try_grant(self) -> int | None:
        if not self._in_flight:
            nonce = self._nonces.next_nonce(self._key_id)
        elif len(self._in_flight) < self.max_in_flight:
            # Within the window of the oldest unanswered call, or wait for it to answer.
            nonce = self._nonces.next_nonce(self._key_id, compact=True, at_most=self._in_flight[0] + self.window)
            if nonce is None:
                return None
        else:
            return None
        self._in_flight.append(nonce)
        return nonce

    def grant_now(self) -> int | None:
        """A nonce at once when the key is free (nobody waiting, room in the window), else None: then `acquire`."""
        return None if self._waiters else self._try_grant()

    async def acquire(self) -> int:
        nonce = self.grant_now()
        if nonce is not None:
            return nonce
        if self._waiters is None:
            self._waiters = deque()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())
            else:
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            raise

    def release(self, nonce: int) -> None:
        try:
            self._in_flight.remove(nonce)
        except ValueError:
            pass
        self._wake()

    def skip_past(self, nonce: int) -> None:
        """Later nonces on this key exceed `nonce` (see NonceCoordinator.skip_past)."""
        self._nonces.skip_past(self._key_id, nonce)

    def jump_ahead(self) -> None:
        """After `EAPI:Invalid nonce` (see NonceCoordinator.jump_ahead)."""
        self._nonces.jump_ahead(self._key_id)

    def _wake(self) -> None:
        while self._waiters:
            if self._waiters[0].done():  # cancelled while queued
                self._waiters.popleft()
                continue
            try:
                nonce = self._try_grant()
            except Exception as exc:  # e.g. the mark could not be written: this call fails, the key goes on
                self._waiters.popleft().set_exception(exc)
                continue
            if nonce is None:
                return
            self._waiters.popleft().set_result(nonce)
