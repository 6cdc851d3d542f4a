"""The daemon's lifecycle, readable in its logs, and the lock that keeps one daemon per set of keys.

    starting ──► running ⇄ degraded ──► stopping ──► stopped

Every change of state is one `lifecycle` log line; leaving `degraded` is logged as `recovered` at the same level as
the failure that caused it.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path

from nija.logs import get_logger

__all__ = ["State", "Lifecycle", "InstanceLock", "AlreadyRunningError", "host_lock_dir", "key_locks"]


class State(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ALLOWED = {
    State.STARTING: {State.RUNNING, State.DEGRADED, State.STOPPING},
    State.RUNNING: {State.DEGRADED, State.STOPPING},
    State.DEGRADED: {State.RUNNING, State.STOPPING},
    State.STOPPING: {State.STOPPED},
    State.STOPPED: set(),
}


class Lifecycle:
    """The daemon's state; `degraded` carries the reasons (e.g. a follower that cannot be reached)."""

    def __init__(self, **context) -> None:
        self.state = State.STARTING
        self._problems: dict[str, str] = {}
        self._log = get_logger("nija.lifecycle")
        self._log.info("lifecycle", state=self.state.value, **context)

    def _move(self, new: State, **context) -> None:
        if new is self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"lifecycle cannot go from {self.state.value} to {new.value}")
        self.state = new
        self._log.info("lifecycle", state=new.value, **context)

    def started(self) -> None:
        self._move(State.DEGRADED if self._problems else State.RUNNING)

    def problem(self, source: str, reason: str) -> None:
        """Something is wrong with `source`: the daemon goes on, degraded, until `recovered(source)`."""
        first = source not in self._problems
        self._problems[source] = reason
        if first:
            self._log.warning("degraded", source=source, reason=reason)
        if self.state is State.RUNNING:
            self._move(State.DEGRADED, problems=len(self._problems))

    def recovered(self, source: str) -> None:
        if self._problems.pop(source, None) is None:
            return
        self._log.warning("recovered", source=source)
        if self.state is State.DEGRADED and not self._problems:
            self._move(State.RUNNING)

    @property
    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def stopping(self, reason: str) -> None:
        self._move(State.STOPPING, reason=reason)

    def stopped(self) -> None:
        self._move(State.STOPPED)


class AlreadyRunningError(RuntimeError):
    pass


def state_dir_problem(exc: OSError, state_dir: Path) -> str:
    """What to tell an operator whose state directory cannot be used."""
    where = f"{exc.filename}" if exc.filename else str(state_dir)
    return (f"cannot use {where} ({exc.strerror or type(exc).__name__}): NIJA_STATE_DIR={state_dir} must be a "
            "directory NIJA can create and write")


#: lock holders that only hold a key for the seconds a command takes: a daemon starting meanwhile waits for them
BRIEF_HOLDERS = frozenset({"nija balances"})
_RETRY_S = 0.2


def host_lock_dir() -> Path | None:
    """This user's lock directory on this host, the same whatever NIJA_STATE_DIR, the shell or the service manager
    says: under the home directory, else in the temporary directory; None when neither is usable (or one is
    another user's)."""
    try:
        candidates = [Path.home() / ".local" / "state" / "nija" / "locks"]
    except RuntimeError:  # no home directory
        candidates = []
    candidates.append(Path(tempfile.gettempdir()) / f"nija-locks-{os.getuid()}")
    for path in candidates:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.stat().st_uid == os.getuid() and os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return None


def key_locks(state_dir: Path, api_key: str, *, holder: str = "nija run") -> list[InstanceLock]:
    """The locks of one API key: in the state directory (which two containers may share on a volume) and in
    `host_lock_dir` (which two runs with different state directories on one host share). Take all or none: two
    daemons on one key would double every copy."""
    locks = [InstanceLock(state_dir, api_key, holder=holder)]
    host_dir = host_lock_dir()
    if host_dir is not None:
        locks.append(InstanceLock(host_dir, api_key, holder=holder))
    return locks


class InstanceLock:
    """An exclusive lock per set of keys in the state directory (invariant 9: one daemon per set of keys).

    The lock file is named after a hash of the master key, never the key itself. The OS releases it when the
    process dies, so a crash never leaves a stale lock behind. The file itself stays (a few bytes per key): one
    removed on release could be locked by a process that opened it just before, while the next opens a new file of
    the same name and locks that too, both then holding "the" lock.
    """

    def __init__(self, state_dir: Path, key_identity: str, *, holder: str = "nija run",
                 wait_for_brief_s: float = 15.0) -> None:
        digest = hashlib.sha256(key_identity.encode()).hexdigest()[:16]
        self.path = Path(state_dir) / f"daemon-{digest}.lock"
        self.holder = holder
        self.wait_for_brief_s = wait_for_brief_s
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now, or raise AlreadyRunningError (`acquire_async` waits for a brief holder)."""
        holder = self._try_acquire()
        if holder is not None:
            self._refuse_unless_brief(holder, give_up_at=0.0)

    async def acquire_async(self) -> None:
        """Take the lock; a `nija balances` holding it (for the seconds its reads take) is waited for, without
        stopping the event loop."""
        give_up_at = time.monotonic() + self.wait_for_brief_s
        while (holder := self._try_acquire()) is not None:
            self._refuse_unless_brief(holder, give_up_at)
            await asyncio.sleep(_RETRY_S)

    def _try_acquire(self) -> tuple[str, str] | None:
        """Take the lock now; or (pid, command) of the process holding it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            return pid or "unknown", holder or "nija run"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.holder}".encode(), 0)
        self._fd = fd
        return None

    def _refuse_unless_brief(self, holder: tuple[str, str], give_up_at: float) -> None:
        pid, command = holder
        if command in BRIEF_HOLDERS and time.monotonic() < give_up_at:
            return
        raise AlreadyRunningError(
            f"another NIJA process ({command}, pid {pid}) is using these keys (lock {self.path}); stop it first: "
            "two processes on one key would break its nonce sequence and double every copy")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "InstanceLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
