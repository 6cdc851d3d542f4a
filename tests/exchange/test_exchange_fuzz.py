"""Bad requests get Kraken's errors, never a traceback: arbitrary parameters for every method, in-process."""

from __future__ import annotations

import re
from decimal import Decimal as D

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nija.exchange import Exchange, KrakenReject
from nija.kraken.errors import UnknownKrakenError, classify
from nija.kraken.limits import Tier

EX = Exchange(seed=7, speed=0)
EX.create_account("fuzz", {"ZUSD": "1000", "XXBT": "1"}, tier=Tier("big", 1e9, 1e9, 1e9, 1e9, 10**6))
EX.set_price("XBTUSD", D("50000"))
KRAKEN_ERROR = re.compile(r"^E[A-Z][A-Za-z]+: ?[A-Z]")

values = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                   st.text(max_size=12),
                   st.sampled_from(["XBTUSD", "XXBTZUSD", "buy", "sell", "market", "limit", "0.001", "50000.0",
                                    "post", "viqc", "IOC", "GTC", "true", "-1", "1e3", "NaN", "Infinity",
                                    "OUF4EM-FRGI2-MQMWZD", "post,viqc", "0", "2024-01-01T00:00:00Z"]),
                   st.lists(st.dictionaries(st.sampled_from(["type", "ordertype", "volume", "price"]),
                                            st.sampled_from(["buy", "market", "limit", "0.001", "x"])),
                            max_size=3))
keys = st.sampled_from(["pair", "type", "ordertype", "volume", "price", "oflags", "timeinforce", "userref",
                        "cl_ord_id", "validate", "txid", "trades", "start", "end", "ofs", "timeout", "orders",
                        "interval", "since", "count", "asset", "deadline", "closetime"])


def _answer(call):
    """What the exchange answered: a result, or the KrakenReject carrying Kraken's errors. Anything else raises."""
    try:
        return call()
    except KrakenReject as exc:
        return exc


def _is_kraken_answer(answer) -> bool:
    """A result shape Kraken uses, or a non-empty list of Kraken error strings the client can classify."""
    if isinstance(answer, KrakenReject):
        return bool(answer.errors) and all(KRAKEN_ERROR.match(e) and classify(e) is not UnknownKrakenError
                                           for e in answer.errors)
    return isinstance(answer, (dict, list))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(sorted(EX.methods_private)), params=st.dictionaries(keys, values, max_size=7))
def test_private_methods_never_crash(method, params):
    answer = _answer(lambda: EX.call("fuzz", method, params))
    assert _is_kraken_answer(answer), (method, params, getattr(answer, "errors", answer))


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(sorted(EX.methods_public)), params=st.dictionaries(keys, values, max_size=4))
def test_public_methods_never_crash(method, params):
    answer = _answer(lambda: EX.call_public(method, params))
    assert _is_kraken_answer(answer), (method, params, getattr(answer, "errors", answer))
