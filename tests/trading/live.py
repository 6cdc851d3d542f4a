"""Helpers for copy tests over real HTTP on the embedded exchange (127.0.0.1 only)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from pydantic import SecretStr

from nija.accounts import Follower, FollowerConfig
from nija.kraken.client import KrakenClient, KrakenContext
from nija.store import Store
from nija.trading.copy import CopyEngine
from nija.trading.kraken_gateway import follower_accounts
from nija.trading.signals import Signal, signal_from_master_order

PAIR = "XBTUSD"
PRICE = Decimal("50000")


def round_volume_down(volume_base: Decimal, lot_decimals: int) -> Decimal:
    """The tests' own oracle for lot rounding (XBTUSD: 8 decimals)."""
    return volume_base.quantize(Decimal(1).scaleb(-lot_decimals), rounding=ROUND_DOWN)


async def signal_from_master_fill(client: KrakenClient, order_id: str, *, master_equity_usd: Decimal,
                                  position_before_base: Decimal | None = None, reason: str | None = None) -> Signal:
    """Read a master order back (QueryOrders) and turn its fill into the Signal the watcher would emit."""
    order = (await client.query_orders(order_id)).get(order_id)
    assert order is not None, f"master order {order_id} not found by QueryOrders"
    return signal_from_master_order(order_id, pair=order.descr.pair, side=order.descr.type, vol_exec=order.vol_exec,
                                    cost_usd=order.cost, fee_usd=order.fee, master_equity_usd=master_equity_usd,
                                    position_before_base=position_before_base, reason=reason)


@dataclass
class Rig:
    exchange: object
    url: str
    context: KrakenContext
    master: KrakenClient
    engine: CopyEngine
    store: Store
    master_position_base: Decimal = Decimal(0)

    async def master_trade(self, side: str, volume_base: Decimal, reason: str | None = None) -> Signal:
        """A real market order for the master, turned into the signal its fill emits."""
        equity_before = await self.master_equity_usd()
        placed = await self.master.add_order(PAIR, side, volume_base, oflags="fciq")  # a whole position sellable
        position_before = self.master_position_base
        self.master_position_base += volume_base if side == "buy" else -volume_base
        return await signal_from_master_fill(self.master, placed.order_id, master_equity_usd=equity_before,
                                             position_before_base=position_before if side == "sell" else None,
                                             reason=reason)

    async def master_equity_usd(self) -> Decimal:
        return (await self.master.trade_balance()).equivalent_balance

    def held(self, name: str, asset: str = "XXBT") -> Decimal:
        return self.exchange.balances(name).get(asset, Decimal(0))

    def orders_per_cl_ord_id(self, name: str) -> dict[str, int]:
        return {cl: len(orders) for cl, orders in self.exchange.orders_by_cl_ord_id(name).items()}

    async def close(self) -> None:
        await self.engine.stop()
        await self.store.close()
        await self.context.close()


async def make_rig(exchange, url: str, tmp_path, followers: dict[str, dict], *, master_usd="10000",
                   engine_options: dict | None = None, client_timeout_s: float = 10.0) -> Rig:
    """`followers`: name → {"usd": amount, **FollowerConfig fields}; "bad_key": True gives an unknown key."""
    exchange.set_price(PAIR, PRICE)
    master_account = exchange.create_account("master", {"ZUSD": master_usd})
    context = KrakenContext(state_dir=tmp_path / "state")
    master = KrakenClient(master_account.api_key, master_account.api_secret, base_url=url, context=context,
                          name="master")
    pairs = await master.pairs()
    loaded = []
    for name, spec in followers.items():
        spec = dict(spec)
        usd = spec.pop("usd")
        bad_key = spec.pop("bad_key", False)
        account = exchange.create_account(name, {"ZUSD": usd})
        key = "unknown" + account.api_key[7:] if bad_key else account.api_key
        loaded.append(Follower(FollowerConfig(name=name, **spec), SecretStr(key), SecretStr(account.api_secret)))
    store = await Store.open(tmp_path / "state" / "nija.sqlite3")
    accounts = follower_accounts(loaded, pairs, base_url=url, context=context, timeout_s=client_timeout_s,
                                 retry_base_s=0.05, order_deadline_s=2, deadline_margin_s=0.05)
    engine = CopyEngine(store, pairs, accounts, **(engine_options or {}))
    await engine.start()
    return Rig(exchange, url, context, master, engine, store)
