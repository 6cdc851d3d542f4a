"""Kraken's REST counters outlive a restart of NIJA: each key's counter level, kept in a file beside the nonce mark.

The file says how full each key's counter was at `saved_at_s` (unix time); the next run starts every key from that
level, decayed by the time since (`RateScheduler.carry_over`). It is written when a run stops, and while it runs
whenever a key's counter has risen above what the file says, checked every `SAVE_EVERY_S`: after a crash or a
SIGKILL only the calls of that last second are missing from it.

Written through a private temporary file and an atomic replace, so a crash leaves the old file or the new one.
Only the save at the stop is fsynced: the others are kept by the page cache through a crash of the process, and a
crash of the machine takes longer to come back from than the slowest counter takes to drain (15 at 0.33/s: 45 s).
The saves while running are written on a worker thread: replacing a file can wait for the disk (on ext4 it flushes
the new file's data first), up to 15 ms here, and the event loop must not stall a fan-out for it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from pathlib import Path

from nija.kraken.scheduler import RateScheduler
from nija.logs import get_logger

__all__ = ["RestLevelsFile", "REST_LEVELS_FILE", "SAVE_EVERY_S"]

#: beside the nonce mark: each key's REST counter level, as of the time it was saved
REST_LEVELS_FILE = "rest_levels.json"
#: how often a running context checks whether the file still covers what Kraken counts
SAVE_EVERY_S = 1.0
# Counter levels are floats re-timed to replies (`Pacer.settle`): smaller rises than this are rounding.
_TOLERANCE = 1e-6

log = get_logger("nija.kraken")


class RestLevelsFile:
    """The REST levels file of one state directory, and what it last said (to tell when it falls behind)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: dict[str, tuple[float, float]] = {}  # key id → (level, decay per s) as of `_saved_at_s`
        self._saved_at_s = 0.0
        self._failing = False  # the last save failed: said once, not every second until one works
        self._write_lock = threading.Lock()
        self._snapshots = itertools.count(1)  # levels taken, in order (the wall clock may step back)
        self._written_snapshot = 0  # the latest of them the file holds
        self._recorded_snapshot = 0  # the latest of them `_saved` holds

    def carry_over_into(self, scheduler: RateScheduler) -> None:
        """Start `scheduler` from what an earlier run left; an unreadable file is logged and ignored."""
        try:
            saved = json.loads(self.path.read_text())
            scheduler.carry_over({str(k): float(v) for k, v in saved["rest_levels"].items()},
                                 float(saved["saved_at_s"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("rest_levels_unreadable", path=str(self.path), error=str(exc))

    def behind(self, scheduler: RateScheduler) -> bool:
        """True when some key's counter is fuller than the file, decayed to now, says: a crash now would lose it."""
        now_s = time.time()
        elapsed_s = max(0.0, now_s - self._saved_at_s)  # a clock stepped back decays nothing
        for key_id, (level, _decay_per_s) in scheduler.rest_levels(now_s).items():
            saved_level, decay_per_s = self._saved.get(key_id, (0.0, 0.0))
            if level > saved_level - elapsed_s * decay_per_s + _TOLERANCE:
                return True
        return False

    def save(self, scheduler: RateScheduler, *, durable: bool) -> None:
        """Write every key's level now; a failure is logged (only a restart within a minute or so would miss it)."""
        now_s = time.time()
        levels = scheduler.rest_levels(now_s)
        if levels or self._saved:  # else nothing counted, and nothing on file to take back
            snapshot = next(self._snapshots)
            self._record(levels, now_s, snapshot, self._write(levels, now_s, snapshot, durable), durable)

    async def save_in_background(self, scheduler: RateScheduler) -> None:
        """`save(durable=False)` with the file written on a worker thread; the levels are those of now."""
        now_s = time.time()
        levels = scheduler.rest_levels(now_s)
        if levels or self._saved:
            snapshot = next(self._snapshots)
            error = await asyncio.to_thread(self._write, levels, now_s, snapshot, False)
            self._record(levels, now_s, snapshot, error, False)

    def _write(self, levels: dict[str, tuple[float, float]], now_s: float, snapshot: int,
               durable: bool) -> OSError | None:
        with self._write_lock:  # one writer at a time; a slow thread never puts older levels over newer ones
            if snapshot <= self._written_snapshot:
                return None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # A name of its own per thread: another context of this process may save to the same path.
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "w") as handle:
                    handle.write(json.dumps({"saved_at_s": now_s,
                                             "rest_levels": {key_id: level for key_id, (level, _) in levels.items()}}))
                    if durable:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                return exc
            self._written_snapshot = snapshot
            return None

    def _record(self, levels: dict[str, tuple[float, float]], now_s: float, snapshot: int, error: OSError | None,
                durable: bool) -> None:
        if error is not None:
            if not self._failing or durable:
                log.warning("rest_levels_unsaved", path=str(self.path), error=str(error),
                            consequence="a restart may meet EAPI:Rate limit exceeded once, and then wait")
            self._failing = True
            return
        if self._failing:
            log.info("rest_levels_saved_again", path=str(self.path))
        self._failing = False
        if snapshot > self._recorded_snapshot:
            self._saved, self._saved_at_s, self._recorded_snapshot = levels, now_s, snapshot
