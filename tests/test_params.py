"""DVC's own experiment path (volnb.params): params.yaml is DVC's Hydra composition of conf/, every stage lists the
config groups it reads as params, and under `dvc exp run -S ...` a stage gets the composition as Hydra overrides.
The last test runs a real `dvc exp run -S` in a scratch git + DVC repository."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import volnb.params as P
import volnb.stages as stages
from volnb.core import compose_config, project_root
from volnb.stages import missing_deps, stage_params


def test_params_overrides_round_trip_dvc_hydra_composition(tmp_path):
    "DVC's own composition (what `dvc exp run -S ...` writes to params.yaml) turned back into overrides."
    from dvc.utils.hydra import compose_and_dump
    conf = project_root() / "conf"
    for ov in [["train.lr=0.0003", "experiment.models=[synth_dense]", "train.seeds=[0]"], ["model=lstm", "train.window=16"],
               ["experiment=multitoken", "experiment.deep.epochs_first=2"], []]:
        params = tmp_path / "params.yaml"
        compose_and_dump(params, str(conf), None, "config", str(tmp_path), ov)
        got = P.params_overrides(params)
        assert sorted(got) == sorted(ov)
        again = P._container(compose_config(got))
        want = yaml.safe_load(params.read_text()); want["paths"].pop("root")
        assert again == want


def test_committed_params_yaml_is_the_default_composition(root):
    "What `dvc exp run` without -S would write: otherwise the first experiment would differ from main for no reason."
    assert P.params_current(root / "params.yaml"), "params.yaml is stale: run `volnb stage --sync-deps`"


def test_dvc_composes_this_config_tree(root):
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        h = repo.config.get("hydra", {})
    assert h.get("enabled") is True and h.get("config_dir", "conf") == "conf" and h.get("config_name", "config") == "config"


def test_a_removed_param_is_caught(root, tmp_path):
    "Deleting `train` from the train stage's params in a copy of dvc.yaml makes the check name it."
    lines, out, cur, section = (root / "dvc.yaml").read_text().splitlines(), [], None, None
    for line in lines:
        m = re.match(r"^  (\w+):\s*$", line)
        if m: cur = m.group(1)
        s = re.match(r"^    (\w+):", line)
        if s: section = s.group(1)
        if cur == "train" and section == "params" and line.strip() == "- train": continue
        out.append(line)
    assert len(out) == len(lines) - 1
    (tmp_path / "dvc.yaml").write_text("\n".join(out) + "\n")
    assert missing_deps(tmp_path / "dvc.yaml", root) == {"train": ["params.yaml:train"]}


def test_stage_params_are_the_groups_read(root):
    assert {"experiment", "model", "train", "protocol"} <= set(stage_params("train", root))
    assert "train" not in stage_params("multitoken_regimes", root) and "backtest" in stage_params("backtest", root)
    assert "seed" in stage_params("spike_train", root)                      # spike_train reads cfg.seed


def _captured_overrides(monkeypatch, tmp_path, stage: str, exp_overrides, env_name="exp-test"):
    "Run stage `stage` with papermill replaced by a recorder, under a params.yaml composed with `exp_overrides`."
    import papermill as pm
    params = P.write_params(tmp_path / "params.yaml", exp_overrides)
    monkeypatch.setattr(P, "PARAMS_FILE", str(params))                       # root / absolute path = the absolute path
    if env_name: monkeypatch.setenv(P.EXPERIMENT_ENV, env_name)
    else: monkeypatch.delenv(P.EXPERIMENT_ENV, raising=False)
    seen = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda src, dest, parameters, **kw: seen.update(parameters))
    stages.run_stage(stage, out=tmp_path / "out.ipynb", echo=False)
    return seen["overrides"].split()


def test_run_stage_carries_the_experiment_params_into_the_stage(monkeypatch, tmp_path):
    ov = _captured_overrides(monkeypatch, tmp_path, "train", ["train.lr=0.5", "experiment.models=[lstm]"])
    assert ov == ["experiment=herremans", "train.lr=0.5", "experiment.models=[lstm]"]
    # the published-code stage fixes its protocol: a key of the clean protocol is not its own
    ov = _captured_overrides(monkeypatch, tmp_path, "train_published_code", ["protocol.test_window=3", "train.lr=0.5"])
    assert ov == ["experiment=herremans", "protocol=published_code", "train.lr=0.5"]
    # an experiment of another study reaches that study's stages only
    mt = ["experiment=multitoken", "experiment.deep.epochs_first=2"]
    assert _captured_overrides(monkeypatch, tmp_path, "multitoken_deep", mt) == ["experiment=multitoken", "experiment.deep.epochs_first=2"]
    assert _captured_overrides(monkeypatch, tmp_path, "train", mt) == ["experiment=herremans"]


def test_outside_an_experiment_params_yaml_is_ignored(monkeypatch, tmp_path):
    "A stale or edited params.yaml can never steer a plain `dvc repro`."
    assert _captured_overrides(monkeypatch, tmp_path, "train", ["train.lr=0.5"], env_name=None) == ["experiment=herremans"]


def test_missing_params_yaml_under_an_experiment_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "PARAMS_FILE", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv(P.EXPERIMENT_ENV, "exp-x")
    with pytest.raises(FileNotFoundError, match="exp-x: .*absent.yaml does not exist"):
        stages.run_stage("train", out=tmp_path / "o.ipynb", echo=False)


def test_real_dvc_exp_run_composes_params_and_sets_the_experiment_env(root, tmp_path):
    """`dvc exp run -S` for real, in a scratch repository with this repository's conf/ and hydra settings and one stage
    that records what `stage_params_overrides` gives it: DVC composes params.yaml, sets DVC_EXP_NAME, and reruns
    the stage because a param it lists changed; `dvc exp show` lists the experiment with its params."""
    if not shutil.which("git"): pytest.fail("git is needed for DVC experiments")
    repo = tmp_path / "r"
    repo.mkdir()
    shutil.copytree(root / "conf", repo / "conf")
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    env.pop(P.EXPERIMENT_ENV, None)
    run = lambda *a: subprocess.run(list(a), cwd=repo, env=env, check=True, capture_output=True, text=True, timeout=120)
    run("git", "init", "-q"); run(*dvc, "init", "-q")
    hydra = re.search(r"\[hydra\][^\[]*", (root / ".dvc" / "config").read_text()).group(0)
    with open(repo / ".dvc" / "config", "a") as f: f.write(hydra)
    P.write_params(repo / "params.yaml", root=root)
    probe = ("import json, os; from volnb.params import stage_params_overrides as s; "
             "json.dump({'exp': os.environ.get('DVC_EXP_NAME'), 'ov': s('experiment=herremans', root='.')}, open('out.json', 'w'))")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"probe": {
        "cmd": f'{sys.executable} -c "{probe}"', "params": ["train", "experiment"], "outs": [{"out.json": {"cache": False}}]}}}))
    (repo / ".gitignore").write_text("")
    run("git", "add", "-A"); run("git", "commit", "-qm", "base")
    run(*dvc, "exp", "run", "-q", "-n", "lr-half", "-S", "train.lr=0.5", "-S", "train.seeds=[0,1]")
    out = json.loads((repo / "out.json").read_text())
    assert out["exp"] == "lr-half"
    assert sorted(out["ov"]) == ["train.lr=0.5", "train.seeds=[0,1]"]
    composed = yaml.safe_load((repo / "params.yaml").read_text())
    assert composed["train"]["lr"] == 0.5 and composed["train"]["seeds"] == [0, 1]
    show = json.loads(run(*dvc, "exp", "show", "--json").stdout)
    assert "lr-half" in json.dumps(show) and '"lr": 0.5' in json.dumps(show)
