"""Volatility regimes: features by hand, naming rules on constructed centroids (against a brute force), no look-ahead,
k sweep on separated blobs, per-regime accuracy with Wilson intervals by hand."""
from itertools import permutations

import numpy as np
import pandas as pd
import pytest

from volnb.core import compose_config
from volnb.regimes import (PAPER_TABLE2, REGIMES, feature_roles, fit_assign, fit_regimes, k_sweep, map_clusters,
                           market_state_features, preferred_k, regime_accuracy, regime_axes, regime_frequencies,
                           regime_scores, regime_table, regime_windows, span_rows, table2)

T = pd.Timestamp
W = {"returns": (3, 9), "rv": (3, 9), "volume_change": (3,), "volume_mean": 9, "beta": 9, "cross_rv": 3, "rsi": 4}
Z95 = 1.959963984540054


def bars(closes, token, start="2021-01-01", volume=None):
    c = np.asarray(closes, float)
    o = np.r_[c[0], c[:-1]]
    return pd.DataFrame({"token": token, "timestamp": pd.date_range(start, periods=len(c), freq="h"), "open": o,
                         "high": np.maximum(o, c), "low": np.minimum(o, c), "close": c,
                         "volume": np.ones(len(c)) if volume is None else np.asarray(volume, float), "filled": False})


def market(seed=0, days=30, tokens=("BTC", "AAA")):
    """Daily spells of calm, busy, crash and rally hours for BTC and a token that follows it."""
    rng = np.random.default_rng(seed)
    n = 24 * days
    spell = np.repeat(rng.integers(0, 4, days + 1), 24)[:n]
    sd = np.array([0.003, 0.015, 0.02, 0.02])[spell]
    mu = np.array([0.0, 0.0, -0.006, 0.006])[spell]
    common = rng.standard_normal(n)
    out = []
    for i, t in enumerate(tokens):
        r = mu + sd * (0.6 * common + 0.8 * rng.standard_normal(n)) * (1 + 0.3 * i)
        out.append(bars(100 * np.exp(np.cumsum(r)), t, volume=np.exp(rng.normal(0, 0.3, n)) * (1 + 5 * sd / 0.02)))
    return pd.concat(out, ignore_index=True)


def alter_after(panel, after, seed=1):
    p = panel.copy()
    late = (p.timestamp > after).to_numpy()
    rng = np.random.default_rng(seed)
    f = np.exp(np.cumsum(rng.normal(0, 0.05, late.sum())))
    for c in ("open", "high", "low", "close"): p.loc[late, c] = p.loc[late, c] * f
    p.loc[late, "high"] = p.loc[late, ["open", "high", "low", "close"]].max(axis=1)
    p.loc[late, "low"] = p.loc[late, ["open", "high", "low", "close"]].min(axis=1)
    p.loc[late, "volume"] = p.loc[late, "volume"] * rng.uniform(0.1, 10, late.sum())
    return p


# ---------------------------------------------------------------- features

def test_features_of_steady_growth_by_hand():
    # 2 % a hour: rv_k = sqrt(k) ln 1.02, so the per-hour log vol is ln ln 1.02 at 3 and 9 hours; ret_k / rv_k = sqrt(k)
    lb = np.cumsum(np.r_[0, np.random.default_rng(3).normal(0, 0.01, 24)])
    panel = pd.concat([bars(100 * np.exp(lb), "BTC"), bars(10 * 1.02 ** np.arange(25), "UP"),
                       bars(5 * np.exp(-3 * lb), "INV")], ignore_index=True)
    x = market_state_features(panel, W)
    assert list(x.columns) == ["log_rv_3h", "log_rv_9h", "log_pk_3h", "log_pk_9h", "rv_trend_3h_9h", "pk_trend_3h_9h",
                               "ret_3h", "ret_9h", "ret_rv_3h", "ret_rv_9h", "rsi_4h", "abs_ret_rv_3h", "abs_ret_rv_9h",
                               "log_volume_rel_9h", "volume_lchg_3h", "btc_corr_9h", "btc_beta_9h", "log_btc_rv_3h"]
    up = x[panel.token.eq("UP").to_numpy()].iloc[-1]
    assert up[["log_rv_3h", "log_rv_9h"]].to_numpy() == pytest.approx(np.log(np.log(1.02)), abs=1e-6)
    assert up["rv_trend_3h_9h"] == pytest.approx(0, abs=1e-6)
    assert up[["ret_3h", "ret_9h"]].to_numpy() == pytest.approx([3 * np.log(1.02), 9 * np.log(1.02)], rel=1e-6)
    assert up[["ret_rv_3h", "ret_rv_9h", "abs_ret_rv_9h"]].to_numpy() == pytest.approx(np.sqrt([3, 9, 9]), rel=1e-5)
    assert up["rsi_4h"] == pytest.approx(100)
    # bar range = |close - open| here: Parkinson = ln(1.02) / sqrt(4 ln 2) per hour
    assert up["log_pk_3h"] == pytest.approx(np.log(np.log(1.02) / np.sqrt(4 * np.log(2))), abs=1e-6)
    assert np.isnan(up["btc_corr_9h"])                      # constant returns: correlation undefined
    assert up["log_btc_rv_3h"] == pytest.approx(np.log(np.sqrt(np.sum(np.diff(lb)[-3:] ** 2) / 3)), abs=1e-5)
    inv = x[panel.token.eq("INV").to_numpy()].iloc[-1]
    assert inv[["btc_corr_9h", "btc_beta_9h"]].to_numpy() == pytest.approx([-1, -3], abs=1e-4)
    assert x["log_rv_9h"].isna().to_numpy()[:9].all() and x["log_rv_9h"].notna().to_numpy()[9:25].all()


def test_flat_hours_are_floored_not_infinite():
    x = market_state_features(bars(np.full(20, 7.0), "BTC", volume=np.r_[np.ones(19), 0.0]), W)
    last = x.iloc[-1]
    assert last["log_rv_3h"] == pytest.approx(np.log(1e-5)) and last["ret_rv_3h"] == 0.0
    assert last["log_volume_rel_9h"] == pytest.approx(np.log(0.01))        # no trades in the last hour
    assert np.isfinite(x.iloc[10:].drop(columns=["btc_corr_9h", "btc_beta_9h"]).to_numpy()).all()


def test_windows_are_checked():
    assert len(feature_roles()) == 26
    with pytest.raises(ValueError, match="two rv windows"): regime_windows({"rv": (24,), "returns": (24,)})
    with pytest.raises(ValueError, match=r"returns window\(s\) \[12\]"): regime_windows({"returns": (4, 12)})
    with pytest.raises(ValueError, match="unknown window 'macd'"): regime_windows({"macd": 12})


def test_span_rows_are_inclusive_days():
    t = pd.to_datetime(["2021-03-31 23:00", "2021-04-01 00:00", "2021-11-30 23:00", "2021-12-01 00:00"])
    assert span_rows(t, ["2021-04-01", "2021-11-30"]).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="midnight"): span_rows(t, ["2021-04-01 06:00", "2021-11-30"])
    with pytest.raises(ValueError, match="ends before it starts"): span_rows(t, ["2021-04-02", "2021-04-01"])


# ---------------------------------------------------------------- naming rules

ROLES5 = {"v": "vol_level", "d": "vol_trend", "m": "momentum", "t": "trend_strength", "u": "volume"}


def centroids(rows):
    return pd.DataFrame(rows, columns=["v", "d", "m", "t", "u"])


def brute_force(scores):
    """The best one-to-one naming by enumerating every assignment of regimes to k >= 6 clusters."""
    S = scores.to_numpy()
    k, r = S.shape
    best, arg = -np.inf, None
    for p in permutations(range(k), r):             # p[j] = the cluster that gets regime j
        v = S[list(p), range(r)].sum()
        if v > best + 1e-12: best, arg = v, p
    return {scores.index[c]: scores.columns[j] for j, c in enumerate(arg)}, best


def test_constructed_centroids_get_the_regimes_they_were_built_as():
    # vol, vol trend, momentum, trend strength, volume (standardised units)
    c = centroids([[0.2, 0.1, 0.0, -1.5, 0.0],   # sideways, ordinary volatility -> range-bound
                   [2.5, 1.0, 2.0, 1.0, 1.0],    # very high volatility, strong rise -> euphoria
                   [-1.2, 0.0, 0.4, 0.8, 0.0],   # calm, directional -> low volatility trending
                   [0.0, 2.0, 0.0, 0.0, 0.0],    # volatility changing fast, no direction -> transition
                   [2.5, 1.0, -2.0, 1.0, 1.0],   # very high volatility, strong fall -> capitulation
                   [1.2, 0.0, 0.3, 0.8, 0.0]])   # busy, directional -> high volatility trending
    s = regime_scores(regime_axes(c, ROLES5))
    # by hand, the euphoria cluster: R = |2| + 1 = 3; scores R - V, R + V, -R, V - 2M, V + 2M, |D|
    assert s.loc[1].tolist() == pytest.approx([0.5, 5.5, -3.0, -1.5, 6.5, 1.0])
    assert s.loc[0].tolist() == pytest.approx([-1.7, -1.3, 1.5, 0.2, 0.2, 0.1])   # R = 0 + (-1.5)
    got = map_clusters(s)
    assert got.tolist() == ["range_bound", "euphoria", "low_vol_trending", "transition", "capitulation", "high_vol_trending"]
    assert brute_force(s)[0] == got.to_dict()
    # the order of the clusters does not matter
    perm = [3, 5, 0, 4, 1, 2]
    assert map_clusters(s.iloc[perm]).to_dict() == got.to_dict()


def test_assignment_is_one_to_one_where_argmax_collides():
    # two crash clusters both score best on capitulation; the assignment names the stronger one capitulation and the
    # other high-volatility trending (6 + 3.5 > 5 + 4)
    c = centroids([[2, 1, -2, 1, 0], [2, 1, 2, 1, 0], [3, 0, -0.5, 0, 0], [-1, 0, 0.2, 1, 0], [0, 0, 0, -1, 0],
                   [0, 1.5, 0, 0, 0]])
    s = regime_scores(regime_axes(c, ROLES5))
    assert s.idxmax(axis=1)[[0, 2]].tolist() == ["capitulation", "capitulation"]
    got = map_clusters(s)
    assert got[[0, 2]].tolist() == ["capitulation", "high_vol_trending"]
    assert got.is_unique and sorted(got) == sorted(REGIMES)


@pytest.mark.parametrize("k", [6, 7])
def test_assignment_matches_brute_force_on_random_scores(k):
    rng = np.random.default_rng(k)
    for _ in range(5):
        s = pd.DataFrame(rng.normal(size=(k, 6)), columns=list(REGIMES))
        got = map_clusters(s)
        want, best = brute_force(s)
        assert {c: r for c, r in got.items() if c in want} == want
        assert sum(s.loc[c, r] for c, r in want.items()) == pytest.approx(best)
        left = [c for c in s.index if c not in want]            # k = 7: the one left out takes its best regime
        assert all(got[c] == s.loc[c].idxmax() for c in left)


def test_naming_errors():
    c = centroids([[0, 0, 0, 0, 0]] * 2)
    with pytest.raises(ValueError, match="no feature has role 'momentum'"):
        regime_axes(c.drop(columns="m"), ROLES5)
    with pytest.raises(ValueError, match="have no role"):
        regime_axes(c.assign(z=1.0), ROLES5)
    with pytest.raises(ValueError, match="finite"):
        regime_scores(regime_axes(c.assign(v=[0, np.nan]), ROLES5))


# ---------------------------------------------------------------- fitting, no look-ahead

FIT = ["2021-01-01", "2021-01-15"]


def test_fitted_on_the_fitting_span_only():
    panel = market()
    model, X, assigned = fit_assign(panel, FIT, W, k=4, n_init=3)
    fit = span_rows(panel.timestamp, FIT) & X.notna().all(axis=1).to_numpy()
    assert model.n_fit == fit.sum()
    assert model.scaler.mean_ == pytest.approx(X[fit].mean().to_numpy())
    assert sorted(model.regimes) == sorted(set(model.regimes)) and len(model.regimes) == 4
    assert ((assigned.cluster == -1) == X.isna().any(axis=1)).all()
    assert assigned.regime.isna().eq(assigned.cluster == -1).all()
    # a fitting-span hour's cluster is its k-means label
    assert (assigned.cluster.to_numpy()[fit] == model.kmeans.labels_).all()


@pytest.mark.parametrize("after", ["2021-01-21 13:00", "2021-01-28 00:00"])
def test_no_look_ahead(after):
    panel = market()
    m1, _, a1 = fit_assign(panel, FIT, W, k=4, n_init=3)
    m2, _, a2 = fit_assign(alter_after(panel, T(after)), FIT, W, k=4, n_init=3)
    assert np.array_equal(m1.kmeans.cluster_centers_, m2.kmeans.cluster_centers_)
    upto = (a1.timestamp <= T(after)).to_numpy()
    pd.testing.assert_frame_equal(a1[upto], a2[upto])
    assert (a1.cluster[~upto] != a2.cluster[~upto]).any()      # the alteration is visible after `after`


def test_altering_the_fitting_span_changes_the_model():
    panel = market()
    m1, _, _ = fit_assign(panel, FIT, W, k=4, n_init=3)
    m2, _, _ = fit_assign(alter_after(panel, T("2021-01-08")), FIT, W, k=4, n_init=3)
    assert not np.allclose(m1.kmeans.cluster_centers_, m2.kmeans.cluster_centers_)


def test_fit_errors():
    panel = market(days=10)
    X = market_state_features(panel, W)
    rows = span_rows(panel.timestamp, ["2021-01-01", "2021-01-01"])
    with pytest.raises(ValueError, match="too few for k = 6"):
        fit_regimes(X, rows, k=6, roles=feature_roles(W))
    with pytest.raises(ValueError, match="are not the roles' features"):
        fit_regimes(X.iloc[:, 1:], np.ones(len(X), bool), roles=feature_roles(W))
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        fit_regimes(X, np.ones(len(X), bool), k=1, roles=feature_roles(W))


# ---------------------------------------------------------------- frequencies, sweep

def test_frequencies_by_hand():
    a = pd.DataFrame({"timestamp": pd.to_datetime(["2021-04-01 00:00", "2021-04-01 01:00", "2021-04-01 02:00",
                                                   "2021-04-02 00:00", "2021-04-03 05:00"]),
                      "regime": ["euphoria", "euphoria", "capitulation", None, "transition"]})
    f = regime_frequencies(a, {"train": ["2021-04-01", "2021-04-02"], "test": ["2021-04-03", "2021-04-03"]})
    assert list(f.index) == list(REGIMES)
    assert f.loc["euphoria", ["n_train", "freq_train"]].tolist() == pytest.approx([2, 2 / 3])
    assert f.loc["transition", ["n_test", "freq_test"]].tolist() == pytest.approx([1, 1.0])
    assert f["n_train"].sum() == 3 and f.loc["range_bound", "freq_train"] == 0


def test_k_sweep_finds_four_separated_blobs():
    rng = np.random.default_rng(1)
    Z = np.concatenate([rng.normal(c, 0.25, size=(200, 3)) for c in ((0, 0, 0), (5, 0, 0), (0, 5, 0), (0, 0, 5))])
    sw = k_sweep(Z, ks=[2, 3, 4, 5, 6], resamples=3, sample=800, eval_size=400, n_init=2, seed=0)
    assert sw.k.tolist() == [2, 3, 4, 5, 6]
    assert preferred_k(sw) == {"silhouette": 4, "stability": 4}
    s = sw.set_index("k")
    assert s.loc[4, "stability_ari"] == pytest.approx(1.0) and s.loc[4, "silhouette"] > 0.8
    assert (s.inertia_per_row.diff().dropna() < 0).all()          # more clusters, less within-cluster spread
    with pytest.raises(ValueError, match="2 resamples"): k_sweep(Z, resamples=1)
    with pytest.raises(ValueError, match="finite"): k_sweep(np.r_[Z, [[np.nan] * 3]])


# ---------------------------------------------------------------- Table 2

def frames():
    ts = pd.date_range("2022-01-01", periods=8, freq="h")
    fc = pd.DataFrame({"token": ["A"] * 4 + ["B"] * 4, "timestamp": list(ts[:4]) * 2,
                       "block": 0, "dir_1h": [1, 0, 1, 1, 0, 0, 1, np.nan],
                       "transformer_dir_1h": [0.9, 0.2, 0.4, 0.6, 0.7, 0.1, 0.51, 0.9],
                       "logit_dir_1h": [0.6, 0.6, 0.6, 0.6, np.nan, 0.4, 0.6, 0.6]})
    rg = pd.DataFrame({"token": ["A"] * 4 + ["B"] * 4, "timestamp": list(ts[:4]) * 2, "cluster": 0,
                       "regime": ["euphoria", "euphoria", "capitulation", None, "euphoria", "capitulation",
                                  "capitulation", "euphoria"]})
    return fc, rg


def test_regime_accuracy_by_hand():
    fc, rg = frames()
    acc = regime_accuracy(fc, rg, ["transformer", "logit"]).set_index(["regime", "model"])
    # euphoria: (A,0) y1 p.9 hit, (A,1) y0 p.2 hit, (B,0) y0 p.7 miss, (B,3) y NaN out -> 2 of 3
    assert acc.loc[("euphoria", "transformer"), ["n", "hits"]].tolist() == [3, 2]
    # capitulation: (A,2) y1 p.4 miss, (B,1) y0 p.1 hit, (B,2) y1 p.51 hit -> 2 of 3
    assert acc.loc[("capitulation", "transformer"), ["n", "hits"]].tolist() == [3, 2]
    # (A,3) has no regime: not counted anywhere
    assert acc.loc[("all", "transformer"), ["n", "hits"]].tolist() == [6, 4]
    # logit: (B,0) has no forecast; euphoria (A,0) hit, (A,1) miss; capitulation (A,2) hit, (B,1) hit, (B,2) hit
    assert acc.loc[("euphoria", "logit"), ["n", "hits"]].tolist() == [2, 1]
    assert acc.loc[("all", "logit"), ["n", "hits", "accuracy"]].tolist() == pytest.approx([5, 4, 0.8])
    p, n = 0.8, 5
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    want = (np.array([p + Z95**2 / (2 * n) - half, p + Z95**2 / (2 * n) + half]) / (1 + Z95**2 / n))
    assert acc.loc[("all", "logit"), ["lo", "hi"]].to_numpy(float) == pytest.approx(want, abs=1e-9)
    assert acc.loc[("range_bound", "logit"), "n"] == 0 and np.isnan(acc.loc[("range_bound", "logit"), "accuracy"])


def test_regime_accuracy_errors():
    fc, rg = frames()
    with pytest.raises(ValueError, match="lstm_dir_1h"): regime_accuracy(fc, rg, ["lstm"])
    with pytest.raises(ValueError, match="repeated"): regime_accuracy(fc, pd.concat([rg, rg.iloc[:1]]), ["logit"])
    with pytest.raises(ValueError, match="0 or 1"): regime_accuracy(fc.assign(dir_1h=0.5), rg, ["logit"])
    with pytest.raises(ValueError, match="dir_4h"): regime_accuracy(fc, rg, ["logit"], horizon=4)


def test_table2_layout_beside_the_paper():
    fc, rg = frames()
    freq = regime_frequencies(rg, {"test": ["2022-01-01", "2022-01-01"]})
    t = table2(regime_accuracy(fc, rg, ["transformer", "logit"]), freq).set_index("regime")
    assert list(t.index) == [*REGIMES, "all"]
    assert t.loc["euphoria", ["frequency", "transformer_n", "logit_accuracy"]].tolist() == pytest.approx([4 / 7, 3, 0.5])
    assert t.loc["euphoria", ["paper_frequency", "paper_transformer", "paper_lstm", "paper_garch"]].tolist() == \
        pytest.approx([0.068, 0.746, 0.603, 0.498])
    assert t.loc["all", "paper_transformer"] == pytest.approx(0.684)
    assert PAPER_TABLE2.paper_frequency[:6].sum() == pytest.approx(1.0)


def test_regime_table_rows():
    panel = market()
    model, X, assigned = fit_assign(panel, FIT, W, k=4, n_init=3)
    t = regime_table(model, X, assigned, {"train": FIT, "test": ["2021-01-16", "2021-01-30"]}, FIT)
    assert len(t) == 4 and t.cluster.is_unique
    assert t.fit_hours.sum() == model.n_fit and t.freq_train.sum() == pytest.approx(1.0)
    order = [REGIMES.index(r) for r in t.regime]
    assert order == sorted(order)


# ---------------------------------------------------------------- config

def test_config_section():
    r = compose_config("experiment=multitoken").experiment.regimes
    assert r.k == len(REGIMES) and r.fit_span == "train"
    assert len(feature_roles(dict(r.windows))) == 26
    assert min(r.sweep.ks) >= 2 and r.k in r.sweep.ks
