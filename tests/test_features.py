"""volnb.features: the target on hand-computable prices, transforms, split boundaries, and no look-ahead."""
import numpy as np
import pandas as pd
import pytest

from volnb.core import DataValidationError, compose_config
from volnb.data import load_daily_sources
from volnb.features import (apply_transform, assign_splits, build_dataset, fit_scaler, log_returns, spike_labels,
                            technical_features, volatility_target)


@pytest.fixture(scope="module")
def cfg():
    return compose_config("experiment=herremans")


@pytest.fixture(scope="module")
def sources(cfg, data_dir):
    return load_daily_sources(cfg)


@pytest.fixture(scope="module")
def ds(sources, cfg):
    return build_dataset(sources, cfg)


def test_target_hand_computed():
    idx = pd.date_range("2021-01-01", periods=5, tz="UTC")
    close = pd.Series([100.0, 101.0, 99.0, 99.0, 120.0], index=idx, name="close")
    r = log_returns(close)
    y = volatility_target(r)
    # day 2: returns ln(99/101) and ln(99/99)=0; std of two numbers = |a - b| / sqrt(2)
    expected = (np.sqrt(365) * abs(np.log(99 / 101) - 0.0) / np.sqrt(2)) ** 0.25
    assert y.iloc[2] == pytest.approx(expected, rel=1e-12)
    assert np.isnan(y.iloc[0]) and np.isnan(y.iloc[-1])
    # the power 1 variant is the annualised two-day volatility itself
    y1 = volatility_target(r, power=1.0)
    assert y1.iloc[3] == pytest.approx(np.sqrt(365) * abs(np.log(120 / 99)) / np.sqrt(2))
    lab = spike_labels(y, r, threshold=1.0)
    assert lab.spike.iloc[3] == 1.0 and lab.spike_up.iloc[3] == 1.0          # +19 % day: an upward spike
    assert y.iloc[1] < 1 and lab.spike.iloc[1] == 0.0


def test_transforms():
    s = pd.Series([0.0, 1.0, 8.0], name="f", index=pd.date_range("2020-01-01", periods=3, tz="UTC"))
    assert apply_transform(s, "sqrt").tolist() == [0.0, 1.0, np.sqrt(8.0)]
    assert apply_transform(s, "cbrt").tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert apply_transform(s, "log1p").tolist() == pytest.approx(np.log1p([0.0, 1.0, 8.0]).tolist())
    with pytest.raises(DataValidationError, match="domain of log") as e:
        apply_transform(s, "log")
    assert e.value.column == "f" and e.value.row == "2020-01-01"
    with pytest.raises(DataValidationError, match="domain of sqrt"):
        apply_transform(-s - 1, "sqrt")


def test_technical_features_ema_is_recursive():
    idx = pd.date_range("2020-01-01", periods=4, tz="UTC")
    o = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 0.5, "close": [1.0, 2.0, 3.0, 4.0]}, index=idx)
    ema = technical_features(o, ema_span=10).ema10
    a = 2 / 11
    e = 1.0
    for c in [2.0, 3.0, 4.0]: e = a * c + (1 - a) * e
    assert ema.iloc[-1] == pytest.approx(e)


def test_split_boundaries(ds):
    m = ds.market
    def days(k): return m.index[m.split == k]
    assert (days("train")[0].date().isoformat(), days("train")[-1].date().isoformat()) == ("2016-01-02", "2020-01-02")
    assert (days("validation")[0].date().isoformat(), days("validation")[-1].date().isoformat()) == ("2020-01-03", "2020-11-11")
    assert (days("test")[0].date().isoformat(), days("test")[-1].date().isoformat()) == ("2020-11-12", "2021-09-21")
    assert list(m.split.value_counts().sort_index().items()) == [("excluded", 1), ("test", 314), ("train", 1462), ("validation", 314)]


def test_overlapping_splits_rejected():
    idx = pd.date_range("2020-01-01", periods=10, tz="UTC")
    with pytest.raises(ValueError, match="overlap"):
        assign_splits(idx, {"train": ["2020-01-01", "2020-01-05"], "test": ["2020-01-05", "2020-01-09"]})


def test_dataset_shapes(ds):
    fm = ds.feature_map
    assert len(fm) == 70 and set(fm.status) == {"same", "substitute", "partial", "missing", "extra"}
    included = fm.name[fm.include].tolist()
    assert list(ds.features.columns) == included and list(ds.raw.columns) == included
    assert ds.features.notna().all().all()
    assert {"BTCminus", "long_liquidations", "taker_buy_volume"} <= set(fm.name[fm.status == "missing"])


def test_partial_feature_included_raises(cfg, sources):
    c = compose_config("experiment=herremans")
    from omegaconf import OmegaConf
    for f in c.features.features:
        if f.name == "open_interest": f.include = True
    with pytest.raises(DataValidationError, match="open_interest.*no value on 2016-01-01") as e:
        build_dataset(sources, c)
    assert e.value.column == "open_interest"


def _perturb_after(sources, t, seed=0):
    "Copy of the sources with every value after day t scaled by random factors (OHLC consistency kept)."
    rng = np.random.default_rng(seed)
    out = {}
    for k, df in sources.items():
        df = df.copy()
        after = df.index > t
        f = rng.uniform(0.5, 1.5, size=(int(after.sum()), 1))
        df.loc[after] = df.loc[after].to_numpy() * (f if k == "bitstamp" else rng.uniform(0.5, 1.5, size=(int(after.sum()), df.shape[1])))
        out[k] = df
    return out


@pytest.mark.parametrize("t", ["2017-06-30", "2020-01-02", "2020-11-11"])
def test_no_lookahead(sources, cfg, ds, t):
    "Changing any raw value after day t changes no feature (and no label input) at or before t."
    t = pd.Timestamp(t, tz="UTC")
    ds2 = build_dataset(_perturb_after(sources, t), cfg)
    before = ds.features.index <= t
    pd.testing.assert_frame_equal(ds.features[before], ds2.features[before])
    pd.testing.assert_frame_equal(ds.raw[before], ds2.raw[before])
    # the features after t did change, so the perturbation reached the features at all
    assert not np.allclose(ds.features[~before].to_numpy(), ds2.features[~before].to_numpy())
    # the target at t uses r_{t+1}, so it is the first thing that may move; the target before t may not
    pd.testing.assert_series_equal(ds.market.target[ds.market.index < t], ds2.market.target[ds2.market.index < t])


def test_scaler_uses_training_rows_only(sources, cfg, ds):
    t = pd.Timestamp("2020-01-02", tz="UTC")               # last training day
    ds2 = build_dataset(_perturb_after(sources, t, seed=1), cfg)
    s1 = fit_scaler(ds.features, ds.market.split.eq("train"))
    s2 = fit_scaler(ds2.features, ds2.market.split.eq("train"))
    assert s1 == s2


def test_end_after_data_rejected(sources):
    c = compose_config(["experiment=herremans", "experiment.end=2030-01-01"])
    with pytest.raises(DataValidationError, match="after the last complete price day"):
        build_dataset(sources, c)
