"""`nija run` end to end on the embedded exchange: a master fill is copied to every follower from the files."""

import asyncio
import contextlib
import json
from decimal import Decimal

import pytest

import nija.daemon
from nija.daemon import StartupError, run
from nija.exchange import Fault
from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.nonce import NonceCoordinator
from nija.settings import load_settings


async def wait_for(condition, timeout_s=15.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def daemon_env(exchange_url, master, tmp_path, **extra) -> dict:
    """The settings of a daemon whose master is `master` on the test exchange, state and users in `tmp_path`."""
    (tmp_path / "users").mkdir(exist_ok=True)
    return {"KRAKEN_API_URL": exchange_url, "KRAKEN_MASTER_API_KEY": master.api_key,
            "KRAKEN_MASTER_API_SECRET": master.api_secret, "NIJA_STATE_DIR": str(tmp_path / "state"),
            "NIJA_USERS_DIR": str(tmp_path / "users"), **extra}


@contextlib.asynccontextmanager
async def running(settings, **options):
    """The daemon in a task for the block; then stopped, as SIGTERM would, and its clean exit checked."""
    stop = asyncio.Event()
    daemon = asyncio.create_task(run(settings, stop=stop, **options))
    try:
        yield daemon
    finally:
        stop.set()
        assert await asyncio.wait_for(daemon, 30) == 0


def alice_follows(exchange, tmp_path, monkeypatch) -> None:
    """A follower file for the exchange's alice in `tmp_path`/users, her keys in the environment."""
    (tmp_path / "users" / "alice.json").write_text(json.dumps({"name": "alice"}))
    alice = exchange.account("alice")
    monkeypatch.setenv("KRAKEN_USER_ALICE_API_KEY", alice.api_key)
    monkeypatch.setenv("KRAKEN_USER_ALICE_API_SECRET", alice.api_secret)


class LogLines:
    """What the daemon logged so far, as the console renderer the tests use shows it."""

    def __init__(self, capsys):
        self.capsys, self.lines = capsys, []

    def read(self) -> list[str]:
        self.lines.extend(self.capsys.readouterr().out.splitlines())
        return self.lines

    def logged(self, event, *words) -> bool:
        """A line of `event` that has each of `words` (e.g. "source=master") among its fields, in the console
        renderer's form or as a JSON line (an earlier test in the process may have chosen JSON)."""
        return any(self._matches(line, event, words) for line in self.read())

    @staticmethod
    def _matches(line, event, words) -> bool:
        if line.startswith("{"):
            try:
                fields = json.loads(line)
            except ValueError:
                return False
            shown = {f"{key}={value}" for key, value in fields.items()}
            return fields.get("event") == event and all(w in shown for w in words)
        return f"] {event} " in line and all(w in line.split() for w in words)


async def test_master_fill_is_copied_and_a_bad_follower_file_leaves_only_itself_out(
        exchange, exchange_url, tmp_path, monkeypatch):
    exchange.set_price("XBTUSD", Decimal("50000"))
    master = exchange.create_account("whale", {"ZUSD": Decimal("10000")})
    users = tmp_path / "users"
    users.mkdir()
    (users / "alice.json").write_text(json.dumps({"name": "alice"}))
    (users / "bob.json").write_text(json.dumps({"name": "bob", "risk_multiplier": 0.5}))
    (users / "carol.json").write_text(json.dumps({"name": "carol", "max_risk": 0.2}))  # unknown field
    env = {
        "KRAKEN_API_URL": exchange_url,
        "KRAKEN_MASTER_API_KEY": master.api_key, "KRAKEN_MASTER_API_SECRET": master.api_secret,
        "NIJA_STATE_DIR": str(tmp_path / "state"), "NIJA_USERS_DIR": str(users),
    }
    for name in ("alice", "bob"):
        account = exchange.account(name)
        env[f"KRAKEN_USER_{name.upper()}_API_KEY"] = account.api_key
        env[f"KRAKEN_USER_{name.upper()}_API_SECRET"] = account.api_secret
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env, dotenv_path=None)

    async with running(settings, master_poll_s=0.1) as daemon, \
            KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces")) as context:
        await wait_for(lambda: (tmp_path / "state" / "master_fills.json").exists() or daemon.done())
        assert not daemon.done()
        trader = KrakenClient(master.api_key, master.api_secret, base_url=exchange_url, context=context)
        # The master spends about 10 % of its equity: alice copies ~10 % of hers, bob (multiplier 0.5) ~5 %.
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))

        def held(name):
            return exchange.balances(name).get("XXBT", Decimal(0))

        await wait_for(lambda: held("alice") > 0 and held("bob") > 0)
        alice_usd = held("alice") * Decimal("50000")
        assert Decimal("7.5") < alice_usd <= Decimal("8.46")  # 84.58 × 1000/10000, rounded down to the lot
        bob_usd = held("bob") * Decimal("50000")
        assert Decimal("3.0") < bob_usd <= Decimal("3.30")  # 65.87 × 1000/10000 × 0.5
    # Exactly one order per follower for the one master fill.
    for name in ("alice", "bob"):
        assert [len(orders) for orders in exchange.orders_by_cl_ord_id(name).values()] == [1]


async def test_auto_earn_balances_are_equity_and_position_alike_for_master_and_follower(
        exchange, exchange_url, tmp_path, monkeypatch):
    """Two identical accounts, most of their BTC in Kraken Rewards (XBT.F, which orders in BTC draw on): the
    follower copies the master one for one, entry and exit."""
    exchange.set_price("XBTUSD", Decimal("50000"))
    holdings = {"ZUSD": Decimal("10000"), "XBT.F": Decimal("0.2")}
    master, twin = exchange.create_account("earner", holdings), exchange.create_account("twin", holdings)
    settings = load_settings(daemon_env(exchange_url, master, tmp_path), dotenv_path=None)
    (tmp_path / "users" / "twin.json").write_text(json.dumps({"name": "twin"}))
    monkeypatch.setenv("KRAKEN_USER_TWIN_API_KEY", twin.api_key)
    monkeypatch.setenv("KRAKEN_USER_TWIN_API_SECRET", twin.api_secret)

    def btc(name):
        balances = exchange.balances(name)
        return balances.get("XXBT", Decimal(0)) + balances.get("XBT.F", Decimal(0))

    async with running(settings, master_poll_s=0.1) as daemon, \
            KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces")) as context:
        await wait_for(lambda: (tmp_path / "state" / "master_fills.json").exists() or daemon.done())
        trader = KrakenClient(master.api_key, master.api_secret, base_url=exchange_url, context=context)
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: btc("twin") > Decimal("0.2"))
        # (Before: the master's equity left XBT.F out, the twin's counted it: the twin bought 0.04.)
        assert btc("earner") == Decimal("0.22") and abs(btc("twin") - Decimal("0.22")) < Decimal("0.00002")
        # A quarter of the master's BTC, most of it drawn from XBT.F: the twin sells a quarter of its own.
        await trader.add_order("XBTUSD", "sell", Decimal("0.055"), oflags="fciq")
        await wait_for(lambda: btc("twin") < Decimal("0.2"))
        assert btc("earner") == Decimal("0.165") and abs(btc("twin") - Decimal("0.165")) < Decimal("0.00002")


async def test_a_follower_whose_key_trades_the_master_account_is_left_out_after_one_copy(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    """dave was given a second key of the master's account: each of his copies is a master fill that would be copied
    again, dave's included, until the master's cash ran out. His first copy is recognised by its client order id."""
    exchange.set_price("XBTUSD", Decimal("50000"))
    master = exchange.create_account("loop-master", {"ZUSD": Decimal("10000")})
    settings = load_settings(daemon_env(exchange_url, master, tmp_path), dotenv_path=None)
    alice_follows(exchange, tmp_path, monkeypatch)
    (tmp_path / "users" / "dave.json").write_text(json.dumps({"name": "dave"}))
    second_key = exchange.add_key("loop-master")
    monkeypatch.setenv("KRAKEN_USER_DAVE_API_KEY", second_key.api_key)
    monkeypatch.setenv("KRAKEN_USER_DAVE_API_SECRET", second_key.api_secret)
    log = LogLines(capsys)

    async with running(settings, master_poll_s=0.1) as daemon, \
            KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces")) as context:
        await wait_for(lambda: (tmp_path / "state" / "master_fills.json").exists() or daemon.done())
        trader = KrakenClient(master.api_key, master.api_secret, base_url=exchange_url, context=context)
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: log.logged("follower_is_master_account", "name=dave"))
        await asyncio.sleep(1.0)  # ten more polls: nothing else is copied
        # The master's own order and dave's one copy; alice copied the master's order alone.
        assert len(exchange.orders("loop-master")) == 2
        assert len(exchange.orders("alice")) == 1
        assert sum("copy_summary" in line for line in log.read()) == 1  # dave's copy was no signal


@contextlib.asynccontextmanager
async def running_a_while(exchange, exchange_url, tmp_path, monkeypatch, capsys, check_every: str):
    """The daemon, master plus alice, running for a moment with its `check_every` interval at 50 ms; yields
    (settings, log lines)."""
    monkeypatch.setattr(nija.daemon, check_every, 0.05)
    settings = load_settings(daemon_env(exchange_url, exchange.account("master"), tmp_path), dotenv_path=None)
    alice_follows(exchange, tmp_path, monkeypatch)
    log = LogLines(capsys)
    async with running(settings, master_poll_s=0.1) as daemon:
        await wait_for(lambda: log.logged("lifecycle", "state=running") or daemon.done())
        await asyncio.sleep(0.2)
        yield settings, log


async def test_follower_files_changed_while_running_are_told_to_apply_at_the_next_start(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    async with running_a_while(exchange, exchange_url, tmp_path, monkeypatch, capsys,
                               "FOLLOWER_FILES_CHECK_S") as (_settings, log):
        assert not log.logged("follower_files_changed")  # nothing changed: nothing told
        (tmp_path / "users" / "alice.json").write_text(json.dumps({"name": "alice", "enabled": False}))
        (tmp_path / "users" / "carol.json").write_text(json.dumps({"name": "carol"}))
        await wait_for(lambda: log.logged("follower_files_changed", "added=['carol.json']", "edited=['alice.json']",
                                          "removed=[]"))


async def test_a_store_file_deleted_while_running_is_told_and_keeps_the_daemon_degraded(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    async with running_a_while(exchange, exchange_url, tmp_path, monkeypatch, capsys,
                               "STORE_FILE_CHECK_S") as (settings, log):
        assert not log.logged("store_file_missing")
        for path in settings.store_path.parent.glob(settings.store_path.name + "*"):  # the database, its WAL
            path.unlink()
        await wait_for(lambda: log.logged("store_file_missing", "problem=deleted"))
        await wait_for(lambda: log.logged("lifecycle", "state=degraded"))


async def test_a_second_daemon_on_the_same_keys_refuses_to_start(exchange, exchange_url, tmp_path, monkeypatch):
    master = exchange.account("master")
    (tmp_path / "users").mkdir()
    env = {"KRAKEN_API_URL": exchange_url, "KRAKEN_MASTER_API_KEY": master.api_key,
           "KRAKEN_MASTER_API_SECRET": master.api_secret, "NIJA_STATE_DIR": str(tmp_path / "state"),
           "NIJA_USERS_DIR": str(tmp_path / "users")}
    settings = load_settings(env, dotenv_path=None)
    stop = asyncio.Event()
    first = asyncio.create_task(run(settings, stop=stop, master_poll_s=0.1))
    await wait_for(lambda: (tmp_path / "state" / "master_fills.json").exists())
    from nija.lifecycle import AlreadyRunningError

    try:
        second = asyncio.create_task(run(settings, stop=asyncio.Event()))
        try:
            await asyncio.wait_for(second, 10)
            raise AssertionError("the second daemon started")
        except AlreadyRunningError as exc:
            assert "another NIJA process (nija run" in str(exc)
    finally:
        stop.set()
        assert await asyncio.wait_for(first, 30) == 0


async def test_a_second_daemon_with_another_state_directory_cannot_use_the_same_keys(
        exchange, exchange_url, tmp_path, host_lock_dir):
    """Two NIJA runs on one master key, each with its own NIJA_STATE_DIR, would each copy every master fill."""
    from nija.lifecycle import AlreadyRunningError

    master = exchange.account("master")
    for run_dir in ("first", "second"):
        (tmp_path / run_dir).mkdir()
    first_env = daemon_env(exchange_url, master, tmp_path / "first")
    second_env = daemon_env(exchange_url, master, tmp_path / "second")
    async with running(load_settings(first_env, dotenv_path=None), master_poll_s=0.1) as daemon:
        await wait_for(lambda: (tmp_path / "first" / "state" / "master_fills.json").exists() or daemon.done())
        with pytest.raises(AlreadyRunningError, match="another NIJA process"):
            await asyncio.wait_for(run(load_settings(second_env, dotenv_path=None), stop=asyncio.Event()), 10)
    assert list(host_lock_dir.iterdir())  # the lock that told them apart is outside both state directories


async def test_paper_mode_copies_the_paper_masters_fills(tmp_path):
    """What `./start.sh` does with no keys: the embedded exchange in-process; its keys file lets you trade."""
    settings = load_settings({"NIJA_STATE_DIR": str(tmp_path / "state")}, dotenv_path=None)
    paper = tmp_path / "state" / "paper"
    async with running(settings, paper=True, master_poll_s=0.1) as daemon, \
            KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces")) as context:
        await wait_for(lambda: (paper / "master_fills.json").exists() or daemon.done())
        keys = dict(line.split("=", 1) for line in (paper / "keys.env").read_text().split())
        # The master's second key, for the trader's own client (NIJA's nonces own the first)
        trader = KrakenClient(keys["PAPER_MASTER_TRADER_API_KEY"], keys["PAPER_MASTER_TRADER_API_SECRET"],
                              base_url=keys["KRAKEN_API_URL"], context=context)
        follower = KrakenClient(keys["KRAKEN_USER_ALICE_API_KEY"], keys["KRAKEN_USER_ALICE_API_SECRET"],
                                base_url=keys["KRAKEN_API_URL"], context=context)
        price = (await trader.ticker("XBTUSD"))["XXBTZUSD"].last
        volume = (Decimal("6") / price).quantize(Decimal("0.00000001"))  # ~10 % of the $60.53 master
        await trader.add_order("XBTUSD", "buy", volume)

        async def alice_btc():
            return (await follower.balance()).get("XXBT", Decimal(0))

        deadline = asyncio.get_running_loop().time() + 15
        while await alice_btc() == 0:
            assert asyncio.get_running_loop().time() < deadline, "alice never copied the paper master"
            await asyncio.sleep(0.2)
        # alice copies ~10 % of her $84.58, rounded down to the lot.
        assert Decimal("7") < await alice_btc() * price <= Decimal("8.5")


async def test_a_second_paper_run_starts_afresh_without_a_key_change_warning(tmp_path, capsys):
    """Each paper run is a new embedded exchange with new keys: nothing of the last run is resumed or warned about."""
    settings = load_settings({"NIJA_STATE_DIR": str(tmp_path / "state")}, dotenv_path=None)
    for _ in range(2):
        log = LogLines(capsys)  # this run's lines only
        async with running(settings, paper=True, master_poll_s=0.1) as daemon:
            await wait_for(lambda: log.logged("master_watch_started") or daemon.done())
        assert not log.logged("master_watch_reset")


@pytest.mark.parametrize("wrong, to_fix", [("key", "copy it again into KRAKEN_MASTER_API_KEY"),
                                            ("secret", "secret does not belong to the key")])
async def test_a_refused_master_key_stops_the_start_with_the_variable_to_fix(exchange, exchange_url, tmp_path,
                                                                             wrong, to_fix):
    master = exchange.account("master")
    other = exchange.account("alice")
    (tmp_path / "users").mkdir()
    env = {"KRAKEN_API_URL": exchange_url,
           "KRAKEN_MASTER_API_KEY": "not-a-key-the-exchange-knows" if wrong == "key" else master.api_key,
           "KRAKEN_MASTER_API_SECRET": other.api_secret if wrong == "secret" else master.api_secret,
           "NIJA_STATE_DIR": str(tmp_path / "state"), "NIJA_USERS_DIR": str(tmp_path / "users")}
    with pytest.raises(StartupError) as info:
        await asyncio.wait_for(run(load_settings(env, dotenv_path=None)), 30)
    assert to_fix in str(info.value)
    assert master.api_secret not in str(info.value) and other.api_secret not in str(info.value)


async def test_an_unreachable_url_stops_the_start_naming_it(tmp_path):
    (tmp_path / "users").mkdir()
    env = {"KRAKEN_API_URL": "http://127.0.0.1:9", "KRAKEN_MASTER_API_KEY": "k",
           "KRAKEN_MASTER_API_SECRET": "c2VjcmV0", "NIJA_STATE_DIR": str(tmp_path / "state"),
           "NIJA_USERS_DIR": str(tmp_path / "users")}
    with pytest.raises(StartupError) as info:
        await asyncio.wait_for(run(load_settings(env, dotenv_path=None)), 60)
    assert "KRAKEN_API_URL=http://127.0.0.1:9" in str(info.value)


async def test_a_follower_key_held_by_another_daemon_leaves_only_that_follower_out(tmp_path):
    from contextlib import AsyncExitStack

    from pydantic import SecretStr

    from nija.accounts import Follower, FollowerConfig
    from nija.daemon import _lock_follower_keys
    from nija.lifecycle import InstanceLock, Lifecycle

    settings = load_settings({"NIJA_STATE_DIR": str(tmp_path)}, dotenv_path=None)
    alice = Follower(FollowerConfig(name="alice"), SecretStr("key-a"), SecretStr("c2E="))
    bob = Follower(FollowerConfig(name="bob"), SecretStr("key-b"), SecretStr("c2I="))
    with InstanceLock(tmp_path, "key-a"):
        async with AsyncExitStack() as other_daemon:
            # flock locks belong to open files: a second open of the same lock file contends like another process.
            lifecycle = Lifecycle()
            kept = await _lock_follower_keys(other_daemon, settings, [alice, bob], lifecycle)
            assert [f.name for f in kept] == ["bob"]
            assert "follower:alice" in lifecycle.problems


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_a_stop_during_a_slow_start_ends_the_start_at_once(exchange, exchange_server, tmp_path):
    """Render sends SIGTERM and waits 30 s: a start stuck on a slow Kraken must not outlive it."""
    master = exchange.account("master")
    (tmp_path / "users").mkdir()
    env = {"KRAKEN_API_URL": exchange_server.url, "KRAKEN_MASTER_API_KEY": master.api_key,
           "KRAKEN_MASTER_API_SECRET": master.api_secret, "NIJA_STATE_DIR": str(tmp_path / "state"),
           "NIJA_USERS_DIR": str(tmp_path / "users")}
    exchange_server.latency_ms = 60_000  # every reply a minute away: the start cannot finish
    stop = asyncio.Event()
    daemon = asyncio.create_task(run(load_settings(env, dotenv_path=None), stop=stop))
    await asyncio.sleep(0.3)
    assert not daemon.done()
    stop.set()
    assert await asyncio.wait_for(daemon, 10) == 0
    assert not (tmp_path / "state" / "master_fills.json").exists()  # it never got as far as watching


async def test_a_follower_that_cannot_be_reached_degrades_the_daemon_until_it_answers_again(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nija.daemon, "HEALTH_S", 0.05)
    bob = exchange.account("bob")
    env = daemon_env(exchange_url, exchange.account("master"), tmp_path, NIJA_BALANCE_REFRESH_S="1",
                     KRAKEN_USER_BOB_API_KEY=bob.api_key, KRAKEN_USER_BOB_API_SECRET=bob.api_secret)
    (tmp_path / "users" / "bob.json").write_text(json.dumps({"name": "bob"}))
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # follower credentials are read from the environment
    exchange.inject(Fault("service_unavailable", probability=1.0, account="bob"))
    log = LogLines(capsys)
    async with running(load_settings(env, dotenv_path=None), master_poll_s=0.1) as daemon:
        await wait_for(lambda: log.logged("degraded", "source=follower:bob") or daemon.done(), timeout_s=30)
        assert not daemon.done()
        exchange.clear_faults()
        await wait_for(lambda: log.logged("recovered", "source=follower:bob"), timeout_s=30)
        assert log.logged("lifecycle", "state=running")


async def test_balance_snapshots_show_what_each_account_holds_besides_usd(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    master = exchange.account("master")
    exchange.fund("master", "XXBT", "0.25")
    exchange.fund("alice", "XETH", "1.5")
    env = daemon_env(exchange_url, master, tmp_path)
    alice_follows(exchange, tmp_path, monkeypatch)
    log = LogLines(capsys)

    def snapshot(name):
        return next((line for line in log.read() if "balance_snapshot" in line and f"account={name}" in line), "")

    async with running(load_settings(env, dotenv_path=None), master_poll_s=0.1) as daemon:
        await wait_for(lambda: (snapshot("master") and snapshot("alice")) or daemon.done())
    assert "BTC" in snapshot("master") and "0.2500000000" in snapshot("master")
    assert "ETH" in snapshot("alice") and "1.5000000000" in snapshot("alice")


async def test_a_host_clock_behind_krakens_is_told_and_the_masters_fills_are_still_copied(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    """From a host 30 s behind Kraken, every order's deadline stamped on the host's clock would have passed on
    arrival: the daemon reads Kraken's clock at start, says so, and stamps deadlines in Kraken's time."""
    exchange.set_price("XBTUSD", Decimal("50000"))
    exchange.shift_wall_clock(30)
    master = exchange.create_account("skewed-master", {"ZUSD": Decimal("10000")})
    env = daemon_env(exchange_url, master, tmp_path)
    alice_follows(exchange, tmp_path, monkeypatch)
    log = LogLines(capsys)
    async with running(load_settings(env, dotenv_path=None), master_poll_s=0.1) as daemon, \
            KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces")) as context:
        await wait_for(lambda: (log.logged("clock_skew") and (tmp_path / "state" / "master_fills.json").exists())
                       or daemon.done())
        line = next(line for line in log.read() if "clock_skew" in line)
        assert "kraken_minus_host_s=29." in line or "kraken_minus_host_s=30.0" in line
        assert "NTP" in line
        context.clock_offset_s = 30.0  # the master's own tool keeps Kraken's time too
        trader = KrakenClient(master.api_key, master.api_secret, base_url=exchange_url, context=context)
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: exchange.balances("alice").get("XXBT", Decimal(0)) > 0)


async def test_a_master_balance_unread_at_start_is_read_again_and_sets_the_rate_profile(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nija.daemon, "MASTER_EQUITY_RETRY_S", 0.1)
    env = daemon_env(exchange_url, exchange.account("master"), tmp_path)
    exchange.inject(Fault("service_unavailable", next_n=6, account="master", method="Balance"))
    logged = LogLines(capsys).logged
    async with running(load_settings(env, dotenv_path=None)) as daemon:
        await wait_for(lambda: logged("recovered", "source=balance:master") or daemon.done(), timeout_s=30)
        assert logged("degraded", "source=balance:master")
        # $60.53 of master equity: LOW_CAPITAL, whose order-status interval is 15 s
        assert logged("rate_profile", "profile=LOW_CAPITAL", "order_status_refresh_s=15.0")
        assert logged("lifecycle", "state=running")


async def test_a_missed_hourly_master_read_is_tried_again_soon_without_degrading(
        exchange, exchange_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nija.daemon, "MASTER_EQUITY_S", 0.3)
    monkeypatch.setattr(nija.daemon, "MASTER_EQUITY_RETRY_S", 0.1)
    master = exchange.create_account("pro-master", {"ZUSD": Decimal("5000")}, tier="pro")
    env = daemon_env(exchange_url, master, tmp_path, KRAKEN_TIER="pro")
    log = LogLines(capsys)

    def master_snapshots():
        return [line for line in log.read() if "] balance_snapshot " in line and "account=master" in line.split()]

    async with running(load_settings(env, dotenv_path=None), master_poll_s=5.0) as daemon:
        await wait_for(lambda: len(master_snapshots()) >= 1 or daemon.done())
        exchange.inject(Fault("service_unavailable", next_n=5, account="pro-master", method="TradeBalance"))
        await wait_for(lambda: any("error=" in line for line in master_snapshots()), timeout_s=30)
        await wait_for(lambda: "error=" not in master_snapshots()[-1], timeout_s=30)  # read again soon
        assert not log.logged("degraded")


@pytest.mark.parametrize("damaged", ["nija.sqlite3", "master_fills.json", "nonces/nonce_high_water"])
async def test_a_damaged_state_file_stops_the_start_with_one_line_naming_it(exchange, exchange_url, tmp_path, damaged):
    """`nija run` as an operator's supervisor sees it: one startup_failed line with the file and the fix, exit code
    2, and the process ends (a hung one looks healthy to systemd, Railway or Render and is never restarted)."""
    import os
    import sys

    master = exchange.account("master")
    env = {**os.environ, **daemon_env(exchange_url, master, tmp_path), "NIJA_LOG_FORMAT": "json"}
    path = tmp_path / "state" / damaged
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00 not what NIJA wrote \xff" * 64)
    daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "nija", "run", env=env,
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(daemon.communicate(), 60)
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    lines = [json.loads(line) for line in (out + err).decode().splitlines() if line.startswith("{")]
    [failed] = [line for line in lines if line["event"] == "startup_failed"]
    assert daemon.returncode == 2 and str(path) in failed["reason"], (out + err).decode()[-2000:]
    assert "Traceback" not in (out + err).decode()


async def test_trades_the_master_made_while_copying_was_off_are_not_copied_later(exchange, exchange_url, tmp_path,
                                                                                 capsys, monkeypatch):
    exchange.set_price("XBTUSD", Decimal("50000"))
    master = exchange.create_account("whale", {"ZUSD": Decimal("10000")})
    alice = exchange.account("alice")
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "alice.json").write_text(json.dumps({"name": "alice"}))
    env = daemon_env(exchange_url, master, tmp_path)
    monkeypatch.setenv("KRAKEN_USER_ALICE_API_KEY", alice.api_key)  # follower keys come from the environment
    monkeypatch.setenv("KRAKEN_USER_ALICE_API_SECRET", alice.api_secret)
    fills_state = tmp_path / "state" / "master_fills.json"
    async with running(load_settings(env, dotenv_path=None), master_poll_s=0.1):
        await wait_for(fills_state.exists)  # copying, watched from here on
    independent = load_settings({**env, "COPY_TRADING_MODE": "INDEPENDENT"}, dotenv_path=None)
    async with running(independent, master_poll_s=0.1), \
            KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces")) as context:
        await wait_for(lambda: LogLines(capsys).logged("copying_off"))
        trader = KrakenClient(master.api_key, master.api_secret, base_url=exchange_url, context=context)
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))  # the master's own trade
    async with running(load_settings(env, dotenv_path=None), master_poll_s=0.1):
        with contextlib.suppress(AssertionError):  # a copy would come within a few polls of 0.1 s
            await wait_for(lambda: exchange.orders_by_cl_ord_id("alice"), timeout_s=2.0)
    assert exchange.orders_by_cl_ord_id("alice") == {}


@pytest.mark.parametrize("symbol, blocks_btc", [
    ("BTC/USD", True), ("XBTUSD", True), ("BTC_USD", True), ("XBT:USD", True), ("XXBT/ZUSD", True),
    ("XBTZUSD", True), ("BTC/ZUSD", True), ("XBT", True), ("BTC", True), ("DOGE", False), ("DOGEE", False),
    ("USD", False)])
async def test_a_disabled_symbol_blocks_the_pair_it_names_or_is_reported_at_start(exchange, exchange_url, tmp_path,
                                                                                 symbol, blocks_btc):
    """A name Kraken's pairs resolve is matched by sizing in that spelling; one that blocks nothing (a typo, a
    quote currency) is said at start, so the operator is never left believing it blocks something; and then by
    `nija check` too, offline, from the names the start saved."""
    import io
    import json

    from pydantic import SecretStr
    from structlog.testing import capture_logs

    from nija.accounts import Follower, FollowerConfig, check_main
    from nija.trading.signals import signal_from_master_order
    from nija.trading.sizing import FollowerBook, FollowerLimits, PairRules, Skip, size_copy

    async with KrakenContext(state_dir=tmp_path) as context:
        pairs = await KrakenClient("k", "c2VjcmV0", base_url=exchange_url, context=context).pairs()
    alice = Follower(FollowerConfig(name="alice", disabled_symbols=[symbol]), SecretStr("k"), SecretStr("c2VjcmV0"))
    env = {"KRAKEN_MASTER_API_KEY": "km", "KRAKEN_MASTER_API_SECRET": "c2VjcmV0", "KRAKEN_API_URL": exchange_url,
           "KRAKEN_USER_ALICE_API_KEY": "k", "KRAKEN_USER_ALICE_API_SECRET": "c2VjcmV0",
           "NIJA_STATE_DIR": str(tmp_path / "state"), "NIJA_USERS_DIR": str(tmp_path / "users")}
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "alice.json").write_text(json.dumps({"name": "alice", "disabled_symbols": [symbol]}))
    before_any_run = io.StringIO()
    assert check_main([], environ=env, out=before_any_run) == 0
    assert "checked against" in before_any_run.getvalue() and "none saved there yet" in before_any_run.getvalue()
    with capture_logs() as logs:
        await nija.daemon._check_disabled_symbols([alice], pairs, tmp_path / "state", exchange_url)
    warned = [line for line in logs if line["event"] == "follower_config_problem"]
    buy = signal_from_master_order("O1", pair="XXBTZUSD", side="buy", vol_exec=Decimal("0.1"),
                                   cost_usd=Decimal("5000"), fee_usd=Decimal("10"), master_equity_usd=Decimal("10000"),
                                   position_before_base=None, ordermin_base=Decimal("0.0001"), reason=None)
    plan = size_copy(buy, FollowerLimits.of(alice.config), FollowerBook(Decimal(1000), Decimal(1000), Decimal(0)),
                     PairRules.of(pairs.get("XBTUSD")))
    assert (isinstance(plan, Skip) and plan.reason.value == "disabled_symbol") is blocks_btc
    report = io.StringIO()
    assert check_main([], environ=env, out=report) == 0  # a warning, as at start: the file is still used
    told = [line for line in report.getvalue().splitlines() if "disabled_symbols" in line]
    if symbol in ("DOGEE", "USD"):
        assert warned and f"{symbol!r}" in warned[0]["problem"] and warned[0]["log_level"] == "warning"
        assert told == [f"  ! {tmp_path / 'users' / 'alice.json'}: disabled_symbols: {warned[0]['problem']} "
                        f"(pairs as of {json.loads((tmp_path / 'state' / 'pair_symbols.json').read_text())['saved_at']})"]
    else:
        assert not warned and not told


def test_follower_files_without_master_keys_warn_that_the_run_is_paper(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("KRAKEN_MASTER_API_KEY", "KRAKEN_MASTER_API_SECRET", "NIJA_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "alice.json").write_text(json.dumps({"name": "alice"}))
    monkeypatch.setenv("NIJA_USERS_DIR", str(tmp_path / "users"))
    monkeypatch.setenv("NIJA_STATE_DIR", str(tmp_path / "state"))
    assert nija.daemon.main(["--duration", "0.2"]) == 0
    captured = capsys.readouterr()
    logged = captured.out + captured.err
    assert "master_keys_missing" in logged and "KRAKEN_MASTER_API_KEY" in logged and "paper_mode" in logged


async def test_a_daemon_with_no_follower_files_warns_where_to_put_them(exchange, exchange_url, tmp_path, capsys):
    env = daemon_env(exchange_url, exchange.account("master"), tmp_path)  # an empty users directory
    log = LogLines(capsys)
    async with running(load_settings(env, dotenv_path=None), master_poll_s=0.1) as daemon:
        await wait_for(lambda: log.logged("followers_loaded") or daemon.done())
    line = next(line for line in log.read() if "followers_loaded" in line)
    assert "warning" in line and "NIJA_USERS_DIR" in line and str(tmp_path / "users") in line
