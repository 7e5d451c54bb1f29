"""volnb.baselines: one-step-ahead classical variance forecasts, their causality, and the map to the target."""
import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import gamma as gamma_fn, hyp1f1

from omegaconf import OmegaConf

from volnb.baselines import (HAR_PARAMS, MODELS, Block, baseline_predictions, ewma_variance, fit_har,
                             forecast_variances, har_coefficients, har_design, har_fit_table, historical_variance,
                             parkinson_rv, refit_blocks, synthetic_garch_frame, synthetic_har_rv, variance_to_target)
from volnb.core import DataValidationError, compose_config
from volnb.metrics import PREDICTION_COLUMNS, validate_predictions

_CFG = compose_config("experiment=herremans")                  # the project's config: baselines=daily
EXP = _CFG.experiment


def make_cfg(**kw):
    "conf/baselines/daily.yaml as composed, with a short history (min_train_days=300) so the tests stay fast, and `kw`."
    cfg = OmegaConf.to_container(_CFG.baselines, resolve=True)
    cfg.update({"min_train_days": 300, **kw})
    return cfg


def ols_before_arch(rv, start=0, stop=None):
    "volnb.baselines.fit_har before it used arch (commit 27efcb5), kept as the reference: least squares on har_design."
    rv = np.asarray(rv, dtype=float)
    stop = rv.size if stop is None else stop
    X = har_design(rv[:stop])
    s = np.arange(max(start - 1, 21), stop - 1)
    return np.linalg.lstsq(X[s], rv[s + 1], rcond=None)[0], X[s], rv[s + 1]


@pytest.fixture(scope="module")
def syn():
    "A synthetic GARCH(1,1) daily market: 350 train returns, then 20 validation and 20 test days."
    return synthetic_garch_frame(n_train=350, n_validation=20, n_test=20, seed=7)


@pytest.fixture(scope="module")
def syn_fc(syn):
    return forecast_variances(syn, make_cfg())


# ---------------------------------------------------------------- variance -> target

def test_variance_to_target_closed_form_at_zero_return():
    for ann, p, sig in [(365, 0.25, 0.04), (252, 0.5, 0.01), (365, 1.0, 0.1)]:
        central = (ann / 2) ** (p / 2) * sig ** p * 2 ** (p / 2) * gamma_fn((p + 1) / 2) / np.sqrt(np.pi)
        assert variance_to_target(0.0, sig ** 2, ann, p) == pytest.approx(central, rel=1e-12)
    # p = 1: E|Z| = sigma sqrt(2/pi)
    assert variance_to_target(0.0, 0.01, 2, 1.0) == pytest.approx(0.1 * np.sqrt(2 / np.pi), rel=1e-12)
    # p = 2: E(r - Z)^2 = r^2 + sigma^2, exactly, for any r
    assert_allclose(variance_to_target([0.0, 0.03, -0.1], 4e-4, 2, 2.0), np.array([0, 9e-4, 1e-2]) + 4e-4, rtol=1e-12)


def test_variance_to_target_matches_monte_carlo():
    rng = np.random.default_rng(11)
    sig = 0.035
    z = rng.normal(0.0, sig, 1_000_000)                     # synthetic draws of r_{t+1}
    r_t = np.array([0.0, 0.01, -0.04, 0.12])
    mc = np.array([np.mean((np.sqrt(365) * np.abs(r - z) / np.sqrt(2)) ** 0.25) for r in r_t])
    assert_allclose(variance_to_target(r_t, sig ** 2), mc, rtol=1e-3)
    # Gauss-Hermite is only percent-accurate (the integrand has a cusp at Z = r_t), and is documented as such
    assert_allclose(variance_to_target(r_t, sig ** 2, method="quadrature", nodes=64), mc, rtol=3e-2)


def test_variance_to_target_limits_and_shapes():
    r = np.array([0.05, -0.02])
    known = (np.sqrt(365 / 2) * np.abs(r)) ** 0.25
    assert_allclose(variance_to_target(r, 0.0), known, rtol=1e-14)          # no uncertainty: the target is known
    assert_allclose(variance_to_target(r, 1e-16), known, rtol=1e-6)
    # noncentral moment through the Kummer function, at a random point
    r0, s = 0.03, 0.02
    expected = (365 / 2) ** 0.125 * s ** 0.25 * 2 ** 0.125 * gamma_fn(0.625) / np.sqrt(np.pi) * hyp1f1(-0.125, 0.5, -r0 ** 2 / (2 * s * s))
    assert variance_to_target(r0, s * s) == pytest.approx(expected, rel=1e-12)
    assert variance_to_target(np.zeros((4, 1)), np.full(3, 1e-3)).shape == (4, 3)
    assert np.all(np.diff(variance_to_target(0.01, np.linspace(1e-5, 1e-2, 50))) > 0)   # more variance, higher vol
    with pytest.raises(ValueError, match="negative"):
        variance_to_target(0.0, -1e-6)
    with pytest.raises(ValueError, match="unknown method"):
        variance_to_target(0.0, 1e-4, method="simpson")


# ---------------------------------------------------------------- filters and HAR

def test_ewma_recursion_by_hand():
    # f0 = r0^2 = 1; f1 = .5*1 + .5*4 = 2.5; f2 = .5*2.5 + 0 = 1.25; f3 = .5*1.25 + .5*1 = 1.125
    assert ewma_variance([1.0, -2.0, 0.0, 1.0], lam=0.5).tolist() == [1.0, 2.5, 1.25, 1.125]
    f = ewma_variance([0.1, 0.2, -0.3, 0.0], lam=0.94)
    assert f[3] == pytest.approx(0.94 * (0.94 * (0.94 * 0.01 + 0.06 * 0.04) + 0.06 * 0.09), rel=1e-14)
    with pytest.raises(ValueError):
        ewma_variance([0.1], lam=1.0)


def test_historical_variance_by_hand():
    r = [1.0, 2.0, 0.0, -1.0]                               # squares 1, 4, 0, 1
    assert historical_variance(r).tolist() == [1.0, 2.5, 5 / 3, 1.5]
    assert historical_variance(r, window=2).tolist() == [1.0, 2.5, 2.0, 0.5]


def test_parkinson_and_har_design():
    assert parkinson_rv([np.e], [1.0])[0] == pytest.approx(1 / (4 * np.log(2)))
    X = har_design(np.arange(40.0))
    assert np.isnan(X[:21]).all() and not np.isnan(X[21:]).any()
    assert X[30].tolist() == [1.0, 30.0, 28.0, 19.5]         # mean(26..30) = 28, mean(9..30) = 19.5


def test_har_ols_recovers_coefficients():
    beta = np.array([2e-5, 0.4, 0.3, 0.15])
    rv = synthetic_har_rv(20_000, beta=beta, shape=6.0, seed=3)
    est = har_coefficients(fit_har(rv))
    assert_allclose(est[1:], beta[1:], atol=0.04)
    assert est[0] == pytest.approx(beta[0], rel=0.3)
    # a fit on a sub-window uses only responses inside it
    assert_allclose(har_coefficients(fit_har(rv, 0, 10_000)), har_coefficients(fit_har(rv[:10_000])), rtol=1e-12)


@pytest.mark.parametrize("start, stop", [(0, 600), (0, 1500), (250, 1200), (10, 400)])
def test_har_arch_agrees_with_the_previous_ols_and_statsmodels(start, stop):
    """arch's HARX (lags 1, 5, 22) on the daily range variance gives the coefficients of the previous hand-written
    least squares, and statsmodels' OLS on the same pairs gives the same coefficients, White (HC0) standard errors
    and Gaussian log-likelihood."""
    sm = pytest.importorskip("statsmodels.api")
    syn = synthetic_garch_frame(n_train=1500, n_validation=0, n_test=0, seed=4)       # synthetic OHLC bars
    rv = parkinson_rv(syn.high, syn.low)[1:]
    res = fit_har(rv, start, stop)
    beta_old, X, y = ols_before_arch(rv, start, stop)
    assert res.nobs == len(y) == stop - max(start, 22)
    assert_allclose(har_coefficients(res), beta_old, rtol=1e-8, atol=1e-14)
    ref = sm.OLS(y, X).fit(cov_type="HC0")
    assert_allclose(har_coefficients(res), ref.params, rtol=1e-8, atol=1e-14)
    assert_allclose(res.std_err.to_numpy()[:4], ref.bse, rtol=1e-6)
    assert res.loglikelihood == pytest.approx(ref.llf, rel=1e-9)
    assert res.params["sigma2"] == pytest.approx(ref.ssr / ref.nobs, rel=1e-9)
    assert res.params.index.tolist() == ["Const", "y[0:1]", "y[0:5]", "y[0:22]", "sigma2"]
    with pytest.raises(ValueError, match="too few HAR"):
        fit_har(rv, 0, 29)


# ---------------------------------------------------------------- refit schedule

def test_refit_blocks_schedule():
    b = refit_blocks(n_history=500, n_forecast=23, refit_every=5, min_train_days=500)
    assert [x.origin for x in b] == [500, 505, 510, 515, 520]
    assert b[-1] == Block(0, 520, 523)
    assert all(x.origin - x.fit_start >= 500 for x in b)
    roll = refit_blocks(700, 9, 3, 500, window="rolling", rolling_days=600)
    assert [(x.fit_start, x.origin, x.stop) for x in roll] == [(100, 700, 703), (103, 703, 706), (106, 706, 709)]
    with pytest.raises(ValueError, match="min_train_days"):
        refit_blocks(499, 10, 5, 500)
    with pytest.raises(ValueError, match="rolling_days"):
        refit_blocks(700, 10, 5, 500, window="rolling", rolling_days=400)
    with pytest.raises(ValueError, match="refit_every"):
        refit_blocks(700, 10, 0, 500)


def test_fit_log_records_har_standard_errors_and_loglik(syn, syn_fc):
    log = syn_fc.fit_log
    assert list(log.columns) == ["model", "refit_date", "n_obs", "converged", "loglik", "params", "std_err", "warnings"]
    har = log[log.model == "har_rv"]
    assert np.isfinite(har.loglik).all() and all(set(p) == set(HAR_PARAMS) for p in har.params)
    # the last refit, recomputed: arch's HARX on the range variance of every return before the refit date
    rv = parkinson_rv(syn.high, syn.low)[1:]
    last = fit_har(rv, 0, 385)
    assert har.params.iloc[-1] == pytest.approx(dict(zip(HAR_PARAMS, last.params)), rel=1e-12)
    assert har.std_err.iloc[-1] == pytest.approx(dict(zip(HAR_PARAMS, last.std_err)), rel=1e-12)
    assert har.loglik.iloc[-1] == pytest.approx(last.loglikelihood, rel=1e-12)
    garch = log[log.model == "garch"]
    assert set(garch.std_err.iloc[0]) == {"omega", "alpha[1]", "beta[1]"}
    t = har_fit_table(log)
    assert t.columns.tolist() == ["refit_date", "n_obs", "b0", "b_d", "b_w", "b_m", "sigma2", "se_b0", "se_b_d",
                                  "se_b_w", "se_b_m", "se_sigma2", "loglik", "warnings"]
    assert len(t) == 8 and t.refit_date.tolist() == har.refit_date.tolist()
    assert t.b_d.iloc[-1] == pytest.approx(last.params["y[0:1]"], rel=1e-12)
    assert t.se_b_m.iloc[-1] == pytest.approx(last.std_err["y[0:22]"], rel=1e-12)
    with pytest.raises(ValueError, match="no har_rv"):
        har_fit_table(log[log.model != "har_rv"])


def test_every_setting_comes_from_the_config(syn):
    cfg = make_cfg(models=["historical_mean", "ewma"])               # a model's settings are read when it runs
    for key in ("models", "refit_every", "min_train_days", "window", "rolling_days", "historical_window", "ewma_lambda"):
        with pytest.raises(KeyError, match=key):
            forecast_variances(syn, {k: v for k, v in cfg.items() if k != key})
    fc = forecast_variances(syn, cfg)
    for key in ("target_map", "quadrature_nodes"):
        with pytest.raises(KeyError, match=key):
            baseline_predictions(syn, {k: v for k, v in cfg.items() if k != key}, EXP, forecasts=fc)
    # the composed config itself (an OmegaConf node) and its experiment node, or the whole config, work alike
    p = baseline_predictions(syn, _CFG.baselines.copy(), _CFG, forecasts=fc)
    assert_allclose(p.prediction, baseline_predictions(syn, cfg, EXP, forecasts=fc).prediction, rtol=1e-15)


def test_fit_log_honours_refit_every_and_min_train_days(syn, syn_fc):
    log = syn_fc.fit_log
    first = syn.index[syn.split == "validation"][0]
    assert sorted(log.model.unique()) == ["egarch", "garch", "gjr_garch", "har_rv"]
    for _, g in log.groupby("model"):
        dates = pd.DatetimeIndex(g.refit_date)
        assert dates[0] == first
        assert (np.diff(dates.asi8) == np.diff(dates.asi8)[0]).all()
        assert (dates[1:] - dates[:-1] == pd.Timedelta(days=5)).all() and len(dates) == 8
        assert g.n_obs.tolist() == list(range(350, 390, 5))    # expanding: every return before the refit date
    assert (log.n_obs >= 300).all()


def test_rolling_window_and_too_short_history(syn):
    fc = forecast_variances(syn, make_cfg(models=["garch", "har_rv"], window="rolling", rolling_days=320, refit_every=10))
    assert set(fc.fit_log.n_obs) == {320}
    assert pd.DatetimeIndex(fc.fit_log.refit_date).unique().size == 4
    with pytest.raises(ValueError, match="min_train_days"):
        forecast_variances(syn, make_cfg(min_train_days=351))
    assert len(forecast_variances(syn, make_cfg(models=["ewma"], min_train_days=350)).variance) == 40


# ---------------------------------------------------------------- no look-ahead

@pytest.mark.parametrize("k", [0, 7, 14, 24])          # cut at a refit date, mid-block, end of a block, later
def test_no_leakage_perturbing_the_future(syn, syn_fc, k):
    fc_dates = syn_fc.variance.index
    cut = fc_dates[k]
    alt = syn.copy()
    after = alt.index > cut
    rng = np.random.default_rng(k)
    shock = rng.uniform(0.5, 2.0, after.sum())
    alt.loc[after, "log_return"] = -3 * alt.loc[after, "log_return"]
    alt.loc[after, "high"] = alt.loc[after, "high"] * shock * 1.5
    alt.loc[after, "low"] = alt.loc[after, "low"] * shock * 0.5
    alt.loc[after, ["open", "close"]] = alt.loc[after, ["open", "close"]] * 1.3
    alt.loc[after, "target"] = alt.loc[after, "target"] + 0.5
    fc_alt = forecast_variances(alt, make_cfg())
    upto = fc_dates <= cut
    for m in MODELS:
        assert_array_equal(syn_fc.variance.loc[upto, m], fc_alt.variance.loc[upto, m], err_msg=m)
        assert (syn_fc.variance.loc[~upto, m] != fc_alt.variance.loc[~upto, m]).any(), m   # the future does matter
    p, p_alt = (baseline_predictions(d, make_cfg(), EXP, forecasts=f) for d, f in [(syn, syn_fc), (alt, fc_alt)])
    keep, keep_alt = p.timestamp <= cut, p_alt.timestamp <= cut
    assert_array_equal(p.loc[keep, "prediction"].to_numpy(), p_alt.loc[keep_alt, "prediction"].to_numpy())


def test_no_leakage_truncating_the_future(syn, syn_fc):
    cut = syn_fc.variance.index[12]
    fc_cut = forecast_variances(syn.loc[:cut], make_cfg())
    assert fc_cut.variance.index[-1] == cut
    assert_array_equal(fc_cut.variance.to_numpy(), syn_fc.variance.loc[:cut].to_numpy())


# ---------------------------------------------------------------- accuracy on synthetic GARCH

def test_garch_tracks_true_conditional_variance():
    syn = synthetic_garch_frame(n_train=2500, n_validation=100, n_test=100, seed=5)   # synthetic GARCH(1,1)
    fc = forecast_variances(syn, make_cfg(models=["garch", "gjr_garch", "ewma"], refit_every=25, min_train_days=2000))
    true = syn.true_variance.loc[fc.variance.index]
    rel = (fc.variance["garch"] / true - 1).abs()
    assert rel.median() < 0.08 and rel.max() < 0.3
    assert np.corrcoef(fc.variance["garch"], true)[0, 1] > 0.98
    assert (fc.variance["gjr_garch"] / true - 1).abs().median() < 0.1     # nests the true model
    # the correctly specified model beats the EWMA filter on the true variance
    assert rel.mean() < (fc.variance["ewma"] / true - 1).abs().mean()
    p = fc.fit_log[fc.fit_log.model == "garch"].params.iloc[-1]
    assert p["alpha[1]"] + p["beta[1]"] == pytest.approx(0.95, abs=0.04)


def test_convergence_warning_is_recorded(syn, monkeypatch):
    from arch.univariate.base import ARCHModel
    from arch.utility.exceptions import ConvergenceWarning
    orig = ARCHModel.fit

    def noisy_fit(self, *a, **kw):
        warnings.warn("synthetic: optimizer did not converge", ConvergenceWarning)
        return orig(self, *a, **kw)

    monkeypatch.setattr(ARCHModel, "fit", noisy_fit)
    log = forecast_variances(syn, make_cfg(models=["garch"], refit_every=20)).fit_log
    assert len(log) == 2 and not log.converged.any()
    assert log.warnings.str.contains("ConvergenceWarning: synthetic").all()


# ---------------------------------------------------------------- output contract

def test_predictions_follow_the_contract(syn, syn_fc):
    p = baseline_predictions(syn, make_cfg(), EXP, asset="BTC", horizon="1d", forecasts=syn_fc)
    assert list(p.columns) == PREDICTION_COLUMNS
    validate_predictions(p, "baselines")
    assert p.model.unique().tolist() == list(MODELS)
    assert (p.seed == 0).all() and set(p.split) == {"validation", "test"}
    assert str(p.timestamp.dt.tz) == "UTC"
    span = syn.index[syn.split.isin(["validation", "test"])][:-1]          # the last day has no target
    for m, g in p.groupby("model"):
        assert_array_equal(pd.DatetimeIndex(g.timestamp), span)
        assert_allclose(g.target, syn.target.loc[span])
        expected = variance_to_target(syn.log_return.loc[span].to_numpy(), syn_fc.variance[m].loc[span].to_numpy())
        assert_allclose(g.prediction, expected, rtol=1e-12)
    assert (p.prediction > 0).all()
    again = baseline_predictions(syn, make_cfg(models=["ewma", "har_rv"]), {"experiment": EXP})
    assert_allclose(again[again.model == "ewma"].prediction, p[p.model == "ewma"].prediction, rtol=1e-12)


def test_variances_are_positive_and_causal_filters_match(syn, syn_fc):
    v = syn_fc.variance
    assert v.shape == (40, 6) and (v > 0).all().all()
    r = syn.log_return.to_numpy()[1:]
    assert_allclose(v["ewma"], ewma_variance(r)[350:], rtol=1e-14)
    assert_allclose(v["historical_mean"], np.cumsum(r ** 2)[350:] / np.arange(351, 391), rtol=1e-12)


# ---------------------------------------------------------------- bad input

def test_bad_frames_are_rejected(syn):
    cfg = make_cfg(models=["ewma", "har_rv"])
    with pytest.raises(DataValidationError, match="UTC"):
        forecast_variances(syn.tz_convert("Europe/Paris"), cfg)
    with pytest.raises(DataValidationError) as e:
        forecast_variances(syn.drop(columns="high"), cfg)
    assert e.value.column == "high"
    with pytest.raises(DataValidationError) as e:
        forecast_variances(syn.drop(index=syn.index[100]), cfg)
    assert e.value.row == str(syn.index[101])
    bad = syn.copy(); bad.iloc[200, bad.columns.get_loc("log_return")] = np.nan
    with pytest.raises(DataValidationError) as e:
        forecast_variances(bad, cfg)
    assert (e.value.column, e.value.row) == ("log_return", str(syn.index[200]))
    bad = syn.copy(); bad.iloc[300, bad.columns.get_loc("low")] = bad.high.iloc[300] * 1.1
    with pytest.raises(DataValidationError, match="low <= high"):
        forecast_variances(bad, cfg)
    bad = syn.copy(); bad.iloc[-10, bad.columns.get_loc("split")] = "train"
    with pytest.raises(DataValidationError, match="contiguous"):
        forecast_variances(bad, cfg)
    with pytest.raises(DataValidationError, match="no validation or test"):
        forecast_variances(syn.assign(split="train"), cfg)
    with pytest.raises(ValueError, match="unknown baseline"):
        forecast_variances(syn, make_cfg(models=["garch", "lstm"]))
    bad = syn.copy(); bad.iloc[-5, bad.columns.get_loc("target")] = np.nan
    with pytest.raises(DataValidationError, match="target missing"):
        baseline_predictions(bad, cfg, EXP)


def test_config_options_dist_and_target_map(syn, syn_fc):
    fc_t = forecast_variances(syn, make_cfg(models=["garch", "egarch"], dist="t", refit_every=20))
    assert "nu" in fc_t.fit_log.params.iloc[0] and (fc_t.variance > 0).all().all()
    assert_allclose(fc_t.variance["garch"], syn_fc.variance["garch"], rtol=0.3)   # same data, a close model
    exact = baseline_predictions(syn, make_cfg(), EXP, forecasts=syn_fc)
    quad = baseline_predictions(syn, make_cfg(target_map="quadrature", quadrature_nodes=64), EXP, forecasts=syn_fc)
    assert_allclose(quad.prediction, exact.prediction, rtol=0.1)       # GH 64 nodes: up to ~8 % off
    assert not np.allclose(quad.prediction, exact.prediction, rtol=1e-6)
    assert_allclose(quad.prediction, variance_to_target(
        np.tile(syn.log_return.iloc[351:-1].to_numpy(), 6), syn_fc.variance.iloc[:-1].to_numpy().T.ravel(),
        365, 0.25, 64, method="quadrature"), rtol=1e-12)
