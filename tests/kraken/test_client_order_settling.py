"""Proving an order absent by client order id: a lookup that finds nothing proves it only once no AddOrder with
that id — sent by this client or, before a restart, by the previous run — can still be executed."""

import asyncio
import time

import pytest

from nija.kraken.client import KrakenClient
from nija.kraken.models import Order

CL_ORD_ID = "copy-b1-alice"


@pytest.fixture
def exchange(monkeypatch):
    """The account as lookups see it: the previous run's order shows up only once `lands_after` lookups ran;
    sleeps are recorded, not slept."""
    state = {"lookups": 0, "lands_after": 1, "slept_s": [], "lookup_s": []}  # lookup_s: real seconds per lookup
    order = Order.model_validate({"status": "closed", "vol": "0.002", "vol_exec": "0.002", "cost": "100",
                                  "fee": "0.4", "cl_ord_id": CL_ORD_ID,
                                  "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "market"}})

    real_sleep = asyncio.sleep

    async def find_order(self, cl_ord_id):
        state["lookups"] += 1
        landed = state["lookups"] > state["lands_after"]  # what its first call (OpenOrders) saw
        if state["lookup_s"]:
            await real_sleep(state["lookup_s"].pop(0))
        return order if landed else None

    async def sleep(delay, result=None):
        state["slept_s"].append(delay)
        await real_sleep(0)
        return result

    monkeypatch.setattr(KrakenClient, "find_order", find_order)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    return state


def _client(context, secret_b64):
    return KrakenClient("settle-test-key", secret_b64, base_url="http://127.0.0.1:9", context=context,
                        order_deadline_s=5, deadline_margin_s=1)


async def test_after_a_restart_an_order_the_previous_run_sent_is_not_declared_absent_before_its_deadline(
    context, secret_b64, exchange
):
    client = _client(context, secret_b64)  # just started: it never sent this id itself
    sent_at_s = time.time() - 1  # the previous run stored the intent a second ago
    found = await client.find_order_settled(CL_ORD_ID, sent_at_s=sent_at_s)
    assert found is not None and found.cl_ord_id == CL_ORD_ID  # looked again after the deadline: not resent
    [slept_s] = exchange["slept_s"]
    assert slept_s > 5  # waited past a full order deadline (plus rounding and margin)


async def test_a_recent_intent_pushes_the_proof_past_the_clients_creation(context, secret_b64, exchange):
    client = _client(context, secret_b64)
    assert client.settle_delay_s(CL_ORD_ID, sent_at_s=time.time() + 30) > 30


async def test_an_old_intent_on_a_long_running_client_is_settled_by_one_lookup(context, secret_b64, exchange):
    client = _client(context, secret_b64)
    client._created_at_s -= 3600  # the client has run for an hour
    exchange["lands_after"] = 10  # never there
    assert await client.find_order_settled(CL_ORD_ID, sent_at_s=time.time() - 600) is None
    assert exchange["lookups"] == 1 and exchange["slept_s"] == []


async def test_a_lookup_begun_before_the_order_could_last_land_proves_nothing(context, secret_b64, exchange):
    """OpenOrders may run before the moment and ClosedOrders after it (a wait for budget, a retry): the order can
    land in between, and resending it would place it twice."""
    client = _client(context, secret_b64)
    client._created_at_s -= 60
    sent_at_s = time.time() - 6.9  # order deadline 5 s, rounding 1 s, margin 1 s: it could land for 0.1 s more
    exchange["lookup_s"] = [client.settle_delay_s(CL_ORD_ID, sent_at_s=sent_at_s) + 0.1]  # ends after that
    found = await client.find_order_settled(CL_ORD_ID, sent_at_s=sent_at_s)
    assert found is not None and exchange["lookups"] == 2
