"""Multi-token panel features and targets: hand-checked values, no look-ahead, holes, bad input."""
import math

import numpy as np
import pandas as pd
import pytest

from volnb.core import DataValidationError
from volnb.panel_features import (FEATURE_GROUPS, FEATURES, check_panel, lagged_fear_greed, panel_features,
                                  panel_targets, static_covariates)

T0 = pd.Timestamp("2024-01-01")          # a Monday
H = pd.Timedelta(hours=1)


def bars(token, closes, start=T0, drop=(), spread=0.004, volume=None, seed=0):
    "Hourly bars of one token: open = previous close, high/low a little outside open/close; rows `drop` removed."
    rng = np.random.default_rng(seed)
    c = np.asarray(closes, float)
    o = np.r_[c[0], c[:-1]]
    up, dn = rng.uniform(0, spread, len(c)), rng.uniform(0, spread, len(c))
    v = rng.uniform(10, 100, len(c)) if volume is None else np.asarray(volume, float)
    df = pd.DataFrame({"token": token, "timestamp": pd.date_range(start, periods=len(c), freq="h"), "open": o,
                       "high": np.maximum(o, c) * (1 + up), "low": np.minimum(o, c) * (1 - dn), "close": c,
                       "volume": v, "filled": False})
    return df.drop(index=list(drop)).reset_index(drop=True)


def walk(n, seed, sigma=0.01, start=100.0):
    return start * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, sigma, n)))


@pytest.fixture(scope="module")
def panel():
    "BTC, ETH, XYZ (holes at hours 100 and 250-259, a zero volume), LATE (listed at hour 300); 480 hours."
    n = 480
    xyz_v = np.random.default_rng(5).uniform(10, 100, n)
    xyz_v[200] = 0.0
    parts = [bars("BTC", walk(n, 1), seed=1), bars("ETH", walk(n, 2), seed=2),
             bars("LATE", walk(n - 300, 4), start=T0 + 300 * H, seed=4),
             bars("XYZ", walk(n, 3, 0.02), drop=[100, *range(250, 260)], volume=xyz_v, seed=3)]
    p = pd.concat(parts, ignore_index=True)
    p.loc[(p.token == "XYZ") & p.timestamp.isin([T0 + 150 * H, T0 + 151 * H]), "filled"] = True
    return p


@pytest.fixture(scope="module")
def fear_greed():
    days = pd.date_range(T0 - pd.Timedelta(days=3), periods=30, freq="D")
    return pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "fear_greed_index": np.arange(30) * 3 + 1})


def scramble(p, rows, seed):
    "Multiply OHLC of `rows` by random factors (keeping high >= low) and redraw their volumes."
    p = p.copy()
    rng = np.random.default_rng(seed)
    k = rng.uniform(0.5, 2.0, rows.sum())
    for col in ("open", "high", "low", "close"):
        p.loc[rows, col] = p.loc[rows, col] * k
    p.loc[rows, "volume"] = rng.uniform(0, 1000, rows.sum())
    return p


def by_time(feats, p, token):
    return feats[(p.token == token).to_numpy()].set_index(p.loc[p.token == token, "timestamp"])


# --- no look-ahead --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [120, 255, 330, 470])
def test_features_ignore_everything_after_t(panel, fear_greed, cut):
    t = T0 + cut * H
    f = panel_features(panel, fear_greed=fear_greed)
    fut = (panel.timestamp > t).to_numpy()
    changed = scramble(panel, fut, seed=cut)
    # and a new outage in the future, BTC's included
    changed = changed[~((changed.timestamp > t + 2 * H) & (changed.timestamp < t + 6 * H))].reset_index(drop=True)
    fg = fear_greed.copy()
    fg.loc[pd.to_datetime(fg.date) >= t.normalize(), "fear_greed_index"] = 99     # day D's own value: not yet known
    f2 = panel_features(changed, fear_greed=fg)
    key = ["token", "timestamp"]
    ka = pd.concat([panel[key], f], axis=1).set_index(key)
    kb = pd.concat([changed[key], f2], axis=1).set_index(key)
    past = (kb.index.get_level_values("timestamp") <= t)
    assert past.sum() == (~fut).sum()
    pd.testing.assert_frame_equal(ka.loc[kb.index[past]], kb[past], check_exact=True)
    assert not ka.loc[kb.index[~past]].fillna(-9).equals(kb[~past].fillna(-9))     # the future did move


def test_features_no_lookahead_on_real_slice(data_dir):
    raw = pd.read_csv(data_dir / "binance_spot_usdt_1h_116tokens_2021-2023.csv.gz", nrows=170_000)
    raw = raw[raw.ticker.isin(["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"])]
    p = pd.DataFrame({"token": raw.ticker.str.removesuffix("USDT"), "timestamp": pd.to_datetime(raw.date),
                      **{k: raw[k].astype(float) for k in ("open", "high", "low", "close", "volume")}, "filled": False})
    p = p[(p.timestamp >= "2022-10-01") & (p.timestamp < "2022-12-01")].sort_values(["token", "timestamp"])
    p = p.reset_index(drop=True)
    fg = pd.read_csv(data_dir / "fear_greed_daily_alternative_me.csv")
    t = pd.Timestamp("2022-11-08 15:00")                 # FTX week
    f = panel_features(p, fear_greed=fg)
    fut = (p.timestamp > t).to_numpy()
    fg2 = fg.copy()
    fg2.loc[pd.to_datetime(fg2.date) >= t.normalize(), "fear_greed_index"] = 0
    f2 = panel_features(scramble(p, fut, seed=7), fear_greed=fg2)
    pd.testing.assert_frame_equal(f[~fut], f2[~fut], check_exact=True)
    assert not f[fut].equals(f2[fut])
    assert f.loc[~fut & (p.token == "SOL").to_numpy(), "btc_corr_168h"].notna().sum() > 100


def test_targets_depend_only_on_bars_from_t_on(panel):
    y = panel_targets(panel)
    t = T0 + 200 * H
    before = (panel.timestamp < t).to_numpy()
    y2 = panel_targets(scramble(panel, before, seed=1))
    pd.testing.assert_frame_equal(y[~before], y2[~before], check_exact=True)
    far = (panel.timestamp > t + 24 * H).to_numpy()
    upto = (panel.timestamp <= t).to_numpy()
    y3 = panel_targets(scramble(panel, far, seed=2))
    pd.testing.assert_frame_equal(y[upto], y3[upto], check_exact=True)
    # hours t+1..t+24 do feed the target of hour t
    near = ((panel.timestamp > t) & (panel.timestamp <= t + 24 * H)).to_numpy()
    y4 = panel_targets(scramble(panel, near, seed=3))
    at_t = (panel.timestamp == t).to_numpy()
    assert not np.allclose(y.loc[at_t, "vol_24h"], y4.loc[at_t, "vol_24h"])


# --- values by hand --------------------------------------------------------------------------------------------

def test_rsi_by_hand():
    # the closes of the worked example in StockCharts' ChartSchool article on the RSI
    closes = [44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955, 45.4245, 45.8433, 46.0826,
              45.8931, 46.0328, 45.6140, 46.2820, 46.2820, 46.0028, 46.0328, 46.4116, 46.2222, 45.6439]
    # Wilder: the first averages are plain means of 14 changes, then avg = (13 * avg + x) / 14
    ch = np.diff(closes)
    g, l = np.clip(ch, 0, None), np.clip(-ch, 0, None)
    ag, al = g[:14].mean(), l[:14].mean()
    expect = [100 * ag / (ag + al)]
    for x, y in zip(g[14:], l[14:]):
        ag, al = (13 * ag + x) / 14, (13 * al + y) / 14
        expect.append(100 - 100 / (1 + ag / al))
    f = panel_features(bars("BTC", closes), eth=None)
    assert f["rsi_14h"].iloc[:14].isna().all()
    np.testing.assert_allclose(f["rsi_14h"].iloc[14:], expect, rtol=1e-6)
    # and the RSI that article's table gives for them, to two decimals
    np.testing.assert_allclose(expect, [70.53, 66.32, 66.55, 69.41, 66.36, 57.97], atol=0.006)


def test_parkinson_and_squared_return_volatility_by_hand():
    p = pd.DataFrame({"token": "BTC", "timestamp": pd.date_range(T0, periods=5, freq="h"),
                      "open": [100, 100, 102, 101, 103.], "high": [101, 103, 102.5, 104, 103.5],
                      "low": [99, 99.5, 100.5, 100, 102], "close": [100, 102, 101, 103, 103.], "volume": 1.0})
    f = panel_features(p, eth=None)
    rets = [math.log(102 / 100), math.log(101 / 102), math.log(103 / 101), 0.0]
    assert f["rv_4h"].iloc[3] != f["rv_4h"].iloc[3]       # NaN: only 3 returns by hour 3
    assert f["rv_4h"].iloc[4] == pytest.approx(math.sqrt(sum(r * r for r in rets)), rel=1e-6)
    assert f["rv_1h"].iloc[2] == pytest.approx(abs(math.log(101 / 102)), rel=1e-6)
    park = [math.log(h / l) ** 2 / (4 * math.log(2)) for h, l in zip([103, 102.5, 104, 103.5], [99.5, 100.5, 100, 102])]
    assert f["pk_4h"].iloc[4] == pytest.approx(math.sqrt(sum(park)), rel=1e-6)
    assert f["pk_1h"].iloc[0] == pytest.approx(math.log(101 / 99) / math.sqrt(4 * math.log(2)), rel=1e-6)
    assert f["hl_range"].iloc[1] == pytest.approx(math.log(103 / 99.5), rel=1e-6)
    assert f["co_spread"].iloc[2] == pytest.approx(math.log(101 / 102), rel=1e-6)
    assert f["ret_3h"].iloc[4] == pytest.approx(math.log(103 / 102), abs=1e-7)


def test_technical_indicators_by_hand():
    c = 100 + np.arange(60.0) % 7
    v = 1 + np.arange(60.0)
    p = bars("BTC", c, volume=v)
    f = panel_features(p, eth=None, windows={"ma": (24, 5), "bollinger": 20})
    last = c[-20:]
    m, s = last.mean(), last.std(ddof=0)
    assert f["bb_pos_20h"].iloc[-1] == pytest.approx((c[-1] - (m - 2 * s)) / (4 * s), rel=1e-6)
    assert f["ma_gap_24h"].iloc[-1] == pytest.approx(c[-1] / c[-24:].mean() - 1, rel=1e-5, abs=1e-7)
    assert f["ma_gap_5h"].iloc[-1] == pytest.approx(c[-1] / c[-5:].mean() - 1, rel=1e-5, abs=1e-7)
    tp = (p.high + p.low + p.close).to_numpy()[-24:] / 3
    assert f["vwap_gap_24h"].iloc[-1] == pytest.approx(c[-1] / ((tp * v[-24:]).sum() / v[-24:].sum()) - 1, rel=1e-5)
    assert f["volume_lchg_1h"].iloc[-1] == pytest.approx(math.log(60 / 59), rel=1e-6)
    assert f["volume_lchg_24h"].iloc[-1] == pytest.approx(math.log(v[-24:].sum() / v[-48:-24].sum()), rel=1e-6)
    assert f["volume_lchg_24h"].iloc[:47].isna().all() and f["volume_lchg_24h"].iloc[47:].notna().all()
    assert f["volume_rel_168h"].isna().all()               # 60 hours < 7 days
    g = panel_features(p, eth=None, windows={"volume_mean": 10})
    assert g["volume_rel_10h"].iloc[-1] == pytest.approx(60 / v[-10:].mean(), rel=1e-6)


def test_corwin_schultz_worked_example():
    # Corwin & Schultz (2012), eqs. (14), (18), (19), on bars 1-2 and 2-3, then averaged (window 2)
    hi, lo = [101.0, 101.5, 102.0], [99.0, 99.2, 100.4]
    k = 3 - 2 * math.sqrt(2)

    def two_bar(h1, l1, h2, l2):
        beta = math.log(h1 / l1) ** 2 + math.log(h2 / l2) ** 2
        gamma = math.log(max(h1, h2) / min(l1, l2)) ** 2
        alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
        return max(0.0, 2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha)))

    s12, s23 = two_bar(hi[0], lo[0], hi[1], lo[1]), two_bar(hi[1], lo[1], hi[2], lo[2])
    p = pd.DataFrame({"token": "BTC", "timestamp": pd.date_range(T0, periods=3, freq="h"), "open": [100, 100, 101.],
                      "high": hi, "low": lo, "close": [100, 101, 101.], "volume": 1.0})
    f = panel_features(p, eth=None, windows={"spread": 2})
    assert s12 == pytest.approx(0.013233, abs=1e-6) and s23 > 0
    assert f["cs_spread_2h"].iloc[2] == pytest.approx((s12 + s23) / 2, rel=1e-6)
    assert np.isnan(f["cs_spread_2h"].iloc[1])
    # two identical bars: the whole range is the spread, exactly (101 - 99) / 100
    q = p.assign(high=101.0, low=99.0)
    assert panel_features(q, eth=None, windows={"spread": 2})["cs_spread_2h"].iloc[2] == pytest.approx(0.02, rel=1e-6)


def test_btc_beta_and_correlation_match_numpy():
    n = 400
    rng = np.random.default_rng(11)
    rb = rng.normal(0, 0.01, n)
    rx = 0.7 * rb + rng.normal(0, 0.008, n)
    p = pd.concat([bars("BTC", 100 * np.exp(np.cumsum(rb))), bars("XYZ", 5 * np.exp(np.cumsum(rx)))], ignore_index=True)
    f = by_time(panel_features(p, eth=None), p, "XYZ")
    cx, cb = np.log(p.close[p.token == "XYZ"].to_numpy()), np.log(p.close[p.token == "BTC"].to_numpy())
    x, b = np.diff(cx), np.diff(cb)                      # x[i] is the return of hour i + 1
    for t in (168, 250, n - 1):
        wx, wb = x[t - 168:t], b[t - 168:t]
        assert f["btc_corr_168h"].iloc[t] == pytest.approx(np.corrcoef(wx, wb)[0, 1], rel=1e-5)
        assert f["btc_beta_168h"].iloc[t] == pytest.approx(np.polyfit(wb, wx, 1)[0], rel=1e-5)
    assert f["btc_corr_168h"].iloc[:168].isna().all()    # 168 returns need 169 hours
    fb = by_time(panel_features(p, eth=None), p, "BTC")
    assert fb["btc_beta_168h"].dropna().to_numpy() == pytest.approx(1.0, rel=1e-5)


def test_cross_token_features_are_the_references_own_at_the_same_hour(panel):
    f = panel_features(panel)
    btc = by_time(f, panel, "BTC")
    eth = by_time(f, panel, "ETH")
    late = by_time(f, panel, "LATE")
    pd.testing.assert_series_equal(late["btc_ret_1h"], btc.loc[late.index, "ret_1h"], check_names=False)
    pd.testing.assert_series_equal(late["eth_rv_24h"], eth.loc[late.index, "rv_24h"], check_names=False)
    xyz = by_time(f, panel, "XYZ")
    pd.testing.assert_series_equal(xyz["btc_rv_24h"], btc.loc[xyz.index, "rv_24h"], check_names=False)


def test_fear_greed_is_previous_days_value(panel, fear_greed):
    f = by_time(panel_features(panel, fear_greed=fear_greed), panel, "BTC")
    fg = fear_greed.set_index(pd.to_datetime(fear_greed.date))["fear_greed_index"]
    for day in ("2024-01-02", "2024-01-05"):
        d = pd.Timestamp(day)
        hours = f.loc[d:d + 23 * H, "fear_greed"]
        assert len(hours) == 24
        assert (hours == fg[d - pd.Timedelta(days=1)]).all()
        assert not (hours == fg[d]).any()
    # a day missing from the table: the day before it, once; never a later day's value
    gap = fear_greed[fear_greed.date != "2024-01-03"]
    v = lagged_fear_greed(gap, pd.date_range("2024-01-04", periods=24, freq="h"))
    assert (v == fg[pd.Timestamp("2024-01-02")]).all()
    assert np.isnan(lagged_fear_greed(gap, [pd.Timestamp("2024-01-04")], max_stale_days=0)).all()


def test_time_of_day_and_weekday():
    f = panel_features(bars("BTC", walk(48, 1)), eth=None)
    hour = np.arange(48) % 24
    np.testing.assert_allclose(f["hour_sin"], np.sin(2 * np.pi * hour / 24), atol=1e-6)
    np.testing.assert_allclose(f["hour_cos"], np.cos(2 * np.pi * hour / 24), atol=1e-6)
    dow = np.r_[[0] * 24, [1] * 24]                      # Monday, Tuesday
    np.testing.assert_allclose(f["dow_sin"], np.sin(2 * np.pi * dow / 7), atol=1e-6)


def test_holes_break_windows():
    c = walk(120, 9)
    p = bars("BTC", c, drop=[50])
    f = by_time(panel_features(p, eth=None), p, "BTC")
    hour = ((f.index - T0) / H).astype(int)
    nan = lambda col: set(hour[f[col].isna().to_numpy()])          # noqa: E731
    assert nan("ret_1h") == {0, 51}
    assert nan("rv_24h") == set(range(0, 24)) | set(range(51, 75))  # the 24 returns of 51..74 include r_51
    assert nan("ret_24h") == set(range(0, 24)) | set(range(51, 75))
    assert nan("ma_gap_24h") == set(range(0, 23)) | set(range(51, 74))
    assert nan("hl_range") == set()
    assert f.loc[T0 + 75 * H, "ret_24h"] == pytest.approx(math.log(c[75] / c[51]), abs=1e-6)
    # the same token without the hole has all these values
    assert panel_features(bars("BTC", c), eth=None)["rv_24h"].iloc[24:].notna().all()


def test_zero_volume_and_flat_prices_give_nan_not_inf():
    c = np.r_[np.full(30, 1.0), 1.0001, np.full(20, 1.0)]
    v = np.r_[np.full(40, 5.0), 0.0, np.full(10, 5.0)]
    p = pd.DataFrame({"token": "BTC", "timestamp": pd.date_range(T0, periods=len(c), freq="h"), "open": c,
                      "high": c, "low": c, "close": c, "volume": v})
    f = panel_features(p, eth=None)
    assert np.isfinite(f.to_numpy()[~np.isnan(f.to_numpy())]).all()
    assert np.isnan(f["volume_lchg_1h"].iloc[40]) and np.isnan(f["volume_lchg_1h"].iloc[41])
    assert f["rsi_14h"].iloc[20] == 50.0                  # no move at all in the memory
    assert np.isnan(f["bb_pos_20h"].iloc[25])             # flat: no band


def test_feature_columns_and_groups(panel):
    f = panel_features(panel)
    assert list(f.columns) == FEATURES
    assert list(FEATURE_GROUPS) == ["recent_returns", "volume", "realised_volatility", "btc_correlation",
                                    "technical_indicators", "sentiment", "time_of_day", "cross_token"]
    assert f.index.equals(panel.index) and (f.dtypes == np.float32).all()
    assert f["fear_greed"].isna().all()                   # none given


# --- targets ---------------------------------------------------------------------------------------------------

def test_targets_by_hand():
    c = [100, 101, 101, 99, 100, 102, 102.0]
    p = bars("BTC", c)
    y = panel_targets(p, horizons=(1, 4))
    assert y["dir_1h"].tolist()[:6] == [1, 0, 0, 1, 1, 0]          # 101 -> 101 is flat: 0
    assert np.isnan(y["dir_1h"].iloc[6])
    r = np.diff(np.log(c))
    assert y["vol_4h"].iloc[0] == pytest.approx(math.sqrt((r[:4] ** 2).sum()), rel=1e-6)
    assert y["fwd_ret_4h"].iloc[2] == pytest.approx(math.log(102 / 101), rel=1e-6)
    assert y["vol_4h"].iloc[3:].isna().all()
    pf = p.copy()
    pf.loc[3, "filled"] = True
    yf = panel_targets(pf, horizons=(1, 4))
    assert yf["vol_1h"].isna().tolist() == [False, False, True, False, False, False, True]
    assert yf["vol_4h"].isna().tolist() == [True, True, True, True, True, True, True]
    assert yf["dir_1h"].iloc[3] == 1                              # hour 3 itself filled: its forward hour is real
    ym = panel_targets(p.drop(index=[4]).reset_index(drop=True), horizons=(1,))
    assert ym["dir_1h"].isna().tolist() == [False, False, False, True, False, True]


# --- static covariates ----------------------------------------------------------------------------------------

def test_static_covariates_use_only_data_before_asof(panel):
    cats = {"BTC": "large_cap", "ETH": "large_cap", "XYZ": "defi", "LATE": "meme"}
    asof = T0 + 200 * H
    a = static_covariates(panel, cats, asof, n_buckets=2, min_hours=100)
    after = (panel.timestamp >= asof).to_numpy()
    b = static_covariates(scramble(panel, after, seed=5), cats, asof, n_buckets=2, min_hours=100)
    pd.testing.assert_frame_equal(a, b)
    p = panel[(panel.timestamp < asof) & (panel.timestamp >= asof - 48 * H) & (panel.token == "ETH")]
    w = static_covariates(panel, cats, asof, window_hours=48, n_buckets=2, min_hours=10)
    assert w.loc["ETH", "dollar_volume"] == pytest.approx((p.close * p.volume).mean())
    assert w.loc["ETH", "liquidity_hours"] == 48
    assert pd.isna(a.loc["LATE", "liquidity_bucket"])
    ranked = a["dollar_volume"].drop("LATE").sort_values()
    assert a.loc[ranked.index, "liquidity_bucket"].tolist() == [0, 0, 1]
    assert a["category"].to_dict() == cats
    # filled hours do not count
    assert a.loc["XYZ", "liquidity_hours"] == 200 - 1 - 2
    summary = pd.DataFrame({"ticker": ["BTCUSDT", "ETHUSDT", "XYZUSDT", "LATEUSDT"], "category": ["a", "b", "c", "d"]})
    assert static_covariates(panel, summary, asof)["category"].tolist() == ["a", "b", "d", "c"]


# --- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("breaker, text", [
    (lambda p: p.drop(columns="high"), "column 'high'"),
    (lambda p: p.iloc[::-1], "not sorted"),
    (lambda p: p.iloc[np.r_[0:10, 500:505, 10:500, 505:len(p)]], "one block"),
    (lambda p: pd.concat([p.iloc[:3], p.iloc[[2]], p.iloc[3:]]), "duplicate (token, timestamp)"),
    (lambda p: p.assign(timestamp=p.timestamp.astype(str)), "datetime64"),
    (lambda p: p.assign(timestamp=p.timestamp + pd.Timedelta(minutes=30)), "not on the hour"),
    (lambda p: p.assign(close=p.close.where(p.index != 7, -1.0)), "column 'close'"),
    (lambda p: p.assign(volume=p.volume.where(p.index != 7, -1.0)), "negative volume"),
    (lambda p: p.assign(high=p.low * 0.9), "high below low"),
])
def test_bad_input_is_named(panel, breaker, text):
    with pytest.raises(DataValidationError, match=None) as e:
        panel_features(breaker(panel))
    assert text in str(e.value)
    with pytest.raises(DataValidationError):
        panel_targets(breaker(panel))


def test_bad_input_names_the_row(panel):
    bad = panel.copy()
    bad.loc[7, "close"] = 0.0
    with pytest.raises(DataValidationError, match=r"row 7 \(token BTC, 2024-01-01 07:00:00\)"):
        check_panel(bad)
    dup = pd.concat([panel.iloc[:3], panel.iloc[[2]]])
    with pytest.raises(DataValidationError, match="row 2 .*02:00"):
        check_panel(dup)


def test_missing_reference_or_filled_is_an_error(panel):
    with pytest.raises(DataValidationError, match="'SOL'"):
        panel_features(panel, btc="SOL")
    with pytest.raises(DataValidationError, match="column 'filled'"):
        panel_targets(panel.drop(columns="filled"))
    with pytest.raises(DataValidationError, match="column 'fear_greed_index'"):
        panel_features(panel, fear_greed=pd.DataFrame({"date": ["2024-01-01"], "value": [3]}))
    with pytest.raises(DataValidationError, match="no category"):
        static_covariates(panel, {"BTC": "x"}, T0 + 10 * H)
