"""Diebold-Yilmaz spillovers and the spike event study: an external reference (frequencyConnectedness' test table),
statsmodels' orthogonalised FEVD, values by hand, and bad input."""
import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.api import VAR
from statsmodels.tsa.vector_ar.var_model import VARResults

from volnb.core import DataValidationError
from volnb.spillover import (PAPER_EVENT_SHARES, Connectedness, complete_tokens, connectedness, day_bootstrap,
                             event_study, exceedances, fit_var, generalized_fevd, hourly_returns, null_shares, preceded,
                             realized_volatility, rolling_spillover, var_data)

FIX = __import__("pathlib").Path(__file__).parent / "fixtures" / "diebold_yilmaz"


@pytest.fixture(scope="module")
def sim():
    return pd.read_csv(FIX / "simul_data.csv", header=None)


def bars(closes, token="A", start="2021-01-01", filled=(), drop=()):
    c = np.asarray(closes, float)
    df = pd.DataFrame({"token": token, "timestamp": pd.date_range(start, periods=len(c), freq="h"), "close": c, "filled": False})
    df.loc[list(filled), "filled"] = True
    return df.drop(index=list(drop)).reset_index(drop=True)


def path(moves, token):
    return bars(np.exp(np.r_[0, np.cumsum(moves)]), token)


# ---------------------------------------------------------------- the external reference

def test_fixture_table_of_frequencyconnectedness(sim):
    # VAR(2) with a constant by OLS; the R package's n.ahead = 100 sums Phi_0..Phi_100: our horizon 101
    assert sim.shape == (5999, 3)
    ref = pd.read_csv(FIX / "DY12.csv", header=None).to_numpy()
    c = connectedness(sim, lags=2, horizon=101)
    np.testing.assert_allclose(c.theta, ref, atol=1e-3, rtol=0)
    assert round(c.total, 2) == 38.92
    np.testing.assert_allclose(c.theta.sum(1), 100, atol=1e-10)
    assert c.fit.nobs == 5997 and c.fit.estimator == "ols"


def test_measures_on_the_fixture(sim):
    c = connectedness(sim, lags=2, horizon=101)
    np.testing.assert_allclose(c.net, c.to_others - c.from_others, atol=1e-12)
    assert abs(c.net.sum()) < 1e-9
    np.testing.assert_allclose(c.to_others.sum() / 3, c.total, atol=1e-12)
    np.testing.assert_allclose(c.pairwise.to_numpy(), -c.pairwise.to_numpy().T, atol=1e-12)     # antisymmetric
    np.testing.assert_allclose(c.pairwise.sum(axis=1), c.net, atol=1e-9)
    t = c.table()
    assert list(t.index[-2:]) == ["To others", "Net"] and t.columns[-1] == "From others"
    np.testing.assert_allclose(t.loc["To others", "From others"], 38.924, atol=1e-3)
    np.testing.assert_allclose(t.iloc[:3, :3].to_numpy(), c.theta)


# ---------------------------------------------------------------- against statsmodels

@pytest.mark.parametrize("H", [1, 2, 3, 8, 30])
def test_diagonal_covariance_equals_statsmodels_orthogonalised_fevd(sim, H):
    res = VAR(sim.iloc[:500].to_numpy()).fit(2, trend="c")
    D = np.diag(np.diag(res.sigma_u))
    rd = VARResults(res.endog, res.endog_lagged, res.params, D, res.k_ar, model=res.model, trend="c", names=res.names)
    # statsmodels' fevd(H).decomp[:, H-1, :] sums Phi_0..Phi_{H-1}, as our horizon H
    np.testing.assert_allclose(generalized_fevd(res.coefs, D, H), 100 * rd.fevd(H).decomp[:, H - 1, :], atol=1e-9)
    if 1 < H <= 8:   # the convention matters: one term more or less is a different table
        assert np.abs(generalized_fevd(res.coefs, D, H + 1) - 100 * rd.fevd(H).decomp[:, H - 1, :]).max() > 0.1


def test_ols_is_statsmodels_var(sim):
    res = VAR(sim.iloc[:300].to_numpy()).fit(3, trend="c")
    f = fit_var(sim.iloc[:300], 3)
    np.testing.assert_allclose(f.coefs, res.coefs)
    np.testing.assert_allclose(f.intercept, res.intercept)
    np.testing.assert_allclose(f.sigma, res.sigma_u)


# ---------------------------------------------------------------- by hand

def test_no_dynamics_gives_squared_correlations():
    S = np.array([[4.0, 1.2, 0.0], [1.2, 1.0, 0.0], [0.0, 0.0, 9.0]])    # corr(1, 2) = 0.6; 3 independent
    g = generalized_fevd(np.zeros((2, 3, 3)), S, 7)
    want = np.array([[1, 0.36, 0], [0.36, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(g, 100 * want / want.sum(1, keepdims=True), atol=1e-10)


def test_one_way_dynamics_by_hand():
    # y1 = u1, y2 = 0.5 y1(-1) + u2, Sigma = I: at H = 2, var(e2) = 1 + 0.25, of which 0.25 from shock 1
    A = np.array([[[0.0, 0.0], [0.5, 0.0]]])
    g = generalized_fevd(A, np.eye(2), 2)
    np.testing.assert_allclose(g, [[100, 0], [20, 80]], atol=1e-10)
    c = Connectedness(["y1", "y2"], g)
    assert c.net.tolist() == pytest.approx([20, -20]) and c.total == pytest.approx(10)


def test_decomposition_does_not_depend_on_units(sim):
    a = connectedness(sim.iloc[:800], 2, 10).theta
    b = connectedness(sim.iloc[:800] * [1.0, 100.0, 0.01], 2, 10).theta
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_measures_by_hand():
    c = Connectedness(["A", "B", "C"], [[90, 10, 0], [40, 60, 0], [0, 30, 70]])
    assert c.from_others.tolist() == [10, 40, 30] and c.to_others.tolist() == [40, 40, 0]
    assert c.net.tolist() == [30, 0, -30] and c.total == pytest.approx(80 / 3)
    assert c.pairwise.loc["A", "B"] == 30 and c.pairwise.loc["B", "A"] == -30
    pw = c.pairwise_long()
    assert pw[["transmitter", "receiver", "net"]].values.tolist()[:2] == [["A", "B", 30.0], ["B", "C", 30.0]]
    assert pw.loc[0, "to_receiver"] == 40 and pw.loc[0, "to_transmitter"] == 10


# ---------------------------------------------------------------- the elastic net

def test_elasticnet_limits(sim):
    ols = fit_var(sim.iloc[:600], 2)
    en = fit_var(sim.iloc[:600], 2, "elasticnet", alpha=1e-7)
    np.testing.assert_allclose(en.coefs, ols.coefs, atol=1e-4)
    big = fit_var(sim.iloc[:600], 2, "elasticnet", alpha=100.0)
    assert not big.coefs.any()
    rho = np.corrcoef(sim.iloc[2:600].to_numpy().T)
    np.testing.assert_allclose(generalized_fevd(big.coefs, big.sigma, 10), 100 * rho**2 / (rho**2).sum(1, keepdims=True), atol=1e-9)


def test_elasticnet_cv_shrinks_irrelevant_lags():
    rng = np.random.default_rng(0)
    n, k = 600, 5
    y = np.zeros((n, k))
    e = rng.standard_normal((n, k))
    for t in range(1, n):
        y[t] = e[t]
        y[t, 1] += 0.6 * y[t - 1, 0]          # the only link: 1 <- 0
    f = fit_var(pd.DataFrame(y), 3, "elasticnet", l1_ratio=1.0)
    ols = fit_var(pd.DataFrame(y), 3)
    assert ols.coefs[0, 1, 0] == pytest.approx(0.6, abs=0.1)
    assert 0.3 < f.coefs[0, 1, 0] < ols.coefs[0, 1, 0]       # kept, shrunk towards 0
    assert (f.coefs != 0).sum() < f.coefs.size / 3          # most of the 74 irrelevant slopes are exactly 0
    assert f.alpha is not None and (f.alpha > 0).all()


# ---------------------------------------------------------------- rolling

def test_rolling_windows(sim):
    r = rolling_spillover(sim.iloc[:300], window=200, step=50, lags=2, horizon=10)
    assert r.window_start.tolist() == [0, 50, 100] and r.window_end.tolist() == [199, 249, 299]
    assert r.total.iloc[2] == pytest.approx(connectedness(sim.iloc[100:300], 2, 10).total, abs=1e-12)
    np.testing.assert_allclose(r[["net_0", "net_1", "net_2"]].sum(axis=1), 0, atol=1e-9)


# ---------------------------------------------------------------- realised volatility

def test_realized_volatility_by_hand():
    c = np.exp(0.01 * np.arange(48))
    c[3] = c[2]                                     # hour 3 filled: its close repeats hour 2's
    panel = pd.concat([bars(c, filled=[3], drop=[30, 31]), bars(np.exp(0.02 * np.arange(48)), "B")])
    r = hourly_returns(panel)
    assert r["A"].iloc[[0, 3, 30, 31, 32]].isna().all()        # first hour, filled hour, outage, first after it
    np.testing.assert_allclose(r["A"].iloc[[1, 4, 33]], [0.01, 0.02, 0.01], atol=1e-12)
    rv = realized_volatility(panel, min_hours=20)
    np.testing.assert_allclose(rv["A"], [0.05, np.sqrt(21e-4)], atol=1e-12)  # 21 x 0.01 and 0.02; 21 x 0.01
    np.testing.assert_allclose(rv["B"], [np.sqrt(23 * 4e-4), np.sqrt(24 * 4e-4)], atol=1e-12)
    assert np.isnan(realized_volatility(panel, min_hours=22).loc["2021-01-02", "A"])
    np.testing.assert_allclose(realized_volatility(panel, ["B"], freq="h")["B"].iloc[1:], 0.02, atol=1e-12)


def test_var_data_and_complete_tokens():
    v = pd.DataFrame({"A": [1.0, 2, 3], "B": [1.0, np.nan, 3], "C": [0.0, 2, 3]}, index=pd.date_range("2022-01-01", periods=3))
    assert complete_tokens(v) == ["A", "C"] and complete_tokens(v, "2022-01-03", exclude=["C"]) == ["A", "B"]
    np.testing.assert_allclose(var_data(v, ["A", "C"], "2022-01-02"), np.log([[2, 2], [3, 3]]))
    assert var_data(v, ["B"], transform="level", fill=0.0)["B"].tolist() == [1.0, 0.0, 3.0]


# ---------------------------------------------------------------- bad input

def test_bad_input_is_named(sim):
    panel = pd.concat([bars(np.exp(0.01 * np.arange(48))), bars(np.exp(0.02 * np.arange(48)), "B")])
    with pytest.raises(DataValidationError, match=r"\['ZZZ'\] not in the panel"):
        realized_volatility(panel, ["A", "ZZZ"])
    with pytest.raises(DataValidationError, match="lacks column"):
        hourly_returns(panel.drop(columns="filled"))
    with pytest.raises(DataValidationError, match="close must be a positive number"):
        hourly_returns(panel.assign(close=np.where(np.arange(len(panel)) == 7, np.nan, panel.close)))
    with pytest.raises(ValueError, match="too few observations: 9 rows; a VAR\\(2\\) of 3 variables"):
        fit_var(sim.iloc[:9], 2)
    with pytest.raises(DataValidationError, match="missing or infinite.*column '1'.*row 4"):
        fit_var(sim.iloc[:50].astype(float).mask((sim.index[:50] == 4)[:, None] & (sim.columns == 1)[None, :]), 1)
    with pytest.raises(ValueError, match="lags must be a positive integer"):
        fit_var(sim.iloc[:50], 0)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        connectedness(sim.iloc[:50], 1, 0)
    with pytest.raises(ValueError, match="estimator must be"):
        fit_var(sim.iloc[:50], 1, "ridge")
    with pytest.raises(DataValidationError, match="constant"):
        fit_var(sim.iloc[:50].assign(c=1.0), 1)
    with pytest.raises(ValueError, match="sigma must be symmetric"):
        generalized_fevd(np.zeros((1, 2, 2)), np.array([[1.0, 0.5], [0.2, 1.0]]), 3)
    v = pd.DataFrame({"A": [1.0, 2, 3], "B": [1.0, np.nan, 3], "C": [0.0, 2, 3]}, index=pd.date_range("2022-01-01", periods=3))
    with pytest.raises(DataValidationError, match="B has no volatility in 1 of the 3 periods"):
        var_data(v, ["A", "B"])
    with pytest.raises(DataValidationError, match="C has zero volatility on 2022-01-01.*log is undefined"):
        var_data(v, ["A", "C"])
    with pytest.raises(DataValidationError, match=r"\['D'\] not in the volatility frame"):
        var_data(v, ["A", "D"])
    with pytest.raises(ValueError, match="too few observations: 100 rows for a rolling window of 200"):
        rolling_spillover(sim.iloc[:100], 200, 5, 2, 10)


# ---------------------------------------------------------------- the event study

def test_exceedances_by_hand_and_causal():
    h = pd.date_range("2022-01-01", periods=7, freq="h")
    x = pd.DataFrame({"A": [1, 2, 3, 10, 1, 1, 5.0]}, index=h)
    # the median of the 3 hours before: hour 3 (10 > 2) and hour 6 (5 > 1)
    assert exceedances(x, 0.5, 3, 3)["A"].tolist() == [False, False, False, True, False, False, True]
    later = x.copy(); later.iloc[4:, 0] = [100.0, 0.0, 0.0]
    assert exceedances(later, 0.5, 3, 3)["A"].tolist()[:4] == [False, False, False, True]   # the future changes nothing before
    with pytest.raises(ValueError, match="regular hourly grid"):
        exceedances(x.iloc[[0, 1, 3]], 0.5, 3, 3)


def test_preceded_and_null_by_hand():
    s = np.zeros(30, bool); s[[5, 20]] = True
    p = preceded(s, 4)
    assert np.flatnonzero(p).tolist() == [6, 7, 8, 9, 21, 22, 23, 24]
    assert np.flatnonzero(preceded(s, 4, include_same_hour=True)).tolist() == [5, 6, 7, 8, 9, 20, 21, 22, 23, 24]
    spikes = np.array([5, 7, 10, 21])
    assert p[spikes].mean() == 0.5
    assert null_shares(p, spikes, [0, 1, 3]).tolist() == [0.5, 0.5, 0.25]
    assert null_shares(p, spikes, np.arange(30)).mean() == pytest.approx(8 / 30)


def test_day_bootstrap():
    rng = np.random.default_rng(0)
    days = np.repeat(np.arange(10), 3)
    assert day_bootstrap(days, np.ones(30, bool), 200, rng) == (1.0, 1.0)
    hit = np.tile([True, False, False], 10)                  # one in three every day: no day-to-day variation
    assert day_bootstrap(days, hit, 200, rng) == pytest.approx((1 / 3, 1 / 3))
    hit = np.repeat(np.arange(10) < 5, 3)                    # whole days hit or not: a wide interval around 0.5
    lo, hi = day_bootstrap(days, hit, 2000, rng)
    assert lo < 0.3 and hi > 0.7


def test_event_study_on_a_constructed_panel():
    n = 200
    btc, alt = np.zeros(n - 1), np.zeros(n - 1)              # move t-1 is hour t's return
    for t in (100, 150):
        btc[t - 1] = 0.1          # BTC shocks at hours 100 and 150
        alt[t + 1] = 0.2          # X spikes 2 hours later
    alt[129] = 0.2                # and once on its own, at hour 130
    alt[149] = 0.2                # and in the same hour as BTC's second shock (150)
    panel = pd.concat([path(btc, "BTC"), path(alt, "X"), path(alt, "Y"), path(btc * 0.5, "USDC")])
    cats = {"BTC": "large_cap", "X": "meme", "Y": "defi", "USDC": "stablecoin_fiat_gold"}
    kw = dict(exclude_categories=["stablecoin_fiat_gold"], threshold_window=48, threshold_min_periods=24, spike_quantile=0.9,
              shock_quantile=0.9, shifts=300, min_shift=10, bootstrap=200)
    ev = event_study(panel, ["BTC"], cats, **kw)
    assert ev.category.tolist() == ["all", "defi", "meme"]
    assert ev.tokens[0] == "X Y"                               # USDC left out
    assert ev.set_index("category").loc["meme", ["shock_hours", "n_spikes", "n_preceded"]].tolist() == [2, 4, 2]
    assert ev.set_index("category").loc["all", ["n_spikes", "n_preceded"]].tolist() == [8, 4]
    assert ev.share[0] == pytest.approx(50.0)
    assert 2.0 < ev.null_share[0] < 6.0                        # 8 of 200 hours "preceded": about 4 %
    assert ev.p_value[0] < 0.01
    same = event_study(panel, ["BTC"], cats, include_same_hour=True, **kw)
    assert same.n_preceded[0] == 6                             # the same-hour spikes count too
    assert ev.paper_share.tolist()[:1] == [PAPER_EVENT_SHARES[("BTC", "all")]] and np.isnan(ev.paper_share[1])
    assert ev.paper_share[2] == 51.0 and ev.paper_source[2] == "Vayyasi Section 6.4"
    with pytest.raises(DataValidationError, match=r"\['SOL'\] not in the panel"):
        event_study(panel, ["SOL"], cats)
    with pytest.raises(ValueError, match="have no category"):
        event_study(panel, ["BTC"], {"BTC": "large_cap"})
