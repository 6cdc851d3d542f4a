"""The event loop `nija run` runs on (nija.event_loop): uvloop unless NIJA_EVENT_LOOP=asyncio."""

import asyncio
import importlib.util
import io
import json
import os
import signal
import sys

import pytest

from nija.accounts import check_main
from nija.event_loop import loop_factory, setting_problems


async def _paper_run_until_sigterm(tmp_path, choice: str | None) -> tuple[int, list[dict]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIJA_", "KRAKEN_"))}
    env.update(NIJA_LOG_FORMAT="json", NIJA_STATE_DIR=str(tmp_path / "state"))
    if choice is not None:
        env["NIJA_EVENT_LOOP"] = choice
    daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "nija", "run", env=env, cwd=tmp_path,
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[dict] = []
    said: list[bytes] = []  # everything, a traceback too
    try:
        async with asyncio.timeout(60):
            while not any(line.get("state") == "running" for line in lines):
                raw = await daemon.stdout.readline()
                said.append(raw)
                assert raw, f"nija run ended before it ran: {b''.join(said).decode()[-3000:]}"
                if raw.startswith(b"{"):
                    lines.append(json.loads(raw))
            daemon.send_signal(signal.SIGTERM)  # as systemd, Railway or Render stop it
            rest, _ = await daemon.communicate()
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    lines += [json.loads(line) for line in rest.decode().splitlines() if line.startswith("{")]
    return daemon.returncode, lines


async def test_nija_run_says_which_loop_it_runs_on_and_stops_cleanly_on_sigterm_on_either(tmp_path):
    (tmp_path / "default").mkdir()
    (tmp_path / "asyncio").mkdir()
    runs = await asyncio.gather(_paper_run_until_sigterm(tmp_path / "default", None),
                                _paper_run_until_sigterm(tmp_path / "asyncio", "asyncio"))
    for (code, lines), loop in zip(runs, ["uvloop", "asyncio"]):
        states = [line for line in lines if line["event"] == "lifecycle"]
        assert states[0]["state"] == "starting" and states[0]["event_loop"] == loop
        assert code == 0 and states[-1]["state"] == "stopped", lines[-3:]


def test_an_unknown_loop_is_reported_with_the_fix_and_the_run_keeps_uvloop(tmp_path, capsys):
    assert setting_problems({"NIJA_EVENT_LOOP": "trio"}) == [
        "NIJA_EVENT_LOOP='trio' is not an event loop: use uvloop (the default) or asyncio"]
    assert loop_factory({"NIJA_EVENT_LOOP": "trio"}) is not None
    assert "NIJA_EVENT_LOOP='trio'" in capsys.readouterr().err
    assert loop_factory({"NIJA_EVENT_LOOP": " AsyncIO "}) is None
    assert setting_problems({}) == []

    out = io.StringIO()
    env = {"NIJA_EVENT_LOOP": "trio", "NIJA_USERS_DIR": str(tmp_path), "NIJA_STATE_DIR": str(tmp_path / "state")}
    assert check_main([], environ=env, out=out) == 1
    assert "✗ NIJA_EVENT_LOOP='trio' is not an event loop: use uvloop (the default) or asyncio" in out.getvalue()

    out = io.StringIO()
    assert check_main([], environ={**env, "NIJA_EVENT_LOOP": "asyncio"}, out=out) == 0
    assert "NIJA_EVENT_LOOP" not in out.getvalue()  # a known variable: no "not a variable NIJA reads" warning


pytestmark = pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed here")
