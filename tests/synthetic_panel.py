"""A synthetic hourly panel for the multi-token model tests (test_panel_models, test_transfer): AR(1) log returns, so
the next hour's sign is predictable from the last, with the features and the one walk-forward block they use."""
import numpy as np
import pandas as pd

from volnb.panel_features import panel_features
from volnb.walkforward import Block


def synthetic_panel(hours=3000, tokens=("AAA", "BBB"), phi=-0.6, seed=0, start="2021-01-01", vol_growth=0.0):
    """Hourly bars whose log returns are AR(1) with coefficient `phi`; token k's shocks have standard deviation
    0.01 * (1 + vol_growth * k)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, tok in enumerate(tokens):
        e = rng.normal(0, 0.01 * (1 + vol_growth * k), hours)
        r = np.zeros(hours)
        for t in range(1, hours): r[t] = phi * r[t - 1] + e[t]
        c = 10.0 * (k + 1) * np.exp(np.cumsum(r))
        o = np.r_[c[0], c[:-1]]
        spread = np.abs(rng.normal(0, 0.003, hours))
        parts.append(pd.DataFrame({"token": tok, "timestamp": pd.date_range(start, periods=hours, freq="h"),
                                   "open": o, "high": np.maximum(o, c) * (1 + spread), "low": np.minimum(o, c) * (1 - spread),
                                   "close": c, "volume": rng.lognormal(10, 0.5, hours), "filled": False}))
    return pd.concat(parts, ignore_index=True)


def features(panel):
    "The causal features, without those a panel lacking BTC, ETH and the fear & greed index leaves empty."
    return panel_features(panel, btc=None, eth=None).dropna(axis=1, how="all")


def one_block(panel):
    "Train on the first 2,000 hours, validate on the next 400, test on the 600 after."
    t0 = panel.timestamp.min()
    return Block((None, t0 + pd.Timedelta(hours=2000)), (t0 + pd.Timedelta(hours=2000), t0 + pd.Timedelta(hours=2400)),
                 (t0 + pd.Timedelta(hours=2400), t0 + pd.Timedelta(hours=3000)))


def altered_after(panel, hours_into_test=200):
    "For the no-look-ahead tests: the hour T (into the test span of `one_block`) and a copy of `panel` whose every bar after T is changed."
    T = one_block(panel).test[0] + pd.Timedelta(hours=hours_into_test)
    later = panel.copy()
    after = later.timestamp > T
    for c in ("open", "high", "low", "close"): later.loc[after, c] *= 1.7
    later.loc[after, "volume"] *= 0.1
    return T, later
