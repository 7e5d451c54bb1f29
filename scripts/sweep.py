"""Papermill parameter sweep over a grid of Hydra overrides for the `train` stage, ranked on validation.

Usage: .venv/bin/python scripts/sweep.py conf/sweep/herremans_grid.yaml [--dry-run]
Writes reports/sweeps/<name>/: one folder per combination (executed notebook, training table, predictions) and
summary.csv / summary.md ranking the combinations by mean validation RMSE over models and seeds.
The prepare stage's artefacts (reports/artifacts/<experiment>/prepare, from `dvc repro prepare`) are reused.
"""
import argparse
import itertools
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def combinations(grid: dict) -> list[dict]:
    "Every combination of the grid's values, as {override key: value}."
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid_file")
    ap.add_argument("--dry-run", action="store_true", help="list the runs without executing them")
    a = ap.parse_args(argv)
    spec = yaml.safe_load(Path(a.grid_file).read_text())
    from volnb.cli import run_stage
    from volnb.core import compose_config, resolve_path
    base = spec.get("base_overrides", "")
    cfg = compose_config(base)
    exp = cfg.experiment.name
    prepared = resolve_path(cfg, "artifacts_dir") / exp / "prepare"
    if not prepared.exists():
        print(f"missing {prepared}: run `dvc repro prepare` first", file=sys.stderr)
        return 2
    out = ROOT / "reports" / "sweeps" / spec["name"]
    models = "[" + ",".join(spec["models"]) + "]"
    rows = []
    for i, combo in enumerate(combinations(spec["grid"])):
        run_dir = out / f"run{i:03d}"
        ov = " ".join([base, f"experiment.models={models}", f"paths.reports_dir={run_dir}",
                       f"paths.artifacts_dir={run_dir}/artifacts", "train.progress_bar=false"]
                      + [f"{k}={v}" for k, v in combo.items()])
        print(f"run{i:03d}: {combo}", flush=True)
        if a.dry_run: continue
        shutil.copytree(prepared, run_dir / "artifacts" / exp / "prepare", dirs_exist_ok=True)
        run_stage("train", ov, out=str(run_dir / "train.ipynb"))
        t = pd.read_csv(run_dir / "tables" / exp / "training.csv")
        rows.append({"run": f"run{i:03d}", **combo, "val_rmse_mean": t.best_val_rmse.mean(),
                     "val_rmse_std": t.best_val_rmse.std(ddof=1), "runs": len(t)})
    if a.dry_run: return 0
    summary = pd.DataFrame(rows).sort_values("val_rmse_mean")
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(f"Sweep `{spec['name']}` ({a.grid_file}), ranked by mean validation RMSE "
                                    f"over {spec['models']} and seeds.\n\n" + summary.to_markdown(index=False, floatfmt=".4g") + "\n")
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
