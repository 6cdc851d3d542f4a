"""The daemon follows the master's executions on the WebSocket channel: a trade is copied at once, polls are the
safety net, and a channel that is refused or drops never stops the copying."""

import asyncio
from decimal import Decimal

import pytest

from nija.kraken.client import KrakenClient, KrakenContext
from nija.kraken.nonce import NonceCoordinator
from nija.settings import load_settings
from tests.daemon.test_daemon import LogLines, alice_follows, daemon_env, running, wait_for

#: a poll interval no test waits out: whatever is copied in time was woken by the channel
NEVER_S = 600.0


@pytest.fixture
def copying(exchange, exchange_url, tmp_path, monkeypatch):
    """(settings for a daemon whose follower alice copies `master`, the master's own trading client)"""

    def make(master_permissions=("query", "trade", "websocket"), **env_extra):
        exchange.set_price("XBTUSD", Decimal("50000"))
        master = exchange.create_account("feed-master", {"ZUSD": Decimal("10000")}, tier="pro",
                                         permissions=master_permissions)
        env = daemon_env(exchange_url, master, tmp_path, KRAKEN_TIER="pro", **env_extra)
        alice_follows(exchange, tmp_path, monkeypatch)
        # The master's trades come from its own tool, with a nonce sequence of its own (a second key).
        trader_key = exchange.add_key("feed-master")
        context = KrakenContext(nonces=NonceCoordinator(tmp_path / "trader-nonces"))
        trader = KrakenClient(trader_key.api_key, trader_key.api_secret, base_url=exchange_url, context=context)
        return load_settings(env, dotenv_path=None), trader

    return make


def held(exchange, name):
    return exchange.balances(name).get("XXBT", Decimal(0))


@pytest.fixture
def watching(tmp_path):
    """Whether the daemon's first look at the master is done: trades from before it are history, not copied."""
    return lambda: (tmp_path / "state" / "master_fills.json").exists()


async def test_a_master_trade_is_copied_at_once_though_polls_are_minutes_apart(exchange, copying, watching, capsys):
    settings, trader = copying()
    log = LogLines(capsys)
    async with running(settings, master_poll_s=NEVER_S) as daemon:
        await wait_for(lambda: (log.logged("master_feed_up") and watching()) or daemon.done())
        assert log.logged("master_feed_up", "polls_every_s=600.0")
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: held(exchange, "alice") > 0)
        await trader.add_order("XBTUSD", "sell", Decimal("0.02"), oflags="fciq")  # the master closes: so does alice
        await wait_for(lambda: held(exchange, "alice") == 0)
    await trader.context.close()
    assert [len(orders) for orders in exchange.orders_by_cl_ord_id("alice").values()] == [1, 1]


@pytest.mark.parametrize("cause, told", [
    ("key without the WebSocket permission", ("WebSocket interface", "KRAKEN_WS_AUTH_URL=off")),
    ("KRAKEN_WS_AUTH_URL without /v2", ("HTTP 404", "set KRAKEN_WS_AUTH_URL to the channel's address")),
])
async def test_a_channel_that_cannot_be_followed_is_told_with_its_fix_and_polls_carry_the_copying(
        exchange, exchange_url, copying, watching, capsys, cause, told):
    if cause.startswith("key"):
        settings, trader = copying(master_permissions=("query", "trade"))
    else:  # a wrong address is no network blip: not retried every few seconds, and named
        settings, trader = copying(KRAKEN_WS_AUTH_URL=exchange_url.replace("http", "ws", 1))
    log = LogLines(capsys)
    async with running(settings, master_poll_s=0.2) as daemon:
        await wait_for(lambda: (log.logged("master_feed_unavailable") and watching()) or daemon.done())
        line = next(line for line in log.read() if "master_feed_unavailable" in line)
        assert all(words in line for words in told), line
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: held(exchange, "alice") > 0)
        assert not daemon.done()
    await trader.context.close()


async def test_a_dropped_channel_is_followed_again_and_its_trades_still_wake_the_copy(
        exchange, exchange_server, copying, watching, capsys):
    settings, trader = copying()
    log = LogLines(capsys)

    def feed_ups():
        return sum("master_feed_up" in line for line in log.read())

    async with running(settings, master_poll_s=NEVER_S) as daemon:
        await wait_for(lambda: (feed_ups() == 1 and watching()) or daemon.done())
        assert await exchange_server.close_websockets() == 1  # Kraken's maintenance, a proxy's idle cut ...
        await wait_for(lambda: log.logged("master_feed_down", "retry_in_s=1.0"))
        await wait_for(lambda: feed_ups() == 2)
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: held(exchange, "alice") > 0)
    await trader.context.close()


async def test_with_the_channel_off_the_daemon_says_so_and_polls(exchange, copying, watching, capsys):
    settings, trader = copying(KRAKEN_WS_AUTH_URL="off")
    log = LogLines(capsys)
    async with running(settings, master_poll_s=0.2) as daemon:
        await wait_for(lambda: (log.logged("master_feed_off", "polls_every_s=0.2") and watching()) or daemon.done())
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: held(exchange, "alice") > 0)
        assert not log.logged("master_feed_up")
    await trader.context.close()


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_paper_mode_follows_the_embedded_exchanges_channel(tmp_path, capsys):
    """`./start.sh` with no keys: the channel is the embedded exchange's, never Kraken's."""
    settings = load_settings({"NIJA_STATE_DIR": str(tmp_path / "state")}, dotenv_path=None)
    log = LogLines(capsys)
    async with running(settings, paper=True, master_poll_s=NEVER_S) as daemon:
        await wait_for(lambda: log.logged("master_feed_up") or log.logged("master_feed_down") or daemon.done())
        assert log.logged("master_feed_up") and not log.logged("master_feed_down")


async def test_once_the_channel_drops_the_polls_come_at_the_regular_interval_at_once(
        exchange, exchange_server, copying, watching, capsys, monkeypatch):
    import nija.trading.master_fills as master_fills
    from nija.kraken.ws import FeedClosed

    settings, trader = copying()
    log = LogLines(capsys)
    async with running(settings, master_poll_s=1.0) as daemon:
        await wait_for(lambda: (log.logged("master_feed_up") and watching()) or daemon.done())
        await asyncio.sleep(4.5)  # past any quick looks again: the watch now waits out its 30 s safety net

        async def channel_in_maintenance(client, url, **options):  # REST still answers
            raise FeedClosed("cannot connect")
            yield

        monkeypatch.setattr(master_fills, "executions", channel_in_maintenance)
        await exchange_server.close_websockets()
        await wait_for(lambda: log.logged("master_feed_down"))
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: held(exchange, "alice") > 0, timeout_s=10)  # not ~30 s later
    await trader.context.close()


async def test_a_trade_rest_shows_only_later_than_the_channel_is_still_copied_at_once(
        exchange, copying, watching, capsys):
    """Kraken's REST can lag its channel: the first look after the trade finds nothing, the looks again find it."""
    settings, trader = copying()
    log = LogLines(capsys)
    lag_s = 6.0  # beyond the first four looks again (3.75 s)

    def lagging(read):
        def orders_rest_shows(acct, params):
            result = read(acct, params)
            if acct.name == "feed-master":
                shown_by = exchange.now() - lag_s
                for listing in ("open", "closed"):
                    if listing in result:
                        result[listing] = {txid: order for txid, order in result[listing].items()
                                           if float(order.get("closetm") or order["opentm"]) <= shown_by}
            return result
        return orders_rest_shows

    for method in ("OpenOrders", "ClosedOrders"):
        permission, read = exchange.methods_private[method]
        exchange.methods_private[method] = (permission, lagging(read))
    async with running(settings, master_poll_s=NEVER_S) as daemon:
        await wait_for(lambda: (log.logged("master_feed_up") and watching()) or daemon.done())
        await asyncio.sleep(lag_s)  # the first look's orders are all shown by now
        await trader.add_order("XBTUSD", "buy", Decimal("0.02"))
        await wait_for(lambda: held(exchange, "alice") > 0, timeout_s=20)  # not at the 30 s safety net
    await trader.context.close()
