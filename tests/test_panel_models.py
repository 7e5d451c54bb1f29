"""Global deep models of the multi-token study (volnb.panel_models): data of a block, no look-ahead, leakage at chance, bundles."""
import numpy as np
import pandas as pd
import pytest
import torch

from volnb.panel_features import panel_targets
from volnb.panel_models import (BlockData, FeatureScaler, PanelForecaster, block_data, build_panel_model, deep_walk_forward,
                                forecast_frame, predict_rows, save_bundle)
from volnb.walkforward import Block

from synthetic_panel import altered_after, features, one_block, synthetic_panel

SETTINGS = {"window": 24, "warmup": 24, "quantiles": [0.1, 0.5, 0.9], "loss_weights": [1.0, 1.0, 1.0],
            "min_token_hours": 200, "n_buckets": 2, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.0,
            "samples_per_epoch": 3072, "epochs_first": 4, "epochs_refit": 1, "patience": 2, "warm_start": True,
            "val_samples": 1024, "seed": 0, "threads": 1, "gradient_clip_val": 1.0}
LSTM = {"encoder": "lstm", "d_model": 16, "n_layers": 1, "dropout": 0.0}
CATS = {"AAA": "x", "BBB": "x", "CCC": "y"}


@pytest.fixture(scope="module")
def data():
    panel = synthetic_panel()
    return panel, features(panel), panel_targets(panel, [1, 4])


def test_block_rows_respect_time(data):
    panel, feats, tg = data
    b = one_block(panel)
    d = block_data(panel, feats, tg, CATS, b, [1, 4], window=24, warmup=24, min_token_hours=200, n_buckets=2)
    ts = panel.timestamp.to_numpy()
    # a training window's last target (4 hours ahead) is known before validation starts; validation's before the test
    assert (ts[d.train] + np.timedelta64(4, "h") < np.datetime64(b.validation[0])).all()
    assert (ts[d.val] >= np.datetime64(b.validation[0])).all()
    assert (ts[d.val] + np.timedelta64(4, "h") < np.datetime64(b.test[0])).all()
    assert (ts[d.test] >= np.datetime64(b.test[0])).all() and (ts[d.test] < np.datetime64(b.test[1])).all()
    # the first sample of each token has window + warm-up hours behind it (rows 0..46 of each token are too early)
    assert d.train.min() == 47
    assert d.X.shape == (len(panel), feats.shape[1]) and d.y_vol.shape == (len(panel), 2)
    np.testing.assert_allclose(d.y_vol[:, 0].numpy(), 100 * tg["vol_1h"].to_numpy(), rtol=1e-6)


def test_scaler_is_fitted_on_training_rows_only(data):
    panel, feats, tg = data
    b = one_block(panel)
    d = block_data(panel, feats, tg, CATS, b, [1, 4], window=24, warmup=24, min_token_hours=200)
    rows = np.asarray(panel.timestamp + pd.Timedelta(hours=4) < b.validation[0])
    ref = FeatureScaler.fit(feats.to_numpy(), list(feats.columns), rows=rows)
    np.testing.assert_allclose(d.scaler.center, ref.center)
    feats2 = feats.copy()
    feats2.loc[panel.timestamp >= b.validation[0]] *= 1000.0          # validation and test features change wildly
    d2 = block_data(panel, feats2, tg, CATS, b, [1, 4], window=24, warmup=24, min_token_hours=200)
    np.testing.assert_allclose(d2.scaler.center, d.scaler.center)
    np.testing.assert_allclose(d2.scaler.scale, d.scaler.scale)


def test_forecast_at_t_does_not_see_data_after_t(data):
    "No look-ahead: altering every bar after hour T leaves the forecasts made at or before T unchanged."
    panel, _, _ = data
    b = one_block(panel)
    T, later = altered_after(panel)
    outs = []
    for p in (panel, later):
        f, tg = features(p), panel_targets(p, [1, 4])
        d = block_data(p, f, tg, CATS, b, [1, 4], window=24, warmup=24, min_token_hours=200, n_buckets=2)
        torch.manual_seed(0)
        net = build_panel_model(LSTM, d, 24, 3).eval()
        ends = d.test[p.timestamp.to_numpy()[d.test] <= np.datetime64(T)]
        outs.append(predict_rows(net, d, ends, 24))
    assert len(outs[0]) > 300
    torch.testing.assert_close(outs[0], outs[1])


def test_short_history_token_shares_the_unknown_embedding_and_direction_mask():
    panel = synthetic_panel(tokens=("AAA", "BBB"))
    late = synthetic_panel(hours=2300, tokens=("CCC",), seed=3, start="2021-01-29 20:00")   # listed 700 hours later
    panel = pd.concat([panel, late], ignore_index=True).sort_values(["token", "timestamp"], ignore_index=True)
    f, tg = features(panel), panel_targets(panel, [1])
    d = block_data(panel, f, tg, CATS, one_block(panel), [1], window=24, warmup=24, min_token_hours=1400,
                   direction_tokens=["AAA", "CCC"])
    assert d.known_tokens == ["AAA", "BBB"]                         # CCC has 1300 training hours < 1400
    tok = panel.token.to_numpy()
    assert (d.static[tok == "CCC", 0] == 0).all() and (d.static[tok == "AAA", 0] == 1).all()
    assert d.static[tok == "CCC", 1].unique().tolist() == [2]        # category y (sorted: x=1, y=2)
    assert torch.isnan(d.y_dir[tok == "BBB"]).all() and not torch.isnan(d.y_dir[tok == "AAA"][:-1]).any()
    with pytest.raises(ValueError, match="no category for token 'CCC'"):
        block_data(panel, f, tg, {"AAA": "x", "BBB": "x"}, one_block(panel), [1])
    with pytest.raises(ValueError, match="targets lack column"):
        block_data(panel, f, tg, CATS, one_block(panel), [1, 24])


def test_real_labels_are_learned_and_permuted_labels_score_at_chance(data, tmp_path):
    """The leakage test of the study: the same pipeline on labels permuted within token (training and test) must score
    at chance, while the real labels of a predictable series (AR(1), phi = -0.6) are learned."""
    panel, feats, tg = data
    b = [one_block(panel)]
    fc, runs = deep_walk_forward(panel, feats, tg, CATS, b, "lstm", LSTM, SETTINGS, tmp_path / "real", [1, 4], log=lambda s: None)
    y = tg.loc[fc.index, "dir_1h"]
    ok = y.notna()
    acc_real = float(((fc.loc[ok, "lstm_dir_1h"] > 0.5) == (y[ok] > 0.5)).mean())
    rng = np.random.default_rng(1)
    perm = tg.copy()
    for tok, idx in panel.groupby("token").groups.items():
        for c in ("dir_1h", "dir_4h"):
            perm.loc[idx, c] = rng.permutation(perm.loc[idx, c].to_numpy())
    fc2, _ = deep_walk_forward(panel, feats, perm, CATS, b, "lstm", LSTM, SETTINGS, tmp_path / "perm", [1, 4], log=lambda s: None)
    y2 = perm.loc[fc2.index, "dir_1h"]
    ok2 = y2.notna()
    acc_perm = float(((fc2.loc[ok2, "lstm_dir_1h"] > 0.5) == (y2[ok2] > 0.5)).mean())
    assert ok.sum() > 1000
    assert acc_real > 0.6, acc_real                   # about 0.7 for phi = -0.6
    assert 0.45 < acc_perm < 0.55, acc_perm           # n ~ 1,150: chance +- 3 standard errors
    assert runs.loc[0, "n_train_windows"] > 3000 and runs.loc[0, "best_val_loss"] > 0


def test_bundle_round_trip(data, tmp_path):
    panel, feats, tg = data
    b = one_block(panel)
    d = block_data(panel, feats, tg, CATS, b, [1, 4], window=24, warmup=24, min_token_hours=200, n_buckets=2)
    torch.manual_seed(0)
    net = build_panel_model({"encoder": "transformer", "d_model": 8, "n_heads": 2, "n_layers": 1, "patch": 4}, d, 24, 3).eval()
    path = save_bundle(tmp_path / "m" / "model.pt", net, d, "tr", {"encoder": "transformer", "d_model": 8, "n_heads": 2,
                       "n_layers": 1, "patch": 4}, SETTINGS, [1, 4], b, {"AAA": 1, "BBB": 2})
    bundle = torch.load(path, weights_only=True)
    assert bundle["horizons"] == [1, 4] and bundle["quantiles"] == [0.1, 0.5, 0.9] and bundle["liquidity"] == {"AAA": 1, "BBB": 2}
    scaler = FeatureScaler.from_dict(bundle["scaler"])
    np.testing.assert_array_equal(scaler.transform(feats.to_numpy()), d.X.numpy())
    cfg = dict(bundle["model"])
    net2 = PanelForecaster(len(scaler.names), len(bundle["tokens"]) + 1, len(bundle["categories"]) + 1, bundle["n_buckets"] + 1,
                           n_horizons=2, n_quantiles=3, encoder=cfg.pop("encoder"), window=bundle["window"], **cfg)
    net2.load_state_dict(bundle["state_dict"]); net2.eval()
    torch.testing.assert_close(predict_rows(net2, d, d.test[:50], 24), predict_rows(net, d, d.test[:50], 24))


def test_bad_settings_are_named(data, tmp_path):
    panel, feats, tg = data
    d = block_data(panel, feats, tg, CATS, one_block(panel), [1, 4], window=24, warmup=24, min_token_hours=200)
    with pytest.raises(ValueError, match="unknown model setting"):
        build_panel_model({"encoder": "lstm", "hidden": 3}, d, 24, 3)
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_panel_model({"encoder": "gru"}, d, 24, 3)
    with pytest.raises(ValueError, match="deep settings lack batch_size"):
        deep_walk_forward(panel, feats, tg, CATS, [one_block(panel)], "m", LSTM,
                          {k: v for k, v in SETTINGS.items() if k != "batch_size"}, tmp_path, [1, 4])
    with pytest.raises(ValueError, match="quantiles must be distinct"):
        deep_walk_forward(panel, feats, tg, CATS, [one_block(panel)], "m", LSTM, {**SETTINGS, "quantiles": [0.5, 0.5]},
                          tmp_path, [1, 4])
