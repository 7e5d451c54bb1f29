"""Look-back windows of the linear-attention transformer (volnb.lookback): identical samples for every window, no
look-ahead at the longest window, the scaler fitted on training rows only, shapes, a clear error for a too-long window,
and the summary table against hand-computed values."""
import numpy as np
import pandas as pd
import pytest
import torch

from volnb.lookback import (fit_window, lookback_data, lookback_study, lookback_table, paired_interval, sample_losses,
                            window_patches)
from volnb.metrics import qlike_loss
from volnb.panel_features import panel_targets
from volnb.panel_models import FeatureScaler, build_panel_model, predict_rows

from synthetic_panel import altered_after, features, one_block, synthetic_panel

CATS = {"AAA": "x", "BBB": "x"}
WINDOWS, PATCHES, WARMUP = [24, 48, 96], [4, 8, 16], 24
LINEAR = {"encoder": "transformer", "attention": "linear", "d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0}
DEEP = {"models": {"transformer": {k: v for k, v in LINEAR.items() if k != "attention"},
                   "lstm": {"encoder": "lstm", "d_model": 8, "n_layers": 1, "dropout": 0.0}},
        "warmup": WARMUP, "quantiles": [0.1, 0.5, 0.9], "loss_weights": [1.0, 1.0, 1.0], "min_token_hours": 200,
        "n_buckets": 2, "lr": 3e-3, "weight_decay": 0.0, "gradient_clip_val": 1.0}
LOOKBACK = {"windows": WINDOWS, "patches": PATCHES, "model": "transformer", "attention": "linear", "tokens": None,
            "test_start": None, "epochs": 1, "samples_per_epoch": 256, "batch_size": 128, "val_samples": 128, "patience": 1,
            "seeds": [0, 1], "threads": 1, "report_horizons": [4, 1],
            "bootstrap": {"block_hours": 24, "reps": 100, "level": 0.9, "seed": 0}}


@pytest.fixture(scope="module")
def data():
    panel = synthetic_panel()
    return panel, features(panel), panel_targets(panel, [1, 4])


def test_window_patches():
    assert window_patches([168, 720, 2160], [8, 24, 72]) == [(168, 8), (720, 24), (2160, 72)]
    assert window_patches([168, 720], [8]) == [(168, 8), (720, 8)]
    with pytest.raises(ValueError, match="lookback.patches.*patch=25.*window=720"): window_patches([168, 720], [8, 25])
    with pytest.raises(ValueError, match="lookback.patches has 2 values for 3 windows"): window_patches([1, 2, 4], [1, 2])
    with pytest.raises(ValueError, match="lookback.windows must increase"): window_patches([720, 168], [8])


def test_samples_are_those_of_the_longest_window(data):
    panel, feats, tg = data
    b = one_block(panel)
    d = lookback_data(panel, feats, tg, CATS, b, WINDOWS, WARMUP, [1, 4], 200, 2)
    # each token's first 96 + 24 hours (rows 0..118 within the token) cannot end a sample; row 119 is the first
    for tok, first in pd.Series(panel.index).groupby(panel.token.to_numpy()).min().items():
        rows = np.r_[d.train, d.val, d.test]
        assert rows[panel.token.to_numpy()[rows] == tok].min() == first + 96 + 24 - 1
    assert d.train.min() == 119
    # the same sample set whatever the shorter windows are: it is fixed by the longest
    d2 = lookback_data(panel, feats, tg, CATS, b, [96], WARMUP, [1, 4], 200, 2)
    for part in ("train", "val", "test"): np.testing.assert_array_equal(getattr(d, part), getattr(d2, part))


def test_too_long_window_names_the_setting(data):
    panel, feats, tg = data
    with pytest.raises(ValueError, match=r"lookback.windows: the longest window \(5000 h\).*no train sample"):
        lookback_data(panel, feats, tg, CATS, one_block(panel), [24, 5000], WARMUP, [1, 4], 200, 2)
    # 2,380 hours of history: training ends at hour 2,000, so only validation and test samples would exist
    with pytest.raises(ValueError, match="lookback.windows.*no train sample"):
        lookback_data(panel, feats, tg, CATS, one_block(panel), [24, 2100], WARMUP, [1, 4], 200, 2)


def test_scaler_is_fitted_on_training_rows_only(data):
    panel, feats, tg = data
    b = one_block(panel)
    d = lookback_data(panel, feats, tg, CATS, b, WINDOWS, WARMUP, [1, 4], 200, 2)
    rows = np.asarray(panel.timestamp + pd.Timedelta(hours=4) < b.validation[0])   # target known before validation
    ref = FeatureScaler.fit(feats.to_numpy(), list(feats.columns), rows=rows)
    np.testing.assert_allclose(d.scaler.center, ref.center)
    np.testing.assert_allclose(d.scaler.scale, ref.scale)
    feats2 = feats.copy()
    feats2.loc[panel.timestamp >= b.validation[0]] *= 1000.0
    d2 = lookback_data(panel, feats2, tg, CATS, b, WINDOWS, WARMUP, [1, 4], 200, 2)
    np.testing.assert_allclose(d2.scaler.center, d.scaler.center)
    np.testing.assert_allclose(d2.scaler.scale, d.scaler.scale)


def test_longest_window_forecast_at_t_does_not_see_data_after_t(data):
    panel, _, _ = data
    b = one_block(panel)
    T, later = altered_after(panel)
    outs = []
    for p in (panel, later):
        d = lookback_data(p, features(p), panel_targets(p, [1, 4]), CATS, b, WINDOWS, WARMUP, [1, 4], 200, 2)
        torch.manual_seed(0)
        net = build_panel_model({**LINEAR, "patch": 16}, d, 96, 3).eval()
        ends = d.test[p.timestamp.to_numpy()[d.test] <= np.datetime64(T)]
        outs.append(predict_rows(net, d, ends, 96))
    assert len(outs[0]) == 2 * 201
    torch.testing.assert_close(outs[0], outs[1])
    # and the check has teeth: a forecast after T does change
    d = lookback_data(later, features(later), panel_targets(later, [1, 4]), CATS, b, WINDOWS, WARMUP, [1, 4], 200, 2)
    d0 = lookback_data(panel, features(panel), panel_targets(panel, [1, 4]), CATS, b, WINDOWS, WARMUP, [1, 4], 200, 2)
    torch.manual_seed(0)
    net = build_panel_model({**LINEAR, "patch": 16}, d, 96, 3).eval()
    late = d.test[panel.timestamp.to_numpy()[d.test] > np.datetime64(T + pd.Timedelta(hours=10))][:5]
    assert not torch.allclose(predict_rows(net, d, late, 96), predict_rows(net, d0, late, 96))


def test_sample_losses_by_hand(data):
    panel, feats, tg = data
    d = lookback_data(panel, feats, tg, CATS, one_block(panel), WINDOWS, WARMUP, [1, 4], 200, 2)
    ends = d.test[:3]
    out = torch.zeros(3, 2, 5)
    out[:, :, 0] = torch.tensor([[0.0, 2.0], [1.0, -1.0], [-3.0, 0.5]])          # logits of up
    out[:, :, 1] = 2 * torch.log(torch.tensor([[0.5, 1.0], [0.7, 1.2], [0.4, 0.9]]))   # log variance, percent^2
    L = sample_losses(out, d, ends, [1, 4], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="outputs have 5 columns per horizon, expected 7"):
        sample_losses(out, d, ends, [1, 4], [0.05, 0.25, 0.5, 0.75, 0.95])
    assert list(L.columns) == ["row", "qlike_1h", "logloss_1h", "accuracy_1h", "qlike_4h", "logloss_4h", "accuracy_4h"]
    y = 100 * tg["vol_1h"].to_numpy()[ends]
    np.testing.assert_allclose(L["qlike_1h"], qlike_loss(y ** 2, np.array([0.5, 0.7, 0.4]) ** 2), rtol=1e-5)
    yd = tg["dir_4h"].to_numpy()[ends]
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
    np.testing.assert_allclose(L["logloss_4h"], -(yd * np.log(p) + (1 - yd) * np.log(1 - p)), rtol=1e-5)
    np.testing.assert_array_equal(L["accuracy_4h"], ((p > 0.5) == (yd == 1)).astype(float))


def test_paired_interval_matches_arch_and_covers_the_mean():
    from arch.bootstrap import MovingBlockBootstrap
    rng = np.random.default_rng(1)
    d = pd.Series(0.3 + rng.normal(0, 1, 500), index=pd.date_range("2023-01-01", periods=500, freq="h"))
    m, lo, hi = paired_interval(d, 24, 400, 0.95, 7)
    ci = MovingBlockBootstrap(24, d.to_numpy(), seed=7).conf_int(np.mean, reps=400, method="percentile", size=0.95)
    assert m == pytest.approx(d.mean()) and lo == pytest.approx(ci[0, 0]) and hi == pytest.approx(ci[1, 0])
    assert lo < 0.3 < hi and lo > 0.0                                          # a clear positive mean: 0 excluded


def test_table_by_hand():
    "Two windows, two seeds, two samples at two hours: means, seed std and the paired difference computed by hand."
    ts = pd.to_datetime(["2023-01-01 00:00", "2023-01-01 01:00"])
    rows = []
    for w, base_loss in ((24, 1.0), (48, 0.5)):
        for seed, shift in ((0, 0.0), (1, 0.2)):
            for split in ("validation", "test"):
                for i, t in enumerate(ts):
                    rows.append({"window": w, "seed": seed, "split": split, "row": i, "token": "AAA", "timestamp": t,
                                 "qlike_1h": base_loss + shift + i, "logloss_1h": 0.7, "accuracy_1h": float(i)})
    losses = pd.DataFrame(rows)
    runs = pd.DataFrame({"window": [24, 24, 48, 48], "patch": [4, 4, 8, 8], "positions": 6, "seed": [0, 1, 0, 1],
                         "epoch_seconds": [1.0, 3.0, 2.0, 2.0], "epochs": 2, "best_epoch": 1})
    t = lookback_table(losses, runs, [1], {"block_hours": 1, "reps": 50, "level": 0.9, "seed": 0})
    assert len(t) == 6 and set(t.metric) == {"qlike", "logloss", "accuracy"}
    q24 = t[(t.window == 24) & (t.metric == "qlike")].iloc[0]
    q48 = t[(t.window == 48) & (t.metric == "qlike")].iloc[0]
    assert q24.test_mean == pytest.approx(1.6) and q24.test_std == pytest.approx(np.std([1.5, 1.7], ddof=1))
    assert q24.test_diff == 0 and q24.epoch_seconds == 2.0 and q24.n_test == 2
    assert q48.test_mean == pytest.approx(1.1) and q48.test_diff == pytest.approx(-0.5)
    assert q48.test_diff_lo == pytest.approx(-0.5) and q48.test_diff_hi == pytest.approx(-0.5)   # every hour differs by 0.5
    assert q48.val_diff == pytest.approx(-0.5)


def test_study_shapes_and_identical_samples(data):
    panel, feats, tg = data
    runs, losses = lookback_study(panel, feats, tg, CATS, one_block(panel), DEEP, LOOKBACK, [1, 4], log=lambda *a: None)
    assert len(runs) == 3 * 2 and list(runs.positions) == [6] * 6
    assert set(runs.window) == set(WINDOWS) and runs.epoch_seconds.gt(0).all()
    d = lookback_data(panel, feats, tg, CATS, one_block(panel), WINDOWS, WARMUP, [1, 4], 200, 2)
    for (split, w, s), g in losses.groupby(["split", "window", "seed"]):
        np.testing.assert_array_equal(np.sort(g.row.to_numpy()), d.val if split == "validation" else d.test)
    assert len(losses) == 6 * (len(d.val) + len(d.test))
    t = lookback_table(losses, runs, [4, 1], LOOKBACK["bootstrap"])
    assert len(t) == 3 * 6 and (t.loc[t.window == 24, "test_diff"] == 0).all()
    assert t.loc[t.window > 24, ["test_diff_lo", "test_diff_hi"]].notna().all().all()
    assert (t.test_diff_lo <= t.test_diff + 1e-12).all() and (t.test_diff <= t.test_diff_hi + 1e-12).all()
    with pytest.raises(ValueError, match="lookback.model 'lstm' is not a transformer"):
        lookback_study(panel, feats, tg, CATS, one_block(panel), DEEP, {**LOOKBACK, "model": "lstm"}, [1, 4])


def test_select_tokens(data):
    from volnb.lookback import select_tokens
    panel, feats, tg = data
    p, f, t = select_tokens(panel, feats, tg, tokens=["BBB"])
    assert (p.token == "BBB").all() and len(p) == len(f) == len(t) == 3000 and p.index.equals(pd.RangeIndex(3000))
    np.testing.assert_array_equal(f.to_numpy(), feats[panel.token == "BBB"].to_numpy())
    assert len(select_tokens(panel, feats, tokens=None)[0]) == 6000
    with pytest.raises(ValueError, match=r"lookback.tokens \['ZZZ'\] are not in the panel"): select_tokens(panel, tokens=["ZZZ"])


def test_config_schema_matches_the_library():
    from omegaconf import OmegaConf
    from volnb import config as C
    from volnb.core import compose_config
    from volnb.lookback import LOOKBACK_SETTINGS
    assert set(C.LookbackSettings.model_fields) == set(LOOKBACK_SETTINGS)
    for exp, patches in (("multitoken", [8, 24, 72]), ("multitoken_paper", [1])):
        lb = OmegaConf.to_container(compose_config(f"experiment={exp}").experiment.lookback, resolve=True)
        assert lb["windows"] == [168, 720, 2160] and lb["patches"] == patches and lb["attention"] == "linear"
        assert window_patches(lb["windows"], lb["patches"])[-1] == (2160, patches[-1])
    with pytest.raises(Exception, match="lookback.patches: patch=25 does not divide window=720"):
        compose_config("experiment=multitoken experiment.lookback.patches=[8,25,72]")
