"""Where the time of a Herremans training run goes, and what the `train` stage's settings buy.

Usage: .venv/bin/python scripts/bench_training.py   (after `dvc repro prepare`; writes reports/benchmarks/training.{json,md})

Every case trains on the real prepared daily data (reports/artifacts/herremans/prepare) with the default CPU profile
(conf/train/cpu.yaml) except for a fixed epoch count without early stopping, so that runs are comparable:
  1. one run with 2 and with 1 intra-op threads (and whether the results are bit-identical);
  2. the same epochs as a plain PyTorch loop over the same batches: what Lightning adds per step;
  3. fetching one epoch of training batches one window at a time (default collate) vs `WindowDataset.__getitems__`;
  4. seconds per epoch of each model of the study (is Synthesizer FR slower per epoch?);
  5. `train_runs` over 2 models x 4 seeds with the stage's own profile (early stopping), serially and with
     `parallel_runs=2`: wall time, speed-up, same numbers.
Machine facts and the commit are recorded with the results. Run it on an otherwise idle machine.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, default_collate

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8


def setup():
    from volnb.core import compose_config
    from volnb.stages import StagePaths
    cfg = compose_config(f"experiment=herremans train.max_epochs={EPOCHS} train.patience=null train.progress_bar=false")
    p = StagePaths(cfg)
    if not p.features.exists(): sys.exit(f"missing {p.features}: run `dvc repro prepare` first")
    return cfg, pd.read_parquet(p.features), pd.read_parquet(p.market), json.loads(p.scaler.read_text())


def one_run(cfg, X, M, sc, model="transformer", seed=0):
    from volnb.core import compose_config
    from volnb.train import train_model
    c = compose_config(f"experiment=herremans model={model} train.max_epochs={EPOCHS} train.patience=null "
                       "train.progress_bar=false")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = train_model(c, X, M, sc, seed, d)
        return time.perf_counter() - t, res


def plain_loop(cfg, X, M, sc, seed=0):
    "The same model, batches, optimiser and epochs as `train_model`, without Lightning (no validation, no checkpoints)."
    import pytorch_lightning as pl
    from volnb.models import build_model
    from volnb.train import WindowDataset, masked_rmse, scaled_inputs, stacked
    Xs, y, sp = scaled_inputs(X, M, sc)
    ds = WindowDataset(Xs, y, sp, "train", int(cfg.train.window))
    pl.seed_everything(seed, verbose=False)
    net = build_model(cfg.model, n_features=Xs.shape[1], max_len=int(cfg.train.window))
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay))
    dl = DataLoader(ds, batch_size=int(cfg.train.batch_size), shuffle=True,
                    generator=torch.Generator().manual_seed(seed), collate_fn=stacked)
    t = time.perf_counter()
    for _ in range(EPOCHS):
        for xb, yb, mb in dl:
            loss = masked_rmse(net(xb), yb, mb)
            opt.zero_grad(); loss.backward(); opt.step()
    return time.perf_counter() - t, len(dl)


def fetch_epoch(X, M, sc, window, batch_size):
    from volnb.train import WindowDataset, scaled_inputs, stacked
    Xs, y, sp = scaled_inputs(X, M, sc)
    ds = WindowDataset(Xs, y, sp, "train", window)
    out = {}
    for name, kw in (("per_window", {"collate_fn": default_collate}), ("batched", {"collate_fn": stacked})):
        if name == "per_window":     # hide __getitems__ so the DataLoader fetches window by window
            class PerItem(torch.utils.data.Dataset):
                def __len__(self): return len(ds)
                def __getitem__(self, i): return ds[i]
            src = PerItem()
        else: src = ds
        dl = DataLoader(src, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), **kw)
        reps, t = 20, time.perf_counter()
        for _ in range(reps):
            for _b in dl: pass
        out[name] = (time.perf_counter() - t) / reps
    return out


def main():
    import logging
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg, X, M, sc = setup()
    res = {"epochs": EPOCHS}
    # 1. threads
    torch.set_num_threads(2)
    t2, r2 = one_run(cfg, X, M, sc)
    torch.set_num_threads(1)
    t1, r1 = one_run(cfg, X, M, sc)
    res["threads"] = {"two_s": t2, "one_s": t1, "fit_two_s": r2["fit_seconds"], "fit_one_s": r1["fit_seconds"],
                      "identical_best_val_rmse": r1["best_val_rmse"] == r2["best_val_rmse"],
                      "best_val_rmse": r1["best_val_rmse"]}
    # 2. Lightning's share
    tp, steps = plain_loop(cfg, X, M, sc)
    res["lightning"] = {"lightning_fit_s": r1["fit_seconds"], "plain_loop_s": tp, "train_steps_per_epoch": steps}
    # 3. batch fetching
    res["fetch"] = fetch_epoch(X, M, sc, int(cfg.train.window), int(cfg.train.batch_size))
    # 4. seconds per epoch of each model
    per_model = {}
    for m in cfg.experiment.models:
        t, r = one_run(cfg, X, M, sc, model=m)
        per_model[m] = r["fit_seconds"] / EPOCHS
    res["per_model_s_per_epoch"] = per_model
    # 5. parallel runs
    from volnb.core import compose_config
    from volnb.train import train_runs
    torch.set_num_threads(2)
    cfgs = {m: compose_config(f"experiment=herremans model={m} train.progress_bar=false")    # the stage's own profile
            for m in ("transformer", "synth_random")}
    seeds = [0, 1, 2, 3]
    walls, tabs = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 2):
            t = time.perf_counter()
            tabs[n], preds = train_runs(cfgs, seeds, X, M, sc, lambda mo, s: Path(d) / str(n) / mo / f"seed{s}",
                                        test_window=int(cfg.train.window), parallel_runs=n, log=None)
            walls[n] = time.perf_counter() - t
    same = tabs[1].drop(columns="fit_seconds").equals(tabs[2].drop(columns="fit_seconds"))
    res["parallel"] = {"runs": len(cfgs) * len(seeds), "epochs_mean": float(tabs[1].epochs.mean()),
                       "serial_s": walls[1], "parallel2_s": walls[2], "speedup": walls[1] / walls[2],
                       "identical_tables": bool(same)}
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    res["commit"] = head
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "training.json").write_text(json.dumps(res, indent=2) + "\n")
    th, li, fe, pa = res["threads"], res["lightning"], res["fetch"], res["parallel"]
    lines = ["# Training: where a run's time goes", "",
             f"Produced by `python scripts/bench_training.py` on commit `{head}` ({os.cpu_count()} CPUs, torch {torch.__version__}); "
             f"the Transformer of `conf/model/transformer.yaml` on the real prepared Herremans data, `conf/train/cpu.yaml` "
             f"with {EPOCHS} epochs and no early stopping.", "",
             "| case | seconds | note |", "|---|---:|---|",
             f"| one run, 2 intra-op threads | {th['fit_two_s']:.2f} | fit only |",
             f"| one run, 1 intra-op thread | {th['fit_one_s']:.2f} | best validation RMSE bit-identical: {th['identical_best_val_rmse']} |",
             f"| the same epochs as a plain PyTorch loop | {li['plain_loop_s']:.2f} | no validation or checkpoints: Lightning's loop, the validation pass and checkpoints add {li['lightning_fit_s'] - li['plain_loop_s']:.2f} s ({(li['lightning_fit_s'] - li['plain_loop_s']) / EPOCHS * 1000:.0f} ms an epoch of {li['train_steps_per_epoch']} steps) |",
             f"| one epoch of training batches, window by window | {fe['per_window']:.4f} | default collate |",
             f"| one epoch of training batches, `__getitems__` | {fe['batched']:.4f} | one gather per batch |",
             f"| {pa['runs']} runs (Transformer, Synthesizer R x 4 seeds; the stage's profile, early stopping: {pa['epochs_mean']:.1f} epochs a run), one after another, 1 thread each (`threads_per_run`) | {pa['serial_s']:.1f} | `train_runs(parallel_runs=1)`, training and forecasts |",
             f"| the same {pa['runs']} runs, 2 spawned worker processes, 1 thread each | {pa['parallel2_s']:.1f} | speed-up {pa['speedup']:.2f}x (includes starting the workers); identical training tables: {pa['identical_tables']} |",
             "", "Seconds per epoch of each model of the study (1 thread):", "", "| model | s/epoch |", "|---|---:|"]
    lines += [f"| {m} | {v:.3f} |" for m, v in per_model.items()]
    (dest / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
