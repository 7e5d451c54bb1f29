"""Epoch time of each Table 3 model under the paper's own settings, and what the full Table 3 run would cost.

Usage: .venv/bin/python scripts/bench_herremans_paper.py [EPOCHS]   (after `dvc repro prepare`; default 2 epochs)
Writes reports/benchmarks/herremans_paper_profile.{json,md}.

Each neural model of `experiment=herremans_paper` (Table 2's settings, conf/model/paper_*.yaml; Section 5.2's
training profile, conf/train/paper.yaml: window 64, lr 1e-5, weight decay 1e-6, batch size 4) is trained for EPOCHS
epochs without early stopping on the real prepared Herremans data (reports/artifacts/herremans/prepare: the same data
and splits as herremans_paper), one run at a time with 1 intra-op thread, as the `train` stage trains it
(`volnb.train.train_model`: Lightning, validation pass and checkpoint every epoch). Seconds per epoch = fit time / EPOCHS.

Projection of the full Table 3 run (8 neural models x 5 seeds; GARCH(1,1) and HAR-RV take seconds,
reports/benchmarks/baselines.md): an upper bound at 10,000 epochs a run, and an expected cost under a stated
ASSUMPTION on when patience-200 early stopping ends a run: at the authors' own best epoch + 1 + 200. The best epochs
are those in the file names of the checkpoints the authors published (github.com/dorienh/bitcoin_synthesizer,
models/<model>/epoch=<best>-val_loss=<...>.ckpt); their runs used other batching (a batch of consecutive days fed as
one sequence), so this is an order of magnitude, not a prediction. Both are compared with the 90-minute rule of
issue 15, with one run per core (`train.parallel_runs` null) on this machine's cores.
"""
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "herremans_paper"
BUDGET_MIN = 90.0
# Best epochs of the authors' published checkpoints (models/<dir>/epoch=<n>-val_loss=<v>.ckpt), by our model name.
AUTHORS_BEST_EPOCH = {"lstm": 247, "transformer": 144, "synth_random": 115, "synth_factorized_random": 182,
                      "synth_dense": 301, "synth_factorized_dense": 265, "synth_dense_dot": 78, "synth_random_dot": 86}
AUTHORS_DIR = {"lstm": "lstm", "transformer": "transformer", "synth_random": "random", "synth_factorized_random": "fac_random",
               "synth_dense": "dense", "synth_factorized_dense": "fac_dense", "synth_dense_dot": "mix_dense",
               "synth_random_dot": "mix_random"}
def subset():
    "The documented subset that paper_runs/dvc.yaml runs (volnb.stages.VARIANTS): models, seeds, epoch cap."
    from volnb.core import compose_config
    from volnb.stages import VARIANTS
    c = compose_config(VARIANTS["paper_runs/dvc.yaml"][1])
    return tuple(c.experiment.models), list(c.train.seeds), int(c.train.max_epochs)


def setup():
    from volnb.core import compose_config
    from volnb.stages import StagePaths
    p = StagePaths(compose_config("experiment=herremans"))          # herremans_paper shares the data and the splits
    if not p.features.exists(): sys.exit(f"missing {p.features}: run `dvc repro prepare` first")
    return pd.read_parquet(p.features), pd.read_parquet(p.market), json.loads(p.scaler.read_text())


def compose_all(names, epochs, tries=10):
    "Every model's config, composed before any training (retried: other work may be editing conf/ meanwhile)."
    from volnb.core import compose_config
    for i in range(tries):
        try:
            return {n: compose_config(f"experiment={EXPERIMENT} model={n} train.max_epochs={epochs} train.patience=null "
                                      "train.progress_bar=false") for n in names}
        except Exception as e:
            if i == tries - 1: raise
            print(f"composing failed ({type(e).__name__}); retrying in 30 s", flush=True); time.sleep(30)


def epoch_seconds(cfg, X, M, sc, epochs):
    from volnb.train import train_model
    with tempfile.TemporaryDirectory() as d:
        res = train_model(cfg, X, M, sc, 0, d)
    bs = int(cfg.model.get("batch_size") or cfg.train.batch_size)
    return {"s_per_epoch": res["fit_seconds"] / epochs, "fit_seconds": res["fit_seconds"], "n_train": res["n_train"],
            "steps_per_epoch": -(-res["n_train"] // bs), "batch_size": bs, "window": res["window"],
            "params": int(sum(p.numel() for p in res["model"].parameters()))}


def project(per_model, seeds, max_epochs, patience, cores):
    "Core-hours and wall hours (one run per core) of every model x seed, at max_epochs and at the assumed stop."
    rows, tot_max, tot_exp = [], 0.0, 0.0
    for name, r in per_model.items():
        base = name.removeprefix("paper_")
        expected = min(AUTHORS_BEST_EPOCH[base] + 1 + patience, max_epochs)
        s_max, s_exp = r["s_per_epoch"] * max_epochs * seeds, r["s_per_epoch"] * expected * seeds
        tot_max += s_max; tot_exp += s_exp
        rows.append({"model": name, "s_per_epoch": r["s_per_epoch"], "authors_best_epoch": AUTHORS_BEST_EPOCH[base],
                     "authors_checkpoint_dir": AUTHORS_DIR[base], "expected_epochs": expected,
                     "core_h_max": s_max / 3600, "core_h_expected": s_exp / 3600})
    return rows, {"core_h_max": tot_max / 3600, "core_h_expected": tot_exp / 3600,
                  "wall_h_max": tot_max / 3600 / cores, "wall_h_expected": tot_exp / 3600 / cores}


def main():
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(1)
    from volnb.core import compose_config
    cfg = compose_config(f"experiment={EXPERIMENT}")
    X, M, sc = setup()
    cfgs = compose_all(list(cfg.experiment.models), epochs)
    cache = Path(os.environ["BENCH_CACHE"]) if os.environ.get("BENCH_CACHE") else None   # resume an interrupted run
    per_model = json.loads(cache.read_text()) if cache and cache.exists() else {}
    reused = sorted(per_model)                      # epoch times read back from BENCH_CACHE, not measured in this run
    for name, c in cfgs.items():
        if name in per_model: continue
        per_model[name] = epoch_seconds(c, X, M, sc, epochs)
        if cache: cache.write_text(json.dumps(per_model))
        print(f"{name}: {per_model[name]['s_per_epoch']:.2f} s/epoch", flush=True)
    seeds, max_epochs, patience = len(cfg.train.seeds), int(cfg.train.max_epochs), int(cfg.train.patience)
    cores = os.cpu_count() or 1
    rows, tot = project(per_model, seeds, max_epochs, patience, cores)
    fits = tot["wall_h_expected"] * 60 <= BUDGET_MIN
    SUBSET, sub_seeds, SUBSET_EPOCHS = subset()
    sub_core_s = sum(per_model[m]["s_per_epoch"] for m in SUBSET) * SUBSET_EPOCHS * len(sub_seeds)
    sub_full = [r for r in rows if r["model"] in SUBSET]
    res = {"experiment": EXPERIMENT, "epochs_measured": epochs, "threads": 1, "seeds": seeds, "max_epochs": max_epochs,
           "patience": patience, "cores": cores, "per_model": per_model, "projection": rows, "total": tot,
           "budget_min": BUDGET_MIN, "fits_budget": fits,
           "subset": {"models": list(SUBSET), "seeds": sub_seeds, "max_epochs": SUBSET_EPOCHS,
                      "wall_min": sub_core_s / 60 / cores, "core_min": sub_core_s / 60,
                      "full_length_wall_h_expected": sum(r["core_h_expected"] for r in sub_full) / cores}}
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res["machine"] = {"cpus": cores, "python": platform.python_version(), "torch": torch.__version__}
    res["commit"] = head
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "herremans_paper_profile.json").write_text(json.dumps(res, indent=2) + "\n")
    sub = res["subset"]
    lines = ["# Herremans & Low with the paper's own settings: epoch time and the full Table 3 run", "",
             f"Produced by `python scripts/bench_herremans_paper.py {epochs}` on commit `{head}` ({cores} CPUs, torch "
             f"{torch.__version__}). `experiment=herremans_paper`: Table 2's settings per model (`conf/model/paper_*.yaml`) "
             f"and Section 5.2's profile (`conf/train/paper.yaml`: window {cfg.train.window}, lr {cfg.train.lr:g}, weight decay "
             f"{cfg.train.weight_decay:g}, up to {max_epochs:,} epochs, patience {patience}); each model trained {epochs} epochs "
             "without early stopping, 1 intra-op thread, one run at a time, as the `train` stage trains it (validation and "
             "checkpoint every epoch), on the real prepared data (another agent's load on the shared machine may add noise)."
             + (f" Epoch times of {len(reused)} models read back from an earlier run's BENCH_CACHE (commit "
                f"`{os.environ.get('BENCH_MEASURED_COMMIT', 'unknown')}`)." if reused else ""), "",
             "| model | batch size | steps/epoch | parameters | s/epoch | authors' best epoch | expected epochs | core-h at 10,000 epochs x 5 seeds | core-h expected x 5 seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pm = per_model[r["model"]]
        lines.append(f"| {r['model']} | {pm['batch_size']} | {pm['steps_per_epoch']} | {pm['params']:,} | {r['s_per_epoch']:.2f} | "
                     f"{r['authors_best_epoch']} | {r['expected_epochs']} | {r['core_h_max']:.0f} | {r['core_h_expected']:.1f} |")
    lines += ["", "GARCH(1,1) and HAR-RV (Table 3's baselines) take seconds (reports/benchmarks/baselines.md): negligible.", "",
              "**Projection** of the full Table 3 run (8 neural models x 5 seeds, one run per core on "
              f"{cores} cores): at most {tot['wall_h_max']:,.0f} h wall ({tot['core_h_max']:,.0f} core-h) if every run "
              f"went to {max_epochs:,} epochs; **about {tot['wall_h_expected']:.1f} h wall** ({tot['core_h_expected']:.1f} "
              f"core-h) under the assumption below. Budget {BUDGET_MIN:.0f} min: **{'fits' if fits else 'does not fit'}**.", "",
              f"Assumption (expected epochs): patience-{patience} early stopping ends a run at best epoch + 1 + {patience}, "
              "with the best epoch that of the authors' published checkpoint for the model "
              "(github.com/dorienh/bitcoin_synthesizer, `models/<dir>/epoch=<best>-val_loss=<v>.ckpt`). Their runs fed a "
              "batch of consecutive days as one sequence (see conf/model/paper_transformer_base.yaml), so the number of "
              "optimiser steps per epoch differs from ours: an order of magnitude, not a forecast.", "",
              f"**Documented subset** (paper_runs/dvc.yaml, from volnb.stages.VARIANTS): {', '.join(SUBSET)}, seeds "
              f"{sub_seeds}, capped at {SUBSET_EPOCHS} epochs (patience 200 cannot trigger): about {sub['wall_min']:.0f} min "
              f"wall on {cores} idle cores ({sub['core_min']:.0f} core-min). The same models at full length, 5 seeds, would take "
              f"about {sub['full_length_wall_h_expected']:.1f} h wall under the assumption above."]
    (dest / "herremans_paper_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
