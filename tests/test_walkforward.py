"""Walk-forward blocks, volatility and direction baselines, metrics: hand-checked values, no look-ahead, chance level."""
import numpy as np
import pandas as pd
import pytest
from arch import arch_model
from arch.univariate import GARCH, Normal, ZeroMean
from sklearn.metrics import brier_score_loss, log_loss

from volnb.core import compose_config, project_root
from volnb.panel_features import panel_targets
from volnb.walkforward import (Block, baseline_metrics, blocks_from_config, direction_forecasts, evaluate_direction,
                               evaluate_volatility, model_returns, usable_rows, volatility_forecasts, walk_forward,
                               walk_forward_blocks)

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
