"""volnb.train: windows and the masking rule, no look-ahead in training, determinism, checkpoint choice,
predictions in the contract and the training/model configs. Inputs are a small *synthetic* series."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from volnb.core import compose_config, project_root
from volnb.features import fit_scaler
from volnb.metrics import PREDICTION_COLUMNS, validate_predictions
from volnb.train import WindowDataset, make_windows, masked_rmse, predict, train_model, train_runs

N_TRAIN, N_VAL, N_TEST = 90, 25, 25


def synthetic(seed=0):
    "Synthetic daily features, market (target, split) and train-only scaler; not market data."
    rng = np.random.default_rng(seed)
    T = N_TRAIN + N_VAL + N_TEST
    idx = pd.date_range("2021-01-01", periods=T, freq="D", tz="UTC", name="date")
    X = pd.DataFrame(rng.normal(size=(T, 3)).cumsum(0) * 0.1 + 2, index=idx, columns=["a", "b", "c"])
    y = 0.8 + 0.05 * np.tanh(X["a"].to_numpy() - 2) + 0.01 * rng.normal(size=T)
    split = ["train"] * N_TRAIN + ["validation"] * N_VAL + ["test"] * N_TEST
    market = pd.DataFrame({"target": y, "split": split}, index=idx)
    return X, market, fit_scaler(X, market.split.eq("train"))


class TinyGRU(nn.Module):
    "Stand-in causal model with dropout (B, L, F) -> (B, L)."
    def __init__(self, n_features, hidden=8):
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, batch_first=True)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, 1)
        nn.init.constant_(self.out.bias, 0.8)

    def forward(self, x):
        h, _ = self.gru(x)
        return self.out(self.drop(h)).squeeze(-1)


def build(model_cfg, n_features, max_len):
    return TinyGRU(n_features)


def cfg(**train):
    "The project's composed config (every key of conf/train/cpu.yaml) with a small training profile."
    t = {"window": 8, "batch_size": 16, "max_epochs": 2, "patience": None, "lr": 1e-2,
         "weight_decay": 0.0, "progress_bar": False}
    t.update(train)
    c = compose_config()
    for k, v in t.items(): OmegaConf.update(c, f"train.{k}", v)
    return c


def state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def data():
    return synthetic()


# ---- windows -------------------------------------------------------------------------------------

def test_make_windows_shapes_and_alignment():
    X = np.arange(30.0).reshape(10, 3)
    Xw, yw = make_windows(X, np.arange(10.0), 4)
    assert Xw.shape == (7, 4, 3) and yw.shape == (7, 4)
    np.testing.assert_array_equal(yw[3], [3, 4, 5, 6])
    np.testing.assert_array_equal(Xw[3, -1], X[6])          # last position of window 3 is day 6
    with pytest.raises(ValueError, match="window 11"):
        make_windows(X, np.arange(10.0), 11)


def test_window_dataset_items(data):
    X, m, sc = data
    tr = WindowDataset(X, m.target, m.split, "train", 8)
    te = WindowDataset(X, m.target, m.split, "test", 8)
    assert len(tr) == N_TRAIN - 8 + 1 and len(te) == N_TEST
    x, y, mask = tr[5]
    assert x.shape == (8, 3) and y.shape == (8,) and mask.shape == (8,) and mask.dtype == torch.bool
    np.testing.assert_allclose(y.numpy(), m.target.iloc[5:13].to_numpy(), rtol=1e-6)
    assert te.timestamps[0] == m.index[N_TRAIN + N_VAL]      # test sample 0 ends on the first test day
    x, y, mask = te[0]                                        # its history comes from validation: allowed
    assert mask.all()


def test_train_windows_read_train_targets_only(data):
    X, m, _ = data
    ds = WindowDataset(X, m.target, m.split, "train", 8)
    lab = m.split.to_numpy()
    for e in ds.ends:
        assert (lab[e - 7: e + 1] == "train").all()          # every position is a train day
    m2 = m.copy()
    m2.loc[m2.split != "train", "target"] = np.nan           # hide all non-train targets
    ds2 = WindowDataset(X, m2.target, m2.split, "train", 8)
    for i in range(len(ds2)):
        _, y, mask = ds2[i]
        assert mask.all() and torch.isfinite(y).all()


def test_mask_drops_later_split_excluded_and_missing_targets():
    idx = pd.date_range("2021-01-01", periods=6, freq="D", tz="UTC")
    X = pd.DataFrame({"a": np.arange(6.0)}, index=idx)
    y = pd.Series([1.0, np.nan, 1.0, 1.0, 1.0, 1.0], index=idx)
    lab = pd.Series(["excluded", "train", "test", "train", "validation", "validation"], index=idx)
    ds = WindowDataset(X, y, lab, "validation", 5)
    _, yy, mask = ds[len(ds) - 1]                             # window over days 1..5
    np.testing.assert_array_equal(mask.numpy(), [False, False, True, True, True])  # NaN, later split (test)
    assert yy[1] == 0                                          # a masked target is never passed on


def test_window_longer_than_train_span(data):
    X, m, _ = data
    with pytest.raises(ValueError, match=rf"window {N_TRAIN + 1} .*train span \({N_TRAIN} days\)"):
        WindowDataset(X, m.target, m.split, "train", N_TRAIN + 1)


def test_validation_day_without_history(data):
    X, m, _ = data
    m2 = m.copy()
    m2.iloc[:3, m2.columns.get_loc("split")] = "validation"
    m2.iloc[3:N_TRAIN, m2.columns.get_loc("split")] = "train"
    with pytest.raises(ValueError, match="history for window 8"):
        WindowDataset(X, m2.target, m2.split, "validation", 8)


def test_masked_rmse():
    v = masked_rmse(torch.tensor([1.0, 2.0, 9.0]), torch.zeros(3), torch.tensor([True, True, False]))
    assert math.isclose(float(v), math.sqrt(2.5), rel_tol=1e-6)


# ---- training ------------------------------------------------------------------------------------

def test_training_reads_no_validation_or_test_target(data, tmp_path):
    "With early stopping off and a fixed epoch count, changing validation/test targets leaves the weights as they are."
    X, m, sc = data
    a = train_model(cfg(), X, m, sc, seed=3, out_dir=tmp_path / "a", build=build)
    m2 = m.copy()
    later = m2.split.isin(["validation", "test"])
    m2.loc[later, "target"] = m2.loc[later, "target"] * 3 + 1
    b = train_model(cfg(), X, m2, sc, seed=3, out_dir=tmp_path / "b", build=build)
    sa, sb = state(a["last_checkpoint"]), state(b["last_checkpoint"])
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a["best_val_rmse"] != b["best_val_rmse"]           # the perturbation did reach validation
    m3 = m.copy()                                              # control: a train target does move the weights
    m3.iloc[N_TRAIN - 1, m3.columns.get_loc("target")] += 1.0
    c = train_model(cfg(), X, m3, sc, seed=3, out_dir=tmp_path / "c", build=build)
    assert not torch.equal(sa["model.out.bias"], state(c["last_checkpoint"])["model.out.bias"])


def test_same_seed_same_predictions(data, tmp_path):
    X, m, sc = data
    p = [predict(train_model(cfg(), X, m, sc, seed=s, out_dir=tmp_path / str(i), build=build)["model"],
                 X, m, sc, window=8, seed=s) for i, s in enumerate([1, 1, 2])]
    pd.testing.assert_frame_equal(p[0], p[1])
    assert not np.allclose(p[0].prediction, p[2].prediction)


def test_best_checkpoint_is_lowest_val_rmse(data, tmp_path):
    X, m, sc = data
    res = train_model(cfg(max_epochs=6, patience=2, lr=5e-2), X, m, sc, seed=0, out_dir=tmp_path, build=build)
    log = pd.read_csv(res["metrics_csv"])
    v = log.dropna(subset=["val_rmse"]).reset_index(drop=True)
    assert res["epochs"] == len(v) and 1 <= len(v) <= 6
    best = v.loc[v.val_rmse.idxmin()]
    assert res["best_epoch"] == int(best.epoch)
    assert math.isclose(res["best_val_rmse"], float(best.val_rmse), rel_tol=1e-6)
    assert "train_rmse" in log and log.train_rmse.notna().sum() == len(v)
    # the reloaded weights are those of the best checkpoint, and they reproduce val_rmse
    sb = state(res["best_checkpoint"])
    for k, t in res["module"].state_dict().items():
        assert torch.equal(t, sb[k])
    p = predict(res["model"], X, m, sc, window=8, splits=("validation",))
    assert math.isclose(float(np.sqrt(((p.prediction - p.target) ** 2).mean())), res["best_val_rmse"], rel_tol=1e-5)


def test_parallel_runs_change_no_number(data, tmp_path):
    "Runs trained two at a time in spawned workers give the serial runs' table and bit-identical forecasts."
    X, m, sc = data
    cfgs = {"gru_a": cfg(), "gru_b": cfg(lr=5e-2)}
    out = {}
    for n in (1, 2):
        out[n] = train_runs(cfgs, [0, 1], X, m, sc, lambda mo, s: tmp_path / str(n) / mo / f"seed{s}", test_window=8,
                            parallel_runs=n, build=build, log=None)
    t1, p1 = out[1]
    t2, p2 = out[2]
    assert list(zip(t1.model, t1.seed)) == [("gru_a", 0), ("gru_a", 1), ("gru_b", 0), ("gru_b", 1)]
    pd.testing.assert_frame_equal(t1.drop(columns="fit_seconds"), t2.drop(columns="fit_seconds"))
    for name in cfgs:
        pd.testing.assert_frame_equal(p1[name], p2[name])
        assert set(p1[name].split) == {"validation", "test"}
    assert not np.allclose(p1["gru_a"].prediction, p1["gru_b"].prediction)   # the two configs do differ
    assert (tmp_path / "2" / "gru_a" / "seed0" / "train.log").exists()         # a worker's chatter went to its log


# ---- predictions ---------------------------------------------------------------------------------

def test_predict_contract(data, tmp_path):
    X, m, sc = data
    res = train_model(cfg(max_epochs=1), X, m, sc, seed=0, out_dir=tmp_path, build=build)
    p = predict(res["model"], X, m, sc, window=8, model_name="gru", seed=0)
    validate_predictions(p)
    assert list(p.columns) == PREDICTION_COLUMNS
    assert p.split.value_counts().to_dict() == {"validation": N_VAL, "test": N_TEST}
    days = m.index[m.split.isin(["validation", "test"])]
    assert p.timestamp.tolist() == days.tolist()
    np.testing.assert_allclose(p.target, m.target.loc[days])  # original target units
    assert res["model"].training is False
    # a prediction uses inputs only: changing test targets changes the target column, not the forecast
    m2 = m.copy()
    m2.loc[m2.split == "test", "target"] += 0.5
    p2 = predict(res["model"], X, m2, sc, window=8, model_name="gru", seed=0)
    np.testing.assert_array_equal(p.prediction, p2.prediction)


# ---- configs -------------------------------------------------------------------------------------

MODELS = ["lstm", "transformer", "synth_random", "synth_factorized_random", "synth_dense",
          "synth_factorized_dense", "synth_dense_dot", "synth_random_dot"]


def compose(model, train):
    try:
        return compose_config(f"+model={model} +train={train}")
    except Exception:                                          # once conf/config.yaml lists model/train
        return compose_config(f"model={model} train={train}")


@pytest.mark.parametrize("name", MODELS)
def test_model_configs(name):
    c = compose(name, "cpu")
    assert c.model.label and c.model.name in ("lstm", "transformer")
    if c.model.name == "lstm":
        assert {"hidden", "n_layers", "dropout"} <= set(c.model)
    else:
        assert {"attention", "d_model", "n_heads", "n_layers", "dropout", "rank", "positional"} <= set(c.model)
        assert c.model.attention in ("dot", "dense", "random", "factorized_dense", "factorized_random",
                                     "dense_dot", "random_dot")
        assert c.model.d_model % c.model.n_heads == 0


def test_model_configs_distinct():
    labels = {compose(n, "cpu").model.label for n in MODELS}
    assert len(labels) == len(MODELS)
    assert {compose(n, "cpu").model.get("attention") for n in MODELS[1:]} == {
        "dot", "dense", "random", "factorized_dense", "factorized_random", "dense_dot", "random_dot"}


def test_train_profiles():
    cpu, paper = compose("transformer", "cpu").train, compose("transformer", "paper").train
    assert (cpu.window, cpu.batch_size, cpu.max_epochs, cpu.patience, cpu.lr) == (32, 64, 60, 10, 1e-3)
    assert (paper.lr, paper.weight_decay, paper.patience, paper.max_epochs) == (1e-5, 1e-6, 200, 10000)
    assert list(cpu.seeds) == list(paper.seeds) == [0, 1, 2, 3, 4]
    assert cpu.accelerator == "cpu"


@pytest.mark.parametrize("name", MODELS)
def test_model_configs_build(name):
    "Every model config builds with volnb.models.build_model and maps (B, L, F) to (B, L)."
    models = pytest.importorskip("volnb.models")
    c = compose(name, "cpu")
    net = models.build_model(c.model, n_features=5, max_len=c.train.window)
    assert net(torch.randn(2, c.train.window, 5)).shape == (2, c.train.window)
