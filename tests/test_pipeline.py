"""A small end-to-end run of the stage notebooks (papermill) on a short date range in a temporary directory."""
import json
import sys

import pandas as pd
import papermill as pm
import pytest

from volnb import stages
from volnb.core import compose_config, render_readme

# the report stage (the HTML site of the repository's committed reports, checked in Chromium) is tests/test_site.py
STAGES = ["prepare", "describe", "baselines", "train", "evaluate", "explain", "backtest"]


def overrides(tmp, end="2018-12-31"):
    "A short range in a temporary reports folder: the stage's own overrides (experiment, protocol) come first."
    return (f"paths.reports_dir={tmp}/reports paths.artifacts_dir={tmp}/reports/artifacts "
            f"experiment.end={end} experiment.split.train=[2016-01-02,2017-12-31] "
            "experiment.split.validation=[2018-01-01,2018-06-30] experiment.split.test=[2018-07-01,2018-12-31] "
            "baselines.refit_every=30 baselines.min_train_days=300 "
            "experiment.models=[lstm,synth_random_dot] train.seeds=[0,1] train.max_epochs=2 train.window=16 "
            "train.progress_bar=false")


def run_stage(root, tmp, stage, ov):
    "The one runner dvc.yaml uses (`volnb stage NAME`), with extra overrides."
    return stages.run_stage(stage, ov, echo=False)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, root, data_dir):
    tmp = tmp_path_factory.mktemp("e2e")
    repo_splits = (root / "reports/tables/herremans/splits.csv").read_bytes()
    for s in STAGES: run_stage(root, tmp, s, overrides(tmp))
    return tmp, repo_splits


def test_stage_outputs(pipeline_run, root):
    tmp, repo_splits = pipeline_run
    rep = tmp / "reports"
    for name in ["feature_map", "splits", "appendix_b", "appendix_c", "baselines", "baselines_validation"]:
        assert (rep / "tables/herremans" / f"{name}.csv").exists() and (rep / "tables/herremans" / f"{name}.md").exists()
    for name in ["figure2", "figure3", "figure4", "baselines_test"]:
        png = (rep / "figures/herremans" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the run wrote only into the temporary directory
    assert (root / "reports/tables/herremans/splits.csv").read_bytes() == repo_splits


def test_splits_and_baselines_values(pipeline_run):
    tmp, _ = pipeline_run
    t = tmp / "reports/tables/herremans"
    splits = pd.read_csv(t / "splits.csv").set_index("split")
    assert splits.loc["test", "first_day"] == "2018-07-01" and splits.loc["test", "last_day"] == "2018-12-31"
    assert splits.loc["test", "days"] == 184 and splits.loc["train", "days"] == 730
    b = pd.read_csv(t / "baselines.csv")
    assert b.model.tolist() == ["historical_mean", "ewma", "garch", "gjr_garch", "egarch", "har_rv"]
    assert (b.n == 184).all() and (b.tp + b.fn + b.tn + b.fp == b.n).all()
    assert b.rmse.between(0.01, 1).all() and (b.mae <= b.rmse).all()
    # the GARCH family was refitted on the schedule: (184 + 181 days) / 30 -> 13 refits each
    assert (b.set_index("model").loc[["garch", "gjr_garch", "egarch"], "refits"] == 13).all()
    m = json.loads((tmp / "reports/metrics/herremans.json").read_text())
    assert m["test_days"] == 184 and set(m["models"]) == set(b.model) | {"lstm", "synth_random_dot"}
    a = pd.read_csv(t / "appendix_b.csv")
    assert len(a) == 21 and a.r2.between(0, 1).all() and (a.pearson ** 2 - a.r2).abs().max() < 1e-12


def test_table3_table4_dm(pipeline_run):
    tmp, _ = pipeline_run
    t = tmp / "reports/tables/herremans"
    t3 = pd.read_csv(t / "table3.csv")
    assert set(t3.rule) == {"vol>=1", "vol>=1 & r>0"}
    main = t3[t3.rule == "vol>=1"].set_index("model")
    assert main.loc["garch", "label"] == "GARCH(1,1)" and main.index[0] == "garch"          # the paper's first row
    assert main.loc["lstm", "n_seeds"] == 2 and main.loc["garch", "n_seeds"] == 1
    counts = main[["tp_mean", "fn_mean", "tn_mean", "fp_mean"]].sum(axis=1)
    assert (counts == 184).all()
    up = t3[t3.rule == "vol>=1 & r>0"].set_index("model")
    # an upward spike is a spike: the second rule never has more actual spikes than the first
    assert ((up.tp_mean + up.fn_mean) <= (main.tp_mean + main.fn_mean) + 1e-9).all()
    seeds = pd.read_csv(t / "table3_seeds.csv")
    assert len(seeds[(seeds.rule == "vol>=1") & (seeds.model == "synth_random_dot")]) == 2
    t4 = pd.read_csv(t / "table4.csv").set_index("model")
    assert {"tp_mean_1.1", "fn_mean_1.3"} <= set(t4.columns)
    assert (t4["tp_mean_1.3"] + t4["fn_mean_1.3"] <= t4["tp_mean_1.1"] + t4["fn_mean_1.1"]).all()
    dm = pd.read_csv(t / "diebold_mariano.csv")
    assert set(dm.reference) == {"garch", "har_rv"} and set(dm.loss) == {"se", "qlike"}
    assert dm.p_value.between(0, 1).all()


def test_published_code_protocol(pipeline_run, root):
    "protocol=published_code writes its own, suffixed files and a comparison with the clean protocol."
    tmp, _ = pipeline_run
    t = tmp / "reports/tables/herremans"
    clean_before = (t / "table3.csv").read_bytes()
    run_stage(root, tmp, "train_published_code", overrides(tmp))
    run_stage(root, tmp, "evaluate_published_code", overrides(tmp))
    assert (tmp / "reports/notebooks/herremans/train_published_code.ipynb").exists()
    assert (t / "table3.csv").read_bytes() == clean_before                    # the clean results are untouched
    tr = pd.read_csv(t / "training_published_code.csv")
    assert set(tr.model) == {"lstm", "synth_random_dot"} and len(tr) == 4
    cmp = pd.read_csv(t / "protocol_comparison.csv")
    assert cmp.model.tolist() == ["lstm", "synth_random_dot"]
    assert (cmp.rmse_change == cmp.rmse_published_code - cmp.rmse_clean).all()
    pc = pd.read_parquet(tmp / "reports/artifacts/herremans/predictions_published_code/lstm.parquet")
    assert pc[pc.split == "test"].timestamp.nunique() == 184


def test_explain_and_backtest(pipeline_run):
    tmp, _ = pipeline_run
    t = tmp / "reports/tables/herremans"
    t5 = pd.read_csv(t / "table5.csv")
    assert t5.model.tolist() == ["lstm", "synth_random_dot"]
    assert (t5.top1_score >= t5.top2_score).all() and (t5.top2_score >= t5.top3_score).all()
    fi = pd.read_csv(t / "feature_importance.csv")
    assert set(fi.method) == {"feature_ablation", "integrated_gradients"}
    assert (fi.groupby(["method", "model"]).size() == 21).all()
    fam = pd.read_csv(t / "importance_by_family.csv")
    assert fam.groupby("model").share.sum().round(9).eq(1).all()
    assert (tmp / "reports/figures/herremans/explain/synthetic_synth_random_dot.png").exists()
    t6 = pd.read_csv(t / "table6.csv")
    assert set(t6.strategy) == {"buy_and_hold", "buy_low_sell_high", "momentum", "mean_reversion"}
    bh = t6[t6.strategy == "buy_and_hold"]
    assert bh.pnl_pct.round(6).nunique() == 1                     # buy-and-hold does not depend on the model
    traded = t6.n_trades > 0
    assert (t6.sharpe_lower <= t6.sharpe_upper)[traded].all()
    assert t6.sharpe[~traded].isna().all()                       # no trade, flat equity: no Sharpe ratio
    assert (tmp / "reports/figures/herremans/figure7.png").exists()


def test_failed_stage_leaves_previous_outputs_intact(pipeline_run, root):
    tmp, _ = pipeline_run
    before = (tmp / "reports/tables/herremans/splits.csv").read_bytes()
    with pytest.raises(pm.PapermillExecutionError, match="after the last complete price day"):
        run_stage(root, tmp, "prepare", overrides(tmp, end="2031-01-01"))
    assert (tmp / "reports/tables/herremans/splits.csv").read_bytes() == before


def test_every_experiment_config_composes(root):
    for f in sorted((root / "conf/experiment").glob("*.yaml")):
        cfg = compose_config(f"experiment={f.stem}")
        assert cfg.experiment.name == f.stem and {"train", "validation", "test"} <= set(cfg.experiment.split)


def test_readme_is_generated_from_index(root, tmp_path):
    out = render_readme(root / "nbs/index.ipynb", tmp_path / "README.md")
    assert out.read_text() == (root / "README.md").read_text(), "README.md is stale: run bash scripts/build_readme.sh"
