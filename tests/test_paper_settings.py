"""The Herremans & Low paper's own settings (issue 15, section 4): the `paper_*` model variants against Table 2,
`train=paper` against Section 5.2, the Table 1 sweep specs against Table 1, and the model-level batch size.
References are the paper's tables as transcribed in conf/paper/herremans/ (table1_grid.csv, table2_best.csv,
table3.csv), read here independently of the configs they check."""
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from volnb.core import compose_config, project_root
from volnb.features import fit_scaler
from volnb.stages import model_configs
from volnb.sweep import check_rank_column, load_spec, metric_span, plan_sweep
from volnb.train import train_model

PAPER = project_root() / "conf" / "paper" / "herremans"
TABLE2 = pd.read_csv(PAPER / "table2_best.csv")
TABLE1 = pd.read_csv(PAPER / "table1_grid.csv")


@pytest.fixture(scope="module")
def paper_models():
    return model_configs("experiment=herremans_paper")


def table1(family: str) -> dict:
    "Table 1's values for one family (lstm | transformer): {hyperparameter: [values]}, NA rows left out."
    t = TABLE1[TABLE1.family.eq(family) & TABLE1["values"].notna()]
    return {r["hyperparameter"]: [float(v) if "." in v else int(v) for v in str(r["values"]).split()]
            for r in t.to_dict("records")}


# ---- Table 2: the paper_* model variants ------------------------------------------------------------

def test_herremans_paper_trains_table3_models_in_order(paper_models):
    neural = [m for m in pd.read_csv(PAPER / "table3.csv").model if m != "garch"]      # Table 3's rows, GARCH aside
    assert list(paper_models) == [f"paper_{m}" for m in neural]
    assert sorted(neural) == sorted(TABLE2.model)


@pytest.mark.parametrize("row", TABLE2.to_dict("records"), ids=list(TABLE2.model))
def test_paper_variant_carries_table2(paper_models, row):
    m = paper_models[f"paper_{row['model']}"].model
    assert m.batch_size == row["batch_size"] == 4
    assert m.dropout == pytest.approx(row["dropout"])
    assert m.n_layers == row["layers"]
    if row["model"] == "lstm":
        assert m.name == "lstm" and m.hidden == row["hidden"]
    else:
        assert m.name == "transformer" and m.n_heads == row["heads"]
        assert m.d_model % m.n_heads == 0
        # same attention variant as the repository's own config of that model
        assert m.attention == compose_config(f"model={row['model']}").model.attention


def test_paper_variants_use_section_5_2_profile(paper_models):
    for name, c in paper_models.items():
        assert c.experiment.name == "herremans_paper" and c.train.window == 64, name
        assert c.model.name == "lstm" or c.model.max_len == 64, name


# ---- Section 5.2: train=paper -----------------------------------------------------------------------

def test_train_paper_is_section_5_2():
    # "sequence length ... 64", "weight decay ... 1e-6", "Adam ... learning rate of 1e-5",
    # "maximum number of epochs set to 10,000 and a patience of 200" (Section 5.2)
    for ov in ("train=paper", "experiment=herremans_paper"):
        t = compose_config(ov).train
        assert (t.window, t.lr, t.weight_decay, t.max_epochs, t.patience) == (64, 1e-5, 1e-6, 10_000, 200), ov
        assert t.batch_size == 4                                       # Table 2: batch size 4 for every model
    assert compose_config().train.window != 64                         # the default profile is the CPU one


# ---- Table 1: the sweep specs -----------------------------------------------------------------------

SPEC_KEYS = {"layers": "model.n_layers", "heads": "model.n_heads", "batch_size": "model.batch_size",
             "dropout": "model.dropout", "hidden": "model.hidden"}


def spec_grid(spec) -> dict:
    inv = {v: k for k, v in SPEC_KEYS.items()}
    return {inv[k]: v for k, v in spec.grid.items() if k != "model"}


def test_full_grid_specs_equal_table1():
    tr, ls = load_spec("herremans_table1"), load_spec("herremans_table1_lstm")
    assert spec_grid(tr) == table1("transformer")
    assert spec_grid(ls) == table1("lstm")
    assert tr.grid["model"] == [f"paper_{m}" for m in TABLE2.model if m != "lstm"]
    assert ls.models == ["paper_lstm"] and "model" not in ls.grid
    n = int(np.prod([len(v) for v in tr.grid.values()]))
    assert n == 7 * 4 * 3 * 5 * 2 == 840


def test_cpu_spec_is_a_subset_of_table1():
    full, cpu = load_spec("herremans_table1"), load_spec("herremans_table1_cpu")
    assert set(cpu.grid) <= set(full.grid)
    for k, vals in cpu.grid.items():
        assert set(vals) <= set(full.grid[k]), k
    assert cpu.grid != full.grid
    assert "train=paper" in cpu.base_overrides.split() and "train=paper" in full.base_overrides.split()


def test_sweeps_rank_on_validation_only():
    for name in ("herremans_table1", "herremans_table1_lstm", "herremans_table1_cpu"):
        assert metric_span(load_spec(name).rank_by) == "validation"
    with pytest.raises(ValueError, match="test-span"):
        check_rank_column("test_rmse_mean")
    with pytest.raises(ValueError, match="test-span"):                  # the sweep itself refuses it
        plan_sweep("herremans_table1_cpu", rank_by="test_rmse_mean")


# ---- the model-level batch size ---------------------------------------------------------------------

class Recorder(nn.Module):
    "A linear causal stand-in (B, L, F) -> (B, L) that records the batch size of every training forward."
    def __init__(self, n_features):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)
        self.seen = []

    def forward(self, x):
        if self.training: self.seen.append(x.shape[0])
        return self.lin(x).squeeze(-1)


def synthetic():
    "40 train, 10 validation, 10 test days of synthetic features; not market data."
    rng = np.random.default_rng(0)
    idx = pd.date_range("2021-01-01", periods=60, freq="D", tz="UTC", name="date")
    X = pd.DataFrame(rng.normal(size=(60, 2)), index=idx, columns=["a", "b"])
    market = pd.DataFrame({"target": 0.8 + 0.01 * rng.normal(size=60),
                           "split": ["train"] * 40 + ["validation"] * 10 + ["test"] * 10}, index=idx)
    return X, market, fit_scaler(X, market.split.eq("train"))


@pytest.mark.parametrize("model_bs, expected", [(None, 16), (4, 4)])
def test_model_batch_size_overrides_train_batch_size(tmp_path, model_bs, expected):
    c = compose_config("model=paper_transformer")
    for k, v in {"window": 8, "batch_size": 16, "max_epochs": 1, "patience": None, "shuffle": False,
                 "progress_bar": False}.items():
        OmegaConf.update(c, f"train.{k}", v)
    OmegaConf.update(c, "model.batch_size", model_bs)
    X, m, sc = synthetic()
    nets = []
    def build(model_cfg, n_features, max_len):
        nets.append(Recorder(n_features)); return nets[-1]
    res = train_model(c, X, m, sc, 0, tmp_path, build=build)
    n = res["n_train"]                                              # 40 - 8 + 1 = 33 train windows
    assert n == 33
    sizes = nets[0].seen
    assert sizes == [expected] * (n // expected) + ([n % expected] if n % expected else [])


def test_model_batch_size_is_not_a_constructor_argument():
    from volnb.models import build_model
    net = build_model(compose_config("model=paper_synth_factorized_dense").model, n_features=3, max_len=64)
    x = torch.zeros(2, 64, 3)
    assert net(x).shape == (2, 64)
