"""`--state FILE`: the exchange's accounts, nonces, orders and trades as one JSON document, written atomically.

The market is not saved: it is rebuilt from the seed on start. Open limit orders are put back on the book and
their holds restored; money is kept as strings so Decimals round-trip exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..kraken.limits import TIERS, Tier
from .engine import Account, Exchange, Order, Trade
from .pairs import PAIRS

__all__ = ["save_state", "load_state", "accounts_from_file"]

VERSION = 1


def _tier_out(tier: Tier) -> Any:
    if TIERS.get(tier.name) == tier:
        return tier.name
    return {"name": tier.name, "rest_max": tier.rest_max, "rest_decay_per_s": tier.rest_decay_per_s,
            "trading_max": tier.trading_max, "trading_decay_per_s": tier.trading_decay_per_s,
            "max_open_orders_per_pair": tier.max_open_orders_per_pair}


def _tier_in(raw: Any) -> str | Tier:
    if isinstance(raw, dict):
        return Tier(**raw)
    return str(raw or "starter")


def _order_out(o: Order) -> dict:
    return {"txid": o.txid, "pair": o.pair.key, "side": o.side, "ordertype": o.ordertype, "vol": str(o.vol),
            "vol_exec": str(o.vol_exec), "cost": str(o.cost), "fee": str(o.fee),
            "limit": None if o.limit is None else str(o.limit), "oflags": o.oflags, "tif": o.tif,
            "userref": o.userref, "cl_ord_id": o.cl_ord_id, "status": o.status, "reason": o.reason,
            "opentm": o.opentm, "closetm": o.closetm, "trades": o.trade_ids,
            "quote_vol": None if o.quote_vol is None else str(o.quote_vol)}


def _order_in(d: dict, mono: float) -> Order:
    o = Order(d["txid"], PAIRS[d["pair"]], d["side"], d["ordertype"], Decimal(d["vol"]),
              None if d["limit"] is None else Decimal(d["limit"]), d["oflags"], d["tif"], d["userref"],
              d["cl_ord_id"], d["opentm"], mono, None if d.get("quote_vol") is None else Decimal(d["quote_vol"]))
    o.vol_exec, o.cost, o.fee = Decimal(d["vol_exec"]), Decimal(d["cost"]), Decimal(d["fee"])
    o.status, o.reason, o.closetm, o.trade_ids = d["status"], d["reason"], d["closetm"], d["trades"]
    return o


def _trade_out(t: Trade) -> dict:
    return {"tid": t.tid, "ordertxid": t.ordertxid, "postxid": t.postxid, "pair": t.pair.key, "time": t.time,
            "side": t.side, "ordertype": t.ordertype, "price": str(t.price), "cost": str(t.cost), "fee": str(t.fee),
            "vol": str(t.vol), "maker": t.maker, "trade_id": t.trade_id}


def _trade_in(d: dict) -> Trade:
    return Trade(d["tid"], d["ordertxid"], d["postxid"], PAIRS[d["pair"]], d["time"], d["side"], d["ordertype"],
                 Decimal(d["price"]), Decimal(d["cost"]), Decimal(d["fee"]), Decimal(d["vol"]), d["maker"],
                 d["trade_id"])


def state_dict(ex: Exchange) -> dict:
    accounts = []
    for a in ex.accounts():
        accounts.append({
            "name": a.name, "api_key": a.api_key, "api_secret": a.api_secret, "tier": _tier_out(a.tier),
            "nonce_window": a.nonce_window, "permissions": sorted(a.permissions),
            "balances": {k: str(v) for k, v in a.balances.items()}, "highest_nonce": str(a.highest_nonce),
            "recent_nonces": [str(n) for n in sorted(a._recent_nonces)[-4096:]],
            "orders": [_order_out(o) for o in a.orders.values()],
            "closed_ids": list(a.closed_ids),
            "trades": [_trade_out(t) for t in a.trades.values()],
            "by_cl_ord_id": a.by_cl_ord_id,
        })
    return {"version": VERSION, "seed": ex.seed, "saved_at": ex.now(), "trade_seq": ex._trade_seq,
            "system_status": ex.system_status, "pair_status": ex.pair_status, "accounts": accounts}


def save_state(ex: Exchange, path: str | Path) -> None:
    """Write the state atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state_dict(ex), separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_state(ex: Exchange, path: str | Path) -> bool:
    """Restore accounts, nonces, orders and trades into a fresh Exchange. False when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return False
    data = json.loads(path.read_text())
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: unknown state version {data.get('version')!r}")
    ex._trade_seq = int(data.get("trade_seq", ex._trade_seq))
    ex.system_status = data.get("system_status", "online")
    ex.pair_status.update(data.get("pair_status", {}))
    mono = ex.mono()
    for d in data["accounts"]:
        acct: Account = ex.create_account(d["name"], {}, tier=_tier_in(d["tier"]), nonce_window=d["nonce_window"],
                                          permissions=d["permissions"], api_key=d["api_key"],
                                          api_secret=d["api_secret"])
        acct.balances = {k: Decimal(v) for k, v in d["balances"].items()}
        acct.highest_nonce = int(d["highest_nonce"])
        acct._recent_nonces = {int(n) for n in d.get("recent_nonces", ())}
        for od in d["orders"]:
            o = _order_in(od, mono)
            acct.orders[o.txid] = o
        acct.closed_ids.extend(t for t in d["closed_ids"] if t in acct.orders)
        for td in d["trades"]:
            t = _trade_in(td)
            acct.trades[t.tid] = t
        acct.by_cl_ord_id = {k: list(v) for k, v in d["by_cl_ord_id"].items()}
        for o in acct.orders.values():
            if o.status == "open":
                acct.open_orders[o.txid] = o
                ex._rest(acct, o)
    return True


def accounts_from_file(path: str | Path) -> list[dict]:
    """Account specs from JSON: a list of {name, balances, tier?, nonce_window?, permissions?, api_key?,
    api_secret?}, an object {"accounts": [...]}, or an object name → {balances, ...}."""
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, dict) and "accounts" in raw:
        raw = raw["accounts"]
    if isinstance(raw, dict):
        raw = [{"name": k, **(v if isinstance(v, dict) else {"balances": {"ZUSD": v}})} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of accounts")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("name"):
            raise ValueError(f"{path}: account #{i + 1} needs a name")
        unknown = set(item) - {"name", "balances", "tier", "nonce_window", "permissions", "api_key", "api_secret"}
        if unknown:
            raise ValueError(f"{path}: account {item['name']!r} has unknown fields {sorted(unknown)}")
        out.append(item)
    return out
