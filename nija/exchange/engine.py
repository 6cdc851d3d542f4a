"""The embedded exchange's state and rules: accounts, authentication, nonces, rate counters, orders and fills.

No I/O here: `app.py` puts this on HTTP. Every Kraken method is a plain function of (account, params) that returns
the `result` object or raises `KrakenReject` with Kraken's error strings, so tests can also call it in-process
(`Exchange.call`).
"""

from __future__ import annotations

import base64
import functools
import hmac
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import Any, Callable, Iterable

from ..kraken.auth import sign
from ..kraken.limits import DecayingCounter, Tier, rest_cost, tier_named, trading_cost
from .faults import Fault, FaultInjector
from .market import INTERVALS, Clock, Market, PairMarket
from .pairs import ASSETS, MAKER_FEES, PAIRS, TAKER_FEES, PairSpec, resolve_pair

_ZERO = Decimal(0)
#: asset id → its Kraken Rewards (auto-earn) balance, which Kraken lets orders in the asset draw on: XXBT → XBT.F
_EARN_KEYS = {asset.id: f"{asset.altname}.F" for asset in ASSETS.values()}

__all__ = ["Exchange", "Account", "Order", "Trade", "KrakenReject", "DEMO_ACCOUNTS"]

#: the first NIJA's live accounts, in USD (`--demo` and the test fixtures)
DEMO_ACCOUNTS: dict[str, Decimal] = {"master": Decimal("60.53"), "alice": Decimal("84.58"),
                                     "bob": Decimal("65.87")}

PAGE = 50
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CL_ORD_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_CL_ORD_TEXT = re.compile(r"^[\x20-\x7e]{1,18}$")
_TRUE = frozenset({"true", "True", "TRUE", "1", True, 1})
_OFLAGS = frozenset({"post", "fcib", "fciq", "nompp", "viqc"})
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_ID_CHAR_PAIRS = tuple(a + b for a in _BASE32 for b in _BASE32)  # indexed by 10 bits
_QUERY, _TRADE, _WEBSOCKET = "query", "trade", "websocket"
PERMISSIONS = (_QUERY, _TRADE, _WEBSOCKET)
#: a WebSocket token must open a subscription within this long (Kraken: 15 minutes)
WS_TOKEN_TTL_S = 900


class KrakenReject(Exception):
    """A call refused with Kraken's error strings (sent as `{"error": [...]}` in an HTTP 200 envelope)."""

    def __init__(self, *errors: str) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


def _bad(arg: str) -> KrakenReject:
    return KrakenReject(f"EGeneral:Invalid arguments:{arg}")


def _flat(params: Any, allow: frozenset[str] = frozenset()) -> dict:
    """Parameters as the methods expect them: a JSON body may carry lists or objects, only `allow` may."""
    if not isinstance(params, dict):
        raise KrakenReject("EGeneral:Invalid arguments")
    for key, value in params.items():
        if isinstance(value, (list, dict)) and key not in allow:
            raise _bad(str(key))
    return params


_NESTED = frozenset({"orders", "txid"})


def _is_true(value: Any) -> bool:
    return value in _TRUE


def _dec(value: Any, arg: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise _bad(arg)
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise _bad(arg) from None
    if not d.is_finite():
        raise _bad(arg)
    return d


def _int(value: Any, arg: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise _bad(arg) from None


def _num(value: Any, arg: str) -> float:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        raise _bad(arg) from None


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def rfc1123(t: float) -> str:
    g = time.gmtime(t)
    return time.strftime(f"%a, {g.tm_mday:2d} %b %y %H:%M:%S +0000", g)


def _parse_time(value: Any, arg: str) -> float:
    """A unix timestamp (number) or an RFC3339 string."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _rfc3339_to_unix(text)
    except ValueError:
        raise _bad(arg) from None


@functools.lru_cache(maxsize=64)  # every order sent within a second carries the same deadline
def _rfc3339_to_unix(text: str) -> float:
    if "T" not in text:
        raise ValueError(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _accept_nonce(key: Account | ApiKey, nonce: int) -> bool:
    """Strictly increasing in arrival order, or within the key's nonce window (each value once)."""
    high = key.highest_nonce
    if nonce > high:
        key.highest_nonce = nonce
        if key.nonce_window:
            recent = key._recent_nonces
            recent.add(nonce)
            if len(recent) > 4096:
                floor = nonce - key.nonce_window
                key._recent_nonces = {n for n in recent if n >= floor}
        return True
    if key.nonce_window and nonce >= high - key.nonce_window and nonce not in key._recent_nonces:
        key._recent_nonces.add(nonce)
        return True
    return False


class ApiKey:
    """A further key of an account: its own secret, nonce sequence and REST counter (Kraken counts REST calls per
    key); balances, orders and the trading counters are the account's."""

    __slots__ = ("api_key", "api_secret", "secret_bytes", "nonce_window", "highest_nonce", "_recent_nonces", "rest")

    def __init__(self, api_key: str, api_secret: str, tier: Tier, nonce_window: int = 0) -> None:
        self.api_key, self.api_secret = api_key, api_secret
        self.secret_bytes = base64.b64decode(api_secret)
        self.nonce_window = int(nonce_window)
        self.highest_nonce = 0
        self._recent_nonces: set[int] = set()
        self.rest = DecayingCounter(tier.rest_max, tier.rest_decay_per_s)

    def __repr__(self) -> str:  # never the secret
        return f"ApiKey({self.api_key[:8]!r}…)"


class Account:
    """One exchange account: its key and secret, balances, holds, orders, trades, nonce and rate counters."""

    __slots__ = ("name", "api_key", "api_secret", "secret_bytes", "tier", "nonce_window", "permissions",
                 "balances", "holds", "highest_nonce", "_recent_nonces", "rest", "trading", "open_orders",
                 "orders", "closed_ids", "trades", "by_cl_ord_id", "cancel_after_mono", "cancel_after_sim",
                 "by_userref_count")

    def __init__(self, name: str, api_key: str, api_secret: str, tier: Tier, nonce_window: int,
                 permissions: Iterable[str], balances: dict[str, Decimal]) -> None:
        self.name = name
        self.api_key = api_key
        self.api_secret = api_secret
        self.secret_bytes = base64.b64decode(api_secret)
        self.tier = tier
        self.nonce_window = int(nonce_window)
        self.permissions = frozenset(permissions)
        self.balances: dict[str, Decimal] = dict(balances)
        self.holds: dict[str, Decimal] = {}
        self.highest_nonce = 0
        self._recent_nonces: set[int] = set()
        self.rest = DecayingCounter(tier.rest_max, tier.rest_decay_per_s)
        self.trading: dict[str, DecayingCounter] = {}
        self.open_orders: dict[str, Order] = {}
        self.orders: dict[str, Order] = {}            # every order still kept (open and closed), by txid
        self.closed_ids: deque[str] = deque()         # closed txids, oldest first (for the retention cap)
        self.trades: dict[str, Trade] = {}            # by trade id, oldest first
        self.by_cl_ord_id: dict[str, list[str]] = {}  # every accepted order's txid, per cl_ord_id, for ever
        self.cancel_after_mono: float | None = None
        self.cancel_after_sim: float | None = None
        self.by_userref_count = 0

    def __repr__(self) -> str:  # never the secret
        return (f"Account(name={self.name!r}, api_key={self.api_key[:8]!r}…, tier={self.tier.name!r}, "
                f"nonce_window={self.nonce_window})")

    def available(self, asset: str) -> Decimal:
        return (self.balances.get(asset, _ZERO) + self.balances.get(_EARN_KEYS.get(asset, ""), _ZERO)
                - self.holds.get(asset, _ZERO))

    def debit(self, asset: str, amount: Decimal) -> None:
        """Take `amount` of `asset`: from the spot balance first, then from the auto-earn one orders also use."""
        spot = self.balances.get(asset, _ZERO)
        earn_key = _EARN_KEYS.get(asset)
        if amount > spot and earn_key in self.balances:
            from_earn = min(amount - max(spot, _ZERO), self.balances[earn_key])
            self.balances[earn_key] -= from_earn
            amount -= from_earn
        self.balances[asset] = spot - amount

    def accept_nonce(self, nonce: int) -> bool:
        return _accept_nonce(self, nonce)

    def trading_counter(self, pair_key: str) -> DecayingCounter:
        c = self.trading.get(pair_key)
        if c is None:
            c = self.trading[pair_key] = DecayingCounter(self.tier.trading_max, self.tier.trading_decay_per_s)
        return c


class Order:
    """An order as the exchange keeps it (small: slots, Decimals only where money is)."""

    __slots__ = ("txid", "pair", "side", "ordertype", "vol", "vol_exec", "cost", "fee", "limit", "oflags",
                 "tif", "userref", "cl_ord_id", "status", "reason", "opentm", "closetm", "trade_ids",
                 "quote_vol", "hold", "hold_asset", "created_mono")

    def __init__(self, txid: str, pair: PairSpec, side: str, ordertype: str, vol: Decimal,
                 limit: Decimal | None, oflags: str, tif: str, userref: int | None, cl_ord_id: str | None,
                 opentm: float, created_mono: float, quote_vol: Decimal | None = None) -> None:
        self.txid = txid
        self.pair = pair
        self.side = side
        self.ordertype = ordertype
        self.vol = vol
        self.vol_exec = Decimal(0)
        self.cost = Decimal(0)
        self.fee = Decimal(0)
        self.limit = limit
        self.oflags = oflags
        self.tif = tif
        self.userref = userref
        self.cl_ord_id = cl_ord_id
        self.status = "pending"
        self.reason: str | None = None
        self.opentm = opentm
        self.closetm = 0.0
        self.trade_ids: list[str] | None = None
        self.quote_vol = quote_vol
        self.hold = Decimal(0)
        self.hold_asset = ""
        self.created_mono = created_mono

    def __repr__(self) -> str:
        return (f"Order({self.txid} {self.status} {self.side} {self.vol} {self.pair.altname} {self.ordertype}"
                f" cl_ord_id={self.cl_ord_id!r} vol_exec={self.vol_exec})")

    @property
    def avg_price(self) -> Decimal:
        return self.cost / self.vol_exec if self.vol_exec else Decimal(0)

    def descr_order(self) -> str:
        p = self.pair
        if self.ordertype == "market":
            return f"{self.side} {self.vol:.{p.lot_decimals}f} {p.altname} @ market"
        return f"{self.side} {self.vol:.{p.lot_decimals}f} {p.altname} @ limit {self.limit:.{p.pair_decimals}f}"

    def to_kraken(self, with_trades: bool = False) -> dict:
        p = self.pair
        pd, cd, ld = p.pair_decimals, p.cost_decimals, p.lot_decimals
        limit = f"{self.limit:.{pd}f}" if self.limit is not None else "0"
        d: dict[str, Any] = {
            "refid": None,
            "userref": self.userref if self.userref is not None else 0,
            "status": self.status,
            "opentm": self.opentm,
            "starttm": 0,
            "expiretm": 0,
            "descr": {"pair": p.altname, "type": self.side, "ordertype": self.ordertype, "price": limit,
                      "price2": "0", "leverage": "none", "order": self.descr_order(), "close": ""},
            "vol": f"{self.vol:.{ld}f}",
            "vol_exec": f"{self.vol_exec:.{ld}f}",
            "cost": f"{self.cost:.{cd}f}",
            "fee": f"{self.fee:.{cd}f}",
            "price": f"{self.avg_price:.{max(pd, 5)}f}",
            "stopprice": "0.00000000",
            "limitprice": "0.00000000",
            "misc": "",
            "oflags": self.oflags,
        }
        if self.cl_ord_id is not None:
            d["cl_ord_id"] = self.cl_ord_id
        if self.status in ("closed", "canceled", "expired"):
            d["reason"] = self.reason
            d["closetm"] = self.closetm
        if with_trades and self.trade_ids:
            d["trades"] = list(self.trade_ids)
        return d


@dataclass(slots=True)
class Trade:
    tid: str
    ordertxid: str
    postxid: str
    pair: PairSpec
    time: float
    side: str
    ordertype: str
    price: Decimal
    cost: Decimal
    fee: Decimal
    vol: Decimal
    maker: bool
    trade_id: int

    def to_kraken(self) -> dict:
        p = self.pair
        cd = p.cost_decimals
        return {"ordertxid": self.ordertxid, "postxid": self.postxid, "pair": p.key, "time": self.time,
                "type": self.side, "ordertype": self.ordertype, "price": f"{self.price:.{max(p.pair_decimals, 5)}f}",
                "cost": f"{self.cost:.{cd}f}", "fee": f"{self.fee:.{cd}f}",
                "vol": f"{self.vol:.{p.lot_decimals}f}", "margin": f"{0:.{cd}f}", "leverage": "0", "misc": "",
                "trade_id": self.trade_id, "maker": self.maker}


class Exchange:
    """The whole embedded exchange: market, accounts, orders, faults. No I/O (see `serve`).

    seed       seeds the price paths (and fault probabilities); the same seed gives the same market.
    speed      simulated seconds per real second (60 = one market minute per second; 0 freezes the market).
    maker_fee / taker_fee   fractions charged on fills (Kraken Pro's entry tier: 0.25 % / 0.40 %).
    closed_orders_kept      closed orders (and their trades) kept per account for the query calls; older ones
                            are dropped (their txids stay in the cl_ord_id index).
    cl_ord_ids_kept         distinct cl_ord_ids indexed per account (`orders_by_cl_ord_id`); the oldest go first.
    monotonic  the real clock used for rate counters and CancelAllOrdersAfter (tests may pass their own).
    """

    def __init__(self, seed: int = 7, speed: float = 1.0, *, maker_fee: Decimal | str = "0.0025",
                 taker_fee: Decimal | str = "0.0040", start_time: float | None = None,
                 pairs: dict[str, PairSpec] | None = None, closed_orders_kept: int = 20_000,
                 cl_ord_ids_kept: int = 50_000,
                 admin_token: str | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.seed = seed
        self.mono = monotonic
        self.clock = Clock(speed, start_time, monotonic)
        # Real time, whatever the market clock's speed: an AddOrder `deadline` is about latency, not the market.
        self._wall_start, self._wall_mono = time.time(), monotonic()
        self.market = Market(seed, self.clock, pairs)
        self.maker_fee = Decimal(str(maker_fee))
        self.taker_fee = Decimal(str(taker_fee))
        self.closed_orders_kept = int(closed_orders_kept)
        self.cl_ord_ids_kept = int(cl_ord_ids_kept)
        self.admin_token = admin_token or base64.urlsafe_b64encode(os.urandom(18)).decode()
        self.faults = FaultInjector(random.Random(f"nija-faults:{seed}"))
        self.system_status = "online"
        self.pair_status: dict[str, str] = {}
        self._accounts: dict[str, Account] = {}
        self._by_key: dict[str, Account] = {}
        self._extra_keys: dict[str, ApiKey] = {}  # keys beyond each account's own, by key
        self._resting: dict[str, dict[str, tuple[Account, Order]]] = {}
        self._deadman: set[str] = set()
        self._ids = random.Random(os.urandom(16))
        self._trade_seq = 1000
        self._last_sync_s = -1
        self._ws_tokens: dict[str, tuple[str, float]] = {}  # token → (account name, monotonic expiry)
        self._execution_watchers: dict[str, list[Callable[[dict], None]]] = {}  # account name → callbacks
        self.methods_public: dict[str, Callable[[dict], Any]] = {
            "Time": self.pub_time, "SystemStatus": self.pub_system_status, "Assets": self.pub_assets,
            "AssetPairs": self.pub_asset_pairs, "Ticker": self.pub_ticker, "OHLC": self.pub_ohlc,
            "Depth": self.pub_depth, "Spread": self.pub_spread,
        }
        self.methods_private: dict[str, tuple[str, Callable[[Account, dict], Any]]] = {
            "Balance": (_QUERY, self.balance), "BalanceEx": (_QUERY, self.balance_ex),
            "TradeBalance": (_QUERY, self.trade_balance), "OpenOrders": (_QUERY, self.open_orders),
            "ClosedOrders": (_QUERY, self.closed_orders), "QueryOrders": (_QUERY, self.query_orders),
            "TradesHistory": (_QUERY, self.trades_history), "QueryTrades": (_QUERY, self.query_trades),
            "AddOrder": (_TRADE, self.add_order), "AddOrderBatch": (_TRADE, self.add_order_batch),
            "CancelOrder": (_TRADE, self.cancel_order), "CancelAll": (_TRADE, self.cancel_all),
            "CancelAllOrdersAfter": (_TRADE, self.cancel_all_orders_after),
            "GetWebSocketsToken": (_WEBSOCKET, self.get_websockets_token),
        }

    # ---- accounts -------------------------------------------------------------------------------------------
    def create_account(self, name: str, balances: dict[str, Decimal | str | int] | None = None, *,
                       tier: str | Tier = "starter", nonce_window: int = 0,
                       permissions: Iterable[str] = PERMISSIONS, api_key: str | None = None,
                       api_secret: str | None = None) -> Account:
        """A new account with a generated Kraken-like key (56 chars) and base64 secret (64 bytes)."""
        if name in self._accounts:
            raise ValueError(f"account {name!r} exists")
        perms = tuple(permissions)
        for p in perms:
            if p not in PERMISSIONS:
                raise ValueError(f"unknown permission {p!r}: use {', '.join(PERMISSIONS)}")
        key = api_key or base64.b64encode(os.urandom(42)).decode()
        secret = api_secret or base64.b64encode(os.urandom(64)).decode()
        if key in self._by_key:
            raise ValueError("API key already in use")
        bal = {self._asset_id(a): Decimal(str(v)) for a, v in (balances or {}).items()}
        acct = Account(name, key, secret, tier_named(tier), nonce_window, perms, bal)
        self._accounts[name] = acct
        self._by_key[key] = acct
        return acct

    def account(self, name: str) -> Account:
        return self._accounts[name]

    def accounts(self) -> list[Account]:
        return list(self._accounts.values())

    def account_by_key(self, api_key: str) -> Account | None:
        return self._by_key.get(api_key)

    def add_key(self, name: str, *, api_key: str | None = None, api_secret: str | None = None,
                nonce_window: int = 0) -> ApiKey:
        """Another API key for account `name`, with its own secret and nonce sequence (Kraken allows several per
        account): e.g. one for NIJA and one for the trader's own client, whose nonces are on another scale."""
        acct = self._accounts[name]
        key = ApiKey(api_key or base64.b64encode(os.urandom(42)).decode(),
                     api_secret or base64.b64encode(os.urandom(64)).decode(), acct.tier, nonce_window)
        if key.api_key in self._by_key:
            raise ValueError("API key already in use")
        self._by_key[key.api_key] = acct
        self._extra_keys[key.api_key] = key
        return key

    def extra_keys(self, name: str) -> list[ApiKey]:
        """The keys `add_key` gave account `name`, oldest first."""
        return [key for key in self._extra_keys.values() if self._by_key[key.api_key].name == name]

    def balances(self, name: str) -> dict[str, Decimal]:
        self.sync()
        return dict(self._accounts[name].balances)

    def fund(self, name: str, asset: str, amount: Decimal | str) -> None:
        acct = self._accounts[name]
        a = self._asset_id(asset)
        acct.balances[a] = acct.balances.get(a, Decimal(0)) + Decimal(str(amount))

    @staticmethod
    def _asset_id(asset: str) -> str:
        if asset in ASSETS:
            return asset
        for a in ASSETS.values():
            if a.altname == asset:
                return a.id
        return asset

    # ---- market helpers -------------------------------------------------------------------------------------
    def _pair(self, name: Any) -> PairSpec:
        spec = resolve_pair(str(name)) if name is not None else None
        if spec is None or spec.key not in self.market.specs:
            raise KrakenReject("EQuery:Unknown asset pair")
        return spec

    def price(self, pair: str) -> Decimal:
        """The current last/mid price of a pair (on its tick grid)."""
        spec = self._pair(pair)
        self.sync()
        return self.market.pair(spec.key).last_price()

    def bid_ask(self, pair: str) -> tuple[Decimal, Decimal]:
        spec = self._pair(pair)
        self.sync()
        return self.market.pair(spec.key).bid_ask()

    def set_price(self, pair: str, price: Decimal | str, *, pin: bool = True) -> None:
        """Move a pair to `price` now (resting limits that it crosses fill). Pinned there until `release`."""
        spec = self._pair(pair)
        self.sync()
        pm = self.market.pair(spec.key)
        pm.set_price(Decimal(str(price)), pin=pin)
        self._check_resting(spec.key, pm)

    def release(self, pair: str) -> None:
        """Let a pair pinned by `set_price` move on its own again."""
        self.market.pair(self._pair(pair).key).release()

    def set_status(self, pair: str | None, status: str) -> None:
        """`online`, `cancel_only`, `post_only`, `limit_only`, `maintenance` for one pair or (None) the market."""
        if status not in ("online", "cancel_only", "post_only", "limit_only", "reduce_only", "maintenance"):
            raise ValueError(f"unknown status {status!r}")
        if pair is None:
            self.system_status = status
        else:
            self.pair_status[self._pair(pair).key] = status

    def set_speed(self, speed: float) -> None:
        self.clock.set_speed(speed)

    def now(self) -> float:
        return self.clock.now()

    def wall_now(self) -> float:
        """Real unix time (on the exchange's monotonic clock), for request deadlines and `Time`."""
        return self._wall_start + (self.mono() - self._wall_mono)

    def shift_wall_clock(self, seconds: float) -> None:
        """Set the exchange's server clock `seconds` ahead (negative: behind), as Kraken's is to a host whose clock is
        off: `Time` and the order deadline check follow it; the market clock does not."""
        self._wall_start += seconds

    # ---- faults ---------------------------------------------------------------------------------------------
    def inject(self, fault: Fault) -> Fault:
        return self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def injected_counts(self) -> dict[str, int]:
        return dict(self.faults.counts)

    # ---- time -----------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring the market to now: advance price paths, fill crossed resting limits, fire dead-man switches."""
        now = self.clock.now()
        s = int(now)
        if s != self._last_sync_s:
            self._last_sync_s = s
            for key, pm in self.market.loaded().items():
                pm.advance(now)
                if self._resting.get(key):
                    self._check_resting(key, pm)
        if self._deadman:
            mono = self.mono()
            for name in list(self._deadman):
                acct = self._accounts[name]
                if acct.cancel_after_mono is not None and acct.cancel_after_mono <= mono:
                    self._deadman.discard(name)
                    acct.cancel_after_mono = acct.cancel_after_sim = None
                    for order in list(acct.open_orders.values()):
                        self._close(acct, order, "canceled", "Dead man's switch")

    def advance(self, seconds: float) -> None:
        """Jump the market clock forward by `seconds` (simulated) and bring everything up to date."""
        self.clock.advance(seconds)
        self.sync()

    # ---- ids ------------------------------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        """Kraken-like ids (`OUF4EM-FRGI2-MQMWZD`): 80 random bits, so collisions are not a practical concern."""
        bits = self._ids.getrandbits(80)
        two = _ID_CHAR_PAIRS  # 10 bits → 2 base32 characters
        chars = (two[bits & 1023] + two[bits >> 10 & 1023] + two[bits >> 20 & 1023] + two[bits >> 30 & 1023]
                 + two[bits >> 40 & 1023] + two[bits >> 50 & 1023] + two[bits >> 60 & 1023] + two[bits >> 70])
        return f"{prefix}{chars[:5]}-{chars[5:10]}-{chars[10:16]}"

    # ---- authentication -------------------------------------------------------------------------------------
    def authenticate(self, api_key: str | None, api_sign: str | None, uri_path: str, raw_body: bytes,
                     nonce: Any) -> Account:
        """Key, signature, nonce, in Kraken's order. Returns the account or raises KrakenReject."""
        acct = self._by_key.get(api_key) if api_key else None
        if acct is None:
            raise KrakenReject("EAPI:Invalid key")
        key = self._extra_keys.get(api_key, acct)  # the key's own secret and nonce sequence
        if nonce is None or nonce == "":
            raise KrakenReject("EAPI:Invalid nonce")
        nonce_text = str(nonce)
        expected = sign(uri_path, nonce_text, raw_body, key.secret_bytes)
        try:
            good = bool(api_sign) and hmac.compare_digest(expected.encode(), api_sign.strip().encode())
        except (TypeError, UnicodeError):
            good = False
        if not good:
            raise KrakenReject("EAPI:Invalid signature")
        try:
            n = int(nonce_text)
        except ValueError:
            raise KrakenReject("EAPI:Invalid nonce") from None
        if n <= 0 or n >= 1 << 64 or not _accept_nonce(key, n):
            key.rest.add(1, self.mono())  # rejected calls still cost points
            raise KrakenReject("EAPI:Invalid nonce")
        return acct

    def call(self, account: Account | str, method: str, params: dict | None = None, *,
             api_key: str | None = None) -> Any:
        """Run one private method for an account in-process (permissions and the REST counter of the key it came
        with, `api_key`, checked; the account's own key by default)."""
        acct = self._accounts[account] if isinstance(account, str) else account
        key: Account | ApiKey = self._extra_keys.get(api_key, acct) if api_key else acct
        entry = self.methods_private.get(method)
        if entry is None:
            raise KrakenReject("EGeneral:Unknown method")
        perm, fn = entry
        if perm not in acct.permissions:
            raise KrakenReject("EGeneral:Permission denied")
        cost = rest_cost(method)
        if cost and not key.rest.try_add(cost, self.mono()):
            raise KrakenReject("EAPI:Rate limit exceeded")
        self.sync()
        return fn(acct, _flat(params or {}, _NESTED))

    # ---- WebSocket executions ---------------------------------------------------------------------------------
    def get_websockets_token(self, acct: Account, params: dict) -> dict:
        now = self.mono()
        for token, (_, expires) in list(self._ws_tokens.items()):
            if expires <= now:
                del self._ws_tokens[token]
        token = base64.b64encode(os.urandom(30)).decode()
        self._ws_tokens[token] = (acct.name, now + WS_TOKEN_TTL_S)
        return {"token": token, "expires": WS_TOKEN_TTL_S}

    def account_of_token(self, token: Any) -> Account | None:
        """The account a WebSocket token was issued to, while it is good (Kraken: a token that opened a
        subscription keeps working on that connection; a new one is needed for the next connection)."""
        entry = self._ws_tokens.get(token) if isinstance(token, str) else None
        if entry is None or entry[1] <= self.mono():
            return None
        return self._accounts.get(entry[0])

    def watch_executions(self, name: str, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call `callback` with a WebSocket v2 `executions` item for every trade of account `name`; returns the
        function that stops it. Callbacks run inside the call that traded: they must only queue."""
        watchers = self._execution_watchers.setdefault(name, [])
        watchers.append(callback)

        def stop() -> None:
            if callback in watchers:
                watchers.remove(callback)
            if not watchers:
                self._execution_watchers.pop(name, None)

        return stop

    def _tell_execution(self, acct: Account, order: Order, trade: Trade) -> None:
        watchers = self._execution_watchers.get(acct.name)
        if not watchers:
            return
        spec = order.pair
        done = order.vol_exec >= order.vol
        item = {
            "exec_type": "trade", "order_id": order.txid, "exec_id": trade.tid, "trade_id": trade.trade_id,
            "symbol": f"{self._asset_name(spec.base)}/{self._asset_name(spec.quote)}", "side": order.side,
            "order_type": order.ordertype, "order_qty": float(order.vol), "last_qty": float(trade.vol),
            "last_price": float(trade.price), "cost": float(trade.cost), "liquidity_ind": "m" if trade.maker else "t",
            "cum_qty": float(order.vol_exec), "cum_cost": float(order.cost),
            "avg_price": float(order.cost / order.vol_exec), "order_status": "filled" if done else "partially_filled",
            "fees": [{"asset": self._asset_name(spec.quote), "qty": float(trade.fee)}],
            "fee_usd_equiv": float(trade.fee), "timestamp": rfc3339(self.wall_now()),
        }
        if order.cl_ord_id is not None:
            item["cl_ord_id"] = order.cl_ord_id
        for callback in list(watchers):
            callback(item)

    @staticmethod
    def _asset_name(asset_id: str) -> str:
        """WebSocket v2 names: BTC for XXBT, USD for ZUSD, DOGE for XXDG."""
        altname = ASSETS[asset_id].altname if asset_id in ASSETS else asset_id
        return {"XBT": "BTC", "XDG": "DOGE"}.get(altname, altname)

    def call_public(self, method: str, params: dict | None = None) -> Any:
        fn = self.methods_public.get(method)
        if fn is None:
            raise KrakenReject("EGeneral:Unknown method")
        self.sync()
        return fn(_flat(params or {}))

    # ---- public methods -------------------------------------------------------------------------------------
    def pub_time(self, params: dict) -> dict:
        now = self.wall_now()  # Kraken's server clock, the one its deadlines are checked on (not the market's)
        return {"unixtime": int(now), "rfc1123": rfc1123(now)}

    def pub_system_status(self, params: dict) -> dict:
        return {"status": self.system_status, "timestamp": rfc3339(self.clock.now())}

    def pub_assets(self, params: dict) -> dict:
        wanted = params.get("asset")
        out = {}
        ids = list(ASSETS)
        if wanted:
            ids = []
            for name in str(wanted).split(","):
                a = self._asset_id(name.strip().upper())
                if a not in ASSETS:
                    raise KrakenReject("EQuery:Unknown asset")
                ids.append(a)
        for a in ids:
            s = ASSETS[a]
            entry: dict[str, Any] = {"aclass": "currency", "altname": s.altname, "decimals": s.decimals,
                                     "display_decimals": s.display_decimals}
            if s.collateral_value is not None:
                entry["collateral_value"] = s.collateral_value
            entry["status"] = "enabled"
            out[a] = entry
        return out

    def _pairs_param(self, params: dict, required: bool = False) -> list[PairSpec]:
        wanted = params.get("pair")
        if not wanted:
            if required:
                raise _bad("pair")
            return list(self.market.specs.values())
        return [self._pair(n) for n in str(wanted).split(",") if n.strip()]

    def pair_info(self, spec: PairSpec) -> dict:
        status = self.pair_status.get(spec.key, "online")
        if self.system_status in ("cancel_only", "post_only", "limit_only"):
            status = self.system_status
        return {
            "altname": spec.altname, "wsname": spec.wsname, "aclass_base": "currency", "base": spec.base,
            "aclass_quote": "currency", "quote": spec.quote, "lot": "unit", "cost_decimals": spec.cost_decimals,
            "pair_decimals": spec.pair_decimals, "lot_decimals": spec.lot_decimals, "lot_multiplier": 1,
            "leverage_buy": [], "leverage_sell": [],
            "fees": [[v, round(f * float(self.taker_fee) / 0.004, 4)] for v, f in TAKER_FEES],
            "fees_maker": [[v, round(f * float(self.maker_fee) / 0.0025, 4)] for v, f in MAKER_FEES],
            "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40,
            "ordermin": str(spec.ordermin), "costmin": str(spec.costmin), "tick_size": str(spec.tick_size),
            "status": status, "long_position_limit": 0, "short_position_limit": 0,
        }

    def pub_asset_pairs(self, params: dict) -> dict:
        return {s.key: self.pair_info(s) for s in self._pairs_param(params)}

    def pub_ticker(self, params: dict) -> dict:
        now = self.clock.now()
        return {s.key: self.market.pair(s.key).ticker(now) for s in self._pairs_param(params)}

    def pub_ohlc(self, params: dict) -> dict:
        spec = self._pairs_param(params, required=True)[0]
        interval = _int(params.get("interval", 1), "interval")
        if interval not in INTERVALS:
            raise _bad("interval")
        since = params.get("since")
        since_v = int(_num(since, "since")) if since not in (None, "") else None
        rows, last = self.market.pair(spec.key).ohlc(interval, since_v)
        return {spec.key: rows, "last": last}

    def pub_depth(self, params: dict) -> dict:
        spec = self._pairs_param(params, required=True)[0]
        count = _int(params.get("count", 100), "count")
        if not 1 <= count <= 500:
            raise _bad("count")
        pm = self.market.pair(spec.key)
        pd, ld = spec.pair_decimals, spec.lot_decimals
        ts = int(self.clock.now())
        tick = spec.tick_size

        def side(name: str) -> list[list]:
            return [[f"{Decimal(pt) * tick:.{pd}f}", f"{v:.{min(ld, 8)}f}", ts - (i % 7)]
                    for i, (pt, v) in enumerate(pm.levels(name, count))]

        return {spec.key: {"asks": side("asks"), "bids": side("bids")}}

    def pub_spread(self, params: dict) -> dict:
        spec = self._pairs_param(params, required=True)[0]
        pm = self.market.pair(spec.key)
        bid, ask = pm.bid_ask()
        now = int(self.clock.now())
        pd = spec.pair_decimals
        return {spec.key: [[now, f"{bid:.{pd}f}", f"{ask:.{pd}f}"]], "last": now}

    # ---- private: balances ----------------------------------------------------------------------------------
    @staticmethod
    def _fmt_asset(asset: str, amount: Decimal) -> str:
        spec = ASSETS.get(asset)
        dec = spec.decimals if spec else 8
        return f"{amount.quantize(Decimal(1).scaleb(-dec), rounding=ROUND_DOWN):.{dec}f}"

    def balance(self, acct: Account, params: dict) -> dict:
        return {a: self._fmt_asset(a, v) for a, v in acct.balances.items()}

    def balance_ex(self, acct: Account, params: dict) -> dict:
        # A hold with no spot balance of its asset (an order drawing on XBT.F alone) is listed too: what is free
        # is the spot and auto-earn balances less it.
        owned = {**acct.balances, **{a: acct.balances.get(a, _ZERO) for a in acct.holds}}
        return {a: {"balance": self._fmt_asset(a, v), "hold_trade": self._fmt_asset(a, acct.holds.get(a, _ZERO))}
                for a, v in owned.items()}

    def _usd_value(self, asset: str, amount: Decimal) -> Decimal:
        if asset == "ZUSD":
            return amount
        for spec in self.market.specs.values():
            if spec.base == asset and spec.quote == "ZUSD":
                return amount * self.market.pair(spec.key).last_price()
        return Decimal(0)

    def trade_balance(self, acct: Account, params: dict) -> dict:
        asset = self._asset_id(str(params.get("asset", "ZUSD")).upper())
        if asset != "ZUSD":
            raise KrakenReject("EQuery:Unknown asset")
        eb = sum((self._usd_value(a, v) for a, v in acct.balances.items()), Decimal(0))
        uv = Decimal(0)
        for o in acct.open_orders.values():
            if o.limit is not None:
                uv += (o.vol - o.vol_exec) * o.limit
        q = Decimal("0.0001")
        f = lambda d: f"{d.quantize(q, rounding=ROUND_DOWN):.4f}"  # noqa: E731
        zero = f(Decimal(0))
        return {"eb": f(eb), "tb": f(eb), "m": zero, "n": zero, "c": zero, "v": zero, "e": f(eb), "mf": f(eb),
                "uv": f(uv)}

    # ---- private: orders, reading ---------------------------------------------------------------------------
    @staticmethod
    def _userref_filter(params: dict) -> int | None:
        v = params.get("userref")
        return None if v in (None, "") else _int(v, "userref")

    def open_orders(self, acct: Account, params: dict) -> dict:
        trades = _is_true(params.get("trades"))
        uref = self._userref_filter(params)
        cl = params.get("cl_ord_id") or None
        out = {}
        for txid, o in acct.open_orders.items():
            if (uref is None or o.userref == uref) and (cl is None or o.cl_ord_id == cl):
                out[txid] = o.to_kraken(trades)
        return {"open": out}

    def closed_orders(self, acct: Account, params: dict) -> dict:
        trades = _is_true(params.get("trades"))
        uref = self._userref_filter(params)
        cl = params.get("cl_ord_id") or None
        start = params.get("start")
        end = params.get("end")
        ofs = _int(params.get("ofs", 0) or 0, "ofs")
        closetime = str(params.get("closetime", "both"))
        start_t = self._bound(acct, start, "start")
        end_t = self._bound(acct, end, "end")
        picked = []
        for txid in reversed(acct.closed_ids):
            o = acct.orders.get(txid)
            if o is None:
                continue
            if uref is not None and o.userref != uref:
                continue
            if cl is not None and o.cl_ord_id != cl:
                continue
            t = o.opentm if closetime == "open" else o.closetm
            if start_t is not None and not (t > start_t or (closetime == "both" and o.opentm > start_t)):
                continue
            if end_t is not None and t > end_t:
                continue
            picked.append(o)
        page = picked[ofs:ofs + PAGE]
        return {"closed": {o.txid: o.to_kraken(trades) for o in page}, "count": len(picked)}

    def _bound(self, acct: Account, value: Any, arg: str) -> float | None:
        if value in (None, ""):
            return None
        text = str(value)
        if text.startswith("O") and "-" in text:
            o = acct.orders.get(text)
            if o is None:
                raise KrakenReject("EOrder:Invalid order")
            return o.opentm
        return _num(text, arg)

    def query_orders(self, acct: Account, params: dict) -> dict:
        trades = _is_true(params.get("trades"))
        uref = self._userref_filter(params)
        cl = params.get("cl_ord_id") or None
        txids = params.get("txid")
        out = {}
        if txids:
            if isinstance(txids, list) and not all(isinstance(t, str) for t in txids):
                raise _bad("txid")  # a JSON body may carry anything in the list
            ids = [t.strip() for t in (txids if isinstance(txids, list) else str(txids).split(",")) if t.strip()]
            if len(ids) > 50:
                raise _bad("txid")
            for txid in ids:
                o = acct.orders.get(txid)
                if o is None:
                    raise KrakenReject("EOrder:Invalid order")
                if (uref is None or o.userref == uref) and (cl is None or o.cl_ord_id == cl):
                    out[txid] = o.to_kraken(trades)
            return out
        if uref is None and cl is None:
            raise _bad("txid")
        if cl is not None:
            for txid in acct.by_cl_ord_id.get(cl, ()):
                o = acct.orders.get(txid)
                if o is not None and (uref is None or o.userref == uref):
                    out[txid] = o.to_kraken(trades)
            return out
        for txid, o in acct.orders.items():
            if o.userref == uref:
                out[txid] = o.to_kraken(trades)
        return out

    def trades_history(self, acct: Account, params: dict) -> dict:
        ofs = _int(params.get("ofs", 0) or 0, "ofs")
        start = params.get("start")
        end = params.get("end")
        start_t = _num(start, "start") if start not in (None, "") and not str(start).startswith("T") else None
        end_t = _num(end, "end") if end not in (None, "") and not str(end).startswith("T") else None
        picked = [t for t in reversed(acct.trades.values())
                  if (start_t is None or t.time > start_t) and (end_t is None or t.time <= end_t)]
        page = picked[ofs:ofs + PAGE]
        return {"trades": {t.tid: t.to_kraken() for t in page}, "count": len(picked)}

    def query_trades(self, acct: Account, params: dict) -> dict:
        ids = [t.strip() for t in str(params.get("txid", "")).split(",") if t.strip()]
        if not ids or len(ids) > 20:
            raise _bad("txid")
        out = {}
        for tid in ids:
            t = acct.trades.get(tid)
            if t is None:
                raise _bad("txid")
            out[tid] = t.to_kraken()
        return out

    # ---- private: orders, writing ---------------------------------------------------------------------------
    def _market_open_for_adds(self, spec: PairSpec, ordertype: str, post: bool) -> None:
        status = self.pair_status.get(spec.key, "online")
        sys_status = self.system_status
        if sys_status == "maintenance":
            raise KrakenReject("EService:Unavailable")
        for st in (sys_status, status):
            if st == "cancel_only":
                raise KrakenReject("EService:Market in cancel_only mode")
            if st == "post_only" and not (ordertype == "limit" and post):
                raise KrakenReject("EService:Market in post_only mode")
            if st == "limit_only" and ordertype != "limit":
                raise KrakenReject("EService:Market in limit_only mode")

    def _parse_order(self, acct: Account, params: dict, pair: PairSpec | None = None) -> dict:
        spec = pair or self._pair(params.get("pair"))
        side = params.get("type")
        if side not in ("buy", "sell"):
            raise _bad("type")
        ordertype = params.get("ordertype")
        if ordertype not in ("market", "limit"):
            if ordertype in ("stop-loss", "take-profit", "stop-loss-limit", "take-profit-limit", "trailing-stop",
                             "trailing-stop-limit", "settle-position", "iceberg"):
                raise KrakenReject("EOrder:Invalid order:ordertype not supported by the embedded exchange")
            raise _bad("ordertype")
        flags_raw = params.get("oflags") or ""
        flags = [f.strip() for f in str(flags_raw).split(",") if f.strip()]
        for f in flags:
            if f not in _OFLAGS:
                raise _bad("oflags")
        viqc = "viqc" in flags
        post = "post" in flags
        if viqc and not (ordertype == "market" and side == "buy"):
            raise _bad("oflags")
        if post and ordertype != "limit":
            raise _bad("oflags")
        tif = str(params.get("timeinforce") or "GTC").upper()
        if tif not in ("GTC", "IOC"):
            raise _bad("timeinforce")
        volume = _dec(params.get("volume"), "volume")
        if volume <= 0:
            raise _bad("volume")
        vol_dec = spec.cost_decimals if viqc else spec.lot_decimals
        if volume != volume.quantize(Decimal(1).scaleb(-vol_dec), rounding=ROUND_DOWN):
            raise _bad("volume")
        limit = None
        if ordertype == "limit":
            if params.get("price") in (None, ""):
                raise _bad("price")
            limit = _dec(params.get("price"), "price")
            if limit <= 0:
                raise KrakenReject("EOrder:Invalid price")
            if limit != limit.quantize(Decimal(1).scaleb(-spec.pair_decimals), rounding=ROUND_DOWN):
                raise KrakenReject(f"EOrder:Invalid price:{spec.altname} price can only be specified up to "
                                   f"{spec.pair_decimals} decimals.")
            if limit % spec.tick_size != 0:
                raise KrakenReject("EOrder:Tick size check failed")
        userref = params.get("userref")
        if userref not in (None, ""):
            userref = _int(userref, "userref")
            if not -(1 << 31) <= userref < (1 << 31):
                raise _bad("userref")
        else:
            userref = None
        cl = params.get("cl_ord_id")
        if cl not in (None, ""):
            cl = str(cl)
            if not (_CL_ORD_UUID.match(cl) or _CL_ORD_TEXT.match(cl)):
                raise _bad("cl_ord_id")
            if userref is not None:
                raise KrakenReject("EGeneral:Invalid arguments:cl_ord_id and userref cannot be used together")
        else:
            cl = None
        validate = _is_true(params.get("validate"))
        deadline = params.get("deadline")
        if deadline not in (None, ""):
            dl = _parse_time(deadline, "deadline")
            now = self.wall_now()
            if dl < now:
                raise KrakenReject("EService:Deadline elapsed")
            if dl > now + 60:
                raise _bad("deadline")
        if "fcib" in flags and "fciq" in flags:
            raise _bad("oflags")
        # Kraken takes a sell's fee in the base asset and a buy's in the quote unless told otherwise: selling a
        # whole balance with the default fee currency is refused (the fee does not fit).
        fee_flag = "fcib" if "fcib" in flags or (side == "sell" and "fciq" not in flags) else "fciq"
        oflags = ",".join([f for f in flags if f not in ("fcib", "fciq")] + [fee_flag])
        return {"spec": spec, "side": side, "ordertype": ordertype, "volume": volume, "limit": limit,
                "viqc": viqc, "post": post, "tif": tif, "userref": userref, "cl_ord_id": cl,
                "validate": validate, "oflags": oflags}

    def _check_and_plan(self, acct: Account, o: dict) -> tuple[list, Decimal, Decimal]:
        """Minimums, funds. Returns (fills to take now, base volume, hold amount)."""
        spec: PairSpec = o["spec"]
        self._market_open_for_adds(spec, o["ordertype"], o["post"])
        pm = self.market.pair(spec.key)
        side = o["side"]
        fills: list = []
        if o["ordertype"] == "market":
            if o["viqc"]:
                fills = pm.walk("buy", quote=o["volume"])
            else:
                fills = pm.walk(side, volume=o["volume"])
            vol = sum((v for _, v in fills), Decimal(0)) if o["viqc"] else o["volume"]
            cost = sum((p * v for p, v in fills), Decimal(0))
        else:
            vol = o["volume"]
            limit = o["limit"]
            cost = vol * limit
            bid, ask = pm.bid_ask()
            crosses = (side == "buy" and limit >= ask) or (side == "sell" and limit <= bid)
            if crosses and not o["post"]:
                fills = pm.walk(side, volume=vol, limit=limit)
            o["crosses"] = crosses
        if vol < spec.ordermin:
            raise KrakenReject("EOrder:Order minimum not met")
        if cost < spec.costmin:
            raise KrakenReject("EOrder:Cost minimum not met")
        fee_in_base = "fcib" in o["oflags"]
        if side == "buy":
            need = cost if fee_in_base else cost * (1 + self.taker_fee)
            if need > acct.available(spec.quote):
                raise KrakenReject("EOrder:Insufficient funds")
        else:
            need = vol + self._base_fee(spec, vol, self.taker_fee) if fee_in_base else vol
            if need > acct.available(spec.base):
                raise KrakenReject("EOrder:Insufficient funds")
        if len([1 for x in acct.open_orders.values() if x.pair is spec]) >= acct.tier.max_open_orders_per_pair \
                and o["ordertype"] == "limit":
            raise KrakenReject("EOrder:Orders limit exceeded")
        return fills, vol, cost

    def add_order(self, acct: Account, params: dict) -> dict:
        o = self._parse_order(acct, params)
        return self._add_parsed(acct, o)

    def _add_parsed(self, acct: Account, o: dict, *, counted: bool = False) -> dict:
        spec: PairSpec = o["spec"]
        if o["cl_ord_id"] is not None:
            for other in acct.open_orders.values():
                if other.cl_ord_id == o["cl_ord_id"]:
                    raise KrakenReject("EOrder:Invalid order:cl_ord_id already in use by an open order")
        fills, vol, _ = self._check_and_plan(acct, o)
        vol_text = f"{(o['volume'] if not o['viqc'] else vol):.{spec.lot_decimals}f}"
        if o["ordertype"] == "market":
            descr = f"{o['side']} {vol_text} {spec.altname} @ market"
        else:
            descr = f"{o['side']} {vol_text} {spec.altname} @ limit {o['limit']:.{spec.pair_decimals}f}"
        if o["validate"]:
            return {"descr": {"order": descr}}
        mono = self.mono()
        if not counted and not acct.trading_counter(spec.key).try_add(trading_cost("add"), mono):
            raise KrakenReject("EOrder:Rate limit exceeded")
        now = round(self.clock.now(), 4)
        order = Order(self._new_id("O"), spec, o["side"], o["ordertype"], vol, o["limit"], o["oflags"], o["tif"],
                      o["userref"], o["cl_ord_id"], now, mono, quote_vol=o["volume"] if o["viqc"] else None)
        acct.orders[order.txid] = order
        if order.cl_ord_id is not None:
            index = acct.by_cl_ord_id
            index.setdefault(order.cl_ord_id, []).append(order.txid)
            if len(index) > self.cl_ord_ids_kept:
                del index[next(iter(index))]
        order.status = "open"
        acct.open_orders[order.txid] = order
        if fills:
            self._fill(acct, order, fills, maker=False)
        if order.ordertype == "market":
            if order.vol_exec <= 0:
                self._close(acct, order, "canceled", "Insufficient liquidity")
            else:
                order.vol = order.vol_exec
                self._close(acct, order, "closed", None)
        elif order.vol_exec >= order.vol:
            self._close(acct, order, "closed", None)
        elif o.get("crosses") and o["post"]:
            self._close(acct, order, "canceled", "Post only order")
        elif order.tif == "IOC":
            self._close(acct, order, "canceled", "Immediate or cancel")  # vol_exec > 0: partly filled
        else:
            self._rest(acct, order)
        return {"descr": {"order": descr}, "txid": [order.txid]}

    def add_order_batch(self, acct: Account, params: dict) -> dict:
        orders = params.get("orders")
        if not isinstance(orders, list) or not 2 <= len(orders) <= 15:
            raise _bad("orders")
        spec = self._pair(params.get("pair"))
        validate = _is_true(params.get("validate"))
        parsed = []
        for raw in orders:
            if not isinstance(raw, dict):
                raise _bad("orders")
            p = dict(_flat(raw))
            p["pair"] = spec.key
            if validate:
                p["validate"] = True
            parsed.append(self._parse_order(acct, p, spec))
        if not validate and not acct.trading_counter(spec.key).try_add(
                trading_cost("batch_add", batch_size=len(parsed)), self.mono()):
            raise KrakenReject("EOrder:Rate limit exceeded")
        results = []
        for o in parsed:
            try:
                r = self._add_parsed(acct, o, counted=True)
                entry: dict[str, Any] = {"descr": r["descr"]}
                if "txid" in r:
                    entry["txid"] = r["txid"][0]
            except KrakenReject as exc:
                entry = {"error": exc.errors[0]}
            results.append(entry)
        return {"orders": results}

    def _find_open(self, acct: Account, params: dict) -> list[Order]:
        txid = params.get("txid")
        cl = params.get("cl_ord_id")
        if txid in (None, "") and cl in (None, ""):
            raise _bad("txid")
        if cl not in (None, ""):
            return [o for o in acct.open_orders.values() if o.cl_ord_id == str(cl)]
        text = str(txid).strip()
        if text in acct.orders:
            o = acct.orders[text]
            return [o] if o.status == "open" else []
        try:
            uref = int(text)
        except ValueError:
            return []
        return [o for o in acct.open_orders.values() if o.userref == uref]

    def cancel_order(self, acct: Account, params: dict) -> dict:
        found = self._find_open(acct, params)
        if not found:
            txid = str(params.get("txid") or "")
            if txid in acct.orders:
                return {"count": 0}
            raise KrakenReject("EOrder:Unknown order")
        mono = self.mono()
        count = 0
        for o in found:
            cost = trading_cost("cancel", order_age_s=mono - o.created_mono)
            if cost and not acct.trading_counter(o.pair.key).try_add(cost, mono):
                if count == 0:
                    raise KrakenReject("EOrder:Rate limit exceeded")
                break
            self._close(acct, o, "canceled", "User requested")
            count += 1
        return {"count": count}

    def cancel_all(self, acct: Account, params: dict) -> dict:
        orders = list(acct.open_orders.values())
        for o in orders:
            self._close(acct, o, "canceled", "User requested")
        return {"count": len(orders)}

    def cancel_all_orders_after(self, acct: Account, params: dict) -> dict:
        timeout = params.get("timeout")
        if timeout in (None, ""):
            raise _bad("timeout")
        t = _int(timeout, "timeout")
        if t < 0 or t > 86400:
            raise _bad("timeout")
        now = self.clock.now()
        if t == 0:
            acct.cancel_after_mono = acct.cancel_after_sim = None
            self._deadman.discard(acct.name)
            return {"currentTime": rfc3339(now), "triggerTime": "0"}
        acct.cancel_after_mono = self.mono() + t
        acct.cancel_after_sim = now + t * max(self.clock.speed, 1e-9)
        self._deadman.add(acct.name)
        return {"currentTime": rfc3339(now), "triggerTime": rfc3339(acct.cancel_after_sim)}

    # ---- fills and book-keeping -----------------------------------------------------------------------------
    def _rest(self, acct: Account, order: Order) -> None:
        spec = order.pair
        remaining = order.vol - order.vol_exec
        if order.side == "buy":
            order.hold_asset = spec.quote
            order.hold = remaining * order.limit * self._fee_factor(order, "quote")
        else:
            order.hold_asset = spec.base
            order.hold = remaining * self._fee_factor(order, "base")
        acct.holds[order.hold_asset] = acct.holds.get(order.hold_asset, Decimal(0)) + order.hold
        book = self._resting.setdefault(spec.key, {})
        if not book:
            self.market.pair(spec.key).take_range()  # only crossings from now on count
        book[order.txid] = (acct, order)

    @staticmethod
    def _base_fee(spec: PairSpec, vol: Decimal, rate: Decimal) -> Decimal:
        """A fee paid in the base asset, to the asset's precision (what the funds check and the fill both use)."""
        return (vol * rate).quantize(Decimal(1).scaleb(-ASSETS[spec.base].decimals), rounding=ROUND_UP)

    def _fee_factor(self, order: Order, held: str) -> Decimal:
        """What an order holds per unit it trades: 1 + the fee when the fee comes out of the held asset."""
        fee_in_base = "fcib" in order.oflags
        return 1 + self.taker_fee if fee_in_base == (held == "base") else Decimal(1)

    def _release_hold(self, acct: Account, order: Order, amount: Decimal | None = None) -> None:
        if not order.hold_asset:
            return
        amt = order.hold if amount is None else min(amount, order.hold)
        order.hold -= amt
        left = acct.holds.get(order.hold_asset, Decimal(0)) - amt
        if left <= 0:
            acct.holds.pop(order.hold_asset, None)
        else:
            acct.holds[order.hold_asset] = left

    def _fill(self, acct: Account, order: Order, fills: list[tuple[Decimal, Decimal]], maker: bool) -> None:
        spec = order.pair
        vol = sum((v for _, v in fills), Decimal(0))
        if vol <= 0:
            return
        cost = sum((p * v for p, v in fills), Decimal(0))
        rate = self.maker_fee if maker else self.taker_fee
        fee = (cost * rate).quantize(Decimal(1).scaleb(-spec.cost_decimals), rounding=ROUND_UP)
        bal = acct.balances
        zero = Decimal(0)
        if order.hold_asset:
            if order.side == "buy":
                self._release_hold(acct, order, vol * order.limit * self._fee_factor(order, "quote"))
            else:
                self._release_hold(acct, order, vol * self._fee_factor(order, "base"))
        # The fee is reported in the quote currency either way; with fcib it is paid in the base asset.
        fee_base = self._base_fee(spec, vol, rate) if "fcib" in order.oflags else zero
        fee_quote = zero if fee_base else fee
        if order.side == "buy":
            bal[spec.base] = bal.get(spec.base, zero) + vol - fee_base
            acct.debit(spec.quote, cost + fee_quote)
        else:
            acct.debit(spec.base, vol + fee_base)
            bal[spec.quote] = bal.get(spec.quote, zero) + cost - fee_quote
        order.vol_exec += vol
        order.cost += cost
        order.fee += fee
        self._trade_seq += 1
        trade = Trade(self._new_id("T"), order.txid, self._new_id("T"), spec, round(self.clock.now(), 4),
                      order.side, order.ordertype, (cost / vol).quantize(Decimal(1).scaleb(-max(spec.pair_decimals, 5)),
                                                                         rounding=ROUND_HALF_UP),
                      cost, fee, vol, maker, self._trade_seq)
        acct.trades[trade.tid] = trade
        if order.trade_ids is None:
            order.trade_ids = []
        order.trade_ids.append(trade.tid)
        self._tell_execution(acct, order, trade)

    def _close(self, acct: Account, order: Order, status: str, reason: str | None) -> None:
        self._release_hold(acct, order)
        order.hold_asset = ""
        order.status = status
        order.reason = reason
        order.closetm = round(self.clock.now(), 4)
        acct.open_orders.pop(order.txid, None)
        book = self._resting.get(order.pair.key)
        if book:
            book.pop(order.txid, None)
        acct.closed_ids.append(order.txid)
        while len(acct.closed_ids) > self.closed_orders_kept:
            old = acct.closed_ids.popleft()
            gone = acct.orders.pop(old, None)
            if gone is not None and gone.trade_ids:
                for tid in gone.trade_ids:
                    acct.trades.pop(tid, None)

    def _check_resting(self, key: str, pm: PairMarket) -> None:
        book = self._resting.get(key)
        lo, hi = pm.take_range()
        if not book:
            return
        half = pm.spec.spread / 2
        ask_low = Decimal(repr(lo * (1 + half)))
        bid_high = Decimal(repr(hi * (1 - half)))
        for txid, (acct, order) in list(book.items()):
            lim = order.limit
            if (order.side == "buy" and ask_low <= lim) or (order.side == "sell" and bid_high >= lim):
                self._fill(acct, order, [(lim, order.vol - order.vol_exec)], maker=True)
                self._close(acct, order, "closed", None)

    # ---- in-process views for tests -------------------------------------------------------------------------
    def orders_by_cl_ord_id(self, name: str) -> dict[str, list[Order | str]]:
        """Every order ever accepted for an account, per cl_ord_id (an evicted old order appears as its txid)."""
        acct = self._accounts[name]
        return {cl: [acct.orders.get(t, t) for t in txids] for cl, txids in acct.by_cl_ord_id.items()}

    def orders(self, name: str) -> list[Order]:
        """The account's orders still kept, oldest first."""
        return list(self._accounts[name].orders.values())

    def open_orders_of(self, name: str) -> list[Order]:
        self.sync()
        return list(self._accounts[name].open_orders.values())

    def trades_of(self, name: str) -> list[Trade]:
        return list(self._accounts[name].trades.values())

    def counters(self) -> dict:
        """What the admin endpoint reports: injected faults per kind, orders per cl_ord_id per account."""
        return {
            "injected": self.injected_counts(),
            "orders_by_cl_ord_id": {name: {cl: len(t) for cl, t in a.by_cl_ord_id.items()}
                                    for name, a in self._accounts.items()},
            "orders": {name: len(a.orders) for name, a in self._accounts.items()},
            "open_orders": {name: len(a.open_orders) for name, a in self._accounts.items()},
        }

    def serve(self, host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0, jitter_ms: float = 0.0,
              **kwargs: Any):
        """An async context manager running this exchange on HTTP (see `nija.exchange.app.ExchangeServer`)."""
        from .app import ExchangeServer

        return ExchangeServer(self, host=host, port=port, latency_ms=latency_ms, jitter_ms=jitter_ms, **kwargs)
