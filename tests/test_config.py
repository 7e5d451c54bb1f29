"""The typed config schemas (volnb.config) as `compose_config` applies them: every config file of every group
composes and fits; a misspelled key in a file, or an unknown key in an override, is an error naming the file
(or the override) and the key; the model files that extend transformer.yaml compose to the values they had
when each file spelled everything out."""
import inspect
import shutil
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from volnb import config as C
from volnb.config import ConfigError, validate_config
from volnb.core import compose_config, project_root

CONF = project_root() / "conf"
ADDED = {"refresh", "sweep"}                 # groups outside the default list: composed with `+group=choice`


def group_files():
    "(group, choice) for every YAML file of every config group."
    return [(d.name, f.stem) for d in sorted(CONF.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))]


@pytest.mark.parametrize("group,choice", group_files(), ids=lambda x: str(x))
def test_every_config_file_composes_and_fits(group, choice):
    cfg = compose_config(f"{'+' if group in ADDED else ''}{group}={choice}")
    typed = validate_config(cfg)                                  # compose_config has checked it already; again, by hand
    assert isinstance(typed, C.Config) and getattr(typed, group) is not None
    if group == "experiment": assert cfg.experiment.name == choice
    if group == "model": assert cfg.model.label == yaml.safe_load((CONF / "model" / f"{choice}.yaml").read_text())["label"]


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("others", ["", "baselines=paper train=paper protocol=published_code model=lstm"])
def test_every_experiment_composes_with_other_choices(experiment, others):
    cfg = compose_config(f"experiment={experiment} {others}")
    assert type(validate_config(cfg).experiment).__name__ == {"herremans": "HerremansExperiment",
                                                               "herremans_paper": "HerremansExperiment",
                                                               "spike60s": "Spike60sExperiment",
                                                               "multitoken": "MultitokenExperiment",
                                                               "multitoken_paper": "MultitokenExperiment"}[experiment]


def test_experiment_model_names_exist():
    "The models an experiment names are config files (herremans) or spike models (spike60s)."
    h = compose_config("experiment=herremans").experiment
    assert set(h.models) <= {f.stem for f in (CONF / "model").glob("*.yaml")}
    assert set(h.reference_models) <= set(compose_config().baselines.models)
    from volnb.spike import SPIKE_MODELS
    s = compose_config("experiment=spike60s").experiment
    assert set(s.models) <= set(SPIKE_MODELS) and set(s.model_params) <= set(SPIKE_MODELS)


def test_validation_changes_nothing():
    "compose_config returns exactly what Hydra composed (plus paths.root): the schemas fill and coerce nothing."
    ov = ["experiment=spike60s", "model=synth_dense", "train=paper"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        raw = compose(config_name="config", overrides=ov)
    GlobalHydra.instance().clear()
    ours = compose_config(ov)
    assert isinstance(ours, DictConfig)
    a, b = OmegaConf.to_container(ours), OmegaConf.to_container(raw)
    assert a.pop("paths")["root"] == str(project_root()) and b.pop("paths")["root"] is None
    assert a == b
    assert "ff_mult" not in ours.model and "max_len" not in ours.model         # no schema default was added


# ------------------------------------------------------------------------------------------ typos in files
@pytest.fixture
def conf_copy(tmp_path):
    "A copy of conf/ to break one file of."
    dest = tmp_path / "conf"
    shutil.copytree(CONF, dest)
    return dest


def edit(conf: Path, name: str, old: str, new: str):
    f = conf / name
    text = f.read_text()
    assert old in text, (name, old)
    f.write_text(text.replace(old, new, 1))


def config_error(fn) -> ConfigError:
    with pytest.raises(ConfigError) as e: fn()
    return e.value


TYPOS = [  # file, old text, new text, overrides, (file named, key), more text the message must hold
    ("train/cpu.yaml", "batch_size: 64", "batchsize: 64", "", ("conf/train/cpu.yaml", "train.batchsize"),
     ["unknown key 'batchsize' in train", "did you mean 'batch_size'?", "missing key 'batch_size' in train"]),
    ("baselines/daily.yaml", "refit_every: 5", "refit_evry: 5", "", ("conf/baselines/daily.yaml", "baselines.refit_evry"),
     ["did you mean 'refit_every'?"]),
    # paper.yaml extends daily.yaml: the typo is still found in daily.yaml (paper sets refit_every itself)
    ("baselines/daily.yaml", "refit_every: 5", "refit_evry: 5", "baselines=paper",
     ("conf/baselines/daily.yaml", "baselines.refit_evry"), []),
    ("train/paper.yaml", "patience: 200", "patiense: 200", "train=paper", ("conf/train/paper.yaml", "train.patiense"),
     ["did you mean 'patience'?"]),
    # a typo in the base file shows in every file that extends it
    ("model/transformer.yaml", "rank: 8", "rnk: 8", "model=synth_random", ("conf/model/transformer.yaml", "model.rnk"),
     ["did you mean 'rank'?"]),
    ("model/lstm.yaml", "hidden: 32", "hiden: 32", "model=lstm", ("conf/model/lstm.yaml", "model.hiden"), []),
    ("config.yaml", "seed: 0", "sed: 0", "", ("conf/config.yaml", "sed"), ["in the top level", "did you mean 'seed'?"]),
    ("experiment/spike60s.yaml", "quantile: 0.95", "quantil: 0.95", "experiment=spike60s",
     ("conf/experiment/spike60s.yaml", "experiment.label.quantil"), ["missing key 'quantile' in experiment.label"]),
    ("experiment/spike60s.yaml", "random_forest: {", "random_forrest: {", "experiment=spike60s",
     ("conf/experiment/spike60s.yaml", "experiment.model_params.random_forrest"), ["did you mean 'random_forest'?"]),
    # an experiment file (@package _global_) that sets a key of another group
    ("experiment/herremans.yaml", "experiment:\n", "train:\n  batchsize: 8\nexperiment:\n", "",
     ("conf/experiment/herremans.yaml", "train.batchsize"), ["unknown key 'batchsize' in train"]),
    ("features/herremans.yaml", "transform: log, include: true", "transfrom: log, include: true", "",
     ("conf/features/herremans.yaml", "features.features.0.transfrom"), ["(exchange_inflow_total)"]),
    ("serve/default.yaml", "  bins: 10", "  bns: 10", "", ("conf/serve/default.yaml", "serve.drift.bns"), []),
    ("protocol/published_code.yaml", "test_window: 1", "test_windw: 1", "protocol=published_code",
     ("conf/protocol/published_code.yaml", "protocol.test_windw"), []),
    ("backtest/default.yaml", "hold_days: 1", "hold_day: 1", "", ("conf/backtest/default.yaml", "backtest.hold_day"), []),
    ("data/snapshot.yaml", "intraday_dir:", "intraday_dirr:", "", ("conf/data/snapshot.yaml", "data.intraday_dirr"), []),
    ("refresh/default.yaml", "  retries: 5", "  retry: 5", "+refresh=default", ("conf/refresh/default.yaml", "refresh.http.retry"), []),
    ("refresh/default.yaml", "    pair: btcusd", "    pairs: btcusd", "+refresh=default",
     ("conf/refresh/default.yaml", "refresh.sources.bitstamp_daily.pairs"), ["did you mean 'pair'?"]),
    ("sweep/herremans_grid.yaml", "  train.lr:", "  train.lrr:", "+sweep=herremans_grid",
     ("conf/sweep/herremans_grid.yaml", "sweep"), ["grid key 'train.lrr' is not a config key"]),
    # wrong types and values are named the same way
    ("train/paper.yaml", "lr: 1.0e-5", "lr: '1e-5'", "train=paper", ("conf/train/paper.yaml", "train.lr"),
     ["Input should be a valid number"]),
    ("experiment/herremans.yaml", 'test: ["2020-11-12", "2021-09-21"]', 'test: ["2021-09-21", "2020-11-12"]', "",
     ("conf/experiment/herremans.yaml", "experiment.split.test"), ["ends before it starts"]),
    ("model/synth_dense.yaml", "attention: dense", "attention: dence", "model=synth_dense",
     ("conf/model/synth_dense.yaml", "model.attention"), ["Input should be 'dot', 'dense'"]),
]


@pytest.mark.parametrize("name,old,new,ov,first,more", TYPOS, ids=[f"{t[0]}:{t[4][1]}" for t in TYPOS])
def test_bad_key_in_a_file_names_the_file_and_key(conf_copy, name, old, new, ov, first, more):
    compose_config(ov, config_dir=conf_copy)                          # the intact copy composes
    edit(conf_copy, name, old, new)
    e = config_error(lambda: compose_config(ov, config_dir=conf_copy))
    file, key = first
    assert e.file.endswith(file) and e.key == key, (e.file, e.key, str(e))
    assert f"{file}: " in str(e)
    for text in more: assert text in str(e), (text, str(e))


def test_every_problem_is_listed(conf_copy):
    edit(conf_copy, "train/cpu.yaml", "shuffle: true", "shufle: true")
    edit(conf_copy, "data/snapshot.yaml", "hourly_panel:", "hourly_panels:")
    e = config_error(lambda: compose_config(config_dir=conf_copy))
    where = {(p.where.split("conf/")[-1], p.key) for p in e.problems}
    assert where == {("train/cpu.yaml", "train.shufle"), ("train/cpu.yaml", "train.shuffle"),
                     ("data/snapshot.yaml", "data.hourly_panels"), ("data/snapshot.yaml", "data.hourly_panel")}
    assert str(e).startswith("invalid config (4 problems):")


def test_an_experiment_without_a_schema_is_named(conf_copy):
    (conf_copy / "experiment" / "orderbook.yaml").write_text("# @package _global_\nexperiment:\n  name: orderbook\n")
    e = config_error(lambda: compose_config("experiment=orderbook", config_dir=conf_copy))
    assert e.file.endswith("conf/experiment/orderbook.yaml")
    assert all(f"'{tag}'" in str(e) for tag in ("herremans", "herremans_paper", "spike60s", "multitoken", "multitoken_paper"))


# ------------------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize("ov,key,text", [
    ("train.batchsize=3", "train.batchsize", "did you mean 'batch_size'?"),                   # refused by Hydra itself
    ("+train.batchsize=3", "train.batchsize", "did you mean 'batch_size'?"),                  # let through by Hydra
    ("++train.batchsize=3", "train.batchsize", "unknown key 'batchsize' in train"),
    ("baselines.refit_evry=2", "baselines.refit_evry", "did you mean 'refit_every'?"),
    ("+baselines.refit_evry=2", "baselines.refit_evry", "did you mean 'refit_every'?"),
    ("+model.n_layer=3", "model.n_layer", "did you mean 'n_layers'?"),
    ("+seeds=[0]", "seeds", "did you mean 'seed'?"),
    ("experiment=spike60s experiment.model_params.random_forrest.n_estimators=3",
     "experiment.model_params.random_forrest", "did you mean 'random_forest'?"),
    ("+serve.drift.window_rows=10", "serve.drift.window_rows", "unknown key 'window_rows' in serve.drift"),
    ("~train.lr", "train.lr", "missing key 'lr' in train"),
    ("train.max_epochs=2.5", "train.max_epochs", "Input should be a valid integer"),
    ("train.shuffle=1", "train.shuffle", "Input should be a valid boolean"),
    ("protocol.selection_split=train", "protocol.selection_split", "Input should be 'validation' or 'test'"),
    ("experiment.end=yesterday", "experiment.end", "Invalid isoformat string: 'yesterday'"),
    ("~experiment.split.test", "experiment.split", "a split needs train, validation and test"),
])
def test_bad_override_names_the_override_and_key(ov, key, text):
    e = config_error(lambda: compose_config(ov))
    last = ov.split()[-1]
    assert e.file == f"override {last!r}" and e.key == key, (e.file, e.key, str(e))
    assert text in str(e), str(e)


def test_overrides_the_tests_and_stages_use_still_compose(tmp_path):
    "The ad-hoc overrides of tests/test_pipeline.py, test_spike.py and the sweep grid are valid."
    compose_config(f"experiment=herremans paths.reports_dir={tmp_path}/reports paths.artifacts_dir={tmp_path}/a "
                   "experiment.end=2018-12-31 experiment.split.train=[2016-01-02,2017-12-31] "
                   "experiment.split.validation=[2018-01-01,2018-06-30] experiment.split.test=[2018-07-01,2018-12-31] "
                   "baselines.refit_every=30 baselines.min_train_days=300 experiment.models=[lstm,synth_random_dot] "
                   "train.seeds=[0,1] train.max_epochs=2 train.window=16 train.progress_bar=false protocol=published_code")
    compose_config("experiment=spike60s experiment.split.train=['2021-04-02 00:00','2021-04-12 23:59'] "
                   "experiment.model_params.random_forest.n_estimators=20 experiment.reference_rows=1000")
    grid = compose_config("+sweep=herremans_grid").sweep
    for key, values in grid.grid.items():
        compose_config(f"{grid.base_overrides} {key}={values[0]}")


def test_sweep_grid_keys_must_be_config_keys():
    with pytest.raises(ValidationError, match="grid key 'train.lrr' is not a config key"):
        C.SweepConfig.model_validate({"name": "g", "models": ["lstm"], "grid": {"train.lrr": [1]}})
    C.SweepConfig.model_validate({"name": "g", "models": ["lstm"], "grid": {"model.hidden": [8], "baselines.dist": ["t"]}})


# ------------------------------------------------------------------------------------------ inheritance
# The composed `model` of three files as they were before synth_*.yaml extended transformer.yaml
# (each file then spelled every key out; values copied from those files).
BEFORE = {
    "transformer": {"name": "transformer", "label": "Transformer", "attention": "dot", "d_model": 32, "n_heads": 4,
                    "n_layers": 2, "dropout": 0.1, "rank": 8, "positional": "sinusoidal"},
    "synth_dense": {"name": "transformer", "label": "Synthesizer D", "attention": "dense", "d_model": 32, "n_heads": 4,
                    "n_layers": 2, "dropout": 0.1, "rank": 8, "positional": "sinusoidal"},
    "synth_factorized_random": {"name": "transformer", "label": "Synthesizer FR", "attention": "factorized_random",
                                "d_model": 32, "n_heads": 4, "n_layers": 2, "dropout": 0.1, "rank": 8,
                                "positional": "sinusoidal"},
    "synth_random_dot": {"name": "transformer", "label": "Synthesizer MR", "attention": "random_dot", "d_model": 32,
                         "n_heads": 4, "n_layers": 2, "dropout": 0.1, "rank": 8, "positional": "sinusoidal"},
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_inheriting_model_files_compose_to_the_old_values(name):
    got = OmegaConf.to_container(compose_config(f"model={name}").model)
    assert got == BEFORE[name] and list(got) == list(BEFORE[name])          # same values, same key order


def test_synthesizer_files_set_only_label_and_attention():
    labels = set()
    for f in sorted((CONF / "model").glob("synth_*.yaml")):
        d = yaml.safe_load(f.read_text())
        assert d.pop("defaults") == ["transformer", "_self_"] and set(d) == {"label", "attention"}, f
        m = compose_config(f"model={f.stem}").model
        assert (m.label, m.attention) == (d["label"], d["attention"]) and m.d_model == 32
        labels.add(m.label)
    assert len(labels) == 6


def test_a_change_to_the_base_reaches_every_synthesizer(conf_copy):
    edit(conf_copy, "model/transformer.yaml", "d_model: 32", "d_model: 48")
    for name in ("synth_dense", "synth_random_dot", "transformer"):
        assert compose_config(f"model={name}", config_dir=conf_copy).model.d_model == 48
    assert compose_config("model=synth_dense model.d_model=16", config_dir=conf_copy).model.d_model == 16


# ------------------------------------------------------------------------------------------ schemas and code
@pytest.mark.parametrize("group,schema", [("train", C.TrainConfig), ("baselines", C.BaselinesConfig),
                                          ("protocol", C.ProtocolConfig), ("backtest", C.BacktestSchema),
                                          ("data", C.DataConfig)])
def test_every_file_of_a_group_holds_every_key(group, schema):
    "The code reads these groups' keys directly: every choice composes to exactly the schema's keys."
    for f in sorted((CONF / group).glob("*.yaml")):
        assert set(compose_config(f"{group}={f.stem}")[group]) == set(schema.model_fields), f


def test_schema_values_match_the_code():
    import volnb.attention, volnb.backtest, volnb.baselines, volnb.features, volnb.models, volnb.refresh, volnb.spike
    assert C.ATTENTION_VARIANTS == volnb.attention.ATTENTION_VARIANTS
    assert C.POSITIONAL_ENCODINGS == volnb.models.POSITIONAL_ENCODINGS
    assert C.BASELINE_MODELS == volnb.baselines.MODELS
    assert set(C.TRANSFORMS) == set(volnb.features.TRANSFORMS)
    assert set(C.BACKTEST_STRATEGIES) == set(volnb.backtest.STRATEGIES)
    assert list(C.BacktestSchema.model_fields) == [f.name for f in fields(volnb.backtest.BacktestConfig)]
    assert set(C.SpikeModelParams.model_fields) == set(volnb.spike.SPIKE_MODELS)
    assert set(volnb.features.FEATURE_MAP_COLUMNS) <= set(C.FeatureSpec.model_fields)
    source = typing.get_args(C.RefreshConfig.model_fields["sources"].annotation)[1]
    tags = {typing.get_args(m.model_fields["kind"].annotation)[0] for m in C._flat(source)}
    assert tags == set(volnb.refresh.KINDS)
    # a model file's keys other than name and the metadata (label, batch_size) are the constructor's arguments
    assert volnb.models._METADATA_KEYS == ("label", "batch_size")
    for schema, cls in [(C.LSTMModel, volnb.models.LSTMRegressor), (C.TransformerModel, volnb.models.DecoderTransformer)]:
        args = set(inspect.signature(cls).parameters) - {"n_features"}
        assert set(schema.model_fields) - {"name", *volnb.models._METADATA_KEYS} == args, cls


def test_arch_accepts_every_allowed_dist_and_only_those():
    from arch import arch_model
    y = np.random.default_rng(0).normal(size=50)
    for d in C.ARCH_DISTS: arch_model(y, mean="Zero", dist=d)
    with pytest.raises(ValueError, match="dist"): arch_model(y, mean="Zero", dist="cauchy")


def test_serving_uses_the_serve_schema():
    import volnb.service
    assert volnb.service.ServeSettings is C.ServeSettings and volnb.service.DriftSettings is C.DriftSettings
    assert C.GROUP_SCHEMAS["serve"] is C.ServeSettings


# ------------------------------------------------------------------------------------------ experiment=multitoken
def test_multitoken_profiles_compose():
    "The CPU profile and the paper profile (which extends it): same cleaning and spans, all tokens, monthly refits."
    cpu, paper = compose_config("experiment=multitoken").experiment, compose_config("experiment=multitoken_paper").experiment
    assert isinstance(validate_config(compose_config("experiment=multitoken_paper")).experiment, C.MultitokenExperiment)
    assert {"BTC", "ETH", "BNB"} <= set(cpu.tokens) and 12 <= len(cpu.tokens) <= 20 and paper.tokens is None
    assert list(cpu.horizons) == [1, 4, 24] and cpu.split == paper.split and cpu.cleaning == paper.cleaning
    assert (cpu.walk_forward.retrain_every_months, paper.walk_forward.retrain_every_months) == (3, 1)
    assert list(cpu.split.test) == ["2022-01-01", "2023-12-31"]


@pytest.mark.parametrize("old,new,key,text", [
    ("ffill_max_hours: 4", "ffill_max_hour: 4", "experiment.cleaning.ffill_max_hour", "did you mean 'ffill_max_hours'?"),
    ("retrain_every_months: 3", "retrain_every_month: 3", "experiment.walk_forward.retrain_every_month",
     "did you mean 'retrain_every_months'?"),
    ("jump_action: flag", "jump_action: drop", "experiment.cleaning.jump_action", "Input should be 'flag' or 'interpolate'"),
    ("    action: segment", "    action: halt", "experiment.cleaning.breaks.1.action", "Input should be 'split', 'cut'"),
])
def test_multitoken_misspelt_key_is_named(conf_copy, old, new, key, text):
    edit(conf_copy, "experiment/multitoken.yaml", old, new)
    for exp in ("multitoken", "multitoken_paper"):
        e = config_error(lambda: compose_config(f"experiment={exp}", config_dir=conf_copy))
        assert e.file.endswith("conf/experiment/multitoken.yaml") and e.key == key, (e.file, e.key, str(e))
        assert text in str(e), str(e)


@pytest.mark.parametrize("ov,text", [
    ("experiment.cleaning.breaks.0.new_token=null", "`new_token` is required with action 'split'"),
    ("experiment.cleaning.breaks.1.at=null", "action 'segment' needs `at`"),
    ("+experiment.cleaning.breaks.2.at=2022-01-17", "a delisted token's series ends by itself"),
    ("experiment.tokens=[]", "experiment.tokens: List should have at least 1 item"),
    ("experiment.horizons=[1,0]", "experiment.horizons.1: Input should be greater than or equal to 1"),
    ("experiment.cleaning.ffill_max_hours=-1", "Input should be greater than or equal to 0"),
    ("experiment.deep.window=100", "model 'transformer': patch=8 does not divide window=100"),
    ("experiment.deep.quantiles=[0.5,0.25]", "quantiles must increase strictly"),
    ("+experiment.deep.models.lstm.patch=4", "patch belong to encoder 'transformer', not 'lstm'"),
    ("experiment.deep.models.transformer.attention=flash", "experiment.deep.models.transformer.attention"),
    ("experiment.spillover.transform=sqrt", "Input should be 'log' or 'level'"),
    ("experiment.spillover.events.threshold_min_hours=1000", "threshold_min_hours exceeds threshold_window_hours"),
    ("experiment.regimes.sweep.ks=[2,3]", "sweep.ks [2, 3] must include the chosen k = 6"),
])
def test_multitoken_bad_values_are_named(ov, text):
    e = config_error(lambda: compose_config(f"experiment=multitoken {ov}"))
    assert e.file == f"override {ov!r}" and text in str(e), (e.file, str(e))
