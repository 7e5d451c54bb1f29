"""volnb.backtest: fills at the next open, commissions to the cent, pyramiding caps, metrics, bad prediction files."""
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from volnb.backtest import (TABLE6_COLUMNS, BacktestConfig, align_predictions, annual_volatility, backtest_config,
                            backtest_runs, backtest_table, best_validation_run, block_bootstrap_sharpe_ci,
                            buy_low_sell_high, cagr, expected_shortfall, historical_var, kelly_criterion, max_drawdown,
                            mean_reversion, momentum, performance, performance_quantstats, predicted_spike, returns_fell,
                            run_returns, run_strategy, seed_average_returns, sharpe_block_length, sharpe_ratio, simulate,
                            simulate_published, table6, trade_stats, trend, value_at_risk)
from volnb.core import DataValidationError, project_root


def _market(close, open_, split="test", start="2021-02-01"):
    "A synthetic daily market frame (not real prices)."
    idx = pd.date_range(start, periods=len(close), freq="D", tz="UTC", name="date")
    close = pd.Series(close, index=idx, dtype=float)
    split = [split] * len(close) if isinstance(split, str) else split
    return pd.DataFrame({"open": np.asarray(open_, float), "high": close * 1.1, "low": close * 0.9, "close": close,
                         "log_return": np.log(close / close.shift()), "split": split})


def _preds(values, start="2021-02-01", model="m", seed=0, days=None):
    ts = days if days is not None else pd.date_range(start, periods=len(values), freq="D", tz="UTC")
    return pd.DataFrame({"timestamp": ts, "asset": "BTC", "horizon": "1d", "target": 1.0,
                         "prediction": np.asarray(values, float), "model": model, "seed": seed, "split": "test"})


@pytest.fixture
def hand():
    """Five days. Day 1 closes down (r < 0) with a calm forecast 0.8: buy-low-sell-high buys at day 2's open
    (100). Day 2 forecasts a spike (1.2): it sells at day 3's open (104). Day 4 (the last) closes down with a
    calm forecast: an entry with no next bar to fill it."""
    market = _market(close=[100, 95, 97, 104, 101], open_=[100, 98, 100, 104, 103])
    return market, _preds([0.9, 0.8, 1.2, 0.9, 0.8])


# ---------------------------------------------------------------- the hand-checked trade

def test_buy_low_sell_high_pnl_and_commission_to_the_cent(hand):
    market, preds = hand
    res = run_strategy(market, preds, "buy_low_sell_high")           # 10,000 USD, 5 % entries, 0.1 % commission
    t = res.trades
    assert t.side.tolist() == ["buy", "sell"]
    assert t.date.tolist() == [market.index[2], market.index[3]]     # the day after each signal
    assert t.price.tolist() == [100.0, 104.0]                          # at the open
    assert t.qty.tolist() == pytest.approx([5.0, 5.0], abs=1e-12)     # 500 USD / 100
    assert round(t.commission.iloc[0], 2) == 0.50 and round(t.commission.iloc[1], 2) == 0.52
    rt = res.round_trips
    assert len(rt) == 1 and not rt.open_at_end.iloc[0]
    assert round(rt.pnl.iloc[0], 2) == 18.98                         # 520 - 0.52 - 500 - 0.50
    assert_allclose(res.equity.to_numpy(), [10000, 10000, 9984.50, 10018.98, 10018.98], atol=1e-9)
    assert_allclose(res.cash.iloc[2], 9499.50, atol=1e-9)
    assert res.position.iloc[-1] == 0.0 and res.unfilled == [market.index[-1]]   # last day's entry dropped
    pf = performance(res.equity, res.round_trips, res.position)
    assert pf["pnl_pct"] == pytest.approx(0.18980, abs=1e-9)
    assert pf["time_in_market_pct"] == pytest.approx(20.0)            # one close in five holds a position
    assert pf["win_rate_pct"] == 100.0 and np.isnan(pf["kelly_pct"])  # no losing trade: Kelly undefined


def test_fills_at_next_open_and_no_lookahead(hand):
    market, preds = hand
    base = run_strategy(market, preds, "buy_low_sell_high")
    for date in base.trades.date:                                     # every fill answers yesterday's signal
        prev = market.index[market.index.get_loc(date) - 1]
        assert base.signals.loc[prev, "entry"] > 0 or base.signals.loc[prev, "exit"]
    # changing the future (day 3 onwards: forecasts and prices) leaves the equity up to day 2 unchanged
    later = preds.copy(); later.loc[3:, "prediction"] = [1.5, 1.5]
    m2 = market.copy(); m2.loc[m2.index[3]:, ["open", "close"]] = 50.0
    alt = run_strategy(m2, later, "buy_low_sell_high")
    assert_allclose(alt.equity.iloc[:3].to_numpy(), base.equity.iloc[:3].to_numpy())


def test_no_position_opened_on_the_last_day():
    market = _market(close=[100, 101, 102], open_=[100, 101, 102])
    res = simulate(market.open, market.close, entry=[0, 0, 1.0], exit_=[False] * 3, capital=1000)
    assert res.trades.empty and (res.position == 0).all() and res.unfilled == [market.index[-1]]
    one = _market(close=[100], open_=[100])                          # a one-day span: buy and hold cannot buy
    res = run_strategy(one, _preds([0.9]), "buy_and_hold")
    assert res.trades.empty and res.equity.tolist() == [10000.0]


def test_buy_and_hold_all_in_at_the_first_open_after_the_first_close(hand):
    market, preds = hand
    res = run_strategy(market, preds, "buy_and_hold", cfg=BacktestConfig(capital=1000))
    assert res.trades.side.tolist() == ["buy"] and res.trades.date.iloc[0] == market.index[1]
    qty = 1000 / 1.001 / 98                                            # all the cash, less the commission
    assert res.trades.qty.iloc[0] == pytest.approx(qty, rel=1e-12)
    assert res.cash.iloc[-1] == pytest.approx(0.0, abs=1e-9)
    assert res.equity.iloc[-1] == pytest.approx(qty * 101, rel=1e-12)
    scaled = run_strategy(market, preds, "buy_and_hold", scaled=True, cfg=BacktestConfig(capital=1000))
    assert_allclose(scaled.equity, res.equity)                         # buy and hold ignores scaling


def test_pyramiding_caps_at_max_position_fraction():
    flat = _market(close=[100] * 5, open_=[100] * 5)
    res = simulate(flat.open, flat.close, entry=[0.5] * 5, exit_=[False] * 5, capital=1000,
                   commission=0.001, max_position_fraction=0.8)
    t = res.trades
    assert t.side.tolist() == ["buy", "buy"]                           # the third entry finds no room
    second = (0.8 * 999.5 - 500.0) / (1 + 0.8 * 0.001)                 # 299.36: the cap holds after the commission
    assert t.notional.tolist() == pytest.approx([500.0, second], abs=1e-9)
    assert res.position.iloc[-1] == pytest.approx(5 + second / 100, abs=1e-12)
    assert (res.position * 100 <= 0.8 * res.equity + 1e-9).all()
    one = simulate(flat.open, flat.close, entry=[0.5] * 5, exit_=[False] * 5, capital=1000, pyramiding=False)
    assert len(one.trades) == 1
    full = simulate(flat.open, flat.close, entry=[0.5] * 5, exit_=[False] * 5, capital=1000)  # cap 1.0: no leverage
    assert full.trades.notional.iloc[1] == pytest.approx(499.5 / 1.001, abs=1e-9)  # the cash left, net of commission
    assert (full.cash >= 0).all() and len(full.trades) == 2


def test_exit_and_entry_on_the_same_open_close_then_reopen():
    m = _market(close=[100, 100, 110, 120], open_=[100, 100, 110, 120])
    res = simulate(m.open, m.close, entry=[0.5, 0.5, 0, 0], exit_=[False, True, False, False], capital=1000, commission=0.0)
    assert res.trades.side.tolist() == ["buy", "sell", "buy"]
    assert res.round_trips.open_at_end.tolist() == [False, True]
    assert res.trades.notional.tolist() == pytest.approx([500.0, 550.0, 525.0])   # re-entry: half of 1,050
    assert res.round_trips.pnl.tolist() == pytest.approx([50.0, 525 / 110 * 120 - 525])


# ---------------------------------------------------------------- signals

def test_signal_rules():
    m = _market(close=[100, 110, 125, 120, 90, 95], open_=[100] * 6)   # r: nan, +.095, +.128, -.041, -.288, +.054
    idx, r = m.index, m.log_return
    assert trend(r, idx, 2, "all").tolist() == [False, False, True, False, False, False]
    assert trend(r, idx, 2, "all", sign=-1).tolist() == [False, False, False, False, True, False]
    assert trend(r, idx, 2, "sum").tolist() == [False, False, True, True, False, False]   # .128 - .041 > 0
    assert returns_fell(r, idx, "negative").tolist() == [False, False, False, True, True, False]
    assert returns_fell(r, idx, "decrease").tolist() == [False, False, False, True, True, False]
    pred = pd.Series([1.2] * 6, index=idx)
    cfg = BacktestConfig()
    mo, mr = momentum(pred, r, cfg), mean_reversion(pred, r, cfg)
    assert (mo.entry > 0).tolist() == [False, False, True, False, False, False]
    assert mo.exit.tolist() == [False, False, False, True, False, False]
    assert (mr.entry > 0).tolist() == [False, False, False, False, True, False]
    calm = buy_low_sell_high(pred * 0.5, r, cfg)
    assert (calm.entry == 0.05).tolist() == [False, False, False, True, True, False] and not calm.exit.any()


def test_volatility_scaling_multiplies_the_entry_by_the_prediction(hand):
    market, preds = hand
    res = run_strategy(market, preds, "buy_low_sell_high", scaled=True)
    assert res.trades.notional.iloc[0] == pytest.approx(500 * 0.8)   # 5 % x the forecast 0.8
    res4 = run_strategy(market, preds, "buy_low_sell_high", scaled=True, cfg=BacktestConfig(scale_power=4))
    assert res4.trades.notional.iloc[0] == pytest.approx(500 * 0.8 ** 4)


# ---------------------------------------------------------------- metrics

def test_metrics_on_a_known_series():
    eq = pd.Series([100.0, 110.0, 99.0, 108.9, 98.01])               # returns +10 %, -10 %, +10 %, -10 %
    r = eq.pct_change().iloc[1:]
    sd = np.sqrt(4 * 0.01 / 3)                                         # mean 0, deviations +-0.1, ddof 1
    assert sharpe_ratio(r) == pytest.approx(0.0, abs=1e-12)
    assert annual_volatility(r) == pytest.approx(sd * np.sqrt(365), rel=1e-12)
    assert max_drawdown(eq) == pytest.approx(98.01 / 110 - 1, rel=1e-12)
    assert cagr(eq) == pytest.approx(0.9801 ** (365 / 4) - 1, rel=1e-12)
    assert value_at_risk(r) == pytest.approx(-1.6448536269514722 * sd, rel=1e-9)
    r2 = np.array([0.01, 0.02, -0.01, 0.03])
    assert sharpe_ratio(r2) == pytest.approx(0.0125 / np.std(r2, ddof=1) * np.sqrt(365), rel=1e-12)
    assert sharpe_ratio(r2, risk_free=0.05) < sharpe_ratio(r2)
    ts = trade_stats([0.2, -0.1, 0.0, 0.05, -0.1])                     # the zero trade is neither win nor loss
    assert (ts["win_rate"], ts["avg_win"], ts["avg_loss"]) == pytest.approx((0.5, 0.125, -0.1))
    assert kelly_criterion([0.2, -0.1, 0.05, -0.1]) == pytest.approx(0.5 - 0.5 / 1.25)


def test_historical_var_and_expected_shortfall_by_hand():
    # 40 returns: -10, -8, -6, -4 % and 36 days of +1 %; the 5 % tail is 2 days
    r40 = np.r_[[-0.10, -0.08, -0.06, -0.04], np.full(36, 0.01)]
    assert historical_var(r40) == pytest.approx(-0.08, abs=1e-15)           # the 2nd smallest
    assert expected_shortfall(r40) == pytest.approx(-0.09, abs=1e-15)       # mean of the 2 worst
    # 20 returns: the tail is exactly the worst day (0.05 * 20 = 1, not 1.0000000000000009)
    r20 = np.r_[[-0.07, -0.03], np.full(18, 0.002)]
    assert historical_var(r20) == expected_shortfall(r20) == -0.07
    # 30 returns: a tail of 1.5 days -> VaR the 2nd smallest, CVaR (r1 + 0.5 r2) / 1.5
    r30 = np.r_[[-0.10, -0.08, -0.06], np.full(27, 0.01)]
    assert historical_var(r30) == pytest.approx(-0.08, abs=1e-15)
    assert expected_shortfall(r30) == pytest.approx((-0.10 - 0.5 * 0.08) / 1.5, abs=1e-15)
    # against numpy's lower empirical quantile (inverted CDF) on a longer synthetic series
    r = np.random.default_rng(4).standard_t(3, 997) * 0.02
    for c in (0.95, 0.99, 0.9):
        assert historical_var(r, c) == np.quantile(r, 1 - c, method="inverted_cdf")
        assert expected_shortfall(r, c) <= historical_var(r, c)
    assert expected_shortfall(r[:100]) == pytest.approx(np.sort(r[:100])[:5].mean(), rel=1e-12)   # 5 whole days
    with pytest.raises(ValueError, match="confidence"):
        historical_var(r, 95)
    with pytest.raises(ValueError, match="NaN"):
        expected_shortfall(np.r_[r[:10], np.nan])


def test_performance_reports_three_risk_columns():
    eq = pd.Series(np.r_[100.0, 100 * np.cumprod(1 + np.r_[[-0.10, -0.08, -0.06, -0.04], np.full(36, 0.01)])])
    pf = performance(eq)
    r = eq.pct_change().iloc[1:]
    assert "var95_pct" not in pf
    assert pf["var95_parametric_pct"] == pytest.approx(value_at_risk(r) * 100, rel=1e-12)
    assert (pf["var95_historical_pct"], pf["cvar95_historical_pct"]) == pytest.approx((-8.0, -9.0), abs=1e-9)
    keys = list(pf)
    assert keys[keys.index("kelly_pct") + 1:keys.index("pnl_pct")] == \
        ["var95_parametric_pct", "var95_historical_pct", "cvar95_historical_pct"]


def test_metrics_match_quantstats():
    qs = pytest.importorskip("quantstats")
    idx = pd.date_range("2021-01-01", periods=60, freq="D")
    r = pd.Series(np.random.default_rng(7).normal(0.001, 0.02, 60), index=idx)
    r.iloc[0] = abs(r.iloc[0])                                         # quantstats' drawdown starts at the first return
    assert sharpe_ratio(r) == pytest.approx(qs.stats.sharpe(r, periods=365), rel=1e-9)
    assert annual_volatility(r) == pytest.approx(qs.stats.volatility(r, periods=365), rel=1e-9)
    assert value_at_risk(r) == pytest.approx(qs.stats.value_at_risk(r), rel=1e-9)
    assert kelly_criterion(r) == pytest.approx(qs.stats.kelly_criterion(r), rel=1e-9)
    assert max_drawdown((1 + r).cumprod()) == pytest.approx(qs.stats.max_drawdown(r), rel=1e-9)


# ---------------------------------------------------------------- bad prediction files

@pytest.mark.parametrize("case, column, row, value", [
    ("missing", "timestamp", None, "2021-02-03"),
    ("nan", "prediction", 2, None),
    ("shifted", "timestamp", 0, None),
    ("duplicate", "timestamp, asset, horizon, model, seed", 5, None),
    ("split", "split", 0, "test"),
    ("two_models", "model, seed", 5, None),
])
def test_bad_prediction_files_are_rejected(hand, case, column, row, value):
    market, preds = hand
    if case == "missing": preds = preds.drop(index=2).reset_index(drop=True)
    if case == "nan": preds.loc[2, "prediction"] = np.nan
    if case == "shifted": preds["timestamp"] = preds.timestamp + pd.Timedelta(hours=1)
    if case == "duplicate": preds = pd.concat([preds, preds.iloc[[1]]], ignore_index=True)
    if case == "split": market = market.assign(split=["validation"] + ["test"] * 4)
    if case == "two_models": preds = pd.concat([preds, preds.assign(model="other")], ignore_index=True)
    with pytest.raises(DataValidationError) as e:
        run_strategy(market, preds, "buy_low_sell_high")
    assert e.value.column == column and e.value.row == row
    if value is not None: assert e.value.value == value


def test_bad_market_frame_is_rejected(hand):
    market, preds = hand
    with pytest.raises(DataValidationError, match="missing column"):
        align_predictions(market.drop(columns="open"), preds)
    with pytest.raises(DataValidationError, match="tz-aware UTC"):
        align_predictions(market.tz_localize(None), preds)


# ---------------------------------------------------------------- bootstrap, config, table

def _bootstrap_before_arch(returns, block=20, n=2000, alpha=0.05, seed=0, annualisation=365):
    """volnb.backtest.block_bootstrap_sharpe_ci as it was before it used arch.bootstrap (commit 27efcb5), kept
    here as the reference: hand-written circular blocks from one (n, n_blocks) draw of start days."""
    r = np.asarray(returns, float)
    T = r.size
    block = max(1, min(int(block), T))
    n_blocks = -(-T // block)
    starts = np.random.default_rng(seed).integers(0, T, size=(n, n_blocks))
    idx = ((starts[:, :, None] + np.arange(block)) % T).reshape(n, n_blocks * block)[:, :T]
    s = r[idx]
    sd = s.std(axis=1, ddof=1)
    sh = np.where(sd > 0, s.mean(axis=1) / np.where(sd > 0, sd, 1.0) * np.sqrt(annualisation), np.nan)
    lo, hi = np.nanquantile(sh, [alpha / 2, 1 - alpha / 2])
    return {"sharpe": r.mean() / r.std(ddof=1) * np.sqrt(annualisation), "lower": float(lo), "upper": float(hi)}


@pytest.mark.parametrize("T, block, seed", [(313, 20, 0), (250, 20, 5), (400, 7, 3), (60, 20, 1)])
def test_arch_bootstrap_reproduces_the_hand_written_one_exactly(T, block, seed):
    """Same settings (circular blocks of 20 days, same resamples, same seed): arch draws the very same start days
    (one Generator.integers(T, n_blocks) per resample, the same stream as one (n, n_blocks) draw), so the
    interval agrees EXACTLY, not just within Monte-Carlo error; the statistic is the same Sharpe ratio."""
    r = np.random.default_rng(100 + T).normal(0.001, 0.03, T)           # synthetic returns
    new = block_bootstrap_sharpe_ci(r, block=block, n=2000, alpha=0.05, seed=seed)
    old = _bootstrap_before_arch(r, block=block, n=2000, alpha=0.05, seed=seed)
    assert new["sharpe"] == pytest.approx(old["sharpe"], rel=1e-12) and new["block"] == block
    assert (new["lower"], new["upper"]) == pytest.approx((old["lower"], old["upper"]), rel=1e-12, abs=1e-12)


def test_arch_bootstrap_matches_the_old_one_within_monte_carlo_error():
    "Different random draws (another seed), same settings: the end points agree within their Monte-Carlo error."
    r = np.random.default_rng(8).normal(0.002, 0.03, 313)
    new = [block_bootstrap_sharpe_ci(r, block=20, n=2000, seed=s) for s in range(5)]
    old = [_bootstrap_before_arch(r, block=20, n=2000, seed=100 + s) for s in range(5)]
    for end in ("lower", "upper"):
        a, b = np.array([c[end] for c in new]), np.array([c[end] for c in old])
        spread = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 5)              # standard error of the difference of means
        assert abs(a.mean() - b.mean()) < 4 * spread + 1e-3


def test_interval_is_arch_percentile_interval():
    "With no zero-spread resample the interval is arch's own conf_int(method='percentile') on the same draws."
    from arch.bootstrap import CircularBlockBootstrap
    r = np.random.default_rng(2).normal(0.001, 0.02, 200)
    ci = block_bootstrap_sharpe_ci(r, block=10, n=500, alpha=0.1, seed=9)
    bs = CircularBlockBootstrap(10, r, seed=9)
    lo, hi = bs.conf_int(lambda x: np.array([sharpe_ratio(x)]), reps=500, method="percentile", size=0.9)[:, 0]
    assert (ci["lower"], ci["upper"]) == pytest.approx((lo, hi), rel=1e-12)


def test_block_bootstrap_sharpe_ci():
    r = np.random.default_rng(11).normal(0.001, 0.03, 500)            # synthetic returns
    ci = block_bootstrap_sharpe_ci(r, block=20, n=2000, alpha=0.05, seed=5)
    assert ci["sharpe"] == pytest.approx(sharpe_ratio(r))
    assert ci["lower"] < ci["sharpe"] < ci["upper"]
    assert block_bootstrap_sharpe_ci(r, block=20, seed=5) == ci        # deterministic per seed
    assert block_bootstrap_sharpe_ci(r, block=20, seed=6) != ci
    wide = block_bootstrap_sharpe_ci(r, block=20, alpha=0.01, seed=5)
    assert wide["lower"] <= ci["lower"] and wide["upper"] >= ci["upper"]
    flat = block_bootstrap_sharpe_ci(np.zeros(50))                     # no spread: no Sharpe ratio, no interval
    assert np.isnan([flat["sharpe"], flat["lower"], flat["upper"]]).all()
    # a strategy that rarely trades: resamples without a non-zero day have no Sharpe ratio and are dropped
    rare = np.zeros(200); rare[[50, 120]] = [0.02, -0.01]
    c = block_bootstrap_sharpe_ci(rare, block=5, n=500)
    assert np.isfinite([c["lower"], c["upper"]]).all() and c["lower"] <= c["upper"]
    with pytest.raises(ValueError, match="bootstrap_block"):
        block_bootstrap_sharpe_ci(r, block=0)


def test_auto_block_is_politis_white_of_returns_and_squares():
    from arch.bootstrap import optimal_block_length
    g = np.random.default_rng(0)
    r, v = np.empty(1000), 2e-5 / 0.05                                 # a synthetic GARCH(1,1): clustered volatility
    for t in range(1000):
        r[t] = np.sqrt(v) * g.standard_normal(); v = 2e-5 + 0.15 * r[t] ** 2 + 0.8 * v
    b = optimal_block_length(np.column_stack([r, r ** 2]))["circular"]
    assert sharpe_block_length(r) == int(np.ceil(b.max())) and b.iloc[1] > b.iloc[0]   # the squares set the block
    assert sharpe_block_length(r) > sharpe_block_length(g.permutation(r))               # no clustering: shorter
    ci = block_bootstrap_sharpe_ci(r, n=200)
    assert ci["block"] == sharpe_block_length(r) and block_bootstrap_sharpe_ci(r, block=None, n=200) == ci
    assert sharpe_block_length(r[:8]) == 2 and sharpe_block_length(np.zeros(100)) == 1   # short or flat


def test_config_file_and_table(hand):
    cfg = backtest_config(project_root() / "conf" / "backtest" / "default.yaml")
    assert cfg == BacktestConfig()
    assert (cfg.capital, cfg.commission, cfg.entry_fraction, cfg.pyramiding, cfg.max_position_fraction,
            cfg.spike_threshold, cfg.lookback, cfg.scaled, cfg.annualisation, cfg.risk_free) == \
        (10000, 0.001, 0.05, True, 1.0, 1.0, 2, (False, True), 365, 0)
    assert cfg.bootstrap_block == "auto"                               # arch's optimal_block_length, not a fixed 20 days
    assert backtest_config(bootstrap_block=None).bootstrap_block == "auto" and backtest_config(bootstrap_block=20).bootstrap_block == 20
    for bad in (0, -3, 2.5, "twenty", True):
        with pytest.raises(ValueError, match="bootstrap_block"):
            backtest_config(bootstrap_block=bad)
    with pytest.raises(ValueError, match="unknown key"):
        backtest_config({"capitol": 1})
    market, preds = hand
    two = pd.concat([preds, preds.assign(model="b", prediction=1.5)], ignore_index=True)
    tab = backtest_table(market, two, backtest_config(cfg, bootstrap_n=100))
    assert len(tab) == 2 * 7 and set(tab.model) == {"m", "b"}
    assert list(tab.columns[-5:]) == ["sharpe_lower", "sharpe_upper", "bootstrap_block", "commission_paid", "final_equity"]
    row = tab[(tab.model == "m") & (tab.strategy == "buy_low_sell_high") & (~tab.scaled)].iloc[0]
    assert round(row.final_equity, 2) == 10018.98 and round(row.commission_paid, 2) == 1.02


# ---------------------------------------------------------------- Table 6 over seeds, Figure 7's run

def _two_seed_runs():
    """Closes 100, 110, 99, 108.9, 98.01, opens at the previous close, no commission, 1,000 USD: seed 0 buys with all
    its cash at day 1's open (returns +10, -10, +10, -10 %, PnL -1.99 %), seed 1 with half (PnL -0.995 %)."""
    m = _market(close=[100, 110, 99, 108.9, 98.01], open_=[100, 100, 110, 99, 108.9])
    return {("m", s, "buy_and_hold", False): simulate(m.open, m.close, [f, 0, 0, 0, 0], [False] * 5, 1000, commission=0.0)
            for s, f in [(0, 1.0), (1, 0.5)]}


def test_table6_means_over_seeds_and_bootstraps_the_seed_averaged_strategy():
    runs = _two_seed_runs()
    cfg = BacktestConfig(bootstrap_n=300, bootstrap_block=2)
    per_seed = backtest_table(None, None, cfg, runs=runs, labels={"m": "Model M"})
    assert per_seed.label.tolist() == ["Model M", "Model M"] and per_seed.columns[:3].tolist() == ["model", "label", "seed"]
    assert per_seed.pnl_pct.tolist() == pytest.approx([-1.99, -0.995], abs=1e-9)
    t = table6(per_seed, runs, cfg, labels={"m": "Model M"})
    assert list(t.columns) == TABLE6_COLUMNS and len(t) == 1
    row = t.iloc[0]
    assert (row.label, row.strategy, row.scaled, row.n_seeds) == ("Model M", "buy_and_hold", False, 2)
    assert row.pnl_pct == pytest.approx(-1.4925, abs=1e-9)                 # the mean of -1.99 and -0.995
    assert row.final_equity == pytest.approx((980.1 + 990.05) / 2, abs=1e-9)
    assert row.sharpe == pytest.approx(per_seed.sharpe.mean(), rel=1e-12)  # mean over seeds, as before
    # seed 0: +-10 %; seed 1: +5 %, -5.238 %, +4.975 %, -5.211 %; the averaged strategy earns their mean each day
    r1 = np.array([1050 / 1000, 995 / 1050, 1044.5 / 995, 990.05 / 1044.5]) - 1
    r_avg = (np.array([0.1, -0.1, 0.1, -0.1]) + r1) / 2
    assert_allclose(seed_average_returns(runs)[("m", "buy_and_hold", False)].to_numpy(), r_avg, rtol=1e-12)
    assert row.sharpe_seed_avg == pytest.approx(r_avg.mean() / r_avg.std(ddof=1) * np.sqrt(365), rel=1e-12)
    ci = block_bootstrap_sharpe_ci(r_avg, block=2, n=300, seed=0)
    assert (row.sharpe_lower, row.sharpe_upper) == pytest.approx((ci["lower"], ci["upper"]), rel=1e-9)
    assert row.bootstrap_block == 2
    # not the mean of the per-seed end points (the old, meaningless aggregate)
    assert row.sharpe_lower != pytest.approx(per_seed.sharpe_lower.mean())


def test_table6_with_one_seed_is_the_run_itself(hand):
    market, preds = hand
    cfg = BacktestConfig(bootstrap_n=200)
    runs = backtest_runs(market, pd.concat([preds, preds.assign(model="b", prediction=1.5)], ignore_index=True), cfg)
    per_seed = backtest_table(market, preds, cfg, runs=runs)
    t = table6(per_seed, runs, cfg)
    assert t.label.tolist() == t.model.tolist() and (t.n_seeds == 1).all()
    cols = ["sharpe", "sharpe_lower", "sharpe_upper", "pnl_pct", "var95_historical_pct"]
    assert_allclose(t[cols].to_numpy(float), per_seed[cols].to_numpy(float), rtol=1e-12, equal_nan=True)
    assert_allclose(t.sharpe_seed_avg, t.sharpe, rtol=1e-12, equal_nan=True)
    assert t[["model", "strategy", "scaled"]].values.tolist() == per_seed[["model", "strategy", "scaled"]].values.tolist()


def test_table6_rejects_inconsistent_inputs():
    runs = _two_seed_runs()
    per_seed = backtest_table(None, None, BacktestConfig(bootstrap_n=20), runs=runs)
    with pytest.raises(ValueError, match="no display label"):
        table6(per_seed, runs, BacktestConfig(bootstrap_n=20), labels={"other": "X"})
    with pytest.raises(ValueError, match="no runs for"):
        table6(per_seed.assign(model="zz"), runs, BacktestConfig(bootstrap_n=20))
    with pytest.raises(ValueError, match="missing column"):
        table6(per_seed.drop(columns="seed"), runs)
    short = dict(runs)
    k = ("m", 1, "buy_and_hold", False)
    r = short[k]
    short[k] = type(r)(r.equity.iloc[:-1], r.position.iloc[:-1], r.cash.iloc[:-1], r.trades, r.round_trips, r.signals)
    with pytest.raises(ValueError, match="different days"):
        seed_average_returns(short)


def test_best_validation_run_uses_mean_validation_rmse():
    tr = pd.DataFrame({"model": ["a", "a", "b", "b", "c"], "seed": [0, 1, 0, 1, 0],
                       "best_val_rmse": [0.20, 0.10, 0.13, 0.12, 0.16]})
    assert best_validation_run(tr) == ("b", 1)          # a has the best single run (0.10), b the best mean (0.125)
    assert best_validation_run(tr[tr.model != "b"]) == ("a", 1)
    with pytest.raises(ValueError, match="missing column"):
        best_validation_run(tr.rename(columns={"best_val_rmse": "val"}))
    with pytest.raises(ValueError, match="no rows"):
        best_validation_run(tr.iloc[:0])


# ---------------------------------------------------------------- rules: published_code (the authors' notebooks)

PC = dict(rules="published_code", pyramiding=False, lookback=1, spike_rule="rising", annualisation=252)


def _pc(**kw):
    return backtest_config(**{**PC, **kw})


def test_published_code_yaml_composes_and_matches_the_notebooks():
    from volnb.core import compose_config
    cfg = backtest_config(compose_config("experiment=herremans backtest=published_code").backtest)
    assert (cfg.rules, cfg.entry_btc, cfg.scaled_multiplier, cfg.pyramiding) == ("published_code", 0.05, 2.0, False)
    assert (cfg.spike_rule, cfg.lookback, cfg.hold_days, cfg.annualisation, cfg.risk_free) == ("rising", 1, 1, 252, 0.0)
    assert (cfg.capital, cfg.commission) == (10000, 0.001)
    assert cfg == backtest_config(project_root() / "conf/backtest/published_code.yaml")
    assert backtest_config(compose_config("experiment=herremans").backtest).rules == "text"   # the default is unchanged
    with pytest.raises(ValueError, match="pyramiding"): backtest_config(rules="published_code")
    with pytest.raises(ValueError, match="spike_rule"): backtest_config(spike_rule="up")


def test_published_fixed_btc_entries_whatever_the_equity():
    """Buy-low-sell-high: days 1 and 3 close down with calm forecasts. 0.05 BTC at each next open, at 100 and 90,
    whatever the equity (1,000 or 10,000 USD); scaled: 0.05 x 2 x the forecast (0.8, then 0.7)."""
    m = _market(close=[100, 95, 97, 92, 99, 101], open_=[100, 98, 100, 96, 90, 100])
    p = _preds([0.9, 0.8, 1.2, 0.7, 0.9, 0.9])     # day 2: 1.2 rose from 0.8 -> a spike: sell at day 3's open
    for capital in (1000, 10000):
        res = run_strategy(m, p, "buy_low_sell_high", cfg=_pc(capital=capital))
        assert res.trades[["side", "price", "qty"]].values.tolist() == [["buy", 100.0, 0.05], ["sell", 96.0, 0.05],
                                                                        ["buy", 90.0, 0.05]]
        assert res.equity.iloc[-1] == pytest.approx(capital - 5 * 1.001 + 4.8 * 0.999 - 4.5 * 1.001 + 0.05 * 101, abs=1e-9)
    s = run_strategy(m, p, "buy_low_sell_high", scaled=True, cfg=_pc())
    assert s.trades.qty.tolist() == pytest.approx([0.05 * 2 * 0.8, 0.05 * 2 * 0.8, 0.05 * 2 * 0.7], abs=1e-15)


def test_published_one_position_at_a_time():
    """Entries every day, an exit on day 1: held from day 1's open, the exit of day 1 fills at day 2's open and the
    entry of the same day is ignored (the position was open at its close); day 2 finds it flat and buys again."""
    m = _market(close=[100, 100, 110, 120, 120], open_=[100, 100, 110, 120, 120])
    res = simulate_published(m.open, m.close, entry=[1.0] * 5, exit_=[False, True, False, False, False], capital=1000,
                             commission=0.0)
    assert res.trades[["date", "side", "qty"]].values.tolist() == [[m.index[1], "buy", 1.0], [m.index[2], "sell", 1.0],
                                                                   [m.index[3], "buy", 1.0]]
    assert res.position.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]          # never more than one entry's quantity
    text = simulate(m.open, m.close, entry=[0.1] * 5, exit_=[False, True, False, False, False], capital=1000, commission=0.0)
    assert text.trades.side.tolist() == ["buy", "sell", "buy", "buy", "buy"]   # the text's engine re-enters on the exit's open


def test_published_buy_the_cash_cannot_pay_is_rejected():
    m = _market(close=[100, 100, 100], open_=[100, 100, 100])
    res = simulate_published(m.open, m.close, entry=[10.0, 0, 0], exit_=[False] * 3, capital=1000, commission=0.001)
    assert res.trades.empty and res.rejected == [m.index[1]]            # 1,000 USD + 1 USD commission > 1,000 USD
    ok = simulate_published(m.open, m.close, entry=[9.99, 0, 0], exit_=[False] * 3, capital=1000, commission=0.001)
    assert len(ok.trades) == 1 and ok.cash.iloc[-1] == pytest.approx(1000 - 999 * 1.001, abs=1e-9)


def test_published_momentum_and_mean_reversion_on_the_same_days_return():
    """Day 1 falls, day 2 rises with a rising spike (0.9 -> 1.1): the published momentum buys (r_2 > 0 alone), the text's
    two-day trend does not. Day 4: a rising spike after a fall: mean reversion buys. Each closes one day after its fill."""
    m = _market(close=[100, 95, 99, 101, 97, 98, 98], open_=[100, 99, 96, 100, 102, 96, 99])
    p = _preds([0.9, 0.9, 1.1, 0.95, 1.3, 1.0, 1.0])
    mom = run_strategy(m, p, "momentum", cfg=_pc())
    assert mom.trades[["date", "side", "price"]].values.tolist() == [[m.index[3], "buy", 100.0], [m.index[4], "sell", 102.0]]
    assert run_strategy(m, p, "momentum").trades.empty                   # text: r_1 < 0 breaks the two-day rise
    mr = run_strategy(m, p, "mean_reversion", cfg=_pc())
    assert mr.trades[["date", "side", "price"]].values.tolist() == [[m.index[5], "buy", 96.0], [m.index[6], "sell", 99.0]]
    assert mr.trades.qty.tolist() == [0.05, 0.05]


def test_published_spike_needs_a_rising_forecast():
    p = pd.Series([1.2, 1.1, 1.3, 1.3, 0.9, 1.0])
    assert predicted_spike(p, 1.0, "level").tolist() == [True, True, True, True, False, True]
    assert predicted_spike(p, 1.0, "rising").tolist() == [False, False, True, False, False, True]
    # a falling forecast above the threshold: momentum under published_code does not trade it
    m = _market(close=[100, 101, 102, 103], open_=[100, 101, 102, 103])
    assert run_strategy(m, _preds([1.5, 1.4, 1.3, 1.2]), "momentum", cfg=_pc()).trades.empty
    assert not run_strategy(m, _preds([1.5, 1.4, 1.3, 1.2]), "momentum").trades.empty   # the text's level rule does


def test_published_no_lookahead_fills_at_the_next_open():
    """A signal at the close of t fills at the open of t+1 (backtrader's market order, as the text's engine);
    changing forecasts and prices from day 3 on changes nothing up to day 2's close, fills included."""
    m = _market(close=[100, 95, 97, 92, 99, 101], open_=[100, 98, 100, 96, 90, 100])
    p = _preds([0.9, 0.8, 1.2, 0.7, 0.9, 0.9])
    base = run_strategy(m, p, "buy_low_sell_high", cfg=_pc())
    for date in base.trades.date:
        prev = m.index[m.index.get_loc(date) - 1]
        assert base.signals.loc[prev, "entry"] > 0 or base.signals.loc[prev, "exit"]
    m2, p2 = m.copy(), p.copy()
    m2.loc[m2.index[3]:, ["open", "close"]] = 50.0
    m2["log_return"] = np.log(m2.close / m2.close.shift())
    p2.loc[3:, "prediction"] = 2.0
    alt = run_strategy(m2, p2, "buy_low_sell_high", cfg=_pc())
    assert_allclose(alt.equity.iloc[:3].to_numpy(), base.equity.iloc[:3].to_numpy())
    assert alt.trades[alt.trades.date <= m.index[2]].equals(base.trades[base.trades.date <= m.index[2]])
    assert alt.signals.iloc[:3].drop(columns="prediction").equals(base.signals.iloc[:3].drop(columns="prediction"))


def test_published_buy_and_hold_by_hand(hand):
    market, preds = hand
    res = run_strategy(market, preds, "buy_and_hold", cfg=_pc())
    assert res.trades[["date", "price", "qty"]].values.tolist() == [[market.index[1], 98.0, 0.05]]
    assert res.equity.iloc[-1] == pytest.approx(10000 - 0.05 * 98 * 1.001 + 0.05 * 101, abs=1e-9)
    r = res.account_returns
    assert len(r) == len(market) and r.iloc[0] == 0.0                   # the first day's return is counted (PyFolio)
    assert run_returns(res, _pc()).equals(r) and run_returns(res).equals(res.returns)


def test_quantstats_conventions_by_hand():
    """Returns 0, +2, -1, 0, -3, +1 % (six days). Four non-zero of six: time in market ceil(66.7) = 67 %. Kelly on the
    non-zero days: win rate 1/2, payoff 1.5 / 2 = 0.75, so 0.5 - 0.5 / 0.75 = -1/6. Sharpe = mean / sd * sqrt(252).
    Compounded value 1, 1.02, 1.0098, 1.0098, 0.979506, 0.98930106: drawdown 0.979506 / 1.02 - 1 = -3.97 %.
    VaR = mean - 1.6449 sd."""
    r = pd.Series([0.0, 0.02, -0.01, 0.0, -0.03, 0.01], pd.date_range("2021-03-01", periods=6, tz="UTC"))
    pq = performance_quantstats(r, pd.DataFrame({"return": [0.1]}))
    mu, sd = r.mean(), r.std(ddof=1)
    assert pq["time_in_market_pct"] == 67.0
    assert pq["kelly_pct"] == pytest.approx(100 * (0.5 - 0.5 / 0.75), abs=1e-9)
    assert pq["sharpe"] == pytest.approx(mu / sd * np.sqrt(252), rel=1e-12)
    assert pq["max_drawdown_pct"] == pytest.approx(100 * (1.02 * 0.99 * 0.97 / 1.02 - 1), abs=1e-9)
    assert pq["var95_parametric_pct"] == pytest.approx(100 * (mu - 1.6448536269514722 * sd), abs=1e-9)
    assert pq["pnl_pct"] == pytest.approx(100 * (1.02 * 0.99 * 0.97 * 1.01 - 1), abs=1e-9)
    assert pq["n_trades"] == 1
    # a loss on the very first day counts from the starting value 1 (quantstats adds the phantom base)
    assert performance_quantstats(pd.Series([-0.05, 0.01, 0.0]))["max_drawdown_pct"] == pytest.approx(-5.0, abs=1e-9)
    flat = performance_quantstats(pd.Series([0.0] * 5))                  # never traded: no Sharpe, no Kelly, 0 % in market
    assert flat["time_in_market_pct"] == 0.0 and np.isnan(flat["sharpe"]) and np.isnan(flat["kelly_pct"])
    with pytest.raises(ValueError, match="finite"): performance_quantstats(pd.Series([0.01, np.nan, 0.0]))


def test_published_table6_uses_quantstats_on_account_returns(hand):
    market, preds = hand
    cfg = _pc(bootstrap_n=50, bootstrap_block=2)
    runs = backtest_runs(market, preds, cfg)
    per = backtest_table(market, preds, cfg, runs=runs)
    assert {"n_rejected"} <= set(per.columns) and (per.n_rejected == 0).all()
    bh = per[per.strategy == "buy_and_hold"].iloc[0]
    r = runs[("m", 0, "buy_and_hold", False)].account_returns
    assert bh.sharpe == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(252), rel=1e-12)
    assert bh.time_in_market_pct == 80.0                                  # 4 of 5 days move: ceil(80) (day 0 is flat)
    t6 = table6(per, runs, cfg)
    assert t6.sharpe_seed_avg.iloc[0] == pytest.approx(bh.sharpe, rel=1e-12)   # one seed: the run itself
