"""A small end-to-end run of the multi-token stage notebooks (papermill) on four tokens and one quarter, in a temporary directory."""
import json

import numpy as np
import pandas as pd
import pytest

from volnb import stages

STAGES = ["multitoken_prepare", "multitoken_baselines", "multitoken_deep", "multitoken_evaluate", "multitoken_regimes",
          "multitoken_transfer", "multitoken_backtest", "multitoken_explain", "multitoken_lookback"]


def overrides(tmp):
    "Four tokens (three majors and a stablecoin), two quarterly test blocks, tiny deep models; outputs under `tmp`."
    return (f"paths.reports_dir={tmp}/reports paths.artifacts_dir={tmp}/reports/artifacts "
            "experiment.tokens=[BTC,ETH,SOL,USDC] experiment.end=2022-07-31 "
            "experiment.split.test=[2022-01-01,2022-06-30] "
            "experiment.deep.epochs_first=1 experiment.deep.samples_per_epoch=512 experiment.deep.val_samples=256 "
            "experiment.deep.batch_size=128 experiment.deep.models.lstm.d_model=8 "
            "experiment.deep.models.transformer.d_model=8 experiment.deep.models.transformer.n_layers=1 "
            "experiment.regimes.sweep.ks=[2,6] experiment.regimes.sweep.resamples=2 experiment.regimes.sweep.sample=2000 "
            "experiment.regimes.sweep.eval_size=500 experiment.regimes.n_init=2 "
            "experiment.transfer.majors=[BTC,ETH] experiment.transfer.test_starts=[2022-04-01] "
            "experiment.transfer.pretrain.epochs=1 experiment.transfer.pretrain.samples_per_epoch=512 "
            "experiment.transfer.finetune.samples_per_epoch=256 experiment.transfer.alone.samples_per_epoch=256 "
            "experiment.transfer.bootstrap.reps=20 experiment.strategies.horizons=[1,24] experiment.strategies.bootstrap_reps=20 "
            "experiment.explain.samples=300 experiment.explain.min_regime_samples=5 "
            "experiment.lookback.test_start=2022-04-01 experiment.lookback.tokens=[BTC,ETH] experiment.lookback.epochs=1 "
            "experiment.lookback.samples_per_epoch=256 experiment.lookback.val_samples=128 experiment.lookback.seeds=[0,1] "
            "experiment.lookback.bootstrap.reps=20")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("mt")
    for s in STAGES: stages.run_stage(s, overrides(tmp), echo=False)
    return tmp / "reports"


def test_every_model_reaches_table1(run):
    t1 = pd.read_csv(run / "tables/multitoken/table1.csv")
    for task, models in (("direction", {"majority", "always_up", "logit", "lstm", "transformer"}),
                         ("volatility", {"ha", "ewma", "garch", "har", "lstm", "transformer"})):
        for h in ("1h", "4h", "24h"):
            got = set(t1[(t1.task == task) & (t1.horizon == h)].model)
            assert got == models, (task, h, got)
    d = t1[t1.task == "direction"]
    assert (d.groupby("horizon").n.nunique() == 1).all() and (d.n > 5000).all()  # one common sample per horizon
    assert d.accuracy.between(0.3, 0.7).all()
    assert (d.accuracy_lo <= d.accuracy).all() and (d.accuracy <= d.accuracy_hi).all()


def test_deep_forecasts_cover_the_test_span_only(run):
    fc = pd.read_parquet(run / "artifacts/multitoken/deep/forecasts.parquet")
    assert fc.timestamp.min() >= pd.Timestamp("2022-01-01") and fc.timestamp.max() < pd.Timestamp("2022-07-01")
    assert set(fc.token) == {"BTC", "ETH", "SOL", "USDC"}
    assert fc.loc[fc.token == "USDC", "lstm_dir_1h"].isna().all()              # no direction for the stablecoin
    q = fc[["lstm_vol_1h_q05", "lstm_vol_1h_q50", "lstm_vol_1h_q95"]].dropna()
    assert len(q) > 1000 and (q.diff(axis=1).iloc[:, 1:] >= 0).all().all()  # quantiles ordered
    assert (run / "artifacts/multitoken/deep/models/transformer/block0/model.pt").exists()
    state = json.loads((run / "artifacts/multitoken/registry/state.json").read_text())
    assert state["current"]                                                  # the model chosen on validation is current


def test_evaluation_tables(run):
    t = run / "tables/multitoken"
    side = pd.read_csv(t / "table1_paper.csv")
    assert {"Historical Average", "GARCH(1,1)", "LSTM", "Transformer (Generative)"} == set(side.paper_model)
    assert side.loc[(side.paper_model == "LSTM") & (side.metric == "accuracy") & (side.horizon == "1h"), "paper"].item() == pytest.approx(0.617)
    cov = pd.read_csv(t / "quantile_scores.csv").query("kind == 'coverage'")
    assert set(cov.level.round(2)) == {0.5, 0.9} and cov.value.between(0, 1).all()
    stress = pd.read_csv(t / "stress.csv")
    assert (stress.btc_return < 0).all() and (stress.n_window > 0).all()
    for f in ("figure1", "figure3", "reliability", "regime_k_sweep"):
        assert (run / "figures/multitoken" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t2 = pd.read_csv(t / "table2.csv")
    assert "transformer_accuracy" in t2.columns and "lstm_accuracy" in t2.columns


def test_transfer_and_strategies(run):
    t = run / "tables/multitoken"
    tr = pd.read_csv(t / "transfer.csv")
    assert "SOL" in set(tr.token) and set(tr.token) <= {"SOL", "USDC"}   # the non-majors (USDC: volatility only)
    assert {"lstm_finetuned", "lstm_alone", "lstm_pretrained"} <= set(tr.model)
    assert (tr.lo <= tr.value + 1e-12).all() and (tr.value <= tr.hi + 1e-12).all()
    t5 = pd.read_csv(t / "table5.csv")
    assert {"buy_and_hold_btc", "transformer", "lstm", "garch"} <= set(t5.strategy)
    trades = pd.read_csv(t / "trades_summary.csv")
    assert (trades.filter(like="trades").fillna(0) >= 0).all().all()


def test_table3(run):
    t3 = pd.read_csv(run / "tables/multitoken/table3.csv")
    assert len(t3) == 8                                               # the paper's eight feature categories
    lag = pd.read_csv(run / "tables/multitoken/attention_by_lag.csv")
    assert len(lag) > 0


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_served_forecasts_equal_the_stages(run, name):
    "The last block's bundle, served from 504 hours of bars (volnb.panel_service), gives the stage's own test forecasts."
    from volnb.core import compose_config, resolve_path
    from volnb.panel_service import PanelScorer, experiment_categories, forecast_columns, load_bundle
    cfg = compose_config("experiment=multitoken")
    panel = pd.read_parquet(run / "artifacts/multitoken/prepare/panel.parquet")
    fg = pd.read_csv(resolve_path(cfg, "data_dir") / cfg.data.fear_greed_daily)
    cats, dirs = experiment_categories()
    scorer = PanelScorer(load_bundle(run / "artifacts/multitoken/deep/models" / name / "block1" / "model.pt"), cats, dirs)
    stage = pd.read_parquet(run / "artifacts/multitoken/deep/forecasts.parquet")
    stage = stage[stage.block == 1]
    cols = forecast_columns(list(cfg.experiment.horizons), scorer.quantiles)
    T = pd.Timestamp("2022-06-30 23:00")
    for hour in (T, T - pd.Timedelta(hours=777)):
        fc = scorer.predict(panel[panel.timestamp > hour - pd.Timedelta(hours=504)], fear_greed=fg, asof=hour)
        ref = stage[stage.timestamp == hour].set_index("token")[[f"{name}_{c}" for c in cols]].set_axis(cols, axis=1)
        ok = fc.frame.index[fc.frame.source == "model"]
        assert set(ok) == {"BTC", "ETH", "SOL", "USDC"} and set(ok) <= set(ref.index)
        np.testing.assert_allclose(fc.frame.loc[ok, cols].to_numpy(np.float64), ref.loc[ok].to_numpy(np.float64), rtol=0, atol=1e-6)


def test_lookback_windows_are_scored_on_one_sample(run):
    "The long look-back study: every window on the same validation and test samples, each seed a row of the runs table."
    lb = pd.read_csv(run / "tables/multitoken/lookback.csv")
    runs = pd.read_csv(run / "tables/multitoken/lookback_runs.csv")
    assert sorted(runs.window.unique()) == [168, 720, 2160] and sorted(runs.seed.unique()) == [0, 1]
    assert set(lb.window) == {168, 720, 2160}
    n = lb.groupby(["metric", "horizon"])[["n_val", "n_test"]].nunique()
    assert (n == 1).all().all(), n                                           # identical sample counts across windows
    assert (lb[lb.window == 168][["test_diff", "val_diff"]] == 0).all().all()  # differences are against 168 h
    assert (run / "figures/multitoken/lookback.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
