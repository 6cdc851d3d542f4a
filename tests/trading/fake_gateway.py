"""An in-memory account for engine unit tests: fills market orders at a set price and records every order."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from nija.kraken.errors import TransportError
from nija.trading.copy import Fill, Placed
from nija.trading.positions import BalanceRead


class FakeAccount:
    def __init__(self, usd="1000", btc="0", price="50000", fee_rate="0.004"):
        self.balances = {"USD": Decimal(usd), "BTC": Decimal(btc)}
        self.price = Decimal(price)
        self.fee_rate = Decimal(fee_rate)
        self.orders: dict[str, list[Fill]] = {}  # cl_ord_id → every order placed with it
        self.fail_with: Exception | None = None  # raised by the next place()
        self.execute_then_fail: Exception | None = None  # order executes, then this is raised (lost reply)
        self.gate: asyncio.Event | None = None  # place() waits for it
        self.failing_finds = 0  # that many find() calls raise (the lookup fails too)
        self.calls: list[str] = []
        self.plans: list = []  # every OrderPlan placed
        self.latency_s = 0.0  # how long place() takes to answer
        self.settle_delays: dict[str, float] = {}  # cl_ord_id → how long a sent order may still land
        self.lookup_sent_at: list[float | None] = []  # sent_at_s of every settle_delay_s call

    async def place(self, plan, cl_ord_id):
        self.calls.append(f"place {plan.side} {plan.volume_base}")
        self.plans.append(plan)
        if self.gate is not None:
            await self.gate.wait()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        cost = plan.volume_base * self.price
        fee = (cost * self.fee_rate).quantize(Decimal("0.00000001"))
        sign = 1 if plan.side == "buy" else -1
        self.balances["BTC"] += sign * plan.volume_base
        self.balances["USD"] -= sign * cost + fee
        assert self.balances["BTC"] >= 0 and self.balances["USD"] >= 0, "fake exchange overdrawn"
        fill = Fill(f"O{len(self.calls)}-{cl_ord_id[:4]}", "closed", plan.volume_base, cost, fee)
        self.orders.setdefault(cl_ord_id, []).append(fill)
        if self.execute_then_fail is not None:
            exc, self.execute_then_fail = self.execute_then_fail, None
            raise exc
        return Placed(fill.order_id, fill)

    async def find(self, cl_ord_id):
        self.calls.append("find")
        if self.failing_finds:
            self.failing_finds -= 1
            raise TransportError("lookup failed")
        found = self.orders.get(cl_ord_id)
        return found[0] if found else None

    def settle_delay_s(self, cl_ord_id, sent_at_s=None):
        self.lookup_sent_at.append(sent_at_s)
        return self.settle_delays.get(cl_ord_id, 0.0)

    async def fill_of(self, order_id):
        for fills in self.orders.values():
            for fill in fills:
                if fill.order_id == order_id:
                    return fill
        return None

    async def read_balances(self):
        self.calls.append("balance")
        return BalanceRead(dict(self.balances))
