"""`--state FILE`: the exchange's accounts, nonces, orders and trades as one JSON document, written atomically.

The market is not saved: it is rebuilt from the seed on start. Open limit orders are put back on the book and
their holds restored; money is kept as strings so Decimals round-trip exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..kraken.limits import TIERS, Tier
from .accounts_file import AccountSpec, SimFileError, accounts_from_file, read_json, specs_from_items
from .engine import Account, Exchange, KrakenReject, Order, Trade
from .pairs import PAIRS

__all__ = ["save_state", "load_state", "accounts_from_file", "SimFileError"]

VERSION = 1


def _tier_out(tier: Tier) -> Any:
    if TIERS.get(tier.name) == tier:
        return tier.name
    return {"name": tier.name, "rest_max": tier.rest_max, "rest_decay_per_s": tier.rest_decay_per_s,
            "trading_max": tier.trading_max, "trading_decay_per_s": tier.trading_decay_per_s,
            "max_open_orders_per_pair": tier.max_open_orders_per_pair}


def _pair_in(key: Any) -> Any:
    if key not in PAIRS:
        raise ValueError(f"unknown pair {key!r}")
    return PAIRS[key]


def _order_out(o: Order) -> dict:
    return {"txid": o.txid, "pair": o.pair.key, "side": o.side, "ordertype": o.ordertype, "vol": str(o.vol),
            "vol_exec": str(o.vol_exec), "cost": str(o.cost), "fee": str(o.fee),
            "limit": None if o.limit is None else str(o.limit), "oflags": o.oflags, "tif": o.tif,
            "userref": o.userref, "cl_ord_id": o.cl_ord_id, "status": o.status, "reason": o.reason,
            "opentm": o.opentm, "closetm": o.closetm, "trades": o.trade_ids,
            "quote_vol": None if o.quote_vol is None else str(o.quote_vol)}


def _order_in(d: dict, mono: float) -> Order:
    o = Order(d["txid"], _pair_in(d["pair"]), d["side"], d["ordertype"], Decimal(d["vol"]),
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
    return Trade(d["tid"], d["ordertxid"], d["postxid"], _pair_in(d["pair"]), d["time"], d["side"], d["ordertype"],
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
            # e.g. the master's second key for the trader's own client: the same key after a restart
            "extra_keys": [{"api_key": k.api_key, "api_secret": k.api_secret, "nonce_window": k.nonce_window,
                            "highest_nonce": str(k.highest_nonce)} for k in ex.extra_keys(a.name)],
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
    """Restore accounts, nonces, orders and trades into a fresh Exchange. False when the file does not exist.

    A damaged file raises SimFileError with one line per problem (file, account, part, fix), never a traceback.
    """
    path = Path(path)
    if not path.exists():
        return False
    data = read_json(path, "state file")
    fix = "fix it, or move it away to start afresh"
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), list):
        raise SimFileError([f'{path}: not a nija sim state file (no "accounts" list): {fix}'])
    if data.get("version") != VERSION:
        raise SimFileError([f"{path}: unknown state version {data.get('version')!r} (this NIJA writes {VERSION}): "
                            f"{fix}"])
    cores = [{k: d[k] for k in AccountSpec.model_fields if k in d} if isinstance(d, dict) else d
             for d in data["accounts"]]
    specs, problems = specs_from_items(cores, str(path))
    if problems:
        raise SimFileError(problems)

    @contextmanager
    def part(label: str, what: str) -> Iterator[None]:
        """Turn a malformed part into one problem line and go on, so every problem is reported at once."""
        try:
            yield
        except KeyError as exc:
            problems.append(f"{path}: {label}{what}: missing field {exc.args[0]!r}: {fix}")
        except InvalidOperation:
            problems.append(f"{path}: {label}{what}: an amount is not a decimal number: {fix}")
        except (TypeError, ValueError, ArithmeticError, AttributeError, KrakenReject) as exc:
            problems.append(f"{path}: {label}{what}: malformed ({exc.__class__.__name__}: {exc}): {fix}")

    def items(d: dict, key: str, label: str, kind: type) -> Any:
        value = d.get(key, kind())
        if isinstance(value, kind):
            return value
        problems.append(f"{path}: {label}{key}: must be a{'n object' if kind is dict else ' list'} "
                        f"(got {type(value).__name__}): {fix}")
        return kind()

    with part("", "trade_seq"):
        ex._trade_seq = int(data.get("trade_seq", ex._trade_seq))
    with part("", "system_status"):
        ex.set_status(None, data.get("system_status", "online"))
    for pair, status in items(data, "pair_status", "", dict).items():
        with part("", f"pair_status.{pair}"):
            ex.set_status(pair, status)
    mono = ex.mono()
    for i, (spec, d) in enumerate(zip(specs, data["accounts"])):
        label = f"account #{i + 1} {spec.name!r}: "
        acct: Account = spec.create_in(ex)
        with part(label, "highest_nonce"):
            acct.highest_nonce = int(d.get("highest_nonce", 0))
        with part(label, "recent_nonces"):
            acct._recent_nonces = {int(n) for n in items(d, "recent_nonces", label, list)}
        for j, od in enumerate(items(d, "orders", label, list)):
            with part(label, f"orders[{j}]"):
                o = _order_in(od, mono)
                acct.orders[o.txid] = o
        with part(label, "closed_ids"):
            acct.closed_ids.extend(t for t in items(d, "closed_ids", label, list) if t in acct.orders)
        for j, td in enumerate(items(d, "trades", label, list)):
            with part(label, f"trades[{j}]"):
                t = _trade_in(td)
                acct.trades[t.tid] = t
        with part(label, "by_cl_ord_id"):
            acct.by_cl_ord_id = {str(k): list(v) for k, v in items(d, "by_cl_ord_id", label, dict).items()}
        for j, kd in enumerate(items(d, "extra_keys", label, list)):
            with part(label, f"extra_keys[{j}]"):
                key = ex.add_key(spec.name, api_key=str(kd["api_key"]), api_secret=str(kd["api_secret"]),
                                 nonce_window=int(kd.get("nonce_window", 0)))
                key.highest_nonce = int(kd.get("highest_nonce", 0))
        if problems:
            continue
        for o in acct.orders.values():
            if o.status == "open":
                with part(label, f"order {o.txid}"):
                    acct.open_orders[o.txid] = o
                    ex._rest(acct, o)
    if problems:
        raise SimFileError(problems)
    return True
