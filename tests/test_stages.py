"""volnb.stages: one runner, artefact paths in one place, and dvc.yaml deps that cannot miss code or config."""
import re

import pytest
import yaml

from volnb.cli import main
from volnb.stages import STAGES, StagePaths, missing_deps, stage_requirements, sync_deps
from volnb.core import compose_config


def test_every_dvc_stage_is_a_known_stage_and_runs_through_volnb_stage(root):
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    assert set(spec["stages"]) == set(STAGES)
    for name, st in spec["stages"].items():
        assert st["cmd"] == f"volnb stage {name}", name


def test_dvc_yaml_deps_cover_imports_and_config(root):
    assert missing_deps(root / "dvc.yaml", root) == {}
    assert main(["stage", "--check-deps"]) == 0


def test_dvc_yaml_is_in_sync_with_the_code(root):
    "`volnb stage --sync-deps` would change nothing: no dep too many either."
    assert sync_deps(root / "dvc.yaml", root, write=False) == (root / "dvc.yaml").read_text()


@pytest.mark.parametrize("stage,dep", [("train", "volnb/features.py"),      # imported through volnb.train
                                       ("explain", "volnb/metrics.py"),     # through volnb.train
                                       ("evaluate", "volnb/core.py"),
                                       ("baselines", "conf/experiment/herremans.yaml"),
                                       ("train", "conf/model"),             # a config group the stage reads
                                       ("backtest", "conf/backtest")])
def test_a_removed_dep_is_caught(root, tmp_path, stage, dep):
    "Deleting one required dep from a stage of a copy of dvc.yaml makes the check name exactly that stage and dep."
    text = (root / "dvc.yaml").read_text()
    lines, out, cur = text.splitlines(), [], None
    for line in lines:
        m = re.match(r"^  (\w+):\s*$", line)
        if m: cur = m.group(1)
        if cur == stage and line.strip() == f"- {dep}": continue
        out.append(line)
    assert len(out) == len(lines) - 1, f"{dep} not listed under {stage}"
    (tmp_path / "dvc.yaml").write_text("\n".join(out) + "\n")
    before, after = missing_deps(root / "dvc.yaml", root), missing_deps(tmp_path / "dvc.yaml", root)
    assert after.pop(stage) == [dep] and stage not in before
    assert after == before
    # and sync_deps puts it back
    sync_deps(tmp_path / "dvc.yaml", root)
    assert missing_deps(tmp_path / "dvc.yaml", root) == {}


def test_requirements_follow_imports_transitively(root):
    reqs = stage_requirements("train", root)
    assert reqs[0] == "nbs/pipeline/train.ipynb"
    assert {"volnb/train.py", "volnb/features.py", "volnb/models.py", "volnb/attention.py", "volnb/core.py",
            "conf/config.yaml", "conf/experiment/herremans.yaml", "conf/train", "conf/model", "conf/protocol"} <= set(reqs)
    assert "conf/serve" not in reqs and "volnb/registry.py" not in reqs
    spike = stage_requirements("spike_evaluate", root)
    assert "conf/experiment/spike60s.yaml" in spike and "volnb/registry.py" in spike


def test_unknown_stage_is_a_clear_error(capsys):
    assert main(["stage", "nope"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err


def test_stage_paths_follow_config(tmp_path):
    cfg = compose_config(f"experiment=herremans protocol=published_code paths.reports_dir={tmp_path}/r "
                         f"paths.artifacts_dir={tmp_path}/a")
    p = StagePaths(cfg)
    assert p.suffix == "_published_code"
    assert p.table("table3") == tmp_path / "r" / "tables" / "herremans" / "table3.csv"
    assert p.run_dir("lstm", 2) == tmp_path / "a" / "herremans" / "runs_published_code" / "lstm" / "seed2"
    assert p.baseline_predictions == tmp_path / "a" / "herremans" / "predictions" / "baselines.parquet"
    assert p.metrics == tmp_path / "r" / "metrics" / "herremans.json"


def test_dvc_outs_hold_each_stage_s_executed_notebook(root):
    "The runner writes each stage's executed notebook where dvc.yaml expects it (paths from StagePaths, not literals)."
    from volnb.stages import executed_notebook, get_stage
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    exp = {d: v for x in spec.get("vars", []) for d, v in x.items()}["exp"]
    for name, st in spec["stages"].items():
        outs = [(o if isinstance(o, str) else next(iter(o))).replace("${exp}", exp) for o in st["outs"]]
        p = executed_notebook(name, StagePaths(compose_config(get_stage(name).overrides)))
        assert str(p.relative_to(root)) in outs, name


def test_variant_pipelines_are_current(root):
    "paper_runs/dvc.yaml (the paper's own settings, not part of `dvc repro`) is what `volnb stage --sync-deps` writes."
    from volnb.stages import VARIANTS, sync_variants
    assert sync_variants(root, write=False) == {f: True for f in VARIANTS}
    spec = yaml.safe_load((root / "paper_runs/dvc.yaml").read_text())
    for name, st in spec["stages"].items():
        assert st["cmd"].startswith(f"volnb stage {name} --overrides") and "experiment=herremans_paper" in st["cmd"]
        assert all("herremans_paper" in (o if isinstance(o, str) else next(iter(o))) for o in st["outs"]), name
