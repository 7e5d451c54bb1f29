"""Confidence-gated panel strategies (volnb.panel_backtest): hand-checked trades on tiny price paths (stop, gap,
fees, horizon exit, no trade without a confident call, no look-ahead), sizing, metrics and the paper comparison."""
import numpy as np
import pandas as pd
import pytest

from volnb.backtest import block_bootstrap_sharpe_ci, max_drawdown
from volnb.panel_backtest import (HOURS_PER_YEAR, beside_paper_table5, buy_and_hold, calm_gate, confident_sides,
                                  metric_intervals, portfolio, run_panel_strategy, simulate_trades, strategy_decisions,
                                  strategy_metrics, trailing_quantile)

T = pd.Timestamp


def bars(o, h, l, c, token="A", start="2022-01-01"):
    return pd.DataFrame({"token": token, "timestamp": pd.date_range(start, periods=len(c), freq="h"),
                         "open": np.asarray(o, float), "high": np.asarray(h, float), "low": np.asarray(l, float),
                         "close": np.asarray(c, float)})


def decide(times, sides, token="A"):
    return pd.DataFrame({"token": token, "timestamp": pd.to_datetime(times), "side": sides})


def test_long_stop_hit_inside_a_later_hour_fills_at_the_stop_with_fees():
    p = bars([100, 100, 101, 99], [100, 102, 101, 100], [100, 99, 96.5, 98], [100, 101, 97, 99.5])
    t = simulate_trades(p, decide(["2022-01-01 00:00"], [1]), horizon=3, stop_loss=0.03, fee=0.001)
    r = t.iloc[0]
    assert (r.exit_reason, r.exit_price, r.bars_held, r.exit_time) == ("stop", 97.0, 2, T("2022-01-01 02:00"))
    assert r.entry_price == 100.0 and r.stop_price == 97.0
    assert r.gross_return == pytest.approx(-0.03)
    assert r.fees == pytest.approx(0.001 * (1 + 0.97))
    assert r.net_return == pytest.approx(-0.03 - 0.00197)


def test_gap_through_the_stop_fills_at_the_open_for_longs_and_shorts():
    # long at 100, stop 97: the next bar opens at 95 (below the stop) -> filled at 95, not 97
    p = bars([100, 95, 95], [100, 96, 96], [100, 94, 94], [100, 95, 95])
    t = simulate_trades(p, decide(["2022-01-01"], [1]), horizon=2, stop_loss=0.03, fee=0.0)
    assert (t.exit_reason[0], t.exit_price[0], t.net_return[0]) == ("gap", 95.0, pytest.approx(-0.05))
    # short at 100, stop 103: the next bar opens at 104 -> filled at 104, a loss of 4 %
    p = bars([100, 104, 104], [100, 105, 105], [100, 103.5, 103.5], [100, 104, 104])
    t = simulate_trades(p, decide(["2022-01-01"], [-1]), horizon=2, stop_loss=0.03, fee=0.0)
    assert (t.exit_reason[0], t.exit_price[0]) == ("gap", 104.0)
    assert t.net_return[0] == pytest.approx(-0.04)


def test_short_stop_on_the_high_and_horizon_exit_with_fees():
    p = bars([100, 100, 100], [100, 103.5, 101], [100, 99, 99], [100, 100, 100])
    t = simulate_trades(p, decide(["2022-01-01"], [-1]), horizon=2, stop_loss=0.03, fee=0.0)
    assert (t.exit_reason[0], t.exit_price[0]) == ("stop", 103.0)
    # no stop reached: exit at the close h bars later; short from 100 to 90 = +10 % less fees on 100 and 90
    p = bars([100, 100, 95], [100, 101, 96], [100, 95, 89], [100, 96, 90])
    t = simulate_trades(p, decide(["2022-01-01"], [-1]), horizon=2, stop_loss=0.2, fee=0.001)
    assert (t.exit_reason[0], t.exit_price[0], t.bars_held[0]) == ("horizon", 90.0, 2)
    assert t.net_return[0] == pytest.approx(0.10 - 0.001 * 1.9)
    # without a stop a 50 % fall is held to the horizon
    t = simulate_trades(bars([100, 50], [100, 50], [100, 50], [100, 50]), decide(["2022-01-01"], [1]), 1, None, 0.0)
    assert (t.exit_reason[0], t.net_return[0]) == ("horizon", pytest.approx(-0.5))


def test_one_trade_per_token_and_no_trade_without_later_bars():
    p = bars(*[np.full(6, 100.0)] * 4)
    d = decide(pd.date_range("2022-01-01", periods=6, freq="h"), [1] * 6)
    t = simulate_trades(p, d, horizon=2, stop_loss=0.03, fee=0.0)
    # entries at 00:00 (exit 02:00), 02:00 (exit 04:00); 04:00 would need bar 06:00; calls at 01:00, 03:00 skipped
    assert t.entry_time.tolist() == [T("2022-01-01 00:00"), T("2022-01-01 02:00")]


def test_no_confident_prediction_no_trade():
    assert confident_sides([0.55, 0.45, 0.69, 0.31, np.nan], 0.70).tolist() == [0, 0, 0, 0, 0]
    fc = pd.DataFrame({"token": "A", "timestamp": pd.date_range("2022-01-01", periods=5, freq="h"),
                       "m_dir_1h": [0.55, 0.45, 0.69, 0.31, np.nan]})
    p = bars(*[np.full(6, 100.0)] * 4)
    b = run_panel_strategy(p, fc, "m", "m", 1, hours=p.timestamp, rule="threshold", threshold=0.70)
    assert b.n_confident == 0 and len(b.trades) == 0
    assert (b.equity == 1.0).all()
    with pytest.raises(ValueError, match="threshold"):
        confident_sides([0.6], threshold=1.2)
    with pytest.raises(ValueError, match="lack column"):
        strategy_decisions(fc, "other", 1)


def test_no_look_ahead_the_decision_at_t_uses_only_the_forecast_at_t():
    rng = np.random.default_rng(0)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 60)))
    o = np.r_[100.0, c[:-1]]
    p = bars(o, np.maximum(o, c) * 1.004, np.minimum(o, c) * 0.996, c)
    ts = p.timestamp[:50]
    q = rng.uniform(0.2, 0.8, 50)
    fc = pd.DataFrame({"token": "A", "timestamp": ts, "m_dir_4h": q})
    a = simulate_trades(p, strategy_decisions(fc, "m", 4, threshold=0.7), 4, 0.03, 0.001)
    # changing every forecast after hour 20 leaves every trade decided up to hour 20 unchanged
    q2 = q.copy(); q2[21:] = 1 - q2[21:]
    b = simulate_trades(p, strategy_decisions(fc.assign(m_dir_4h=q2), "m", 4, threshold=0.7), 4, 0.03, 0.001)
    cut = ts[20]
    pd.testing.assert_frame_equal(a[a.entry_time <= cut].reset_index(drop=True), b[b.entry_time <= cut].reset_index(drop=True))
    assert len(a[a.entry_time <= cut]) > 0
    # each trade enters at the close of its own forecast hour, and its side is that hour's forecast's
    side = dict(zip(ts, np.where(q > 0.7, 1, np.where(q < 0.3, -1, 0))))
    close = dict(zip(p.timestamp, p.close))
    assert all(side[r.entry_time] == r.side and close[r.entry_time] == r.entry_price and r.exit_time > r.entry_time
               for r in a.itertuples())
    # trailing thresholds use only earlier days: changing day 3 leaves days 1-3's thresholds unchanged
    tsl = pd.date_range("2022-01-01", periods=96, freq="h")
    v = rng.normal(size=96)
    v2 = v.copy(); v2[48:] += 10
    a_q, b_q = trailing_quantile(v, tsl, 0.9, 2, min_obs=5), trailing_quantile(v2, tsl, 0.9, 2, min_obs=5)
    np.testing.assert_array_equal(a_q[:72], b_q[:72])
    assert np.isnan(a_q[:24]).all() and not np.array_equal(a_q[72:], b_q[72:])


def test_calm_gate_is_per_token_and_causal():
    ts = np.repeat(pd.date_range("2022-01-01", periods=3, freq="D"), 2)
    tok = ["A", "B"] * 3
    vol = [1.0, 10.0, 0.5, 20.0, 2.0, 5.0]
    # day 2: A 0.5 < A's day-1 median 1.0 (calm); B 20 > 10. Day 3: A 2 > median(1, 0.5); B 5 < median(10, 20)
    assert calm_gate(vol, ts, tok, 0.5, window_days=2, min_obs=1).tolist() == [False, False, True, False, False, True]


def test_portfolio_sizes_each_trade_at_two_percent_of_realised_equity():
    tr = pd.DataFrame({"token": ["A", "B"], "entry_time": [T("2022-01-01 00:00"), T("2022-01-01 01:00")],
                       "exit_time": [T("2022-01-01 01:00"), T("2022-01-01 02:00")], "net_return": [0.5, -0.5]})
    eq, t = portfolio(tr, pd.date_range("2022-01-01", periods=3, freq="h"), position_size=0.02, capital=100.0)
    assert t.notional.tolist() == pytest.approx([2.0, 0.02 * 101.0])       # B sized after A's +1 is booked
    assert eq.tolist() == pytest.approx([100.0, 101.0, 101.0 - 1.01])
    with pytest.raises(ValueError, match="outside"):
        portfolio(tr, pd.date_range("2022-01-01", periods=2, freq="h"))


def test_buy_and_hold_pays_a_fee_each_way():
    p = bars([10, 10, 20], [10, 10, 20], [10, 10, 20], [10, 10, 20], token="BTC")
    e = buy_and_hold(p, p.timestamp, "BTC", fee=0.001)
    assert e.tolist() == pytest.approx([0.999, 0.999, 2 * 0.999 * 0.999])


def test_metrics_by_hand_and_the_sharpe_interval_matches_the_backtest_library():
    e = pd.Series([1.0, 1.02, 0.969, 1.05])
    m = strategy_metrics(e, [0.02, -0.05, 0.10, 0.0], periods_per_year=4)
    r = np.array([0.02, -0.05, 1.05 / 0.969 - 1])
    assert m["max_drawdown"] == pytest.approx(1 - 0.969 / 1.02) == pytest.approx(-max_drawdown(e))
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * 2)
    assert m["annual_return"] == pytest.approx(1.05 ** (4 / 3) - 1)
    assert (m["win_rate"], m["n_trades"]) == (pytest.approx(2 / 3), 4)                # a zero trade is neither
    assert m["win_loss_ratio"] == pytest.approx(0.06 / 0.05)
    rng = np.random.default_rng(1)
    eq = pd.Series(np.cumprod(np.r_[1.0, 1 + rng.normal(1e-4, 2e-3, 3000)]))
    ci = metric_intervals(eq, rng.normal(0, 0.01, 300), reps=300, seed=7)
    ref = block_bootstrap_sharpe_ci(eq.pct_change().iloc[1:], "auto", 300, 0.05, 7, HOURS_PER_YEAR)
    assert ci["sharpe"] == pytest.approx((ref["lower"], ref["upper"]))
    lo, hi = ci["win_rate"]
    assert 0 < lo < 0.5 < hi < 1


def test_beside_paper_table5_matches_strategy_and_metric():
    ours = pd.DataFrame({"strategy": ["garch", "garch"], "metric": ["sharpe", "win_rate"], "ours": [0.1, 0.5],
                         "lo": [-0.5, 0.45], "hi": [0.7, 0.55]})
    paper = pd.DataFrame({"paper_model": ["GARCH-Based"] * 2, "dir_model": ["garch"] * 2, "metric": ["sharpe", "win_rate"],
                          "value": [0.78, 0.532], "source": ["Table 5"] * 2})
    t = beside_paper_table5(paper, ours)
    assert t["within"].tolist() == [False, True]
    assert t["difference"].tolist() == pytest.approx([0.1 - 0.78, 0.5 - 0.532])
    with pytest.raises(ValueError, match="two figures"):
        beside_paper_table5(pd.concat([paper, paper]), ours)
