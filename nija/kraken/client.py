"""The async Kraken client: one `KrakenClient` per account, everything costly shared through a `KrakenContext`.

    KrakenContext  (one per event loop by default)
    ├── aiohttp.ClientSession   one connection pool for every account (fan-out to thousands); private calls
    │                           are written straight onto its pooled connections (nija.kraken.wire)
    ├── NonceCoordinator        one nonce sequence per API key, persisted high-water mark (nija.kraken.nonce)
    ├── NonceLane per key       private calls on a key leave in nonce order (or within its nonce window)
    └── RateScheduler           REST counter per key+tier, trading counter per pair, public pacer per IP

    KrakenClient(api_key, api_secret, *, base_url, tier, session, context, nonce_window, ...)
        public(method, **params) / private(method, **params) → the `result` object
        typed helpers → pydantic models with Decimal money (nija.kraken.models)

Retry policy is the exception class (nija.kraken.errors): reads retry transport errors and retryable Kraken
errors with exponential backoff and jitter, re-signed with a fresh nonce each attempt; rate-limit errors wait
`retry_after_s`; invalid nonce re-signs. AddOrder is never retried blindly: every AddOrder carries Kraken's
`deadline` (a few seconds ahead), and after an ambiguous failure the order is looked up by its `cl_ord_id`
(OpenOrders, then ClosedOrders). Found → returned. Not found → proven absent only by a lookup made after the
deadline (plus a margin for clock skew), because a request queued behind a busy backend can still land until then;
only then is it sent again, else `AmbiguousOrderError`.

A client holds its secret as a SecretStr and the decoded HMAC key in a slot no repr shows; no log line, exception
or repr contains the key's secret or a signature.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import random
import re
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import SecretStr

from nija.event_loop import TIMER_STEP_S
from nija.kraken import wire
from nija.kraken.auth import decode_secret, sign
from nija.kraken.errors import (
    AmbiguousOrderError,
    InvalidNonceError,
    KrakenError,
    RateLimitedError,
    TransportError,
    error_from_kraken,
)
from nija.kraken.limits import Tier, rest_cost, tier_named
from nija.kraken.models import (
    OHLC,
    AddOrderResult,
    Balances,
    CancelAllAfterResult,
    CancelResult,
    ClosedOrdersPage,
    ExtendedBalances,
    Order,
    Ticker,
    TradeBalance,
    TradesPage,
    orders_from_mapping,
)
from nija.kraken.nonce import NonceCoordinator, NonceLane
from nija.kraken.pairs import PairInfo, Pairs
from nija.kraken.rest_levels import REST_LEVELS_FILE, SAVE_EVERY_S, RestLevelsFile
from nija.kraken.scheduler import KeyBudget, Pacer, RateScheduler
from nija.logs import get_logger
from nija.timeouts import RequestTimeouts

__all__ = [
    "ClockReading", "KrakenClient", "KrakenContext", "default_context", "derive_cl_ord_id", "DEFAULT_BASE_URL",
]

DEFAULT_BASE_URL = "https://api.kraken.com"
USER_AGENT = "nija/0.1 (+https://github.com/nija)"
# Longer than the slowest balance refresh (60 s) so refreshes keep the pool warm; below the 75 s after which
# aiohttp's server (the embedded exchange) drops an idle connection, so the server's close never races a send.
DEFAULT_KEEPALIVE_S = 70.0
# Private calls sent again after a failure that leaves their outcome unknown: reads, and cancels (a cancel sent
# twice cancels once). Any other call — orders, withdrawals, transfers, Earn allocations, methods added later — is
# sent again only when the failure proves nothing was executed (add_order has its own lookup-then-resend).
_REPEATABLE = frozenset({
    "Balance", "BalanceEx", "TradeBalance", "OpenOrders", "ClosedOrders", "QueryOrders", "OrderAmends",
    "TradesHistory", "QueryTrades", "OpenPositions", "Ledgers", "QueryLedgers", "TradeVolume", "GetWebSocketsToken",
    "DepositMethods", "DepositStatus", "WithdrawInfo", "WithdrawMethods", "WithdrawAddresses", "WithdrawStatus",
    "ExportStatus", "RetrieveExport", "Earn/Strategies", "Earn/Allocations", "Earn/AllocateStatus",
    "Earn/DeallocateStatus",
    "CancelOrder", "CancelAll", "CancelAllOrdersAfter", "CancelOrderBatch",
})
# Calls charged on a pair's trading counter (API.md §3), and those Kraken takes as JSON only.
_TRADING_METHODS = frozenset({"AddOrder", "AddOrderBatch", "EditOrder", "AmendOrder", "CancelOrder", "CancelOrderBatch"})
_JSON_METHODS = frozenset({"AddOrderBatch", "CancelOrderBatch"})
_METHOD_NAME = re.compile(r"[A-Za-z]+(?:/[A-Za-z]+)*")
_USER_AGENT = re.compile(r"[\x20-\x7e]+")
# Kraken takes an AddOrder `deadline` between now + 2 s and now + 60 s; whole seconds, rounded up, stay inside it.
MIN_ORDER_DEADLINE_S, MAX_ORDER_DEADLINE_S = 2.0, 59.0
DEFAULT_ORDER_DEADLINE_S = 5.0
# How far our clock may be ahead of Kraken's: an order is declared absent only this long after its deadline.
DEFAULT_DEADLINE_MARGIN_S = 1.0

log = get_logger("nija.kraken")


def derive_cl_ord_id(*parts: object) -> str:
    """A client order id: a UUID derived from `parts` (same parts → same id), or a random UUID without parts.

    Derive it from what the order copies (e.g. signal id and follower name) so a restart finds the same order.
    """
    if not parts:
        return str(uuid.uuid4())
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_cl_ord_id(cl_ord_id: str) -> str:
    if _CANONICAL_UUID.fullmatch(cl_ord_id):
        return cl_ord_id  # what derive_cl_ord_id makes: on every copy's path, so checked without parsing
    text = cl_ord_id.strip()
    try:
        # One spelling (lower case, hyphens) however it was written: a lookup compares the id Kraken echoes.
        return str(uuid.UUID(text))
    except ValueError:
        pass
    if 0 < len(text) <= 18 and text.isascii() and text.isprintable():
        return text
    raise ValueError(
        f"cl_ord_id {cl_ord_id!r} is neither a UUID (or 32 hex digits) nor 1-18 ASCII characters, as Kraken requires"
    )


def _encode_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        raise TypeError("money must be Decimal, not float: pass Decimal(str(x))")
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_encode_value(item) for item in value)
    return str(value)


def _encode_params(params: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, _encode_value(value)) for name, value in params.items() if value is not None]


# Characters quote_plus never changes: values made only of these (pairs, sides, decimals, UUIDs) skip quoting.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")
# The values that do need quoting repeat (the deadline is the same for every order sent within a second).
_quote = functools.lru_cache(maxsize=64)(quote_plus)


def _form_body(nonce: int, params: dict[str, Any]) -> bytes:
    """The urlencoded private-call body, nonce first (what Kraken signs)."""
    parts = [f"nonce={nonce}"]
    for name, value in params.items():
        if value is None:
            continue
        text = value if type(value) is str else _encode_value(value)
        parts.append(f"{name}={text}" if _PLAIN.fullmatch(text) else f"{name}={_quote(text)}")
    return "&".join(parts).encode()


def _json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _json_value(item) for name, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, bool | int | str):
        return value
    return _encode_value(value)  # Decimal as plain text; float refused


def _json_body(nonce: int, params: dict[str, Any]) -> bytes:
    """The JSON private-call body (the batch endpoints take nothing else), nonce first, as a string."""
    body = {"nonce": str(nonce), **{name: _json_value(value) for name, value in params.items() if value is not None}}
    return json.dumps(body, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=4)  # every order leaving within the same second carries the same deadline
def _rfc3339(unix_s: int) -> str:
    """Whole seconds in UTC, e.g. 2026-01-02T03:04:05Z (the form Kraken's documentation shows)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def _parse_rfc3339(text: str) -> float:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"add_order deadline {text!r} is not an RFC3339 time like 2026-01-02T03:04:05Z") from None


def _key_fingerprint(api_key: str) -> str:
    """A short, stable, non-reversible label for a key in logs and errors."""
    return "k" + hashlib.sha256(api_key.encode()).hexdigest()[:10]


@dataclass(frozen=True, slots=True)
class ClockReading:
    """Kraken's clock minus this host's, in seconds, lies between `lowest_s` and `highest_s`."""

    lowest_s: float
    highest_s: float

    @property
    def off_by_s(self) -> float:
        """How far the clocks are apart for certain (0.0 when the reading allows them to agree), signed."""
        if self.lowest_s > 0:
            return self.lowest_s
        return self.highest_s if self.highest_s < 0 else 0.0


class KrakenContext:
    """What all clients share: one HTTP session, one nonce coordinator, one rate scheduler, the loaded pairs.

    `state_dir` (default NIJA_STATE_DIR or `state/`) holds the nonce high-water mark, in `<state_dir>/nonces/`. `public_rate_per_s` paces
    public calls across all clients (Kraken limits them per IP; ~1/s is safe). `connection_limit` caps open
    connections in the pool (0 = unlimited; the default lets a fan-out to 2,048 accounts leave at once).
    `keepalive_s` keeps an idle pooled connection that long: above the slowest balance-refresh interval (60 s), so
    the refreshes keep every follower's connection open and a fan-out minutes after the last one starts warm, at no
    cost in rate budget. The session is created on first use inside the running loop.
    """

    def __init__(
        self,
        *,
        state_dir: str | Path | None = None,
        nonces: NonceCoordinator | None = None,
        scheduler: RateScheduler | None = None,
        session: aiohttp.ClientSession | None = None,
        public_rate_per_s: float = 1.0,
        rate_safety_margin: float = 0.1,
        connection_limit: int = 2048,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.nonces = nonces or NonceCoordinator.for_state_dir(state_dir)
        self.scheduler = scheduler or RateScheduler(
            public_rate_per_s=public_rate_per_s, safety_margin=rate_safety_margin
        )
        if session is not None:
            wire.check_session(session)
        if _USER_AGENT.fullmatch(user_agent) is None:
            raise ValueError("user_agent must be printable ASCII on one line")
        self._session = session
        self._owns_session = session is None
        self._connection_limit = connection_limit
        self.keepalive_s = keepalive_s
        self._user_agent = user_agent
        self._lanes: dict[str, NonceLane] = {}
        self._pairs: dict[str, Pairs] = {}
        self._pairs_loading: dict[str, asyncio.Task[Pairs]] = {}
        self._origins: dict[str, wire.Origin] = {}
        self.timeouts = RequestTimeouts()
        #: Kraken's clock minus this host's, in seconds: at most the true offset (ClockReading.lowest_s), so that a
        #: lookup proves an order absent never before Kraken's clock has passed the order's deadline (stamped in
        #: Kraken's time, a second early at worst). 0.0 until a reading is taken.
        self.clock_offset_s = 0.0
        self._users = 0
        # Kraken's REST counters outlive a restart: start from what the last run left, and keep the file current.
        self._levels = RestLevelsFile(self.nonces.mark_path.parent / REST_LEVELS_FILE)
        self._levels_saver: asyncio.Task[None] | None = None
        if scheduler is None:
            self._levels.carry_over_into(self.scheduler)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._connection_limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=self.keepalive_s
            )
            # No cookie jar: Kraken's API needs none, and skipping it saves work on every request.
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": self._user_agent}, raise_for_status=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._owns_session = True
        return self._session

    def origin(self, base_url: str) -> wire.Origin:
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = wire.Origin(base_url)
        return origin

    @property
    def user_agent(self) -> str:
        return self._user_agent

    def lane(self, key_id: str, nonce_window: int) -> NonceLane:
        lane = self._lanes.get(key_id)
        if lane is None:
            lane = self._lanes[key_id] = NonceLane(self.nonces, key_id, window=nonce_window)
        elif lane.window != nonce_window:
            raise ValueError(
                f"API key {key_id} is already used with nonce_window={lane.window}; a second client asked for "
                f"{nonce_window}. Use the window set for the key on Kraken's site for every client of it"
            )
        return lane

    def budget(self, key_id: str, tier: Tier) -> KeyBudget:
        return self.scheduler.budget(key_id, tier)

    def loaded_pairs(self, base_url: str) -> Pairs | None:
        return self._pairs.get(base_url)

    async def load_pairs(self, base_url: str, load) -> Pairs:
        """Load the pairs of `base_url` once even when many clients ask at the same moment."""
        task = self._pairs_loading.get(base_url)
        if task is None:
            task = self._pairs_loading[base_url] = asyncio.ensure_future(load())
        try:
            pairs = await asyncio.shield(task)
        finally:
            if task.done():
                self._pairs_loading.pop(base_url, None)
        self._pairs[base_url] = pairs
        return pairs

    def retain(self) -> None:
        self._users += 1

    async def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.close()

    def keep_rest_levels(self) -> None:
        """Keep the REST levels file current while this context is used (called by every private call)."""
        if self._levels_saver is None or self._levels_saver.done():
            self._levels_saver = asyncio.get_running_loop().create_task(self._save_rest_levels_while_used())

    async def _save_rest_levels_while_used(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            if self._levels.behind(self.scheduler):
                await self._levels.save_in_background(self.scheduler)

    async def close(self) -> None:
        """Close the HTTP session if this context created it (a later call opens a new one), and leave the keys'
        REST counter levels for the next run."""
        if self._levels_saver is not None:
            self._levels_saver.cancel()
            self._levels_saver = None
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._levels.save(self.scheduler, durable=True)

    async def __aenter__(self) -> KrakenContext:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


_default_contexts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KrakenContext] = weakref.WeakKeyDictionary()


def default_context() -> KrakenContext:
    """The context of the running event loop, created on first use (state dir from NIJA_STATE_DIR)."""
    loop = asyncio.get_running_loop()
    context = _default_contexts.get(loop)
    if context is None:
        context = _default_contexts[loop] = KrakenContext()
    return context


_TIMEOUTS: dict[float, aiohttp.ClientTimeout] = {}
# Private calls carry no aiohttp total timeout (it costs a timer and a context per request): RequestTimeouts below
# (nija.timeouts) enforces the same limit for them. Public calls keep aiohttp's own.


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    timeout = _TIMEOUTS.get(seconds)
    if timeout is None:
        timeout = _TIMEOUTS[seconds] = aiohttp.ClientTimeout(total=seconds)
    return timeout


class KrakenClient:
    """One Kraken account.

    `api_key`/`api_secret`: the key pair (str or SecretStr). `base_url`: Kraken, or the embedded exchange.
    `tier`: the account's verification tier ("starter", "intermediate", "pro" or a custom `Tier`), which sizes the
    REST counter. `session`: an aiohttp session to use instead of the context's (not one with a proxy: private
    calls go straight onto its connector's connections, see nija.kraken.wire). `context`: the shared
    KrakenContext (default: the running loop's). `nonce_window`: the nonce window set for this key on Kraken (in
    nonce units = ns; 0 = one call in flight). `timeout_s`: per HTTP request. `read_attempts`: tries for reads.
    `order_attempts`: sends of one AddOrder when earlier ones are proven not placed. `retry_base_s`: first backoff.
    `order_deadline_s`: every AddOrder carries Kraken's `deadline` this far ahead (2-59 s); a request that reaches
    the matching engine later is rejected, so an order not found after it is really absent.
    `deadline_margin_s`: how much later than the deadline the proving lookup is made (our clock may run ahead of
    Kraken's). `name`: a label for logs (e.g. the follower's name).
    """

    __slots__ = (
        "_api_key", "_api_secret", "_hmac_key", "key_id", "name", "base_url", "tier", "_session", "_context",
        "_lane", "_budget", "_timeout", "_timeout_s", "_nonce_window", "read_attempts", "order_attempts", "retry_base_s",
        "order_deadline_s", "deadline_margin_s", "_settles_at", "_created_at_s", "__weakref__",
    )

    def __init__(
        self,
        api_key: str | SecretStr,
        api_secret: str | SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        tier: str | Tier = "starter",
        session: aiohttp.ClientSession | None = None,
        context: KrakenContext | None = None,
        nonce_window: int = 0,
        timeout_s: float = 10.0,
        read_attempts: int = 4,
        order_attempts: int = 3,
        retry_base_s: float = 0.5,
        order_deadline_s: float = DEFAULT_ORDER_DEADLINE_S,
        deadline_margin_s: float = DEFAULT_DEADLINE_MARGIN_S,
        name: str | None = None,
    ) -> None:
        key_text = (api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key).strip()
        if not key_text:
            raise ValueError("Kraken API key is empty: set it from Kraken's API key page")
        if not wire.check_header_value(key_text):
            raise ValueError("Kraken API key has a space, line break or non-ASCII character inside it, which no Kraken "
                             "key has: copy it again from Kraken's API key page")
        self._api_key = SecretStr(key_text)  # stripped: a stray space from a .env file would fail every call
        self._api_secret = api_secret if isinstance(api_secret, SecretStr) else SecretStr(api_secret)
        self._hmac_key = decode_secret(self._api_secret.get_secret_value().strip())
        self.key_id = _key_fingerprint(key_text)
        self.name = name
        self.base_url = base_url.rstrip("/")
        wire.Origin(self.base_url)  # a base URL requests cannot go to is refused here, not at the first call
        self.tier = tier_named(tier)
        if read_attempts < 1 or order_attempts < 1:
            raise ValueError("read_attempts and order_attempts must be at least 1")
        self.read_attempts = read_attempts
        self.order_attempts = order_attempts
        self.retry_base_s = retry_base_s
        if not MIN_ORDER_DEADLINE_S <= order_deadline_s <= MAX_ORDER_DEADLINE_S:
            raise ValueError(
                f"order_deadline_s must be within {MIN_ORDER_DEADLINE_S:g}-{MAX_ORDER_DEADLINE_S:g} s (Kraken accepts an "
                f"AddOrder deadline 2 to 60 s ahead), got {order_deadline_s}"
            )
        if deadline_margin_s < 0:
            raise ValueError(f"deadline_margin_s must be >= 0, got {deadline_margin_s}")
        self.order_deadline_s = order_deadline_s
        self.deadline_margin_s = deadline_margin_s
        # cl_ord_id → loop time after which no AddOrder this client sent with it can still be executed
        self._settles_at: dict[str, float] = {}
        # An order this client has no record of may have been sent by a previous run just before this one started.
        self._created_at_s = time.time()
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._timeout = _timeout(timeout_s)
        self._timeout_s = timeout_s
        if session is not None:
            wire.check_session(session)
        self._session = session
        if nonce_window < 0:
            raise ValueError(f"nonce_window must be >= 0, got {nonce_window}")
        self._nonce_window = nonce_window
        self._context: KrakenContext | None = None
        self._lane: NonceLane | None = None
        self._budget: KeyBudget | None = None
        if context is not None:
            self._bind(context)

    def _bind(self, context: KrakenContext) -> None:
        # Lazy when no context was given: the default one belongs to the running loop.
        self._lane = context.lane(self.key_id, self._nonce_window)
        self._budget = context.budget(self.key_id, self.tier)
        self._context = context

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<KrakenClient{label} key={self.key_id} tier={self.tier.name} base_url={self.base_url}>"

    __str__ = __repr__

    def __reduce__(self):  # never pickle credentials by accident
        raise TypeError("KrakenClient holds credentials and cannot be pickled")

    @property
    def context(self) -> KrakenContext:
        if self._context is None:
            self._bind(default_context())
        return self._context  # type: ignore[return-value]

    @property
    def nonce_window(self) -> int:
        return self._nonce_window

    async def __aenter__(self) -> KrakenClient:
        self.context.retain()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.context.release()

    async def close(self) -> None:
        await self.context.release()

    def _http(self) -> aiohttp.ClientSession:
        return self._session if self._session is not None and not self._session.closed else self.context.session()

    # --- the two raw entry points ------------------------------------------------------------------------------

    async def public(self, method: str, **params: Any) -> Any:
        """GET /0/public/<method>, paced per IP, retried on transient failures; returns `result`."""
        return await self._with_retries(method, lambda: self._public_once(method, params), self.read_attempts)

    async def private(self, method: str, **params: Any) -> Any:
        """POST /0/private/<method>, signed, in nonce order, within the key's rate budget; returns `result`.

        Reads and cancels are retried; any other call is only repeated when the failure proves nothing was
        executed (invalid nonce, rate limit). An AddOrder goes through `add_order`: it carries a client order id
        (one is derived when neither `cl_ord_id` nor `userref` is given) and is looked up after an ambiguous failure.
        """
        if _METHOD_NAME.fullmatch(method) is None:  # it becomes part of the request line
            raise ValueError(f"{method!r} is not a Kraken private method name (e.g. 'Balance', 'Earn/Strategies')")
        if method == "AddOrder" and params.get("userref") is None and {"pair", "type", "volume"} <= params.keys():
            fields = dict(params)
            volume = fields.pop("volume")
            placed = await self.add_order(fields.pop("pair"), fields.pop("type"),
                                          Decimal(volume) if isinstance(volume, str | int) else volume, **fields)
            return {"descr": {"order": placed.description}, **({"txid": placed.txid} if placed.txid else {})}
        if method in _REPEATABLE:
            return await self._with_retries(method, lambda: self._private_once(method, params), self.read_attempts)
        return await self._with_retries(
            method, lambda: self._private_once(method, params), self.order_attempts, only_unexecuted=True
        )

    async def rest_room(self, calls: float) -> None:
        """Wait until the key's REST counter has room for `calls` calls in a row without a wait between them (as
        many as the tier allows at most). A poller that waits here before each round keeps that burst free for
        what the round finds, instead of running the counter full and then crawling at the tier's decay rate."""
        if self._context is None:
            self._bind(default_context())
        assert self._budget is not None
        await self._budget.rest.ready(min(calls, self._budget.tier.rest_max - 1))

    async def _public_once(self, method: str, params: dict[str, Any]) -> Any:
        await self.context.scheduler.take_public()
        url = f"{self.base_url}/0/public/{method}"
        query = _encode_params(params)
        try:
            async with self._http().get(url, params=query, timeout=self._timeout) as response:
                status, raw = response.status, await response.read()
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{method}: {type(exc).__name__} talking to {self.base_url}") from None
        try:
            return _parse_envelope(method, status, raw)
        except RateLimitedError:
            self.context.scheduler.public.fill()  # Kraken counts public calls per IP: every client slows down
            raise

    async def _private_once(self, method: str, params: dict[str, Any], deadline_s: float | None = None) -> Any:
        if self._context is None:
            self._bind(default_context())
        lane, budget = self._lane, self._budget
        assert lane is not None and budget is not None
        trading: list[tuple[Pacer, float]] = []
        if method in _TRADING_METHODS:
            if budget.unknown_orders(method, params):
                await self._learn_open_orders()
            trading = [(budget.trading(pair), cost)
                       for pair, cost in budget.order_charges(method, params, self._pair_key).items()]
        rest = rest_cost(method)
        # Budget and the key both free (most calls): the turn is taken at once, without waiting on anything.
        nonce = lane.grant_now() if budget.fits(rest, trading) else None
        while nonce is None:
            # Short of budget, wait before taking a turn on the key: calls behind this one that fit (an AddOrder
            # costs nothing on the REST counter; another pair has its own trading counter) must not wait for it.
            await budget.rest.ready(rest)
            for pacer, cost in trading:
                await pacer.ready(cost)
            nonce = await lane.acquire()
            if not budget.fits(rest, trading):
                # Calls that went first on the key spent that budget meanwhile: wait again, off the key (a nonce
                # not sent leaves only a gap in the sequence).
                lane.release(nonce)
                nonce = None
        try:
            # Charged when the call leaves (after its turn on the key came, the budget checked just now), as the
            # server counts arrivals; re-timed to the reply in `finally` (see nija.kraken.scheduler).
            charged_at_s = budget.rest.now()
            budget.rest.charge(rest, charged_at_s)
            for pacer, cost in trading:
                pacer.charge(cost, charged_at_s)
            if deadline_s is not None:
                # Stamped when the request leaves (after any wait for the key or the counters), and remembered
                # before it leaves: until then plus a margin, a lookup that finds nothing proves nothing.
                params = {**params, "deadline": self._stamp_deadline(params.get("cl_ord_id"), deadline_s)}
            path = f"/0/private/{method}"
            if method in _JSON_METHODS:
                body, content_type = _json_body(nonce, params), "application/json"
            else:
                body, content_type = _form_body(nonce, params), "application/x-www-form-urlencoded"
            context = self._context
            headers = (
                f"User-Agent: {context.user_agent}\r\nAPI-Key: {self._api_key.get_secret_value()}\r\n"
                f"API-Sign: {sign(path, nonce, body, self._hmac_key)}\r\nContent-Type: {content_type}\r\n"
            )
            context.keep_rest_levels()
            try:
                slot, task = context.timeouts.enter(self._timeout_s)
                failure = None
                try:
                    status, raw = await wire.post(self._http(), context.origin(self.base_url), path, headers, body)
                except asyncio.CancelledError:
                    # Our own time limit or a caller's (e.g. the copy engine's asyncio.timeout): either way the
                    # request may still reach the server, so later nonces must out-rank it even within the window.
                    lane.skip_past(nonce + lane.window)
                    if not context.timeouts.leave(slot, task):
                        raise
                    failure = "TimeoutError"
                except (asyncio.TimeoutError, aiohttp.ClientError, OSError, HttpProcessingError) as exc:
                    # The request may still reach the server: later nonces must out-rank it even within the window.
                    lane.skip_past(nonce + lane.window)
                    failure = type(exc).__name__
                finally:
                    context.timeouts.leave(slot, task)
                if failure is not None:
                    # Raised outside the handler: aiohttp's exception (its request headers hold the key and the
                    # signature) must not ride along as __context__.
                    raise TransportError(f"{method}: {failure} talking to {self.base_url}")
                result = _parse_envelope(method, status, raw)
                if trading:
                    budget.note_placed(method, params, result, self._pair_key)
                return result
            except InvalidNonceError:
                # last + 1 cannot beat a nonce an earlier run (with a lost mark) used ahead of the clock: re-sign
                # from a reservation past the clock instead.
                lane.jump_ahead()
                raise
            except RateLimitedError as exc:
                # Someone else spends this key's budget (or our model drifted): take the server's word for it.
                first = exc.errors[0] if exc.errors else ""
                if first.startswith("EAPI:Rate limit"):
                    budget.rest.fill()
                elif first.startswith("EOrder:Rate limit"):
                    for pacer, _cost in trading:
                        pacer.fill()
                raise
            finally:
                budget.rest.settle(rest, charged_at_s)
                for pacer, cost in trading:
                    pacer.settle(cost, charged_at_s)
        finally:
            lane.release(nonce)

    async def _with_retries(self, method: str, call, attempts: int, *, only_unexecuted: bool = False) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except KrakenError as exc:
                executed_maybe = not isinstance(exc, InvalidNonceError | RateLimitedError)
                if attempt >= attempts or not exc.retryable or (only_unexecuted and executed_maybe):
                    raise
                wait_s = self._retry_wait_s(exc, attempt)
                log.warning(
                    "kraken_retry", method=method, key=self.key_id, account=self.name, attempt=attempt,
                    error=type(exc).__name__, detail=str(exc), wait_s=round(wait_s, 3),
                )
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")

    def _retry_wait_s(self, exc: KrakenError, attempt: int) -> float:
        if isinstance(exc, InvalidNonceError):
            return 0.0  # re-signed with a fresh nonce right away; nothing was executed
        if exc.retry_after_s is not None:
            return exc.retry_after_s
        backoff = min(30.0, self.retry_base_s * 2 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)  # jitter: spread retries of many accounts

    # --- typed helpers ----------------------------------------------------------------------------------------

    async def balance(self) -> Balances:
        return Balances.from_result(await self.private("Balance"))

    async def balance_ex(self) -> ExtendedBalances:
        return ExtendedBalances.from_result(await self.private("BalanceEx"))

    async def trade_balance(self, asset: str = "ZUSD") -> TradeBalance:
        return TradeBalance.model_validate(await self.private("TradeBalance", asset=asset))

    async def assets(self) -> dict[str, Any]:
        return await self.public("Assets")

    async def asset_pairs(self, pair: str | Iterable[str] | None = None) -> dict[str, PairInfo]:
        """AssetPairs as {key: PairInfo}; `pair` restricts it (one name or several)."""
        pairs = pair if pair is None or isinstance(pair, str) else ",".join(pair)
        result = await self.public("AssetPairs", pair=pairs)
        return {key: PairInfo.from_kraken(key, raw) for key, raw in result.items()}

    async def pairs(self, *, refresh: bool = False) -> Pairs:
        """Every pair and asset name of this base URL, loaded once per context (Assets + AssetPairs)."""
        context = self.context
        loaded = context.loaded_pairs(self.base_url)
        if loaded is not None and not refresh:
            return loaded
        return await context.load_pairs(self.base_url, self._load_pairs)

    async def _load_pairs(self) -> Pairs:
        assets = await self.public("Assets")
        asset_pairs = await self.public("AssetPairs")
        return Pairs.from_results(asset_pairs, assets)

    async def ticker(self, pair: str | Iterable[str] | None = None) -> dict[str, Ticker]:
        """Ticker per pair key; without `pair` every pair in one call."""
        pairs = pair if pair is None or isinstance(pair, str) else ",".join(pair)
        result = await self.public("Ticker", pair=pairs)
        return {key: Ticker.from_kraken(key, raw) for key, raw in result.items()}

    async def ohlc(self, pair: str, interval: int = 1, since: int | None = None) -> OHLC:
        """Candles of `interval` minutes (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)."""
        if interval not in (1, 5, 15, 30, 60, 240, 1440, 10080, 21600):
            raise ValueError(f"OHLC interval {interval} is not one Kraken serves: use 1, 5, 15, 30, 60, 240, 1440, ...")
        return OHLC.from_result(await self.public("OHLC", pair=pair, interval=interval, since=since))

    async def open_orders(
        self, *, trades: bool = False, userref: int | None = None, cl_ord_id: str | None = None
    ) -> dict[str, Order]:
        result = await self.private(
            "OpenOrders", trades=trades or None, userref=userref, cl_ord_id=cl_ord_id
        )
        return orders_from_mapping(result.get("open", {}))

    async def closed_orders(
        self,
        *,
        userref: int | None = None,
        cl_ord_id: str | None = None,
        start: int | str | None = None,
        end: int | str | None = None,
        ofs: int | None = None,
        closetime: str | None = None,
        trades: bool = False,
    ) -> ClosedOrdersPage:
        result = await self.private(
            "ClosedOrders", trades=trades or None, userref=userref, cl_ord_id=cl_ord_id, start=start, end=end,
            ofs=ofs, closetime=closetime,
        )
        return ClosedOrdersPage.from_result(result)

    async def trades_history(
        self, *, start: int | str | None = None, end: int | str | None = None, ofs: int | None = None
    ) -> TradesPage:
        """One page of executions after `start` (newest first); costs 2 on the REST counter."""
        return TradesPage.from_result(await self.private("TradesHistory", start=start, end=end, ofs=ofs))

    async def query_orders(self, txid: str | Iterable[str], *, trades: bool = False) -> dict[str, Order]:
        """Up to 50 orders by id."""
        txids = [txid] if isinstance(txid, str) else list(txid)
        if not 1 <= len(txids) <= 50:
            raise ValueError(f"query_orders takes 1 to 50 order ids, got {len(txids)}")
        return orders_from_mapping(await self.private("QueryOrders", txid=txids, trades=trades or None))

    async def cancel_order(self, txid: str | None = None, *, cl_ord_id: str | None = None) -> CancelResult:
        if (txid is None) == (cl_ord_id is None):
            raise ValueError("cancel_order needs exactly one of txid or cl_ord_id")
        cl_ord_id = None if cl_ord_id is None else _check_cl_ord_id(cl_ord_id)
        result = await self.private("CancelOrder", txid=txid, cl_ord_id=cl_ord_id)
        return CancelResult.model_validate(result)

    async def cancel_all_orders_after(self, timeout_s: int) -> CancelAllAfterResult:
        """Dead-man's switch: cancel every order in `timeout_s` seconds unless called again (0 disables)."""
        return CancelAllAfterResult.model_validate(await self.private("CancelAllOrdersAfter", timeout=int(timeout_s)))

    async def read_clock(self) -> ClockReading:
        """Where Kraken's clock stands against this host's, from Kraken's `Time` (whole seconds)."""
        before_s = time.time()
        unixtime = int((await self.public("Time"))["unixtime"])
        after_s = time.time()
        # Kraken read its clock somewhere between our two readings (a wait for the public pacer included), and
        # truncated it to the second.
        return ClockReading(lowest_s=unixtime - after_s, highest_s=unixtime + 1 - before_s)

    async def websockets_token(self) -> SecretStr:
        """A token for one WebSocket v2 connection's private channels (nija.kraken.ws); the key needs Kraken's
        "WebSocket interface" permission. It opens a subscription within 15 minutes, and is kept out of reprs."""
        result = await self.private("GetWebSocketsToken")
        token = result.get("token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise TransportError("GetWebSocketsToken: the answer holds no token")
        return SecretStr(token)

    async def find_order(self, cl_ord_id: str) -> Order | None:
        """The order carrying `cl_ord_id` (open first, then closed), or None when the account has none *now*.

        None does not prove an AddOrder this client sent is absent while it may still be executed: use
        `find_order_settled` for that."""
        cl_ord_id = _check_cl_ord_id(cl_ord_id)  # the spelling add_order sent
        for order in (await self.open_orders(cl_ord_id=cl_ord_id)).values():
            if order.cl_ord_id == cl_ord_id:
                return order
        for order in (await self.closed_orders(cl_ord_id=cl_ord_id)).closed.values():
            if order.cl_ord_id == cl_ord_id:
                return order
        return None

    def settle_delay_s(self, cl_ord_id: str, *, sent_at_s: float | None = None) -> float:
        """Seconds until a lookup of `cl_ord_id` that finds nothing proves the order absent (0: already would).

        For an AddOrder this client sent, that is its deadline plus the margin. For one it has no record of (sent
        by a previous run, or forgotten), a request may still land until a full deadline after the later of
        `sent_at_s` (unix seconds the caller last touched the intent) and this client's creation.
        """
        settles_at = self._settles_at.get(_check_cl_ord_id(cl_ord_id))
        if settles_at is not None:
            return max(0.0, settles_at - asyncio.get_running_loop().time())
        return self._unknown_send_delay_s(sent_at_s)

    def _unknown_send_delay_s(self, sent_at_s: float | None) -> float:
        origin_s = max(self._created_at_s, sent_at_s or 0.0)
        # + 1: a deadline is stamped in whole seconds, rounded up; a Kraken clock behind ours reaches a deadline
        # stamped on our clock (a run that had not read Kraken's yet) that much later
        behind_s = max(0.0, -self.context.clock_offset_s)
        return max(0.0, origin_s + self.order_deadline_s + 1 + behind_s + self.deadline_margin_s - time.time())

    def _refused(self, cl_ord_id: str) -> None:
        """Kraken refused the last send of `cl_ord_id` and every earlier one was proven absent before it went: a
        lookup need not wait for its deadline (an exit sent again at once, a held signal), only for what a previous
        run may have sent (see `settle_delay_s`)."""
        self._settles_at[cl_ord_id] = asyncio.get_running_loop().time() + self._unknown_send_delay_s(None)

    async def find_order_settled(self, cl_ord_id: str, *, sent_at_s: float | None = None) -> Order | None:
        """The order carrying `cl_ord_id`, or None only when proven absent.

        Looks at once; when nothing is found while an AddOrder with `cl_ord_id` could still be executed (see
        `settle_delay_s`), waits for that moment and looks again.
        """
        loop = asyncio.get_running_loop()
        settles_at = loop.time() + self.settle_delay_s(cl_ord_id, sent_at_s=sent_at_s)  # fixed before looking
        # Only a lookup that *starts* once the order can no longer land proves anything: OpenOrders may run before
        # that moment and ClosedOrders after it (a wait for budget, a retry), with the order landing in between.
        started_at = loop.time()
        found = await self.find_order(cl_ord_id)
        if found is not None or started_at >= settles_at:
            return found
        wait_s = settles_at - loop.time()
        if wait_s > 0:
            log.info("kraken_order_lookup_deferred", key=self.key_id, account=self.name, cl_ord_id=cl_ord_id,
                     wait_s=round(wait_s, 3))
            await asyncio.sleep(wait_s + TIMER_STEP_S)  # a timer may fire a little early: never look before the moment
        return await self.find_order(cl_ord_id)

    def _stamp_deadline(self, cl_ord_id: str | None, deadline_s: float) -> str:
        """Kraken's `deadline` for an AddOrder leaving now; remembers when a lookup of `cl_ord_id` proves absence."""
        now_s = time.time() + self.context.clock_offset_s  # Kraken's time: it checks the deadline on its clock
        deadline_unix = math.ceil(now_s + deadline_s)  # whole seconds, never less than deadline_s ahead
        loop_now = asyncio.get_running_loop().time()
        self._note_settle_time(cl_ord_id, loop_now + (deadline_unix - now_s) + self.deadline_margin_s)
        return _rfc3339(deadline_unix)

    def _note_settle_time(self, cl_ord_id: str | None, settles_at: float) -> None:
        if cl_ord_id is None:
            return
        settles = self._settles_at
        if len(settles) >= 256:  # drop the settled ones; a client has few orders in flight
            now = asyncio.get_running_loop().time()
            for key in [key for key, at in settles.items() if at <= now]:
                del settles[key]
        settles[cl_ord_id] = max(settles_at, settles.get(cl_ord_id, settles_at))

    async def add_order(
        self,
        pair: str,
        side: str,
        volume_base: Decimal,
        *,
        ordertype: str = "market",
        price: Decimal | None = None,
        price2: Decimal | None = None,
        cl_ord_id: str | None = None,
        oflags: str | Iterable[str] | None = None,
        timeinforce: str | None = None,
        expiretm: str | int | None = None,
        deadline: str | None = None,
        validate: bool = False,
        fetch_order: bool = False,
        **params: Any,
    ) -> AddOrderResult:
        """Place one order, never twice.

        `side` buy|sell, `volume_base` in base units (Decimal), `price`/`price2` in quote units. `cl_ord_id`
        (UUID or ≤18 ASCII chars) is derived when not given; pass one derived from what the order copies so a
        restart can find it. Each send carries Kraken's `deadline`, `order_deadline_s` ahead (or the `deadline`
        given, RFC3339). After a timeout, 5xx, `EService:*` or internal error the order is looked up by
        `cl_ord_id`: found → returned with `recovered=True`; proven absent (not found by a lookup made after the
        deadline plus `deadline_margin_s`) → sent again (up to `order_attempts` sends); lookup impossible →
        `AmbiguousOrderError`. `fetch_order=True` also reads the placed order back. `validate=True` asks Kraken to
        check the order and place nothing.
        """
        if side not in ("buy", "sell"):
            raise ValueError(f"add_order side must be 'buy' or 'sell', got {side!r}")
        if isinstance(volume_base, float) or isinstance(price, float):
            raise TypeError("add_order volume_base and price must be Decimal, not float")
        if "userref" in params and params["userref"] is not None:
            raise ValueError("Kraken does not accept userref together with cl_ord_id; NIJA tags orders by cl_ord_id")
        cl_ord_id = _check_cl_ord_id(cl_ord_id) if cl_ord_id else derive_cl_ord_id()
        deadline_s: float | None = None
        if deadline is not None:
            # The caller's deadline: a lookup proves absence only after it, as for ours.
            kraken_now_s = time.time() + self.context.clock_offset_s
            self._note_settle_time(cl_ord_id, asyncio.get_running_loop().time()
                                   + _parse_rfc3339(deadline) - kraken_now_s + self.deadline_margin_s)
        elif not validate:
            deadline_s = self.order_deadline_s
        request = {
            "pair": pair, "type": side, "ordertype": ordertype, "volume": Decimal(volume_base), "price": price,
            "price2": price2, "cl_ord_id": cl_ord_id,
            "oflags": oflags if oflags is None or isinstance(oflags, str) else ",".join(oflags),
            "timeinforce": timeinforce, "expiretm": expiretm, "deadline": deadline,
            "validate": True if validate else None, **params,
        }
        sends = 0
        while True:
            sends += 1
            try:
                result = await self._private_once("AddOrder", request, deadline_s=deadline_s)
                break
            except KrakenError as exc:
                if isinstance(exc, InvalidNonceError | RateLimitedError) or (validate and exc.retryable):
                    # Nothing was executed: send again after the wait the error asks for.
                    if sends >= self.order_attempts:
                        self._refused(cl_ord_id)
                        raise
                    await self._sleep_before_retry("AddOrder", exc, sends)
                    continue
                if not exc.ambiguous_for_orders:
                    self._refused(cl_ord_id)
                    raise
                found = await self._resolve_ambiguous(pair, cl_ord_id, exc)
                if found is not None:
                    log.warning(
                        "kraken_order_recovered", key=self.key_id, account=self.name, cl_ord_id=cl_ord_id,
                        txid=found.txid, status=found.status, cause=type(exc).__name__,
                    )
                    if self._budget is not None:
                        self._budget.remember_order([found.txid, cl_ord_id], self._pair_key(pair))
                    return AddOrderResult(
                        cl_ord_id=cl_ord_id, txid=[found.txid], description=found.descr.order, recovered=True,
                        order=found, attempts=sends,
                    )
                if sends >= self.order_attempts:
                    log.error(
                        "kraken_order_not_placed", key=self.key_id, account=self.name, cl_ord_id=cl_ord_id,
                        sends=sends, cause=type(exc).__name__,
                    )
                    raise
                log.warning(
                    "kraken_order_resent", key=self.key_id, account=self.name, cl_ord_id=cl_ord_id, send=sends + 1,
                    cause=type(exc).__name__,
                )
                await self._sleep_before_retry("AddOrder", exc, sends, quiet=True)
        txids = [str(t) for t in result.get("txid", [])]
        descr = result.get("descr") or {}
        order = None
        if fetch_order and txids:
            order = (await self.query_orders(txids[0])).get(txids[0])
        return AddOrderResult(
            cl_ord_id=cl_ord_id, txid=txids, description=str(descr.get("order", "")), validated_only=validate,
            order=order, attempts=sends,
        )

    def _pair_key(self, pair: str) -> str:
        """One trading counter per pair whatever it is called: the pair key when the pairs are loaded."""
        pairs = self.context.loaded_pairs(self.base_url)
        if pairs is not None and pair in pairs:
            return pairs.get(pair).key
        return pair.strip().upper()

    async def _learn_open_orders(self) -> None:
        """Learn the pair and age of every open order (one OpenOrders read), so that cancelling, amending or
        editing an order placed before a restart, or by another program, is charged at Kraken's price."""
        try:
            opened = await self.open_orders()
        except KrakenError as exc:
            # Uncharged, the call may meet `EOrder:Rate limit exceeded`: retryable, after the wait Kraken asks.
            log.warning("kraken_open_orders_unread", key=self.key_id, account=self.name, error=type(exc).__name__,
                        detail=str(exc))
            return
        now_s = time.time()
        self._budget.learned_open_orders(
            ([i for i in (order.txid, order.cl_ord_id) if i], self._pair_key(order.descr.pair),
             max(0.0, now_s - order.opentm), order.userref)
            for order in opened.values())

    async def _sleep_before_retry(self, method: str, exc: KrakenError, attempt: int, *, quiet: bool = False) -> None:
        wait_s = self._retry_wait_s(exc, attempt)
        if not quiet:
            log.warning(
                "kraken_retry", method=method, key=self.key_id, account=self.name, attempt=attempt,
                error=type(exc).__name__, detail=str(exc), wait_s=round(wait_s, 3),
            )
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    async def _resolve_ambiguous(self, pair: str, cl_ord_id: str, cause: KrakenError) -> Order | None:
        """After an ambiguous AddOrder: the order if it exists, None if proven absent, else AmbiguousOrderError.

        A lost request may sit in a queue behind a busy backend and still be executed after a lookup that found
        nothing; only its deadline ends that. So "absent" needs a lookup made after the deadline plus the margin
        (`find_order_settled`). Nonces do not help here: the request passed its nonce check when it arrived.
        """
        log.info("kraken_order_lookup", key=self.key_id, account=self.name, cl_ord_id=cl_ord_id, cause=type(cause).__name__)
        try:
            return await self.find_order_settled(cl_ord_id)
        except KrakenError as exc:
            raise AmbiguousOrderError(
                f"AddOrder {pair}: the outcome is unknown ({type(cause).__name__}) and looking the order up by "
                f"cl_ord_id {cl_ord_id} failed ({type(exc).__name__}); look it up again before sending it",
                cl_ord_id=cl_ord_id,
            ) from exc


def _parse_envelope(method: str, status: int, raw: bytes) -> Any:
    """Kraken's {"error": [...], "result": ...} → result, or the exception its error class stands for."""
    if status != 200:
        kind = " (HTML page)" if raw.lstrip()[:1] == b"<" else ""
        raise TransportError(f"{method}: HTTP {status}{kind}", status=status)
    try:
        envelope = json.loads(raw.decode())  # from str: json skips guessing the bytes' encoding
    except ValueError:  # UnicodeDecodeError included
        kind = "an HTML page" if raw.lstrip()[:1] == b"<" else "not JSON"
        raise TransportError(f"{method}: the reply is {kind}", status=status) from None
    if not isinstance(envelope, dict) or "error" not in envelope:
        raise TransportError(f"{method}: the reply is not a Kraken envelope", status=status)
    errors = [str(e) for e in envelope.get("error") or [] if not str(e).startswith("W")]  # W…: warnings
    if errors:
        raise error_from_kraken(errors, method=method, now_s=time.time())
    if "result" not in envelope:
        raise TransportError(f"{method}: the reply has neither error nor result", status=status)
    return envelope["result"]

