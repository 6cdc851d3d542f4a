"""Nonce sequences: strictly increasing per key, persisted cheaply, above the mark after a restart."""

import asyncio
import threading
import time

import pytest

from nija.kraken.nonce import MARK_FILE_NAME, NonceCoordinator, NonceLane, nonce_dir

NS = 1_000_000_000


class SteppableClock:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def test_nonces_are_nanoseconds_and_strictly_increasing_even_when_the_clock_stands_still(tmp_path):
    clock = SteppableClock(1_700_000_000 * NS)
    coordinator = NonceCoordinator(tmp_path, clock_ns=clock)
    issued = [coordinator.next_nonce("k1") for _ in range(1000)]
    assert issued[0] == 1_700_000_000 * NS
    assert all(b > a for a, b in zip(issued, issued[1:]))


def test_keys_have_independent_sequences(tmp_path):
    clock = SteppableClock(1_700_000_000 * NS)
    coordinator = NonceCoordinator(tmp_path, clock_ns=clock)
    assert coordinator.next_nonce("a") == coordinator.next_nonce("b")


def test_restart_with_the_clock_stepped_back_stays_above_every_nonce_issued(tmp_path):
    clock = SteppableClock(1_700_000_000 * NS)
    first = NonceCoordinator(tmp_path, clock_ns=clock)
    issued = [first.next_nonce("key") for _ in range(50)]
    clock.now_ns += 30 * NS
    issued.append(first.next_nonce("key"))
    # The process dies; the machine's clock is stepped back an hour.
    clock.now_ns -= 3600 * NS
    second = NonceCoordinator(tmp_path, clock_ns=clock)
    after = second.next_nonce("key")
    assert after > max(issued)
    assert second.next_nonce("other-key") > max(issued)


def test_the_mark_is_written_once_per_reservation_not_per_call(tmp_path):
    clock = SteppableClock(1_700_000_000 * NS)
    coordinator = NonceCoordinator(tmp_path, clock_ns=clock, reserve_ns=60 * NS)
    for step in range(10_000):
        clock.now_ns += 1000  # 10,000 calls within 10 ms
        coordinator.next_nonce(f"key{step % 100}")
    assert coordinator.mark_writes == 1
    clock.now_ns += 61 * NS
    coordinator.next_nonce("key0")
    assert coordinator.mark_writes == 2
    assert int((tmp_path / MARK_FILE_NAME).read_text()) == coordinator.high_water_mark


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_next_reservation_is_written_ahead_on_a_thread_of_its_own(tmp_path):
    """Past half a reservation, the next mark goes to disk without the caller waiting for it: a fan-out does not
    stall on a write and two fsyncs."""
    clock = SteppableClock(1_700_000_000 * NS)
    coordinator = NonceCoordinator(tmp_path, clock_ns=clock, reserve_ns=10 * NS)
    coordinator.next_nonce("key")
    first_mark = coordinator.high_water_mark
    clock.now_ns += 6 * NS  # 4 s of the reservation left
    coordinator.next_nonce("key")
    _wait_until(lambda: coordinator.mark_writes == 2)
    assert coordinator.high_water_mark == first_mark + 6 * NS
    assert int((tmp_path / MARK_FILE_NAME).read_text()) == coordinator.high_water_mark
    clock.now_ns += 5 * NS  # past the first reservation: already covered
    coordinator.next_nonce("key")
    assert coordinator.mark_writes == 2


def test_a_nonce_never_outruns_the_mark_on_disk_while_that_write_is_slow(tmp_path, monkeypatch):
    """When the nonces reach the end of the reservation before the write ahead is done, the call waits for it."""
    from nija.kraken import nonce as nonce_module

    clock = SteppableClock(1_700_000_000 * NS)
    coordinator = NonceCoordinator(tmp_path, clock_ns=clock, reserve_ns=10 * NS)
    coordinator.next_nonce("key")
    disk_free = threading.Event()
    real_replace = nonce_module.os.replace

    def slow_replace(src, dst):
        if threading.current_thread().name == "nonce-mark":
            assert disk_free.wait(10)
        real_replace(src, dst)

    monkeypatch.setattr(nonce_module.os, "replace", slow_replace)
    clock.now_ns += 6 * NS
    coordinator.next_nonce("key")  # starts the write ahead, which now hangs
    clock.now_ns += 5 * NS  # past the reservation on disk
    issued: list[int] = []
    caller = threading.Thread(target=lambda: issued.append(coordinator.next_nonce("key")))
    caller.start()
    caller.join(0.2)
    assert caller.is_alive() and not issued  # no nonce above the mark on disk
    disk_free.set()
    caller.join(10)
    assert issued and issued[0] <= int((tmp_path / MARK_FILE_NAME).read_text()) == coordinator.high_water_mark
    assert coordinator.mark_writes == 2  # the write ahead covered the waiting call: no third write


def test_a_corrupt_mark_file_is_refused_with_the_fix(tmp_path):
    (tmp_path / MARK_FILE_NAME).write_text("garbage")
    with pytest.raises(ValueError, match=MARK_FILE_NAME + ".*not an integer"):
        NonceCoordinator(tmp_path)


def test_skip_past_outranks_a_given_nonce(tmp_path):
    coordinator = NonceCoordinator(tmp_path, clock_ns=SteppableClock(1000 * NS))
    n = coordinator.next_nonce("k")
    coordinator.skip_past("k", n + 5000)
    assert coordinator.next_nonce("k") > n + 5000


def test_threads_never_get_the_same_nonce(tmp_path):
    coordinator = NonceCoordinator(tmp_path)
    results: list[int] = []
    lock = threading.Lock()

    def work():
        local = [coordinator.next_nonce("shared") for _ in range(2000)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == len(results) == 8000


def test_shared_coordinator_per_state_dir(tmp_path):
    assert NonceCoordinator.for_state_dir(tmp_path) is NonceCoordinator.for_state_dir(str(tmp_path))


def test_one_place_for_the_mark_of_a_state_dir(tmp_path):
    state = tmp_path / "state"
    coordinator = NonceCoordinator.for_state_dir(state)
    assert coordinator.mark_path == nonce_dir(state) / MARK_FILE_NAME == state / "nonces" / MARK_FILE_NAME
    nonce = coordinator.next_nonce("key")
    assert int(coordinator.mark_path.read_text()) > nonce


def test_nonces_run_ahead_of_the_clock_by_seconds_not_a_minute_even_after_quick_restarts(tmp_path):
    clock = SteppableClock(1_700_000_000 * NS)
    for _restart in range(3):  # three restarts within the same second
        coordinator = NonceCoordinator(tmp_path, clock_ns=clock)
        coordinator.next_nonce("key")
    lead_s = (coordinator.next_nonce("key") - clock.now_ns) / NS
    assert lead_s <= 3 * 5 + 1  # one reservation (5 s) per restart at most
    assert (coordinator.high_water_mark - clock.now_ns) / NS <= 4 * 5 + 1


def test_jump_ahead_gets_past_what_a_run_with_a_lost_state_dir_used(tmp_path):
    clock = SteppableClock(1_700_000_000 * NS)
    earlier_run = NonceCoordinator(tmp_path / "lost", clock_ns=clock)
    for _ in range(3):
        earlier_run.next_nonce("key")
        earlier_run = NonceCoordinator(tmp_path / "lost", clock_ns=clock)  # quick restarts ran it ahead
    used = earlier_run.next_nonce("key")
    fresh = NonceCoordinator(tmp_path / "new", clock_ns=clock)  # the state dir is gone
    assert fresh.next_nonce("key") < used  # Kraken would say EAPI:Invalid nonce, and last + 1 stays below
    jumps = 0
    while fresh.next_nonce("key") <= used:
        fresh.jump_ahead("key")
        jumps += 1
    assert 1 <= jumps <= 4 and fresh.high_water_mark >= fresh.last_nonce("key")


async def test_lane_without_window_lets_one_call_in_flight_in_fifo_order(tmp_path):
    lane = NonceLane(NonceCoordinator(tmp_path), "k", window=0)
    order: list[tuple[str, int]] = []
    in_flight = 0
    peak = 0

    async def call(i: int):
        nonlocal in_flight, peak
        nonce = await lane.acquire()
        in_flight += 1
        peak = max(peak, in_flight)
        order.append(("send", nonce))
        await asyncio.sleep(0)
        in_flight -= 1
        lane.release(nonce)

    await asyncio.gather(*(call(i) for i in range(50)))
    assert peak == 1
    nonces = [n for _, n in order]
    assert nonces == sorted(nonces) and len(set(nonces)) == 50


async def test_lane_with_window_keeps_in_flight_nonces_within_the_window(tmp_path):
    window = 4
    lane = NonceLane(NonceCoordinator(tmp_path), "k", window=window)
    outstanding: set[int] = set()
    peak = 0
    send_order: list[int] = []

    async def call():
        nonlocal peak
        nonce = await lane.acquire()
        assert all(nonce - other <= window for other in outstanding)
        outstanding.add(nonce)
        send_order.append(nonce)
        peak = max(peak, len(outstanding))
        await asyncio.sleep(0.001)
        outstanding.discard(nonce)
        lane.release(nonce)

    await asyncio.gather(*(call() for _ in range(40)))
    assert 1 < peak <= window + 1
    assert send_order == sorted(send_order)


async def test_a_cancelled_waiter_does_not_block_the_lane(tmp_path):
    lane = NonceLane(NonceCoordinator(tmp_path), "k")
    first = await lane.acquire()
    waiter = asyncio.ensure_future(lane.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    lane.release(first)
    third = await asyncio.wait_for(lane.acquire(), 1)
    assert third > first


async def test_a_mark_that_cannot_be_written_fails_the_waiting_call_not_the_key(tmp_path):
    nonces = NonceCoordinator(tmp_path, reserve_ns=1)  # every grant writes the mark
    lane = NonceLane(nonces, "k", window=0)
    first = await lane.acquire()
    waiting = asyncio.ensure_future(lane.acquire())
    await asyncio.sleep(0)
    real_write = nonces._write_mark

    def disk_full(mark, **_):
        raise OSError(28, "No space left on device")

    nonces._write_mark = disk_full
    lane.release(first)  # the call that releases is not the one that fails
    with pytest.raises(OSError):
        await waiting
    nonces._write_mark = real_write  # the disk recovers: the key works again
    assert await asyncio.wait_for(lane.acquire(), 1) > first
