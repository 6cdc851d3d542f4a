"""NIJA's durable state: SQLite in WAL mode through one aiosqlite connection.

Tables
    signals   one row per master fill; stored before fan-out (DESIGN invariant 6). status new → done.
    intents   one row per follower per signal, with the client order id fixed *before* the order is sent. All intents
              of a signal are inserted in one transaction before any of its orders leaves. status:
                  pending   stored; the order may or may not have been sent
                  unknown   sent, outcome could not be settled (lookup by cl_ord_id on resume)
                  done      acknowledged by the exchange (order id recorded)
                  skipped   not sent, with the reason
                  failed    rejected / not sent because of an error, with the reason
              pending and unknown are "unfinished": resume looks them up by cl_ord_id, then finishes or sends them.
    day_marks a follower's equity at the start of a UTC day (for max_daily_loss across restarts)
    loss_limits the UTC days on which a follower reached max_daily_loss (no entries for the rest of the day)

Results are written as they arrive but committed in small batches: losing the last batch in a crash is safe, because
the intent stays unfinished and is reconciled by its client order id, never resent blindly.

Checkpoints (copying the WAL into the database file, with an fsync) are the store's own, not SQLite's automatic
ones: SQLite runs those inside whichever commit crosses 1,000 pages, and when that commit is a signal's intents every
order of the fan-out waits for it (up to 8 ms here). The store checkpoints on a connection of its own, after a
finished signal or a batch of results, at most every `CHECKPOINT_EVERY_S`; SQLite once more when the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiosqlite

from nija.logs import get_logger
from nija.trading.signals import Signal

__all__ = ["Store", "StoreError", "IntentRow", "UNFINISHED", "FINISHED"]

log = get_logger("nija.store")

#: at most this often, once a signal is finished, the WAL is copied into the database file
CHECKPOINT_EVERY_S = 10.0

UNFINISHED = ("pending", "unknown")
FINISHED = ("done", "skipped", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (
    signal_id   TEXT PRIMARY KEY,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'new',
    created_at  REAL NOT NULL,
    finished_at REAL,
    summary     TEXT
);
CREATE TABLE IF NOT EXISTS intents (
    signal_id    TEXT NOT NULL,
    follower     TEXT NOT NULL,
    cl_ord_id    TEXT NOT NULL UNIQUE,
    pair         TEXT NOT NULL,
    side         TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    volume_base  TEXT,
    notional_usd TEXT,
    order_id     TEXT,
    reason       TEXT,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (signal_id, follower)
);
DROP INDEX IF EXISTS intents_unfinished;
CREATE TABLE IF NOT EXISTS day_marks (
    follower         TEXT NOT NULL,
    day              TEXT NOT NULL,
    start_equity_usd TEXT NOT NULL,
    PRIMARY KEY (follower, day)
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS loss_limits (
    follower TEXT NOT NULL,
    day      TEXT NOT NULL,
    PRIMARY KEY (follower, day)
);
"""


_INSERT_INTENTS = ("INSERT OR IGNORE INTO intents(signal_id, follower, cl_ord_id, pair, side, status, volume_base,"
                   " notional_usd, order_id, reason, updated_at) VALUES ")
_INTENT_VALUES = "(?,?,?,?,?,?,?,?,?,?,?)"
# SQLite binds at most 32,766 values in one statement (999 before 3.32).
_INTENTS_PER_STATEMENT = (32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999) // _INTENT_VALUES.count("?")


def _checkpoint_wal(path: str) -> None:
    """Copy the WAL into the database file, on a connection (and thread) of its own: in WAL mode the store's own
    connection goes on reading and committing meanwhile, and its thread is never taken by the copy and its fsync."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        connection.close()


class StoreError(RuntimeError):
    """The store file cannot be used; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class IntentRow:
    signal_id: str
    follower: str
    cl_ord_id: str
    pair: str
    side: str
    status: str = "pending"
    volume_base: Decimal | None = None
    notional_usd: Decimal | None = None
    order_id: str | None = None
    reason: str | None = None
    updated_at_s: float | None = None  # unix seconds it was stored or last updated (read back; not written)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _row(values) -> IntentRow:
    sid, follower, cl, pair, side, status, vol, notional, order_id, reason, updated_at_s = values
    return IntentRow(sid, follower, cl, pair, side, status, _dec(vol), _dec(notional), order_id, reason,
                     updated_at_s)


class Store:
    """Open with `await Store.open(path)` (or `async with await Store.open(path) as store`)."""

    def __init__(self, db: aiosqlite.Connection, path: str | Path = ":memory:") -> None:
        self._db = db
        self.path = path
        self._pending_results: list[tuple] = []
        self._flushing: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one writer transaction at a time on the shared connection
        self._checkpointed_at_s = time.monotonic()
        self._checkpointing: asyncio.Task | None = None

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash (not a power cut); FULL costs an fsync per commit.
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA wal_autocheckpoint=0")  # see the module docstring: checkpoints are ours
            await db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            await db.close()  # its worker thread would otherwise keep the process alive
            raise StoreError(
                f"{path}: the store cannot be opened ({exc}). Restore it from a backup, or move it away to start "
                "with an empty one (copies left unfinished by the last run are then not resumed)"
            ) from None
        return cls(db, path)

    async def close(self) -> None:
        await self.flush()
        if self._checkpointing is not None:
            await self._checkpointing
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- signals -------------------------------------------------------------------------------------------------

    async def save_signal(self, signal: Signal) -> bool:
        """Store a signal durably; False when it was stored before (a signal is copied once only)."""
        async with self._lock:
            cursor = await self._db.execute(
                "INSERT OR IGNORE INTO signals(signal_id, payload, created_at) VALUES (?, ?, ?)",
                (signal.signal_id, signal.to_json(), time.time()),
            )
            return cursor.rowcount == 1

    async def signal_status(self, signal_id: str) -> str | None:
        rows = await self._db.execute_fetchall("SELECT status FROM signals WHERE signal_id = ?", (signal_id,))
        return rows[0][0] if rows else None

    async def finish_signal(self, signal_id: str, summary_json: str | None = None) -> None:
        await self.flush()
        async with self._lock:
            await self._db.execute(
                "UPDATE signals SET status = 'done', finished_at = ?, summary = ? WHERE signal_id = ?",
                (time.time(), summary_json, signal_id),
            )
        self._checkpoint_soon()

    def _checkpoint_soon(self) -> None:
        """After a finished signal or a batch of results: checkpoint, unless one ran within CHECKPOINT_EVERY_S."""
        now_s = time.monotonic()
        if (str(self.path) != ":memory:" and now_s - self._checkpointed_at_s >= CHECKPOINT_EVERY_S
                and (self._checkpointing is None or self._checkpointing.done())):
            self._checkpointed_at_s = now_s
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        try:
            await asyncio.to_thread(_checkpoint_wal, str(self.path))
        except sqlite3.Error as exc:  # the next one tries again; SQLite also checkpoints when the store closes
            log.warning("store_checkpoint_failed", path=str(self.path), error=str(exc))

    async def bind_exchange(self, url: str) -> None:
        """Tie the store to the exchange its orders go to. Unfinished copies stored for another exchange (a `nija
        sim` run in the same state directory, say) are never resumed here: StoreError names both and the fix."""
        url = url.rstrip("/")
        async with self._lock:
            rows = await self._db.execute_fetchall("SELECT value FROM meta WHERE name = 'exchange_url'")
            previous = rows[0][0] if rows else None
            if previous is not None and previous != url:
                unfinished = await self._db.execute_fetchall(
                    "SELECT COUNT(*) FROM signals WHERE status != 'done'")
                if unfinished[0][0]:
                    raise StoreError(
                        f"{self.path}: holds {unfinished[0][0]} unfinished copies for the exchange at {previous}, "
                        f"and this run trades on {url}: resuming them here could place orders meant for the other. "
                        "Give each exchange its own NIJA_STATE_DIR (e.g. state/sim for nija sim), or set "
                        f"KRAKEN_API_URL={previous} again to let them finish")
            await self._db.execute("INSERT INTO meta(name, value) VALUES ('exchange_url', ?) "
                                   "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (url,))

    async def unfinished_signals(self) -> list[Signal]:
        """Signals not yet finished, oldest first (what resume must complete)."""
        rows = await self._db.execute_fetchall(
            "SELECT payload FROM signals WHERE status != 'done' ORDER BY created_at, rowid")
        return [Signal.from_json(payload) for (payload,) in rows]

    async def _execute_many_in_transaction(self, sql: str, rows: list) -> None:
        """All rows or none: one explicit transaction (the caller holds `_lock`)."""
        try:
            await self._db.execute("BEGIN")
            await self._db.executemany(sql, rows)
            await self._db.execute("COMMIT")
        except BaseException:
            # A BEGIN or COMMIT whose caller was cancelled still runs on the connection's thread. After a BEGIN, the
            # transaction it opened must not stay open: later statements would run inside it, never committed. After
            # a COMMIT there is nothing left to roll back, and the caller's own error (the cancellation above all)
            # must be what propagates.
            with contextlib.suppress(sqlite3.OperationalError):
                await self._db.execute("ROLLBACK")
            raise

    # --- intents -------------------------------------------------------------------------------------------------

    async def add_intents(self, intents: Iterable[IntentRow]) -> None:
        """Insert every intent of a signal in one transaction (existing ones are kept as they are)."""
        now = time.time()
        rows = [(i.signal_id, i.follower, i.cl_ord_id, i.pair, i.side, i.status,
                 None if i.volume_base is None else str(i.volume_base),
                 None if i.notional_usd is None else str(i.notional_usd), i.order_id, i.reason, now)
                for i in intents]
        if not rows:
            return
        async with self._lock:
            if len(rows) <= _INTENTS_PER_STATEMENT:
                # One statement is atomic by itself and takes one trip to the store's thread, not three: the first
                # order of a fan-out leaves after this.
                await self._db.execute(_INSERT_INTENTS + ",".join([_INTENT_VALUES] * len(rows)),
                                       [value for row in rows for value in row])
            else:
                await self._execute_many_in_transaction(_INSERT_INTENTS + _INTENT_VALUES, rows)

    def record_result(self, cl_ord_id: str, status: str, *, volume_base: Decimal | None = None,
                      notional_usd: Decimal | None = None, order_id: str | None = None,
                      reason: str | None = None) -> None:
        """Queue an intent's outcome; committed with the next batch (see `flush`)."""
        if status not in FINISHED and status != "unknown":
            raise ValueError(f"record_result: status must be one of {FINISHED + ('unknown',)}, got {status!r}")
        self._pending_results.append((status, None if volume_base is None else str(volume_base),
                                      None if notional_usd is None else str(notional_usd), order_id, reason,
                                      time.time(), cl_ord_id))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # let results that arrive in the same loop iteration join the batch
        await self._write_results()

    async def _write_results(self) -> None:
        async with self._lock:
            while self._pending_results:
                batch, self._pending_results = self._pending_results, []
                try:
                    await self._execute_many_in_transaction(
                        "UPDATE intents SET status = ?, volume_base = COALESCE(?, volume_base),"
                        " notional_usd = COALESCE(?, notional_usd), order_id = COALESCE(?, order_id), reason = ?,"
                        " updated_at = ? WHERE cl_ord_id = ?",
                        batch,
                    )
                except BaseException:
                    self._pending_results[:0] = batch  # kept for the next flush: no result is lost
                    raise
        self._checkpoint_soon()

    async def flush(self) -> None:
        """Commit every queued result now."""
        await self._write_results()

    async def intents_for(self, signal_id: str) -> list[IntentRow]:
        return (await self.copy_state(signal_id))[1]

    async def copy_state(self, signal_id: str) -> tuple[str | None, list[IntentRow]]:
        """The signal's status (None if never stored) and its intents, in one query."""
        rows = await self._db.execute_fetchall(
            "SELECT (SELECT status FROM signals WHERE signal_id = :id), i.signal_id, i.follower, i.cl_ord_id, i.pair,"
            " i.side, i.status, i.volume_base, i.notional_usd, i.order_id, i.reason, i.updated_at"
            " FROM (SELECT 1) LEFT JOIN intents AS i ON i.signal_id = :id ORDER BY i.rowid", {"id": signal_id})
        status = rows[0][0] if rows else None
        return status, [_row(values[1:]) for values in rows if values[1] is not None]

    async def follower_of(self, cl_ord_id: str) -> str | None:
        """The follower an order with this client order id was sent for; None if NIJA never sent it."""
        rows = await self._db.execute_fetchall("SELECT follower FROM intents WHERE cl_ord_id = ?", (cl_ord_id,))
        return rows[0][0] if rows else None

    # --- daily equity marks --------------------------------------------------------------------------------------

    async def day_start_equity(self, follower: str, day: str, equity_usd: Decimal) -> Decimal:
        """The follower's equity at the start of `day` (YYYY-MM-DD, UTC): the first value stored for that day."""
        async with self._lock:
            await self._db.execute(
                "INSERT OR IGNORE INTO day_marks(follower, day, start_equity_usd) VALUES (?, ?, ?)",
                (follower, day, str(equity_usd)),
            )
        ((value,),) = await self._db.execute_fetchall(
            "SELECT start_equity_usd FROM day_marks WHERE follower = ? AND day = ?", (follower, day))
        return Decimal(value)

    async def mark_loss_limit(self, follower: str, day: str) -> None:
        """Remember that `follower` reached max_daily_loss on `day`: entries stay blocked that day after a restart."""
        async with self._lock:
            await self._db.execute("INSERT OR IGNORE INTO loss_limits(follower, day) VALUES (?, ?)", (follower, day))

    async def loss_limit_reached(self, follower: str, day: str) -> bool:
        rows = await self._db.execute_fetchall(
            "SELECT 1 FROM loss_limits WHERE follower = ? AND day = ?", (follower, day))
        return bool(rows)
