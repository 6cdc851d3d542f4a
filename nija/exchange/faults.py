"""Faults the embedded exchange injects on demand, each with a "next N calls" or a probability trigger.

    kind                          what the caller sees                               order executed?
    drop_response_after_execute   connection reset after the call ran                yes
    timeout                       no answer for `delay_s`, then a connection reset   yes (execute=False: no)
    http_502, http_520            an HTML page with that status                      no (execute=True: yes)
    service_unavailable           EService:Unavailable                               no
    service_busy                  EService:Busy                                      no
    internal_error                EGeneral:Internal error                            no (execute=True: yes)
    deadline_elapsed              EService:Deadline elapsed                          no
    throttled                     EService: Throttled: <unix ts 2 s ahead>           no
    rate_limit                    EAPI:Rate limit exceeded                           no
    order_rate_limit              EOrder:Rate limit exceeded                         no
    lockout                       EGeneral:Temporary lockout                         no
    invalid_nonce                 EAPI:Invalid nonce                                 no
    cancel_only                   EService:Market in cancel_only mode (order adds)   no
    post_only                     EService:Market in post_only mode (order adds)     no
    insufficient_funds            EOrder:Insufficient funds                          no
    orders_limit                  EOrder:Orders limit exceeded                       no
    latency                       the call is delayed by `delay_s`, then runs        yes

A fault matches a call when its `account` (an account name, None = everyone), `method` (e.g. "AddOrder",
None = every method) and `pair` (a pair key or altname, None = any; compared with the call's `pair` parameter)
match; then `next_n` counts down (removed at 0) or `probability` draws from the exchange's
seeded RNG. Faults that name no account also hit public calls. Every injection is counted per kind.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass, field

__all__ = ["Fault", "FaultInjector", "FAULT_KINDS", "ORDER_ADD_METHODS"]

#: kind → (Kraken error string or None, executes by default)
FAULT_KINDS: dict[str, tuple[str | None, bool]] = {
    "drop_response_after_execute": (None, True),
    "timeout": (None, True),
    "http_502": (None, False),
    "http_520": (None, False),
    "service_unavailable": ("EService:Unavailable", False),
    "service_busy": ("EService:Busy", False),
    "internal_error": ("EGeneral:Internal error", False),
    "deadline_elapsed": ("EService:Deadline elapsed", False),
    "throttled": ("EService: Throttled: {ts}", False),
    "rate_limit": ("EAPI:Rate limit exceeded", False),
    "order_rate_limit": ("EOrder:Rate limit exceeded", False),
    "lockout": ("EGeneral:Temporary lockout", False),
    "invalid_nonce": ("EAPI:Invalid nonce", False),
    "cancel_only": ("EService:Market in cancel_only mode", False),
    "insufficient_funds": ("EOrder:Insufficient funds", False),
    "post_only": ("EService:Market in post_only mode", False),
    "orders_limit": ("EOrder:Orders limit exceeded", False),
    "invalid_arguments": ("EGeneral:Invalid arguments", False),
    "latency": (None, True),
}

ORDER_ADD_METHODS = frozenset({"AddOrder", "AddOrderBatch", "EditOrder", "AmendOrder"})
_ids = itertools.count(1)


@dataclass
class Fault:
    """One fault to inject. Without `next_n` or `probability` it fires on the next matching call only."""

    kind: str
    next_n: int | None = None
    probability: float | None = None
    account: str | None = None
    method: str | None = None
    #: run the call before failing (None: the kind's default, see the table above)
    execute: bool | None = None
    #: seconds the response is held ("timeout") or delayed ("latency")
    delay_s: float = 30.0
    #: only calls whose `pair` parameter names this pair (key or altname)
    pair: str | None = None
    id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: use one of {', '.join(FAULT_KINDS)}")
        if self.next_n is None and self.probability is None:
            self.next_n = 1
        if self.next_n is not None and self.next_n < 1:
            raise ValueError("next_n must be >= 1")
        if self.probability is not None and not 0 <= self.probability <= 1:
            raise ValueError("probability must be within [0, 1]")
        if self.kind in ("cancel_only", "post_only") and self.method is None:
            self.method = "*add*"
        if self.pair is not None:
            from .pairs import resolve_pair

            spec = resolve_pair(self.pair)
            if spec is None:
                raise ValueError(f"unknown pair {self.pair!r}")
            self.pair = spec.key

    @property
    def executes(self) -> bool:
        return FAULT_KINDS[self.kind][1] if self.execute is None else bool(self.execute)

    def error_string(self, now_unix: float) -> str | None:
        text = FAULT_KINDS[self.kind][0]
        if text is None:
            return None
        return text.replace("{ts}", str(int(now_unix) + 2))

    def matches(self, account: str | None, method: str, pair: str | None = None) -> bool:
        if self.account is not None and self.account != account:
            return False
        if self.pair is not None and self.pair != pair:
            return False
        if self.method is None:
            return True
        if self.method == "*add*":
            return method in ORDER_ADD_METHODS
        return self.method == method

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["method"] == "*add*":
            d["method"] = None
        return d


class FaultInjector:
    """The active faults, in the order they were injected, and the count of injections per kind."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.faults: list[Fault] = []
        self.counts: dict[str, int] = {}

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def remove(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def draw(self, account: str | None, method: str, pair: str | None = None) -> Fault | None:
        """The fault to inject into this call, if any (counted). `pair` is the call's pair key, if any."""
        if not self.faults:
            return None
        for fault in self.faults:
            if not fault.matches(account, method, pair):
                continue
            if fault.next_n is not None:
                fault.next_n -= 1
                if fault.next_n <= 0:
                    self.faults.remove(fault)
            elif self._rng.random() >= (fault.probability or 0.0):
                continue
            self.counts[fault.kind] = self.counts.get(fault.kind, 0) + 1
            return fault
        return None
