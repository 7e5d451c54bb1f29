"""Walk-forward blocks, volatility and direction baselines, metrics: hand-checked values, no look-ahead, chance level."""
import numpy as np
import pandas as pd
import pytest
from arch import arch_model
from arch.univariate import GARCH, Normal, ZeroMean
from sklearn.metrics import brier_score_loss, log_loss

from volnb.core import compose_config, project_root
from volnb.panel_features import panel_targets
from volnb.walkforward import (Block, baseline_metrics, blocks_from_config, direction_audit, direction_forecasts,
                               direction_tests, evaluate_direction, evaluate_volatility, hourly_losses, model_returns,
                               newey_west_dm, pesaran_timmermann, usable_rows, volatility_forecasts, volatility_tests,
                               walk_forward, walk_forward_blocks)

T = pd.Timestamp
PANEL_CSV = project_root() / "data/binance_spot_usdt_1h_116tokens_2021-2023.csv.gz"


def bars(closes, token="AAA", start="2021-01-01", filled=None, drop=()):
    c = np.asarray(closes, float)
    o = np.r_[c[0], c[:-1]]
    df = pd.DataFrame({"token": token, "timestamp": pd.date_range(start, periods=len(c), freq="h"), "open": o,
                       "high": np.maximum(o, c), "low": np.minimum(o, c), "close": c, "volume": 1.0,
                       "filled": False if filled is None else filled})
    return df.drop(index=list(drop)).reset_index(drop=True)


def garch_bars(hours, seed, token="AAA", start="2021-01-01"):
    m = ZeroMean(volatility=GARCH(), distribution=Normal(seed=np.random.default_rng(seed)))
    x = m.simulate([0.02, 0.1, 0.85], hours, burn=500)["data"].to_numpy()
    return bars(100 * np.exp(np.r_[0, np.cumsum(x[1:] / 100)]), token, start)


# ---------------------------------------------------------------- blocks

def test_quarterly_blocks_of_2022_by_hand():
    b = walk_forward_blocks("2022-01-01", "2022-12-31", 3, train_start="2021-04-01")
    assert [x.test for x in b] == [(T("2022-01-01"), T("2022-04-01")), (T("2022-04-01"), T("2022-07-01")),
                                   (T("2022-07-01"), T("2022-10-01")), (T("2022-10-01"), T("2023-01-01"))]
    assert [x.validation for x in b] == [(T("2021-12-01"), T("2022-01-01")), (T("2022-03-01"), T("2022-04-01")),
                                         (T("2022-06-01"), T("2022-07-01")), (T("2022-09-01"), T("2022-10-01"))]
    assert [x.train for x in b] == [(T("2021-04-01"), v[0]) for v in (x.validation for x in b)]
    for x in b:   # train < validation < test, touching, no overlap
        assert x.train[1] == x.validation[0] and x.validation[1] == x.test[0] == x.fit_end
    assert all(a.test[1] == c.test[0] for a, c in zip(b, b[1:]))


def test_blocks_tile_a_ragged_span_and_two_validation_months():
    b = walk_forward_blocks("2022-01-01", "2022-08-15", 3, validation_months=2)
    assert [x.test for x in b] == [(T("2022-01-01"), T("2022-04-01")), (T("2022-04-01"), T("2022-07-01")),
                                   (T("2022-07-01"), T("2022-08-16"))]
    assert b[0].validation == (T("2021-11-01"), T("2022-01-01")) and b[0].train == (None, T("2021-11-01"))
    assert len(walk_forward_blocks("2022-01-01", "2022-01-01", 1)) == 1


@pytest.mark.parametrize("args, kw, err, msg", [
    (("2022-01-01", "2021-12-31", 3), {}, ValueError, "before test_start"),
    (("2022-01-01", "2022-12-31", 0), {}, ValueError, "at least 1"),
    (("2022-01-01", "2022-12-31", 2.0), {}, TypeError, "integer"),
    (("2022-01-01", "2022-12-31", 3), {"validation_months": -1}, ValueError, "validation_months"),
    (("2022-01-01 05:00", "2022-12-31", 3), {}, ValueError, "test_start must be a day"),
    (("not a date", "2022-12-31", 3), {}, ValueError, "test_start is not a date"),
    (("2022-01-01", "2022-12-31", 3), {"train_start": "2021-12-01"}, ValueError, "no training hours"),
])
def test_blocks_bad_input(args, kw, err, msg):
    with pytest.raises(err, match=msg): walk_forward_blocks(*args, **kw)


def test_blocks_from_config_match_the_split():
    b = blocks_from_config(compose_config("experiment=multitoken").experiment)
    assert len(b) == 8 and b[0].train == (T("2021-04-01"), T("2021-12-01")) and b[-1].test[1] == T("2024-01-01")
    bad = {"split": {"train": ["2021-04-01", "2021-10-31"], "validation": ["2021-11-01", "2021-12-31"],
                     "test": ["2022-01-01", "2022-12-31"]}, "walk_forward": {"retrain_every_months": 3}}
    with pytest.raises(ValueError, match="split.validation"): blocks_from_config(bad)


def test_usable_rows_purge_targets_that_read_the_test_block():
    t = pd.date_range("2021-12-31 20:00", periods=6, freq="h")
    assert usable_rows(t, None, T("2022-01-01"), 3).tolist() == [True, False, False, False, False, False]
    assert usable_rows(t, T("2021-12-31 21:00"), T("2022-01-01"), 0).tolist() == [False, True, True, True, False, False]


# ---------------------------------------------------------------- metrics

def test_evaluate_volatility_by_hand():
    m = evaluate_volatility([1, 2, 4, np.nan, 0], [2, 2, 2, 1, 1])
    assert m["n"] == 3
    assert m["mape"] == pytest.approx(0.5)
    assert m["qlike"] == pytest.approx(0.75)                     # (1/4 + ln4 - 1 + 0 + 4 - ln4 - 1) / 3
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert evaluate_volatility([2.0], [2.0]) == {"n": 1, "mape": 0.0, "qlike": 0.0, "rmse": 0.0}
    assert evaluate_volatility([1.0], [0.0])["qlike"] == np.inf
    with pytest.raises(ValueError, match=">= 0"): evaluate_volatility([1.0], [-1.0])
    with pytest.raises(ValueError, match="differ in length"): evaluate_volatility([1.0, 2.0], [1.0])


def test_evaluate_direction_by_hand_and_against_sklearn():
    y, p = [1, 0, 1, 0], [0.8, 0.4, 0.3, 0.5]
    d = evaluate_direction(y, p)
    assert d["n"] == 4 and d["accuracy"] == 0.75             # classes 1, 0, 0, 0 (0.5 is not up)
    assert d["brier"] == pytest.approx(0.235) == brier_score_loss(y, p)
    assert d["log_loss"] == pytest.approx(-np.log([0.8, 0.6, 0.3, 0.5]).mean())
    assert d["log_loss"] == pytest.approx(log_loss(y, p))
    assert evaluate_direction([1, 0, np.nan], [1.0, 1.0, 0.2])["log_loss"] == np.inf
    assert evaluate_direction([1, 1], [1.0, 1.0])["log_loss"] == 0.0
    with pytest.raises(ValueError, match="0 or 1"): evaluate_direction([1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"): evaluate_direction([1, 0], [0.5, -0.1])


# ---------------------------------------------------------------- models

def test_model_returns_holes_and_filled_hours():
    q = bars([100, 110, 110, 99, 100, 101], filled=[False, False, True, False, False, False], drop=[4])
    np.testing.assert_allclose(model_returns(q), [0, np.log(1.1), 0, np.log(0.9), 0], atol=1e-12)


def test_volatility_baselines_against_their_definitions():
    p = garch_bars(24 * 365, seed=0)
    blk = walk_forward_blocks("2021-12-01", "2021-12-31", 1)[0]
    vf = volatility_forecasts(p, blk, horizons=(1, 4))
    assert vf.index.equals(p.index[p.timestamp >= "2021-12-01"]) and vf.notna().all(axis=None)
    r = model_returns(p) * 100
    n = int((p.timestamp < blk.fit_end).sum())
    res = arch_model(r[:n], mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fit(disp="off")
    np.testing.assert_allclose(res.params, [0.02, 0.1, 0.85], atol=0.06)   # the simulated parameters
    w, a, b = res.params
    s2 = arch_model(r, mean="Zero", vol="GARCH", p=1, q=1, rescale=False).fix(res.params).conditional_volatility ** 2
    # 1 step: the recursion on the last known hour; 4 steps: sum of E[sigma2_{t+k}], k = 1..4 (persistence a + b)
    s1 = w + a * r[n + 10] ** 2 + b * s2[n + 10]
    var4 = sum(w * sum((a + b) ** j for j in range(k)) + (a + b) ** k * s1 for k in range(4))
    assert vf["garch_vol_1h"].iloc[10] == pytest.approx(np.sqrt(s1) / 100, rel=1e-9)
    assert vf["garch_vol_4h"].iloc[10] == pytest.approx(np.sqrt(var4) / 100, rel=1e-9)
    e = (r[0] / 100) ** 2
    for x in r[1:n + 11] / 100: e = 0.94 * e + 0.06 * x * x
    assert vf["ewma_vol_4h"].iloc[10] == pytest.approx(np.sqrt(4 * e), rel=1e-9)
    y = panel_targets(p, (4,))["vol_4h"]
    assert vf["ha_vol_4h"].iloc[0] == pytest.approx(y[p.timestamp + pd.Timedelta(hours=4) < blk.fit_end].mean(), rel=1e-6)
    assert (vf["har_vol_4h"] > 0).all()


def test_late_listing_gets_no_forecast_and_bad_models_are_named():
    p = pd.concat([garch_bars(24 * 60, 1, "OLD"), garch_bars(24 * 20, 2, "NEW", start="2021-02-10")], ignore_index=True)
    blk = walk_forward_blocks("2021-02-20", "2021-02-28", 1)[0]
    vf = volatility_forecasts(p, blk, horizons=(1,), models=("ewma",))
    tok = p.loc[vf.index, "token"]
    assert vf[tok == "OLD"].notna().all(axis=None) and vf[tok == "NEW"].isna().all(axis=None)
    with pytest.raises(ValueError, match="unknown volatility model"): volatility_forecasts(p, blk, models=("arima",))
    with pytest.raises(ValueError, match="unknown direction model"): direction_forecasts(p, blk, models=("coin",))


# ---------------------------------------------------------------- leakage, on real data

@pytest.fixture(scope="module")
def real():
    if not PANEL_CSV.exists(): pytest.skip("the Binance hourly panel is not there (dvc pull)")
    from volnb.panel import clean_panel, load_panel
    raw = load_panel(PANEL_CSV, tokens=["BTC", "ETH"], start="2021-04-01", end="2022-06-30 23:00")
    panel, _ = clean_panel(raw, compose_config("experiment=multitoken").experiment.cleaning, start="2021-04-01")
    return panel, walk_forward_blocks("2022-01-01", "2022-06-30", 3, train_start="2021-04-01")


def test_scrambling_the_future_changes_no_earlier_forecast(real):
    panel, blocks = real
    cut = T("2022-02-15 12:00")
    fc = walk_forward(panel, blocks, horizons=(1, 24))
    bumped = panel.copy()
    fut = bumped.timestamp > cut
    k = np.random.default_rng(0).uniform(0.5, 2.0, int(fut.sum()))
    for c in ("open", "high", "low", "close"): bumped.loc[fut, c] *= k
    fc2 = walk_forward(bumped, blocks, horizons=(1, 24))
    cols = [c for c in fc.columns if c.split("_")[0] in ("ha", "ewma", "garch", "har", "majority", "always", "logit")]
    assert len(cols) == 14
    past = fc.timestamp <= cut
    pd.testing.assert_frame_equal(fc.loc[past, cols], fc2.loc[past, cols], check_exact=True)
    assert (fc.loc[~past, "garch_vol_24h"] != fc2.loc[~past, "garch_vol_24h"]).any()   # the future did change
    # and the block fitted before the cut ignores everything after its start: its HA forecast is constant
    assert fc.loc[fc.block == 0].groupby("token")["ha_vol_24h"].nunique().eq(1).all()


def test_permuted_labels_score_at_chance_and_past_labels_are_found(real):
    panel, blocks = real
    y = panel_targets(panel, (1,))
    rng = np.random.default_rng(1)
    perm = y.groupby(panel.token)["dir_1h"].transform(lambda s: pd.Series(rng.permutation(s.to_numpy()), index=s.index))
    past = pd.Series((model_returns(panel) > 0).astype(float), index=panel.index)   # the bar just closed: 1[r_t > 0]
    for lab, check in ((perm, "chance"), (past, "found")):
        t = y.assign(dir_1h=lab)
        d = pd.concat([direction_forecasts(panel, b, (1,), targets=t) for b in blocks])
        for m in ("majority", "logit"):
            acc = evaluate_direction(t.loc[d.index, "dir_1h"], d[f"{m}_dir_1h"])
            # labels independent of the forecasts: each hour right with probability ~1/2, sd 0.5/sqrt(n); 4 sd
            if check == "chance": assert abs(acc["accuracy"] - 0.5) < 4 * 0.5 / np.sqrt(acc["n"]), (m, acc)
            elif m == "logit": assert acc["accuracy"] > 0.95, acc


def test_baseline_metrics_table_shape(real):
    panel, blocks = real
    fc = walk_forward(panel, blocks[:1], horizons=(4,), vol_models=("ha", "garch"), dir_models=("majority",))
    tab = baseline_metrics(fc, (4,))
    assert tab[["task", "horizon", "model"]].values.tolist() == [["volatility", "4h", "ha"], ["volatility", "4h", "garch"],
                                                                ["direction", "4h", "majority"]]
    assert tab.loc[1, "qlike"] < tab.loc[0, "qlike"]            # GARCH beats the historical average (clustering)
    by = baseline_metrics(fc, (4,), by="token")
    assert sorted(by.token.unique()) == ["BTC", "ETH"] and by.groupby("model")["n"].sum().tolist() == \
        tab.set_index("model").loc[sorted(tab.model), "n"].tolist()


# ---------------------------------------------------------------- tests of skill

def pt_by_hand(n11, n10, n01, n00):
    "PT statistic from the 2x2 counts (n_ab: a = outcome up, b = forecast up), the paper's formula written out."
    n = n11 + n10 + n01 + n00
    P, Py, Px = (n11 + n00) / n, (n11 + n10) / n, (n11 + n01) / n
    Ps = Py * Px + (1 - Py) * (1 - Px)
    vP = Ps * (1 - Ps) / n
    vPs = (2 * Py - 1) ** 2 * Px * (1 - Px) / n + (2 * Px - 1) ** 2 * Py * (1 - Py) / n + 4 * Py * Px * (1 - Py) * (1 - Px) / n ** 2
    return (P - Ps) / np.sqrt(vP - vPs), Ps


def test_pesaran_timmermann_by_hand():
    from scipy.stats import norm
    # 8 hours, 3+3 agree, 1+1 disagree: P = 3/4, P* = 1/2, V(P) - V(P*) = 1/32 - 1/256, S = 4 / sqrt(7)
    r = pesaran_timmermann([1, 1, 1, 1, 0, 0, 0, 0], [0.9, 0.6, 0.7, 0.2, 0.1, 0.3, 0.4, 0.8])
    assert r["n"] == 8 and r["accuracy"] == 0.75 and r["expected_accuracy"] == 0.5
    assert r["statistic"] == pytest.approx(4 / np.sqrt(7), rel=1e-12) and r["pvalue"] == pytest.approx(norm.sf(4 / np.sqrt(7)))
    # an unbalanced table: 5 up/up, 2 up/down, 1 down/up, 4 down/down (n = 12), NaN pairs dropped
    y = [1] * 7 + [0] * 5 + [np.nan]
    p = [0.8] * 5 + [0.2] * 2 + [0.7] + [0.1] * 4 + [0.9]
    r = pesaran_timmermann(y, p)
    s, ps = pt_by_hand(5, 2, 1, 4)
    assert r["n"] == 12 and r["accuracy"] == pytest.approx(9 / 12)
    assert r["up_share"] == pytest.approx(7 / 12) and r["forecast_up_share"] == pytest.approx(6 / 12)
    assert r["expected_accuracy"] == pytest.approx(ps) == pytest.approx(7 / 12 * 6 / 12 + 5 / 12 * 6 / 12)
    assert r["statistic"] == pytest.approx(s, rel=1e-12) and r["reason"] == ""
    assert pesaran_timmermann([1, 0], [0.5, 0.5])["forecast_up_share"] == 0.0     # 0.5 is not up


def test_pesaran_timmermann_constant_and_bad_input():
    r = pesaran_timmermann([1, 0, 1, 1], [1.0] * 4)
    assert r["accuracy"] == 0.75 and np.isnan(r["statistic"]) and np.isnan(r["pvalue"]) and r["reason"] == "constant forecast"
    assert pesaran_timmermann([1, 1, 1], [0.9, 0.1, 0.8])["reason"] == "constant outcome"
    assert pesaran_timmermann([np.nan], [0.5])["reason"] == "no pairs"
    with pytest.raises(ValueError, match="0 or 1"): pesaran_timmermann([1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"): pesaran_timmermann([1, 0], [0.5, 1.2])
    with pytest.raises(ValueError, match="differ in length"): pesaran_timmermann([1, 0], [0.5])


def test_pesaran_timmermann_null_and_alternative():
    rng = np.random.default_rng(0)
    y = (rng.random(20_000) < 0.48).astype(float)
    stats = [pesaran_timmermann(y, rng.random(20_000) * 0.8 + 0.15)["statistic"] for _ in range(20)]
    assert all(abs(s) < 4 for s in stats)                                 # independent: N(0, 1)
    assert abs(np.mean(stats)) < 4 / np.sqrt(20)
    p = np.where(rng.random(20_000) < 0.55, y, 1 - y) * 0.4 + 0.3         # right 55 % of the time
    r = pesaran_timmermann(y, p)
    assert r["statistic"] > 10 and r["pvalue"] < 1e-20


def test_pesaran_timmermann_against_statsmodels():
    diag = pytest.importorskip("statsmodels.stats.diagnostic")
    if not hasattr(diag, "pesaran_timmermann"): pytest.skip("this statsmodels has no pesaran_timmermann (added in 0.15)")
    rng = np.random.default_rng(1)
    y = (rng.random(5000) < 0.45).astype(float)
    p = np.where(rng.random(5000) < 0.53, y, 1 - y) * 0.5 + 0.3 * rng.random(5000)
    ours = pesaran_timmermann(y, p)
    sm = diag.pesaran_timmermann(y - 0.5, p - 0.5, alternative="larger")   # statsmodels classifies by > 0
    st = sm.res_store
    assert ours["accuracy"] == pytest.approx(st.p_hat) and ours["expected_accuracy"] == pytest.approx(st.p_ind)
    # statsmodels drops the paper's 4 Py Px (1-Py)(1-Px) / n^2 term: same statistic up to O(1/n)
    assert ours["statistic"] == pytest.approx(sm.statistic, rel=1e-3) and ours["statistic"] > sm.statistic
    assert ours["pvalue"] == pytest.approx(sm.pvalue, rel=1e-2)


def test_direction_tests_per_token_and_pooled():
    f = pd.DataFrame({"token": ["A"] * 8 + ["B"] * 4, "dir_1h": [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 1.0],
                      "m_dir_1h": [0.9, 0.6, 0.7, 0.2, 0.1, 0.3, 0.4, 0.8, 0.7, 0.7, 0.7, 0.7], "k_dir_1h": 1.0})
    t = direction_tests(f, (1,))
    assert t[["scope", "token", "model"]].values.tolist() == [
        ["pooled", "(pooled)", "m"], ["pooled", "(pooled)", "k"], ["token", "A", "m"], ["token", "A", "k"],
        ["token", "B", "m"], ["token", "B", "k"]]
    assert t.statistic[2] == pytest.approx(4 / np.sqrt(7))
    s, _ = pt_by_hand(n11=6, n10=1, n01=2, n00=3)                          # pooled: A's 3/1/1/3 and B's 3/0/1/0
    assert t.statistic[0] == pytest.approx(s) and t.n[0] == 12
    assert t.loc[t.model == "k", "reason"].eq("constant forecast").all() and t.reason[4] == "constant forecast"
    with pytest.raises(ValueError, match="dir_4h"): direction_tests(f, (4,))
    with pytest.raises(ValueError, match="'asset'"): direction_tests(f, (1,), by="asset")


def test_hourly_losses_by_hand():
    f = pd.DataFrame({"token": ["A", "B"] * 3, "timestamp": np.repeat(pd.date_range("2022-01-01", periods=3, freq="h"), 2),
                      "vol_1h": [0.01, 0.02, 0.03, 0.04, 0.05, 0.0]})
    f["a_vol_1h"], f["b_vol_1h"] = f.vol_1h, 2 * f.vol_1h
    f.loc[2, "b_vol_1h"] = np.nan                                            # row 2 has no b: left out for both models
    L = hourly_losses(f, 1, "mape")
    assert L.shape == (3, 2) and L["a"].tolist() == [0, 0, 0] and L["b"].tolist() == [1, 1, 1]
    q = hourly_losses(f, 1, "qlike")["b"]                                    # ratio 1/4: 1/4 + ln 4 - 1 on every row
    np.testing.assert_allclose(q, 0.25 + np.log(4) - 1)
    assert hourly_losses(f, 1, "mse")["b"].iloc[0] == pytest.approx((0.01 ** 2 + 0.02 ** 2) / 2)
    with pytest.raises(ValueError, match="unknown loss"): hourly_losses(f, 1, "mae")
    with pytest.raises(ValueError, match="at least two"): hourly_losses(f[["token", "timestamp", "vol_1h", "a_vol_1h"]], 1)
    with pytest.raises(ValueError, match=r"\['c'\]"): hourly_losses(f, 1, models=("a", "c"))


def test_newey_west_dm_against_hand_formula():
    rng = np.random.default_rng(2)
    d = np.convolve(rng.normal(0.1, 1, 3000), np.ones(3) / 3, mode="valid")  # MA(2): autocorrelated
    lags = 5
    e = d - d.mean()
    g = [e[k:] @ e[:len(e) - k] / len(e) for k in range(lags + 1)]
    lrv = g[0] + 2 * sum((1 - k / (lags + 1)) * g[k] for k in range(1, lags + 1))   # Bartlett weights
    stat, p = newey_west_dm(d, lags)
    assert stat == pytest.approx(d.mean() / np.sqrt(lrv / len(d)), rel=1e-10)
    from scipy.stats import norm
    assert p == pytest.approx(2 * norm.sf(abs(stat)), rel=1e-8)
    assert np.isnan(newey_west_dm(np.ones(10), 2)[0])


def test_volatility_tests_find_the_biased_model():
    rng = np.random.default_rng(0)
    n = 2000
    y = np.exp(rng.normal(-4, 0.5, n))
    e = rng.normal(0, 0.3, n)
    f = pd.DataFrame({"token": "A", "timestamp": pd.date_range("2022-01-01", periods=n, freq="h"), "vol_1h": y,
                      "a_vol_1h": y * np.exp(e), "b_vol_1h": y * np.exp(rng.normal(0.3, 0.3, n)), "c_vol_1h": y * np.exp(e[::-1])})
    t = volatility_tests(f, (1,), reps=300, block=24).set_index("model")
    assert list(t.columns) == ["horizon", "loss", "hours", "mean_loss", "best", "dm_stat", "dm_pvalue", "hac_lags",
                               "mcs_pvalue", "in_mcs"]
    best = t.best.iloc[0]
    assert best in ("a", "c") and np.isnan(t.loc[best, "dm_stat"]) and t.loc[best, "mcs_pvalue"] == 1.0
    other = {"a": "c", "c": "a"}[best]                                   # c's losses are a's permuted: a tie
    assert t.loc[other, "dm_stat"] == pytest.approx(0, abs=1e-9) and t.loc[other, "in_mcs"]
    assert t.loc["b", "dm_stat"] > 5 and t.loc["b", "dm_pvalue"] < 1e-6 and not t.loc["b", "in_mcs"]
    assert t.hours.iloc[0] == n and t.hac_lags.iloc[0] == int(4 * (n / 100) ** (2 / 9))
    assert volatility_tests(f, (1,), reps=50, hac_lags=3).hac_lags.eq(3).all()


def test_direction_audit_on_hand_made_panel():
    p = pd.concat([bars([100, 101] * 6, "ALT"),
                   bars([100, 101, 102, 101, 101, 103, 100, 101, 102, 102], "MIX", filled=[False] * 4 + [True] + [False] * 5)],
                  ignore_index=True)
    f = p[["token", "timestamp"]].join(panel_targets(p, (1,)))
    f = f[f.timestamp >= "2021-01-01 02:00"].copy()
    f["logit_dir_1h"] = 0.7                                                    # always up
    f.loc[f.token.eq("ALT") & (np.arange(len(f)) < 3), "logit_dir_1h"] = np.nan  # a late start for ALT
    a = direction_audit(f, p).set_index("token")
    assert a.loc["ALT", ["reversal_hit", "flat_1h"]].tolist() == [1.0, 0.0] and a.loc["ALT", "reversal_n"] == 9
    assert a.loc["ALT", "ret_autocorr_1"] == pytest.approx(-1.0)
    # ALT forecasts from 05:00 (close 101): up is right at the even hours 06, 08, 10 (from 100) -> 3 of 6 labelled hours;
    # the rule says down after an up hour (05, 07, 09): the always-up forecast agrees with it at 06, 08, 10 only
    assert a.loc["ALT", "logit_acc_1h"] == pytest.approx(3 / 6)
    assert a.loc["ALT", "logit_agrees_reversal"] == pytest.approx(3 / 6)
    # MIX closes 100 101 102 101 [101 filled, forward fill] 103 100 101 102 102 (hours 0..9); test hours 02..09.
    # Last-hour returns valid (t-1 and t real): 02 +, 03 -, 06 -, 07 +, 08 +, 09 0; 04 and 05 touch the filled hour.
    # Forward returns (targets): 02 -, 03 NaN (reads the filled hour), 04 +, 05 -, 06 +, 07 +, 08 0, 09 NaN (no next).
    # Labelled hours 02, 04, 05, 06, 07, 08 (6), one flat (08). Rule where both are non-zero and valid:
    # 02 (+ then -: hit), 06 (- then +: hit), 07 (+ then +: miss) -> 2 of 3.
    tg = f.set_index(["token", "timestamp"]).loc["MIX", "fwd_ret_1h"].to_numpy()
    assert np.isnan(tg[[1, 7]]).all() and (np.sign(tg[[0, 2, 3, 4, 5, 6]]) == [-1, 1, -1, 1, 1, 0]).all()
    assert a.loc["MIX", "reversal_n"] == 3 and a.loc["MIX", "reversal_hit"] == pytest.approx(2 / 3)
    assert a.loc["MIX", "hours"] == 6 and a.loc["MIX", "flat_1h"] == pytest.approx(1 / 6)
    assert a.loc["MIX", "logit_acc_1h"] == pytest.approx(3 / 6)                # up at 04, 06, 07
    # lag-1 autocorrelation on the test hours t with r_{t-1} and r_t valid: t = 02, 03, 07, 08, 09
    lr = np.log
    r = {1: lr(101 / 100), 2: lr(102 / 101), 3: lr(101 / 102), 6: lr(100 / 103), 7: lr(101 / 100), 8: lr(102 / 101), 9: 0.0}
    pairs = np.array([(r[t - 1], r[t]) for t in (2, 3, 7, 8, 9)])
    assert a.loc["MIX", "ret_autocorr_1"] == pytest.approx(np.corrcoef(pairs.T)[0, 1])
    with pytest.raises(ValueError, match="fwd_ret_1h"): direction_audit(f.drop(columns="fwd_ret_1h"), p)


# ------------------------------------------------------------------------------------------------ strategy and groups
def test_long_flat_strategy_by_hand():
    from volnb.walkforward import sharpe_table, strategy_returns
    f = pd.DataFrame({"token": ["A"] * 3 + ["B"] * 3, "timestamp": list(pd.date_range("2022-01-01", periods=3, freq="h")) * 2,
                      "fwd_ret_1h": np.log([1.1, 0.9, 1.1, 1.02, 1.02, 0.95]), "m_dir_1h": [0.9, 0.1, 0.8, 0.6, 0.6, 0.4]})
    r = strategy_returns(f, "m", fee=0.01)
    # A: long (+10 % - fee), flat (- fee to leave), long (+10 % - fee); B: long (+2 % - fee), long (+2 %), flat (- fee)
    np.testing.assert_allclose(r.to_numpy(), [(0.09 + 0.01) / 2, (-0.01 + 0.02) / 2, (0.09 - 0.01) / 2], atol=1e-12)
    t = sharpe_table(f, ["m"], fee=0.01, periods_per_year=1)
    assert t.sharpe[0] == pytest.approx(r.mean() / r.std(ddof=1)) and t.long_share[0] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="fee must be"):
        strategy_returns(f, "m", fee=1.5)


def test_liquidity_buckets_are_known_at_each_block_start():
    "A token's bucket for a block uses dollar volume before that block's test start only."
    from volnb.walkforward import block_groups, grouped_accuracy
    hours = pd.date_range("2022-01-01", periods=24 * 120, freq="h")
    def tok(name, vol):
        return pd.DataFrame({"token": name, "timestamp": hours, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
                             "volume": vol, "filled": False})
    big_later = np.where(hours >= pd.Timestamp("2022-03-01"), 1e6, 1.0)      # A becomes liquid only in March
    panel = pd.concat([tok("A", big_later), tok("B", 100.0), tok("C", 10.0)], ignore_index=True)
    blocks = walk_forward_blocks("2022-03-01", "2022-04-30", 1, train_start=None)
    g = block_groups(panel, blocks, {"A": "x", "B": "y", "C": "y"})
    liq = g.set_index(["block", "token"])["liquidity"]
    assert liq[(0, "A")] == "low" and liq[(0, "B")] == "high"               # as of 2022-03-01: A's surge not yet seen
    assert liq[(1, "A")] == "high"                                           # as of 2022-04-01: it is
    fc = pd.DataFrame({"block": [0, 0, 1], "token": ["A", "B", "A"], "dir_1h": [1.0, 0.0, 1.0], "m_dir_1h": [0.9, 0.9, 0.1]})
    acc = grouped_accuracy(fc, g, "liquidity").set_index("liquidity")
    assert acc.loc["low", "accuracy"] == 1.0 and acc.loc["high", "accuracy"] == 0.0 and acc.loc["high", "n"] == 2
