"""`volnb sweep`: spec expansion and point ids, the local process pool and Ray executors (a local Ray instance
started here), resumption after an interruption, failure isolation and the exit code, and ranking on validation only
(DVC's own experiment path is tested in tests/test_params.py). The points run a tiny stand-in stage notebook (same
`experiment`/`overrides` parameters as the pipeline's) whose "validation RMSE" is a known function of the point."""
import json
import os
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from volnb import sweep as S
from volnb.cli import main
from volnb.core import compose_config, project_root

FAKE = """
import json, os, pathlib
ov = dict(o.split('=', 1) for o in overrides.split())
lr, window = float(ov['train.lr']), int(ov['train.window'])
if window == 7: raise ValueError('window 7 is unlucky')
rep = pathlib.Path(ov['paths.reports_dir'])
t = rep / 'tables' / experiment
t.mkdir(parents=True, exist_ok=True)
v = lr * 100 + window / 100
(t / 'training.csv').write_text(f'model,seed,epochs,best_val_rmse\\nm,0,3,{v}\\nm,1,5,{v + 0.02}\\n')
(rep / 'env.json').write_text(json.dumps({'omp': os.environ.get('OMP_NUM_THREADS'), 'mkl': os.environ.get('MKL_NUM_THREADS'),
    'threads_per_run': ov['train.threads_per_run'], 'parallel_runs': ov['train.parallel_runs'], 'pid': os.getppid()}))
"""


def expected(lr, window):
    "The stand-in's val_rmse_mean: the mean of lr*100 + window/100 over its two rows (+0 and +0.02)."
    return lr * 100 + window / 100 + 0.01


@pytest.fixture(scope="module")
def fake_nb(tmp_path_factory):
    p = tmp_path_factory.mktemp("nb") / "fake_stage.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('experiment = "herremans"\noverrides = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(FAKE)]
    nbformat.write(nb, p)
    return str(p)


def spec(fake_nb, name="t", **kw):
    return {"name": name, "stage": fake_nb, "inputs": [], **kw}


def values_of(summary):
    return {(r["train.lr"], r["train.window"]): r["val_rmse_mean"] for _, r in summary.iterrows() if r["status"] == "ok"}


# ------------------------------------------------------------------------------------------ expansion and ids
def test_spec_expansion_and_stable_ids(fake_nb):
    sp = S.load_spec(spec(fake_nb, grid={"train.lr": [1e-3, 3e-4], "train.window": "16,32", "seed": "0..2"},
                          points=[{"train.lr": 1e-2, "train.window": 8, "seed": 9}]))
    pts = S.expand_points(sp)
    assert len(pts) == 2 * 2 * 3 + 1 and len({p.id for p in pts}) == 13
    assert pts[0].values == {"train.lr": 1e-3, "train.window": 16, "seed": 0}
    assert pts[1].values == {"train.lr": 1e-3, "train.window": 16, "seed": 1}          # the last axis varies fastest
    assert pts[-1].values == {"train.lr": 1e-2, "train.window": 8, "seed": 9}
    assert pts[0].id == f"lr-0.001_window-16_seed-0-{pts[0].id[-8:]}"
    # the id does not depend on the axes' order or on the other values of the grid
    other = S.expand_points(S.load_spec(spec(fake_nb, grid={"seed": [0], "train.window": [16, 64], "train.lr": [1e-3]})))
    assert {p.id[-8:] for p in other} & {p.id[-8:] for p in pts} == {pts[0].id[-8:]}
    # the repository's specs: the herremans grid (2 x 2 x 2) and the 8-point benchmark sweep
    assert len(S.expand_points(S.load_spec("herremans_grid"))) == 8
    bench = S.expand_points(S.load_spec("herremans_bench8"))
    assert len(bench) == 8 and len({p.id for p in bench}) == 8
    assert bench[0].overrides("train")[0].startswith("experiment.models=[")             # a model axis on train


def test_bad_specs_name_the_field(fake_nb, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "grid": {"train.lr": [1e-3], "train.windoww": [1]}}))
    with pytest.raises(S.SweepSpecError, match=r"bad.yaml: .*grid key 'train.windoww' is not a config key"):
        S.load_spec(str(bad))
    with pytest.raises(S.SweepSpecError, match="grid.seed: .*empty range"):
        S.load_spec(spec(fake_nb, grid={"seed": "3..1"}))
    with pytest.raises(S.SweepSpecError, match=r"(?s)point \{'train.lr': 0.001, 'train.window': 0\}: .*train.window: Input should be greater than or equal to 1"):
        S.plan_sweep(spec(fake_nb, grid={"train.lr": [1e-3], "train.window": [0]}), out=tmp_path / "o")
    # the train stage reuses the prepared data; without it the plan says how to make it
    with pytest.raises(S.SweepSpecError, match="run `dvc repro prepare` first"):
        S.plan_sweep({"name": "p", "grid": {"train.lr": [1e-3]}, "base_overrides": f"paths.artifacts_dir={tmp_path}/none"},
                     out=tmp_path / "p")
    # the published-code protocol selects checkpoints on test: not a sweep to rank
    with pytest.raises(S.SweepSpecError, match="selects checkpoints on the test span"):
        S.plan_sweep({"name": "p", "stage": "train_published_code", "grid": {"train.lr": [1e-3]}}, out=tmp_path / "p")


def test_ranking_refuses_test_span_columns(fake_nb, tmp_path):
    df = pd.DataFrame({"point": ["a", "b"], "status": ["ok", "ok"], "val_rmse_mean": [0.3, 0.2], "test_rmse_mean": [0.1, 0.5]})
    assert S.rank_points(df).point.tolist() == ["b", "a"]
    for col in ["test_rmse_mean", "rmse_test", "validation_vs_test_gap"]:
        with pytest.raises(ValueError, match="test-span metric"):
            S.rank_points(df, col)
    with pytest.raises(ValueError, match="test-span metric"):
        S.plan_sweep(spec(fake_nb, grid={"train.lr": [1e-3], "train.window": [16]}, rank_by="test_rmse_mean"), out=tmp_path)
    assert main(["sweep", "herremans_grid", "--rank-by", "test_rmse", "--dry-run"]) == 2


# ------------------------------------------------------------------------------------------ the local pool
def test_local_pool_failure_isolation_exit_code_and_resume(fake_nb, tmp_path, capsys):
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump(spec(fake_nb, grid={"train.lr": [1e-3, 1e-4], "train.window": [16, 7]})))
    out = tmp_path / "out"
    rc = main(["sweep", str(sp), "--executor", "local", "--workers", "2", "--out", str(out)])
    log = capsys.readouterr().out
    assert rc == 1                                                  # two points failed: non-zero exit
    summary = pd.read_csv(out / "summary.csv")
    assert summary.status.tolist() == ["ok", "ok", "failed", "failed"] and summary["rank"].tolist()[:2] == [1, 2]
    assert values_of(summary) == pytest.approx({(1e-4, 16): expected(1e-4, 16), (1e-3, 16): expected(1e-3, 16)})
    # one progress line per finished point, with the count, elapsed and ETA; a summary of the failures
    lines = [l for l in log.splitlines() if l.startswith("[sweep ") and "ETA" in l]
    assert len(lines) == 4 and lines[-1].startswith("[sweep 4/4]")
    assert "2 point(s) failed:" in log and log.count("ValueError: window 7 is unlucky") >= 2
    for pid in summary.loc[summary.status.eq("failed"), "point"]:
        d = out / pid
        assert json.loads((d / "status.json").read_text())["error"] == "ValueError: window 7 is unlucky"
        assert "window 7 is unlucky" in (d / "fake_stage.ipynb").read_text()     # the executed notebook keeps it
    # each point pinned to one thread (2 workers on this machine's share), in a worker process, not the test's
    envs = [json.loads((out / p / "env.json").read_text()) for p in summary.loc[summary.status.eq("ok"), "point"]]
    assert all(e["omp"] == e["mkl"] == e["threads_per_run"] == "1" and e["parallel_runs"] == "1" for e in envs)
    assert all(e["pid"] != os.getpid() for e in envs)
    assert (out / "summary.png").stat().st_size > 5000 and "failed: ValueError" in (out / "summary.md").read_text()
    # a finished sweep resumed runs only its failed points (they fail again); --keep-failed runs none
    res = S.run_sweep(str(sp), executor="local", workers=2, out=out, keep_failed=True, log=None)
    assert res.ran == [] and len(res.skipped) == 4 and res.failed == summary.point.tolist()[2:]
    ok_mtime = (out / summary.point[0] / "status.json").stat().st_mtime_ns
    res = S.run_sweep(str(sp), executor="serial", out=out, log=None)
    assert sorted(res.ran) == sorted(summary.point[2:]) and (out / summary.point[0] / "status.json").stat().st_mtime_ns == ok_mtime


def test_dry_run_lists_without_running(fake_nb, tmp_path, capsys):
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump(spec(fake_nb, grid={"train.lr": [1e-3]})))
    assert main(["sweep", str(sp), "train.window=16,32", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    log = capsys.readouterr().out
    assert log.count("  run  missing") == 2 and "train.window=32" in log and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError:
        pytest.fail("Ray is not installed: it is a dev requirement (pip install 'volnb[ray]' or ray==2.60.0)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_and_resumption(ray_local, fake_nb, tmp_path):
    sp = spec(fake_nb, grid={"train.lr": [1e-3, 1e-4], "train.window": [16, 32]})
    out = tmp_path / "ray"
    res = S.run_sweep(sp, executor="ray", out=out, log=None)
    assert res.ok and len(res.ran) == 4 and ray_local.is_initialized()          # a running instance is left running
    first = values_of(res.summary)
    assert first == pytest.approx({(lr, w): expected(lr, w) for lr in (1e-3, 1e-4) for w in (16, 32)})
    pids = {json.loads((out / p / "status.json").read_text())["pid"] for p in res.summary.point}
    assert os.getpid() not in pids                                           # Ray worker processes ran them
    # an interruption: one point's outputs gone, one killed mid-run (no status.json), one marked failed
    pts = res.summary.point.tolist()
    shutil.rmtree(out / pts[0])
    (out / pts[1] / "status.json").unlink()
    st = json.loads((out / pts[2] / "status.json").read_text()); st["status"] = "failed"
    (out / pts[2] / "status.json").write_text(json.dumps(st))
    again = S.run_sweep(sp, executor="ray", out=out, log=None)
    assert sorted(again.ran) == sorted(pts[:3]) and again.skipped == [p for p in again.summary.point if p == pts[3]]
    assert again.ok and values_of(again.summary) == pytest.approx(first)


def test_ray_failure_does_not_stop_others(ray_local, fake_nb, tmp_path):
    res = S.run_sweep(spec(fake_nb, grid={"train.lr": [1e-3], "train.window": [7, 16, 32]}), executor="ray",
                      out=tmp_path / "rf", log=None)
    assert len(res.failed) == 1 and res.summary.status.tolist() == ["ok", "ok", "failed"]
