"""The spike60s bars, features and label: values on real bars, holes, no look-ahead, train-only threshold."""
import numpy as np
import pandas as pd
import pytest

from volnb.core import DataValidationError, compose_config
from volnb.data import load_minute_bars
from volnb.intraday import (FEATURE_BARS, HISTORY_BARS, SPIKE_FEATURES, OnlineFeatures, bar_features, build_spike_dataset,
                            complete_history, labelled_rows, load_spike_bars, next_minute_volatility, required_history,
                            spike_threshold)

SHORT = ["rv_1m", "rv_5m", "ret_5m", "hl_range"]          # the short-window features: 6 bars of history


@pytest.fixture(scope="module")
def cfg(data_dir):
    return compose_config("experiment=spike60s")


@pytest.fixture(scope="module")
def bars(cfg):
    return load_spike_bars(cfg)


@pytest.fixture(scope="module")
def ds(cfg):
    return build_spike_dataset(cfg)


def test_merge_is_union_without_duplicates(bars, data_dir):
    i2 = load_minute_bars(data_dir / "intraday/btcusdt_1m_binance_spot_freqtrade_2023-03-16_2023-05-01.json.gz")
    i3 = load_minute_bars(data_dir / "intraday/btcusdt_1m_binance_spot_freqtrade_2023-04-05_2023-05-05.json.gz")
    assert not bars.index.has_duplicates and bars.index.is_monotonic_increasing
    span = bars.loc["2023-03-16":"2023-05-06"]
    assert len(span) == len(i2.index.union(i3.index))
    assert span.index[-1] == i3.index[-1]


def test_features_by_hand_on_real_bars(bars):
    sl = bars.loc["2021-04-10 12:00":"2021-04-10 14:00"]
    f = bar_features(sl)
    t = sl.index[70]
    c = sl["close"]
    r = np.log(c / c.shift(1))
    np.testing.assert_allclose(f.loc[t, "rv_15m"], np.sqrt((r.iloc[56:71] ** 2).sum()), rtol=1e-12)
    np.testing.assert_allclose(f.loc[t, "rv_60m"], np.sqrt((r.iloc[11:71] ** 2).sum()), rtol=1e-12)
    np.testing.assert_allclose(f.loc[t, "ret_5m"], np.log(c.iloc[70] / c.iloc[65]), rtol=0, atol=1e-14)
    np.testing.assert_allclose(f.loc[t, "volume_intensity"], sl["volume"].iloc[70] / sl["volume"].iloc[11:71].mean(), rtol=1e-12)
    assert f["rv_60m"].iloc[:60].isna().all() and f["rv_60m"].iloc[60:].notna().all()


def test_halt_is_a_hole(bars, ds):
    # Binance halted spot trading on 2023-03-24 (72 stale bars 11:28-12:39, then 80 missing minutes to 13:59)
    halt = bars.loc["2023-03-24 11:28":"2023-03-24 12:39"]
    assert halt["stale"].all()
    rows = ds[ds["venue"] == "binance"].loc["2023-03-24 10:00":"2023-03-24 16:00"]
    # no row whose 60-minute history or next bar touches the hole
    assert rows.loc["2023-03-24 11:27":"2023-03-24 14:59"].empty
    assert not rows.loc["2023-03-24 15:00":].empty and not rows.loc[:"2023-03-24 11:26"].empty


@pytest.mark.parametrize("cut", [100, 1500, 2800])
def test_no_lookahead(bars, cut):
    """Changing every bar after t changes no feature at or before t."""
    sl = bars.loc["2021-04-15":"2021-04-16"].iloc[:3000]
    base = bar_features(sl)
    bumped = sl.copy()
    rng = np.random.default_rng(cut)
    k = bumped.index[cut + 1:]
    scale = rng.uniform(0.5, 2.0, len(k))
    for col in ("open", "high", "low", "close"): bumped.loc[k, col] *= scale
    bumped.loc[k, "volume"] *= rng.uniform(0.1, 10, len(k))
    after = bar_features(bumped)
    pd.testing.assert_frame_equal(base.iloc[:cut + 1], after.iloc[:cut + 1])
    assert not np.allclose(base.iloc[cut + 62:].to_numpy(), after.iloc[cut + 62:].to_numpy())


def test_label_is_the_next_bar_only(bars):
    sl = bars.loc["2021-04-20 06:00":"2021-04-20 08:00"]
    nv = next_minute_volatility(sl)
    t, t1 = sl.index[10], sl.index[11]
    np.testing.assert_allclose(nv.loc[t], np.log(sl.loc[t1, "high"] / sl.loc[t1, "low"]) / np.sqrt(4 * np.log(2)))
    bumped = sl.copy()
    bumped.loc[t1, "high"] *= 1.01
    changed = next_minute_volatility(bumped).compare(nv)
    assert list(changed.index) == [t]


def test_threshold_from_training_rows_only(ds, cfg):
    train = ds[ds["split"] == "train"]
    assert ds.attrs["threshold"] == pytest.approx(np.quantile(train["rv_next"], cfg.experiment.label.quantile))
    assert train["label"].mean() == pytest.approx(1 - cfg.experiment.label.quantile, abs=1e-3)
    assert ((ds["rv_next"] > ds.attrs["threshold"]) == ds["label"].astype(bool)).all()


def test_threshold_unchanged_by_later_spans(cfg):
    """Scaling every validation/test bar's range moves no training label and not the threshold."""
    ds = build_spike_dataset(cfg)
    later = compose_config(["experiment=spike60s", "experiment.split.validation=[2023-03-16 00:00,2023-03-20 23:59]"])
    ds2 = build_spike_dataset(later)
    assert ds.attrs["threshold"] == ds2.attrs["threshold"]
    assert spike_threshold(ds[ds.split == "train"]["rv_next"], 0.95) == ds.attrs["threshold"]


def test_splits_are_ordered_in_time(ds):
    main = ds[ds["venue"] == "binance"]
    spans = main.reset_index().groupby("split")["timestamp"].agg(["min", "max"])
    assert spans.loc["train", "max"] < spans.loc["validation", "min"]
    assert spans.loc["validation", "max"] < spans.loc["test", "min"]
    assert spans.loc["test", "max"] < spans.loc["test_2026", "min"]
    assert set(ds.columns) == {*SPIKE_FEATURES, "rv_next", "label", "split", "venue"}
    assert np.isfinite(ds[SPIKE_FEATURES].to_numpy()).all()


def test_live_equals_batch_across_a_hole(bars):
    sl = bars.loc["2023-03-24 09:00":"2023-03-24 16:30"]
    sl = sl[~sl["stale"]]
    batch = bar_features(sl)
    online = OnlineFeatures()
    live = {}
    for b in sl.reset_index().to_dict("records"):
        row = online.update(b)
        if row is not None: live[b["timestamp"]] = row
    live = pd.DataFrame.from_dict(live, orient="index")[SPIKE_FEATURES]
    expected = batch.dropna()
    assert online.resets == 1
    assert list(live.index) == list(expected.index)
    assert np.array_equal(live.to_numpy(), expected.to_numpy())


def test_bad_input_names_the_problem(bars, cfg):
    sl = bars.iloc[:10]
    with pytest.raises(DataValidationError, match="volume"):
        bar_features(sl.drop(columns="volume"))
    with pytest.raises(DataValidationError, match="duplicate"):
        bar_features(pd.concat([sl, sl.iloc[:1]]))
    with pytest.raises(DataValidationError, match="estimator"):
        next_minute_volatility(sl, "yang_zhang")
    with pytest.raises(DataValidationError, match="unknown feature 'funding'"):
        build_spike_dataset(compose_config(["experiment=spike60s", "experiment.features=[rv_1m,funding]"]))
    bad = compose_config("experiment=spike60s")
    bad.experiment.features, bad.experiment.history_bars = ["rv_1m"], 61
    with pytest.raises(DataValidationError, match="experiment.history_bars"):
        build_spike_dataset(bad)


# ------------------------------------------------------------------------------------------------ history


def test_feature_bars_are_the_bars_bar_features_reads(bars):
    "FEATURE_BARS[f] is the bar at which f first exists on contiguous real bars; HISTORY_BARS = the config's = 61."
    sl = bars.loc["2021-04-10 12:00":"2021-04-10 14:00"]
    assert not sl["stale"].any() and len(sl) == 121
    f = bar_features(sl)
    assert {c: int(f[c].notna().to_numpy().argmax()) + 1 for c in f} == {c: FEATURE_BARS[c] for c in f}
    assert all(f[c].iloc[FEATURE_BARS[c] - 1:].notna().all() for c in f)
    assert HISTORY_BARS == required_history(SPIKE_FEATURES) == compose_config("experiment=spike60s").experiment.history_bars == 61
    assert required_history(SHORT) == 6


def test_config_history_bars_must_be_what_the_features_need():
    "Checked where the history is used: the batch dataset and the live predictor."
    from volnb.predictor import experiment_history_bars
    with pytest.raises(ValueError, match=r"experiment.history_bars is 60: history_bars must be 61.*'rv_60m', reads 61"):
        experiment_history_bars("experiment.history_bars=60")
    with pytest.raises(DataValidationError, match=r"history_bars is 60, the features need 61"):
        build_spike_dataset(compose_config("experiment=spike60s experiment.history_bars=60"))
    with pytest.raises(ValueError, match=r"history_bars must be 6\b"):
        experiment_history_bars(f"experiment.features=[{','.join(SHORT)}]")
    with pytest.raises(ValueError, match=r"unknown feature 'funding'"):
        experiment_history_bars("experiment.features=[rv_1m,funding] experiment.history_bars=2")
    assert experiment_history_bars(f"experiment.features=[{','.join(SHORT)}] experiment.history_bars=6") == 6


def test_online_rows_of_a_subset_start_after_its_history(bars):
    "Four short-window features: the first row comes with the 6th bar and holds those four only, equal to batch."
    sl = bars.loc["2021-04-10 12:00":"2021-04-10 12:19"]
    online = OnlineFeatures(features=SHORT)
    rows = [online.update(b) for b in sl.reset_index().to_dict("records")]
    assert online.history_bars == 6 and [r is None for r in rows] == [True] * 5 + [False] * 15
    assert all(list(r) == SHORT for r in rows[5:])
    np.testing.assert_array_equal([list(r.values()) for r in rows[5:]], bar_features(sl)[SHORT].iloc[5:].to_numpy())
    with pytest.raises(ValueError, match="'rv_60m' needs 61 contiguous bars"):
        OnlineFeatures(history_bars=60)


def test_batch_rows_need_the_same_contiguous_history_as_live_rows(bars):
    "ret_5m reads only the closes 5 minutes apart, so across a one-minute hole a batch row would exist that the live"
    "service (its history restarted at the hole) cannot give: the batch keeps exactly the live rows."
    sl = bars.loc["2021-04-10 12:00":"2021-04-10 12:29"]
    sl = sl.drop(sl.index[15])                                             # one missing minute
    feats = ["ret_5m", "hl_range"]
    batch = labelled_rows(sl, "parkinson", required_history(feats))[feats].dropna()
    online = OnlineFeatures(features=feats)
    live = {b["timestamp"]: r for b in sl.reset_index().to_dict("records") if (r := online.update(b)) is not None}
    live = pd.DataFrame.from_dict(live, orient="index")[feats]
    assert list(batch.index) == list(live.index) and np.array_equal(batch.to_numpy(), live.to_numpy())
    assert len(bar_features(sl)[feats].dropna()) == len(batch) + 4          # without the check: 4 rows across the hole
    # with every feature the check drops nothing that a missing feature does not already drop
    full = bars.loc["2023-03-24 09:00":"2023-03-24 16:30"]
    assert complete_history(full, HISTORY_BARS).equals(bar_features(full)["rv_60m"].notna())
    with pytest.raises(DataValidationError, match="quantile"):
        spike_threshold(pd.Series([1.0, 2.0]), 1.5)
