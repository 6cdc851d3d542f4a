import subprocess
import sys

import pytest

from nija.lifecycle import AlreadyRunningError, InstanceLock, Lifecycle, State


def _hold(tmp_path, holder: str, release_after_s: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from nija.lifecycle import InstanceLock\n"
         "lock = InstanceLock(Path(sys.argv[1]), 'master-key', holder=sys.argv[2]); lock.acquire();"
         " print('held', flush=True); time.sleep(float(sys.argv[3]))",
         str(tmp_path), holder, str(release_after_s)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process


async def test_a_daemon_starting_while_nija_balances_reads_waits_for_it(tmp_path):
    balances = _hold(tmp_path, "nija balances", 0.5)
    try:
        lock = InstanceLock(tmp_path, "master-key")
        await lock.acquire_async()  # waits the half second the balance read takes
        lock.release()
        assert balances.wait(timeout=10) == 0
        balances = _hold(tmp_path, "nija balances", 30)
        with pytest.raises(AlreadyRunningError) as info:
            InstanceLock(tmp_path, "master-key", wait_for_brief_s=0).acquire()
        assert "(nija balances, pid" in str(info.value)
    finally:
        balances.kill()
        balances.wait(timeout=10)


async def test_the_daemons_wait_for_nija_balances_leaves_its_event_loop_running(tmp_path):
    import asyncio

    balances = _hold(tmp_path, "nija balances", 0.6)
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        lock = InstanceLock(tmp_path, "master-key")
        await lock.acquire_async()
        lock.release()
        assert ticks >= 5  # the loop went on while the daemon waited (a blocking wait gives 0)
    finally:
        ticker.cancel()
        balances.kill()
        balances.wait(timeout=10)


def test_second_daemon_on_the_same_keys_refuses_to_start(tmp_path):
    # The holder is another process, as it would be on a VPS or during a Railway overlap.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from nija.lifecycle import InstanceLock\n"
         "lock = InstanceLock(Path(sys.argv[1]), 'master-key'); lock.acquire(); print('held', flush=True);"
         " sys.stdin.read()",
         str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunningError) as info:
            InstanceLock(tmp_path, "master-key").acquire()
        assert str(holder.pid) in str(info.value)
        assert "master-key" not in str(info.value)
        # Other keys are another daemon's business.
        with InstanceLock(tmp_path, "other-key"):
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    # The lock dies with its holder: no stale lock after a crash or a stop.
    with InstanceLock(tmp_path, "master-key"):
        pass


def test_degraded_and_recovered_follow_the_problems():
    life = Lifecycle()
    life.problem("follower:alice", "EAPI:Invalid key")
    life.started()
    assert life.state is State.DEGRADED
    life.problem("follower:bob", "timeout")
    life.recovered("follower:alice")
    assert life.state is State.DEGRADED
    life.recovered("follower:bob")
    assert life.state is State.RUNNING
    life.stopping("SIGTERM")
    life.stopped()
    with pytest.raises(RuntimeError):
        life.started()


async def test_a_follower_left_out_for_a_key_in_use_elsewhere_keeps_none_of_its_locks(tmp_path, host_lock_dir):
    """Its key is another daemon's (another state directory, same host): this one takes no lock of it at all."""
    from contextlib import AsyncExitStack

    from pydantic import SecretStr

    from nija.accounts import Follower, FollowerConfig
    from nija.daemon import _lock_follower_keys
    from nija.settings import load_settings

    settings = load_settings({"NIJA_STATE_DIR": str(tmp_path / "state")}, dotenv_path=None)
    elsewhere = InstanceLock(host_lock_dir, "f-key")
    elsewhere.acquire()
    follower = Follower(FollowerConfig(name="f"), SecretStr("f-key"), SecretStr("c2VjcmV0"))
    async with AsyncExitStack() as stack:
        assert await _lock_follower_keys(stack, settings, [follower], Lifecycle()) == []
        InstanceLock(settings.state_dir, "f-key").acquire()  # free: `nija balances` on this state may use it
    elsewhere.release()


def test_the_host_lock_directory_is_the_users_own(tmp_path, monkeypatch):
    import os

    import nija.lifecycle

    monkeypatch.undo()  # the real host_lock_dir, with a home of the test's own
    monkeypatch.setenv("HOME", str(tmp_path))
    path = nija.lifecycle.host_lock_dir()
    assert path == tmp_path / ".local" / "state" / "nija" / "locks"
    assert path.stat().st_mode & 0o777 == 0o700 and path.stat().st_uid == os.getuid()


@pytest.mark.parametrize("under_nohup", [False, True], ids=["terminal", "nohup"])
def test_sighup_stops_nija_run_cleanly_unless_run_under_nohup(tmp_path, under_nohup):
    """A closed terminal (an SSH session ended) sends SIGHUP: NIJA stops as on SIGTERM, not killed mid-copy. Under
    `nohup` (SIGHUP ignored) it keeps running, as asked, and SIGTERM still stops it."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    env = {name: value for name, value in os.environ.items() if not name.startswith(("KRAKEN_", "NIJA_"))}
    env.update(HOME=str(tmp_path), NIJA_STATE_DIR=str(tmp_path / "state"), NIJA_USERS_DIR=str(tmp_path / "users"),
               NIJA_LOG_FORMAT="json")
    (tmp_path / "users").mkdir()
    # Set either way: a suite itself run under nohup would otherwise hand the "terminal" daemon an ignored SIGHUP.
    hangup = signal.SIG_IGN if under_nohup else signal.SIG_DFL
    daemon = subprocess.Popen([sys.executable, "-m", "nija", "run"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup))
    guard = threading.Timer(120, daemon.kill)  # a hang fails the test instead of stalling the suite
    guard.start()
    try:
        lines = []
        for line in daemon.stdout:
            lines.append(line)
            if '"state": "running"' in line:
                break
        daemon.send_signal(signal.SIGHUP)
        if under_nohup:
            with pytest.raises(subprocess.TimeoutExpired):
                daemon.wait(timeout=2)
            daemon.send_signal(signal.SIGTERM)
        lines += daemon.stdout.readlines()
        assert daemon.wait() == 0, "".join(lines)
    finally:
        guard.cancel()
    assert any('"state": "stopped"' in line for line in lines), "".join(lines)
