"""The copy engine's view of one Kraken account, on top of nija.kraken.KrakenClient.

Places the sized order (market, or IOC limit for capped entries) with the intent's client order id, looks orders up
by that id, reads fills and balances. The client already never places an AddOrder twice; this module only
translates between its models and the engine's small types.
"""

from __future__ import annotations

from decimal import Decimal

from nija.kraken.client import KrakenClient
from nija.kraken.models import Order
from nija.kraken.pairs import Pairs, is_tradable_balance
from nija.trading.copy import Fill, Placed
from nija.trading.positions import BalanceRead
from nija.trading.sizing import OrderPlan

__all__ = ["KrakenGateway", "fill_from_order"]


def fill_from_order(order: Order) -> Fill:
    return Fill(order_id=order.txid, status=order.status, executed_base=order.vol_exec, cost_usd=order.cost,
                fee_usd=order.fee)


class KrakenGateway:
    """OrderGateway for one follower's KrakenClient. `pairs` maps balance keys to common asset names."""

    __slots__ = ("client", "pairs")

    def __init__(self, client: KrakenClient, pairs: Pairs) -> None:
        self.client = client
        self.pairs = pairs

    def __repr__(self) -> str:
        return f"<KrakenGateway {self.client!r}>"

    async def place(self, plan: OrderPlan, cl_ord_id: str) -> Placed:
        # The fee in USD on both sides (`fciq`): Kraken takes a sell's fee in the base asset by default, and then
        # refuses an exit of the whole position. Sizing counts fees in USD.
        if plan.limit_price_usd is None:
            result = await self.client.add_order(plan.pair, plan.side, plan.volume_base, oflags="fciq",
                                                 cl_ord_id=cl_ord_id)
        else:
            result = await self.client.add_order(plan.pair, plan.side, plan.volume_base, ordertype="limit",
                                                 price=plan.limit_price_usd, timeinforce="IOC", oflags="fciq",
                                                 cl_ord_id=cl_ord_id)
        order_id = result.order_id
        if order_id is None:
            raise ValueError(f"AddOrder for {cl_ord_id} returned no order id")
        fill = fill_from_order(result.order) if result.order is not None else None
        return Placed(order_id=order_id, fill=fill, recovered=result.recovered)

    async def find(self, cl_ord_id: str) -> Fill | None:
        # None proves absence only for a lookup made after `settle_delay_s` (the engine waits for it).
        order = await self.client.find_order(cl_ord_id)
        return None if order is None else fill_from_order(order)

    def settle_delay_s(self, cl_ord_id: str, sent_at_s: float | None = None) -> float:
        return self.client.settle_delay_s(cl_ord_id, sent_at_s=sent_at_s)

    async def fill_of(self, order_id: str) -> Fill | None:
        order = (await self.client.query_orders(order_id)).get(order_id)
        return None if order is None else fill_from_order(order)

    async def read_balances(self) -> BalanceRead:
        available: dict[str, Decimal] = {}
        locked: dict[str, Decimal] = {}
        for key, entry in (await self.client.balance_ex()).by_asset.items():
            asset = self.pairs.asset_name(key)
            if not is_tradable_balance(key):
                # Staked and allocated sub-balances (ETH2.S, USD.M, ...) cannot be sold or spent as they are, but
                # they are the account's as much as its cash: part of the equity entries are sized from.
                locked[asset] = locked.get(asset, Decimal(0)) + entry.balance
                continue
            available[asset] = available.get(asset, Decimal(0)) + entry.available
            # Held by the account's own open orders (less credit, which is not the account's)
            locked[asset] = locked.get(asset, Decimal(0)) + entry.balance - entry.available
        return BalanceRead(available, locked)


def follower_accounts(followers, pairs: Pairs, *, base_url: str, tier: str = "starter", context=None,
                      timeout_s: float = 10.0, **client_options) -> list:
    """A FollowerAccount with its own KrakenClient for each loaded follower; all clients share one context.

    `client_options` go to every KrakenClient (e.g. retry_base_s, read_attempts)."""
    from nija.trading.copy import FollowerAccount

    accounts = []
    for follower in followers:
        client = KrakenClient(follower.api_key, follower.api_secret, base_url=base_url, tier=tier, context=context,
                              timeout_s=timeout_s, name=follower.name, **client_options)
        accounts.append(FollowerAccount(follower.config, KrakenGateway(client, pairs)))
    return accounts


def ticker_price_source(client: KrakenClient, pairs: Pairs):
    """An engine price source: one Ticker call for every pair, last price of each asset's USD pair."""

    async def read() -> dict[str, Decimal]:
        prices: dict[str, Decimal] = {}
        for key, ticker in (await client.ticker()).items():
            try:
                info = pairs.get(key)
            except KeyError:
                continue
            if info.quote_common == "USD":
                prices[info.base_common] = ticker.last
        return prices

    return read
