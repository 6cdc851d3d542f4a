"""The store: signals once, intents before sending, results batched, unfinished work listed after a restart."""

import asyncio
import sqlite3
import time
from decimal import Decimal as D

import pytest

from nija.store import IntentRow, Store
from nija.trading.signals import Signal, cl_ord_id_for


def signal(sid="sig-1"):
    return Signal(sid, "OM1", "XBTUSD", "buy", D("0.01"), D("50000"), D("2"), D("1000"), filled_at_s=1.0)


async def test_signal_is_stored_once_and_survives_reopen(tmp_path):
    path = tmp_path / "state" / "nija.sqlite3"
    store = await Store.open(path)
    assert await store.save_signal(signal()) is True
    assert await store.save_signal(signal()) is False
    await store.close()
    store = await Store.open(path)
    assert [s.signal_id for s in await store.unfinished_signals()] == ["sig-1"]
    assert (await store.unfinished_signals())[0] == signal()
    await store.finish_signal("sig-1", "{}")
    assert await store.unfinished_signals() == [] and await store.signal_status("sig-1") == "done"
    await store.close()


async def test_intents_results_and_resume_listing(tmp_path):
    path = tmp_path / "nija.sqlite3"
    store = await Store.open(path)
    await store.save_signal(signal())
    names = ["alice", "bob", "carol", "dave"]
    await store.add_intents([IntentRow("sig-1", n, cl_ord_id_for("sig-1", n), "XBTUSD", "buy") for n in names])
    await store.add_intents([IntentRow("sig-1", "alice", cl_ord_id_for("sig-1", "alice"), "XBTUSD", "buy")])
    store.record_result(cl_ord_id_for("sig-1", "alice"), "done", volume_base=D("0.002"), order_id="OA")
    store.record_result(cl_ord_id_for("sig-1", "bob"), "skipped", reason="below_ordermin: ...")
    store.record_result(cl_ord_id_for("sig-1", "carol"), "unknown", reason="timeout")
    await store.close()  # close flushes queued results

    store = await Store.open(path)
    rows = {row.follower: row for row in await store.intents_for("sig-1")}
    assert len(rows) == 4
    assert rows["alice"].status == "done" and rows["alice"].volume_base == D("0.002") and rows["alice"].order_id == "OA"
    assert rows["bob"].status == "skipped" and rows["bob"].finished
    assert sorted(r.follower for r in rows.values() if not r.finished) == ["carol", "dave"]
    await store.close()


async def test_copy_state_reads_a_signals_status_and_its_intents_at_once(tmp_path):
    async with await Store.open(tmp_path / "db.sqlite3") as store:
        assert await store.copy_state("sig-1") == (None, [])
        await store.save_signal(signal())
        assert await store.copy_state("sig-1") == ("new", [])
        await store.add_intents([
            IntentRow("sig-1", "alice", "cl-a", "XBTUSD", "sell", "unknown", D("0.00012345"), D("6.17"), "OA", "lost"),
            IntentRow("sig-1", "bob", "cl-b", "XBTUSD", "sell"),
            IntentRow("sig-2", "alice", "cl-c", "XBTUSD", "sell"),  # another signal's, never stored as a signal
        ])
        status, intents = await store.copy_state("sig-1")
        assert status == "new" and [(i.follower, i.cl_ord_id) for i in intents] == [("alice", "cl-a"), ("bob", "cl-b")]
        alice = intents[0]
        assert (alice.status, alice.volume_base, alice.notional_usd, alice.order_id, alice.reason) == (
            "unknown", D("0.00012345"), D("6.17"), "OA", "lost")
        assert intents[1].status == "pending" and intents[1].volume_base is None and intents[1].updated_at_s > 0
        assert [i.cl_ord_id for i in (await store.copy_state("sig-2"))[1]] == ["cl-c"]
        await store.finish_signal("sig-1")
        assert (await store.copy_state("sig-1"))[0] == "done"


@pytest.mark.parametrize("per_statement", [None, 3])
async def test_a_signals_intents_are_stored_all_or_none(tmp_path, monkeypatch, per_statement):
    import nija.store
    if per_statement:  # more intents than one statement binds: one transaction of many
        monkeypatch.setattr(nija.store, "_INTENTS_PER_STATEMENT", per_statement)
    names = [f"f{i}" for i in range(10)]
    async with await Store.open(tmp_path / "db.sqlite3") as store:
        await store.save_signal(signal())
        await store.add_intents([IntentRow("sig-1", "f0", "cl-f0", "XBTUSD", "buy", "done", order_id="O0")])
        broken = [IntentRow("sig-1", n, f"cl-{n}", "XBTUSD", "buy") for n in names[1:]] + [
            IntentRow("sig-1", "late", "cl-late", "XBTUSD", "buy", reason=object())]  # a value SQLite cannot store
        with pytest.raises(sqlite3.Error):
            await store.add_intents(broken)
        assert [i.follower for i in await store.intents_for("sig-1")] == ["f0"]  # none of the refused batch
        await store.add_intents([IntentRow("sig-1", n, f"cl-{n}", "XBTUSD", "buy") for n in names])
        intents = await store.intents_for("sig-1")
        assert [i.follower for i in intents] == names
        assert intents[0].status == "done" and intents[0].order_id == "O0"  # kept as it was
        assert {i.status for i in intents[1:]} == {"pending"}


async def test_a_transaction_whose_begin_was_cancelled_is_closed_so_later_writes_are_committed(tmp_path,
                                                                                               monkeypatch):
    import asyncio

    import nija.store
    monkeypatch.setattr(nija.store, "_INTENTS_PER_STATEMENT", 1)  # two intents: BEGIN, executemany, COMMIT
    path = tmp_path / "db.sqlite3"
    async with await Store.open(path) as store:
        real_execute = store._db.execute

        def execute(sql, *args, **kwargs):
            if sql == "BEGIN":
                asyncio.current_task().cancel()  # the caller gives up while BEGIN runs on the store's thread
            return real_execute(sql, *args, **kwargs)

        store._db.execute = execute
        rows = [IntentRow("sig-1", n, f"cl-{n}", "XBTUSD", "buy") for n in ("alice", "bob")]
        with pytest.raises(asyncio.CancelledError):
            await store.add_intents(rows)
        asyncio.current_task().uncancel()
        store._db.execute = real_execute
        await store.add_intents([IntentRow("sig-2", "carol", "cl-carol", "XBTUSD", "buy")])
    async with await Store.open(path) as reopened:
        assert [i.follower for i in await reopened.intents_for("sig-2")] == ["carol"]  # committed, not left open
        assert await reopened.intents_for("sig-1") == []


async def test_no_commit_of_intents_waits_for_a_checkpoint_the_store_runs_its_own(tmp_path, monkeypatch):
    """Copying the WAL into the database file (with an fsync) must not happen inside the commit that stores a
    signal's intents, however large the WAL grew: every order of that fan-out would wait for it."""
    import nija.store

    path = tmp_path / "nija.sqlite3"
    store = await Store.open(path)
    empty_bytes = path.stat().st_size
    for number in range(8):  # ≈ 24,000 intents: far past SQLite's automatic checkpoint at 1,000 pages (4 MB)
        sid = f"sig-{number}"
        await store.save_signal(signal(sid))
        await store.add_intents([IntentRow(sid, f"follower-{i:05d}", cl_ord_id_for(sid, f"follower-{i:05d}"),
                                           "XBTUSD", "buy") for i in range(2_978)])
    assert (tmp_path / "nija.sqlite3-wal").stat().st_size > 4_000_000
    assert path.stat().st_size == empty_bytes  # all of it still in the WAL: no commit checkpointed
    monkeypatch.setattr(nija.store, "CHECKPOINT_EVERY_S", 0.0)
    await store.finish_signal("sig-0", "{}")
    deadline = time.monotonic() + 30
    while path.stat().st_size <= 4_000_000:  # the checkpoint the finished signal started, on the store's thread
        assert time.monotonic() < deadline, "no checkpoint after a finished signal"
        await asyncio.sleep(0.01)
    await store.close()
    store = await Store.open(path)
    assert len(await store.intents_for("sig-7")) == 2_978
    await store.close()


async def test_day_mark_keeps_first_value(tmp_path):
    async with await Store.open(tmp_path / "db.sqlite3") as store:
        assert await store.day_start_equity("alice", "2026-01-01", D("100")) == D("100")
        assert await store.day_start_equity("alice", "2026-01-01", D("90")) == D("100")
        assert await store.day_start_equity("alice", "2026-01-02", D("90")) == D("90")


async def test_unfinished_copies_of_one_exchange_are_never_resumed_on_another(tmp_path):
    """A `nija sim` run and a live run in one state directory: the sim's unfinished exits must not go to Kraken."""
    import pytest

    from nija.store import StoreError

    path = tmp_path / "nija.sqlite3"
    async with await Store.open(path) as store:
        await store.bind_exchange("http://127.0.0.1:8081")
        await store.save_signal(signal())  # left unfinished by a stop
    async with await Store.open(path) as store:
        with pytest.raises(StoreError) as info:
            await store.bind_exchange("https://api.kraken.com")
        assert "http://127.0.0.1:8081" in str(info.value) and "NIJA_STATE_DIR" in str(info.value)
        await store.bind_exchange("http://127.0.0.1:8081/")  # the same exchange: resumed as before
        await store.finish_signal("sig-1", "{}")
        await store.bind_exchange("https://api.kraken.com")  # nothing left to resume: the store moves on
