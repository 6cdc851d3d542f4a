"""The embedded exchange's market: a clock, seeded price paths, candles, ticker, depth and book walking.

Price model (per pair, in log space, one step per simulated second):
- a volatility *regime* (calm / normal / volatile) that switches now and then (every ~3 h on average);
- a *trend* drift that follows an AR(1) process (trends that last hours, then fade or turn);
- *pullbacks*: short spells (3–12 minutes) where the drift turns against the trend;
- a weak pull back to the pair's reference price so that paths stay plausible over days;
- volume that rises with volatility and with the size of the move.

Determinism: the history (7 days of one-minute candles ending at start-up) comes from one RNG per (seed, pair);
each live minute draws from its own RNG named by (seed, pair, minute since start-up), so a path does not depend on
when or how often it is looked at. `set_price` pins a pair at a price (tests move the market deterministically)
until `release`.

Prices are floats *relative* to the pair's reference price inside the model (so the cached history template is
shared between Exchange instances) and become Decimals on the tick grid at the edges.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import Callable

from .pairs import PAIRS, PairSpec, resolve_pair

__all__ = ["Clock", "Market", "PairMarket", "INTERVALS", "HISTORY_MINUTES"]

INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
HISTORY_MINUTES = 7 * 1440          # pre-generated one-minute candles (7 days)
RING_MINUTES = HISTORY_MINUTES + 1440  # one-minute candles kept (older ones are dropped)
MAX_OHLC_ROWS = 720
FAST_FORWARD_S = 2 * 3600           # gaps longer than this are filled minute by minute, not second by second

_REGIME_VOL = (0.55, 1.0, 2.1)      # calm, normal, volatile: multiplier of the pair's vol_per_min
_REGIME_VOLUME = (0.6, 1.0, 1.9)
_REGIME_WEIGHTS = (0.30, 0.45, 0.25)
_REGIME_SWITCH_P = 1 / 180          # per minute
_TREND_PHI = 0.992                  # per-minute persistence of the trend drift
_TREND_SHOCK = 0.022                # × sigma: innovation of the trend drift per minute
_REVERSION = 0.0015                 # per minute, toward the reference price (log space): keeps days plausible
_PULLBACK_P = 0.03                  # per minute, when a trend is under way
_SQRT60 = math.sqrt(60.0)


class Clock:
    """Simulated unix time: `start` + real seconds elapsed × `speed` (+ manual advances).

    speed 1 runs in real time, 60 runs one simulated minute per real second, 0 freezes the market clock.
    """

    def __init__(self, speed: float = 1.0, start: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self._mono = monotonic
        self._t0 = monotonic()
        self._start = time.time() if start is None else float(start)
        self.speed = float(speed)

    def now(self) -> float:
        return self._start + (self._mono() - self._t0) * self.speed

    def set_speed(self, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        now = self.now()
        self._start, self._t0, self.speed = now, self._mono(), float(speed)

    def advance(self, seconds: float) -> None:
        """Jump the simulated clock forward (tests, fast-forward)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._start += seconds


class _State:
    __slots__ = ("regime", "trend", "pullback_left")

    def __init__(self, regime: int = 1, trend: float = 0.0, pullback_left: int = 0) -> None:
        self.regime = regime
        self.trend = trend
        self.pullback_left = pullback_left

    def copy(self) -> "_State":
        return _State(self.regime, self.trend, self.pullback_left)


def _evolve(rng: random.Random, st: _State, sigma: float, log_rel: float) -> tuple[float, float, int]:
    """One minute of regime/trend dynamics: (drift per minute, sigma per minute, regime)."""
    if rng.random() < _REGIME_SWITCH_P:
        st.regime = rng.choices((0, 1, 2), _REGIME_WEIGHTS)[0]
    sig = sigma * _REGIME_VOL[st.regime]
    st.trend = _TREND_PHI * st.trend + rng.gauss(0.0, _TREND_SHOCK * sig)
    drift = st.trend
    if st.pullback_left > 0:
        st.pullback_left -= 1
        drift = -0.8 * st.trend
    elif abs(st.trend) > 0.08 * sig and rng.random() < _PULLBACK_P:
        st.pullback_left = rng.randint(3, 12)
    drift -= _REVERSION * log_rel
    return drift, sig, st.regime


def _minute_candle(rng: random.Random, p: float, drift: float, sig: float, regime: int,
                   vol_base: float) -> tuple[tuple[float, float, float, float, float, float, int], float]:
    """A whole one-minute candle at once (history and fast-forward): (o, h, l, c, vwap, volume, count), close."""
    z = rng.gauss(0.0, 1.0)
    r = drift + sig * z
    o, c = p, p * math.exp(r)
    hi = max(o, c) * math.exp(abs(rng.gauss(0.0, 0.45)) * sig)
    lo = min(o, c) * math.exp(-abs(rng.gauss(0.0, 0.45)) * sig)
    volume = vol_base * _REGIME_VOLUME[regime] * (0.45 + 0.55 * abs(z)) * rng.lognormvariate(0.0, 0.35)
    count = max(1, int(volume / vol_base * 18 + rng.random() * 6))
    vwap = (o + c + hi + lo) / 4
    return (o, hi, lo, c, vwap, volume, count), c


@lru_cache(maxsize=64)
def _template(seed: int, key: str, minutes: int) -> tuple[tuple[tuple, ...], int, float, int]:
    """`minutes` closed one-minute candles (relative prices, last close == 1.0) and the trend state at the end."""
    spec = PAIRS[key]
    rng = random.Random(f"nija-history:{seed}:{key}")
    st = _State(regime=rng.choices((0, 1, 2), _REGIME_WEIGHTS)[0])
    vol_base = spec.volume_usd_per_min / spec.ref_price
    p = 1.0
    rows = []
    for _ in range(minutes):
        drift, sig, regime = _evolve(rng, st, spec.vol_per_min, math.log(p))
        row, p = _minute_candle(rng, p, drift, sig, regime, vol_base)
        rows.append(row)
    k = 1.0 / p
    norm = tuple((o * k, h * k, lo * k, c * k, vw * k, v, n) for (o, h, lo, c, vw, v, n) in rows)
    return norm, st.regime, st.trend, st.pullback_left


class PairMarket:
    """One pair's price path, candles and synthetic order book."""

    __slots__ = ("spec", "seed", "scale", "candles", "first_minute", "cur", "last_s", "p", "st", "start_minute",
                 "_rng", "_drift", "_sig", "_regime", "pinned", "pinned_price", "cross_low", "cross_high",
                 "last_lot", "_tick_f", "_ticker_cache", "_vol_base")

    def __init__(self, spec: PairSpec, seed: int, now: float) -> None:
        self.spec = spec
        self.seed = seed
        self.scale = spec.ref_price
        self._tick_f = float(spec.tick_size)
        self._vol_base = spec.volume_usd_per_min / spec.ref_price
        rows, regime, trend, pullback = _template(seed, spec.key, HISTORY_MINUTES)
        now_s = int(now)
        minute = now_s // 60
        self.start_minute = minute
        self.candles: deque = deque(rows, maxlen=RING_MINUTES)
        self.first_minute = minute - len(rows)
        self.st = _State(regime, trend, pullback)
        self.p = 1.0
        # current candle: [minute, o, h, l, c, volume, price*volume, count]
        self.cur = [minute, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0]
        self.last_s = now_s
        self._rng = random.Random(f"nija-live:{seed}:{spec.key}:0")
        self._drift, self._sig, self._regime = _evolve(self._rng, self.st, spec.vol_per_min, 0.0)
        self.pinned = False
        self.pinned_price: Decimal | None = None
        self.cross_low = self.cross_high = 1.0
        self.last_lot = 0.0
        self._ticker_cache: tuple | None = None

    # ---- time evolution -------------------------------------------------------------------------------------
    def _new_minute(self, minute: int) -> None:
        cur = self.cur
        vwap = cur[6] / cur[5] if cur[5] > 0 else cur[4]
        n = len(self.candles)
        self.candles.append((cur[1], cur[2], cur[3], cur[4], vwap, cur[5], cur[7]))
        if n == self.candles.maxlen:
            self.first_minute += 1
        p = self.p
        self.cur = [minute, p, p, p, p, 0.0, 0.0, 0]
        self._rng = random.Random(f"nija-live:{self.seed}:{self.spec.key}:{minute - self.start_minute}")
        self._drift, self._sig, self._regime = _evolve(self._rng, self.st, self.spec.vol_per_min, math.log(p))

    def advance(self, now: float) -> None:
        """Move the path to simulated time `now` (seconds)."""
        now_s = int(now)
        s = self.last_s
        if now_s <= s:
            return
        if now_s - s > FAST_FORWARD_S:
            self._fast_forward(now_s)
            s = self.last_s
        cur = self.cur
        p = self.p
        lo, hi = self.cross_low, self.cross_high
        vol_base = self._vol_base / 60
        while s < now_s:
            s += 1
            minute = s // 60
            if minute != cur[0]:
                self.p = p
                self._new_minute(minute)
                cur = self.cur
            rng = self._rng
            z = rng.gauss(0.0, 1.0)
            if not self.pinned:
                p *= math.exp(self._drift / 60 + self._sig / _SQRT60 * z)
            lot = vol_base * _REGIME_VOLUME[self._regime] * (0.3 + 0.7 * abs(z)) * (0.5 + rng.random())
            if p > cur[2]:
                cur[2] = p
            if p < cur[3]:
                cur[3] = p
            cur[4] = p
            cur[5] += lot
            cur[6] += lot * p
            cur[7] += 1 + int(rng.random() * 3)
            if p < lo:
                lo = p
            if p > hi:
                hi = p
            self.last_lot = lot
        self.p = p
        self.last_s = now_s
        self.cross_low, self.cross_high = lo, hi

    def _fast_forward(self, now_s: int) -> None:
        """Fill a long gap with whole one-minute candles (cheaper than second by second)."""
        target_minute = now_s // 60
        self.p = self.cur[4] if not self.pinned else self.p
        while self.cur[0] < target_minute - 1:
            m = self.cur[0] + 1
            self._new_minute(m)
            if self.pinned:
                continue
            row, p = _minute_candle(self._rng, self.p, self._drift, self._sig, self._regime, self._vol_base)
            self.p = p
            self.cur = [m, row[0], row[1], row[2], row[3], row[5], row[4] * row[5], row[6]]
            self.cross_low = min(self.cross_low, row[2])
            self.cross_high = max(self.cross_high, row[1])
        self.last_s = max(self.last_s, (target_minute - 1) * 60 + 59)

    def take_range(self) -> tuple[float, float]:
        """Lowest and highest absolute price since the last call (for resting limit fills); then reset."""
        lo, hi = self.cross_low * self.scale, self.cross_high * self.scale
        self.cross_low = self.cross_high = self.p
        return lo, hi

    # ---- prices ---------------------------------------------------------------------------------------------
    @property
    def mid(self) -> float:
        return self.p * self.scale

    def last_price(self) -> Decimal:
        if self.pinned_price is not None:
            return self.pinned_price
        return self.to_tick(self.mid)

    def to_tick(self, price: float) -> Decimal:
        ticks = round(price / self._tick_f)
        return Decimal(ticks) * self.spec.tick_size

    def bid_ask_ticks(self) -> tuple[int, int]:
        mid = self.mid
        half = self.spec.spread / 2
        t = self._tick_f
        bid = math.floor(mid * (1 - half) / t + 1e-9)
        ask = math.ceil(mid * (1 + half) / t - 1e-9)
        if ask <= bid:
            ask = bid + 1
        if bid < 1:
            bid = 1
            ask = max(ask, 2)
        return bid, ask

    def bid_ask(self) -> tuple[Decimal, Decimal]:
        bid, ask = self.bid_ask_ticks()
        tick = self.spec.tick_size
        return Decimal(bid) * tick, Decimal(ask) * tick

    def set_price(self, value: Decimal, pin: bool = True) -> None:
        rel = float(value) / self.scale
        if rel <= 0:
            raise ValueError("price must be positive")
        self.p = rel
        cur = self.cur
        cur[2] = max(cur[2], rel)
        cur[3] = min(cur[3], rel)
        cur[4] = rel
        self.cross_low = min(self.cross_low, rel)
        self.cross_high = max(self.cross_high, rel)
        self.pinned = pin
        self.pinned_price = value if pin else None

    def release(self) -> None:
        self.pinned = False
        self.pinned_price = None

    # ---- order book -----------------------------------------------------------------------------------------
    def _book_params(self, side: str) -> tuple[int, int, int, float, tuple]:
        bid, ask = self.bid_ask_ticks()
        mid = self.mid
        step = max(1, int(mid * max(self.spec.spread / 2, 0.00005) / self._tick_f))
        best, sign = (ask, 1) if side == "asks" else (bid, -1)
        return best, sign * step, sign, self.spec.depth_usd / mid, (self.seed, self.last_s, side == "asks")

    def levels(self, side: str, n: int) -> list[tuple[int, float]]:
        """`n` synthetic levels on one side: (price in ticks, volume in base units), best first.

        side "asks" (what a buyer takes) or "bids". Deterministic for a given second.
        """
        best, step, _, base_vol, key = self._book_params(side)
        out = []
        for i in range(n):
            price = best + i * step
            if price < 1:
                break
            out.append((price, base_vol * (1 + 0.35 * i) * (0.5 + (hash((key, i)) & 0xFFFF) / 65536.0)))
        return out

    def walk(self, side: str, volume: Decimal | None = None, quote: Decimal | None = None,
             limit: Decimal | None = None) -> list[tuple[Decimal, Decimal]]:
        """Fills against the synthetic book: [(price, volume)] taking `volume` base units or spending `quote`.

        side "buy" takes asks (stops above `limit`), "sell" takes bids (stops below `limit`). Volumes are rounded
        down to the pair's lot_decimals. The book is as deep as needed (levels grow with distance from the top).
        """
        spec = self.spec
        lot_q = Decimal(1).scaleb(-spec.lot_decimals)
        best, step, _, base_vol, key = self._book_params("asks" if side == "buy" else "bids")
        tick = spec.tick_size
        fills: list[tuple[Decimal, Decimal]] = []
        remaining_vol = volume
        remaining_quote = quote
        for i in range(10_000):
            pt = best + i * step
            if pt < 1:
                break
            price = pt * tick
            if limit is not None and ((side == "buy" and price > limit) or (side == "sell" and price < limit)):
                break
            lv = base_vol * (1 + 0.35 * i) * (0.5 + (hash((key, i)) & 0xFFFF) / 65536.0)
            avail = Decimal(repr(lv)).quantize(lot_q, rounding=ROUND_DOWN)
            if remaining_vol is not None:
                take = avail if avail < remaining_vol else remaining_vol
                remaining_vol -= take
            else:
                assert remaining_quote is not None
                can = (remaining_quote / price).quantize(lot_q, rounding=ROUND_DOWN)
                take = avail if avail < can else can
                remaining_quote -= take * price
            if take > 0:
                fills.append((price, take))
            if (remaining_vol is not None and remaining_vol <= 0) or (
                    remaining_quote is not None and remaining_quote < price * lot_q) or take < avail:
                break
        return fills

    # ---- candles --------------------------------------------------------------------------------------------
    def ohlc(self, interval: int, since: int | None = None) -> tuple[list[list], int]:
        """Kraken OHLC rows for `interval` minutes (the last row is the unfinished candle) and `last`."""
        scale = self.scale
        cur = self.cur
        width = interval
        candles = self.candles
        first = self.first_minute
        cur_bucket = (cur[0] // width) * width
        # closed minutes we need: up to 720 buckets before the current one
        start_minute = max(first, cur_bucket - width * (MAX_OHLC_ROWS - 1))
        if since is not None:
            start_minute = max(start_minute, (int(since) // 60 // width) * width)
        start_minute = (start_minute // width) * width
        rows: list[list] = []
        bucket = None
        o = h = lo = c = 0.0
        vol = pv = 0.0
        cnt = 0
        i0 = max(0, start_minute - first)
        n = len(candles)
        for idx in range(i0, n):
            m = first + idx
            b = (m // width) * width
            co, ch, cl, cc, cvw, cv, cn = candles[idx]
            if b != bucket:
                if bucket is not None:
                    rows.append([bucket, o, h, lo, c, pv / vol if vol else c, vol, cnt])
                bucket, o, h, lo, c, vol, pv, cnt = b, co, ch, cl, cc, cv, cvw * cv, cn
            else:
                h = ch if ch > h else h
                lo = cl if cl < lo else lo
                c = cc
                vol += cv
                pv += cvw * cv
                cnt += cn
        # the current (unfinished) minute
        co, ch, cl, cc, cv, cpv, cn = cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7]
        if bucket == cur_bucket:
            h = max(h, ch)
            lo = min(lo, cl)
            c = cc
            vol += cv
            pv += cpv
            cnt += cn
        else:
            if bucket is not None:
                rows.append([bucket, o, h, lo, c, pv / vol if vol else c, vol, cnt])
            bucket, o, h, lo, c, vol, pv, cnt = cur_bucket, co, ch, cl, cc, cv, cpv, cn
        rows.append([bucket, o, h, lo, c, pv / vol if vol else c, vol, cnt])
        if since is not None:
            rows = [r for r in rows if r[0] * 60 > since]
        rows = rows[-MAX_OHLC_ROWS:]
        pd = self.spec.pair_decimals
        out = []
        for b, o, h, lo, c, vw, v, n_ in rows:
            out.append([b * 60, _fmt(o * scale, pd), _fmt(h * scale, pd), _fmt(lo * scale, pd),
                        _fmt(c * scale, pd), _fmt(vw * scale, pd + 1), f"{v:.8f}", int(n_)])
        last_closed = (cur_bucket - width) * 60
        return out, last_closed

    def ticker(self, now: float) -> dict:
        """Kraken Ticker entry: ask, bid, last, volume/vwap/trades/low/high today and over 24 h, today's open."""
        spec = self.spec
        pd = spec.pair_decimals
        scale = self.scale
        cur = self.cur
        minute = cur[0]
        midnight = (int(now) // 86400) * 86400 // 60
        cache = self._ticker_cache
        if cache is None or cache[0] != minute:
            agg = self._aggregate_closed(minute - 1439, midnight)
            self._ticker_cache = cache = (minute, agg)
        (v24, pv24, n24, lo24, hi24), (vt, pvt, nt, lot_, hit_), open_today = cache[1]
        cv, cpv, cn, cl, ch = cur[5], cur[6], cur[7], cur[3], cur[2]
        v24 += cv
        pv24 += cpv
        n24 += cn
        vt += cv
        pvt += cpv
        nt += cn
        lo24, hi24 = min(lo24, cl), max(hi24, ch)
        lot_, hit_ = min(lot_, cl), max(hit_, ch)
        if open_today is None:
            open_today = cur[1]
        bid, ask = self.bid_ask()
        lots = self.levels("asks", 1)[0][1], self.levels("bids", 1)[0][1]
        a_lot = max(1, int(lots[0]))
        b_lot = max(1, int(lots[1]))
        last = self.last_price()
        return {
            "a": [f"{ask:.{pd}f}", str(a_lot), f"{a_lot}.000"],
            "b": [f"{bid:.{pd}f}", str(b_lot), f"{b_lot}.000"],
            "c": [f"{last:.{pd}f}", f"{self.last_lot:.8f}"],
            "v": [f"{vt:.8f}", f"{v24:.8f}"],
            "p": [_fmt((pvt / vt if vt else self.p) * scale, pd + 2), _fmt((pv24 / v24 if v24 else self.p) * scale, pd + 2)],
            "t": [int(nt), int(n24)],
            "l": [_fmt(lot_ * scale, pd), _fmt(lo24 * scale, pd)],
            "h": [_fmt(hit_ * scale, pd), _fmt(hi24 * scale, pd)],
            "o": _fmt(open_today * scale, pd),
        }

    def volume_24h_usd(self) -> float:
        t = self.ticker(self.last_s)
        return float(t["v"][1]) * self.mid

    def _aggregate_closed(self, from_minute: int, midnight_minute: int) -> tuple:
        first = self.first_minute
        candles = self.candles
        v24 = pv24 = 0.0
        n24 = 0
        lo24, hi24 = math.inf, -math.inf
        vt = pvt = 0.0
        nt = 0
        lot, hit = math.inf, -math.inf
        open_today = None
        for idx in range(max(0, from_minute - first), len(candles)):
            o, h, lo, c, vw, v, n = candles[idx]
            v24 += v
            pv24 += vw * v
            n24 += n
            lo24 = lo if lo < lo24 else lo24
            hi24 = h if h > hi24 else hi24
            if first + idx >= midnight_minute:
                if open_today is None:
                    open_today = o
                vt += v
                pvt += vw * v
                nt += n
                lot = lo if lo < lot else lot
                hit = h if h > hit else hit
        return (v24, pv24, n24, lo24, hi24), (vt, pvt, nt, lot, hit), open_today


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


class Market:
    """All pairs' PairMarkets, created lazily (the history of a pair is built on first use)."""

    def __init__(self, seed: int, clock: Clock, pairs: dict[str, PairSpec] | None = None) -> None:
        self.seed = seed
        self.clock = clock
        self.specs = dict(pairs or PAIRS)
        self._pairs: dict[str, PairMarket] = {}

    def pair(self, key: str) -> PairMarket:
        """The pair's market, brought to now (`key` may also be an altname such as "XBTUSD")."""
        pm = self._pairs.get(key)
        if pm is None and key not in self.specs:
            spec = resolve_pair(key)
            if spec is None or spec.key not in self.specs:
                raise KeyError(key)
            key = spec.key
            pm = self._pairs.get(key)
        if pm is None:
            pm = PairMarket(self.specs[key], self.seed, self.clock.now())
            self._pairs[key] = pm
        now = self.clock.now()
        pm.advance(now)
        return pm

    def loaded(self) -> dict[str, PairMarket]:
        return self._pairs

    def advance_loaded(self) -> None:
        now = self.clock.now()
        for pm in self._pairs.values():
            pm.advance(now)
