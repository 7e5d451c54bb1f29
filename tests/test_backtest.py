"""volnb.backtest: fills at the next open, commissions to the cent, pyramiding caps, metrics, bad prediction files."""
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from volnb.backtest import (BacktestConfig, align_predictions, annual_volatility, backtest_config, backtest_table,
                            block_bootstrap_sharpe_ci, buy_low_sell_high, cagr, kelly_criterion, max_drawdown,
                            mean_reversion, momentum, performance, returns_fell, run_strategy, sharpe_ratio,
                            simulate, trade_stats, trend, value_at_risk)
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

def test_block_bootstrap_sharpe_ci():
    r = np.random.default_rng(11).normal(0.001, 0.03, 500)            # synthetic returns
    ci = block_bootstrap_sharpe_ci(r, block=20, n=2000, alpha=0.05, seed=5)
    assert ci["sharpe"] == pytest.approx(sharpe_ratio(r))
    assert ci["lower"] < ci["sharpe"] < ci["upper"]
    assert block_bootstrap_sharpe_ci(r, seed=5) == ci                  # deterministic per seed
    assert block_bootstrap_sharpe_ci(r, seed=6) != ci
    wide = block_bootstrap_sharpe_ci(r, alpha=0.01, seed=5)
    assert wide["lower"] <= ci["lower"] and wide["upper"] >= ci["upper"]


def test_config_file_and_table(hand):
    cfg = backtest_config(project_root() / "conf" / "backtest" / "default.yaml")
    assert cfg == BacktestConfig()
    assert (cfg.capital, cfg.commission, cfg.entry_fraction, cfg.pyramiding, cfg.max_position_fraction,
            cfg.spike_threshold, cfg.lookback, cfg.scaled, cfg.annualisation, cfg.risk_free) == \
        (10000, 0.001, 0.05, True, 1.0, 1.0, 2, (False, True), 365, 0)
    with pytest.raises(ValueError, match="unknown key"):
        backtest_config({"capitol": 1})
    market, preds = hand
    two = pd.concat([preds, preds.assign(model="b", prediction=1.5)], ignore_index=True)
    tab = backtest_table(market, two, backtest_config(cfg, bootstrap_n=100))
    assert len(tab) == 2 * 7 and set(tab.model) == {"m", "b"}
    row = tab[(tab.model == "m") & (tab.strategy == "buy_low_sell_high") & (~tab.scaled)].iloc[0]
    assert round(row.final_equity, 2) == 10018.98 and round(row.commission_paid, 2) == 1.02
