"""APEX v7.1's entry gates and score (shared/strategy/APEX_V71.md), computed independently on OHLC rows, to check
that the embedded exchange's market actually produces entries and exits. Floats are fine here: it is a probe of
the market model, not the strategy NIJA trades with."""

from __future__ import annotations


def ema(values: list[float], n: int) -> list[float]:
    k = 2 / (n + 1)
    out = [values[0]]
    for v in values[1:]:
        out.append(out[-1] + k * (v - out[-1]))
    return out


def wilder(values: list[float], n: int) -> list[float]:
    out = [values[0]]
    for v in values[1:]:
        out.append(out[-1] + (v - out[-1]) / n)
    return out


def rsi(closes: list[float], n: int = 14) -> list[float]:
    gains = [0.0] + [max(0.0, b - a) for a, b in zip(closes, closes[1:])]
    losses = [0.0] + [max(0.0, a - b) for a, b in zip(closes, closes[1:])]
    ag, al = wilder(gains, n), wilder(losses, n)
    return [100.0 if l_ == 0 else 100 - 100 / (1 + g / l_) for g, l_ in zip(ag, al)]


def atr_adx(high: list[float], low: list[float], close: list[float], n: int = 14) -> tuple[list[float], list[float]]:
    tr, pdm, ndm = [high[0] - low[0]], [0.0], [0.0]
    for i in range(1, len(close)):
        tr.append(max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1])))
        up, down = high[i] - high[i - 1], low[i - 1] - low[i]
        pdm.append(up if up > down and up > 0 else 0.0)
        ndm.append(down if down > up and down > 0 else 0.0)
    atr = wilder(tr, n)
    pdi = [100 * p / a if a else 0.0 for p, a in zip(wilder(pdm, n), atr)]
    ndi = [100 * m / a if a else 0.0 for m, a in zip(wilder(ndm, n), atr)]
    dx = [100 * abs(p - m) / (p + m) if p + m else 0.0 for p, m in zip(pdi, ndi)]
    return atr, wilder(dx, n)


def entry_signal(rows: list[list], spread_frac: float) -> tuple[bool, int]:
    """(gates pass and score >= 4, score) on the last of `rows` (100 closed candles)."""
    o = [float(r[1]) for r in rows]
    h = [float(r[2]) for r in rows]
    lo = [float(r[3]) for r in rows]
    c = [float(r[4]) for r in rows]
    v = [float(r[6]) for r in rows]
    typical = [(a + b + d) / 3 for a, b, d in zip(h, lo, c)]
    vwap = sum(t * x for t, x in zip(typical, v)) / sum(v)
    e9, e21, e50 = ema(c, 9), ema(c, 21), ema(c, 50)
    macd = [a - b for a, b in zip(ema(c, 12), ema(c, 26))]
    hist = [m - s for m, s in zip(macd, ema(macd, 9))]
    r = rsi(c)
    atr, adx = atr_adx(h, lo, c)
    vavg = sum(v[-21:-1]) / 20
    adx_ok = adx[-1] >= 20
    vol_ok = v[-1] >= 0.5 * vavg
    gates = adx_ok and vol_ok and atr[-1] / c[-1] >= 0.006 and 35 <= r[-1] <= 65 and spread_frac <= 0.0015
    trend = sum([c[-1] > vwap, e9[-1] > e21[-1] > e50[-1], hist[-1] > 0, adx_ok, vol_ok])
    body, prev_body = c[-1] - o[-1], c[-2] - o[-2]
    engulfing = prev_body < 0 < body and c[-1] >= o[-2] and o[-1] <= c[-2]
    lower_wick, upper_wick = min(o[-1], c[-1]) - lo[-1], h[-1] - max(o[-1], c[-1])
    hammer = abs(body) > 0 and lower_wick >= 2 * abs(body) and upper_wick <= abs(body)
    score = sum([abs(c[-1] - e21[-1]) / e21[-1] <= 0.02 or abs(c[-1] - vwap) / vwap <= 0.02,
                 r[-1] > r[-2], engulfing or hammer, hist[-1] > hist[-2], v[-1] >= 0.6 * (v[-2] + v[-3]) / 2])
    return gates and trend >= 3 and score >= 4, score
