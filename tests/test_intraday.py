"""The spike60s bars, features and label: values on real bars, holes, no look-ahead, train-only threshold."""
import numpy as np
import pandas as pd
import pytest

from volnb.core import DataValidationError, compose_config
from volnb.data import load_minute_bars
from volnb.intraday import (SPIKE_FEATURES, OnlineFeatures, bar_features, build_spike_dataset,
                            load_spike_bars, next_minute_volatility, spike_threshold)


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
    with pytest.raises(DataValidationError, match="experiment.features"):
        build_spike_dataset(compose_config(["experiment=spike60s", "experiment.features=[rv_1m,funding]"]))
    with pytest.raises(DataValidationError, match="quantile"):
        spike_threshold(pd.Series([1.0, 2.0]), 1.5)
