"""Benchmark the multi-token study (issue 11, "Scale and speed"): each stage's wall time and peak memory on the CPU
profile, the deep models' training throughput, and the paper profile's projected time.

Usage: .venv/bin/python scripts/bench_multitoken.py [--stages a,b,...] [--keep DIR]
    (writes reports/benchmarks/multitoken.{json,md})

Each stage runs as `volnb stage NAME` (what `dvc repro` runs) under a probe process into a temporary reports folder,
so the repository's outputs are untouched; peak memory is the largest resident set of any process it started (the
notebook's kernel). Training throughput per model and block is read from the run's `deep_runs.csv`. The paper
profile (`experiment=multitoken_paper`: every token, monthly refits, wider networks trained from scratch) is not
run: its time is projected from (a) the training windows it would draw, counted on the cleaned panel of every token,
and (b) the throughput of its networks measured here on a fixed number of training steps, and (c) the CPU profile's
baseline time scaled by tokens x refits. The machine is shared with whatever else runs: the load average is recorded.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["multitoken_prepare", "multitoken_baselines", "multitoken_deep", "multitoken_evaluate", "multitoken_regimes",
          "multitoken_spillover"]
PROBE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('@@peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def run_stage(name, reports, log):
    "Run one stage under the probe: wall seconds, peak RSS (MiB) of the largest process, exit code."
    cmd = [str(ROOT / ".venv/bin/volnb"), "stage", name, "--overrides",
           f"paths.reports_dir={reports} paths.artifacts_dir={reports}/artifacts"]
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE, *cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t
    Path(log).write_text(p.stdout)
    last = [l for l in p.stdout.splitlines() if l.startswith("@@peak_kib")][-1].split()
    return {"stage": name, "exit_code": int(last[2]), "wall_s": round(wall, 1), "peak_rss_mib": round(int(last[1]) / 1024, 1)}


def network_throughput(cfg, steps=30, batch=256):
    "Training samples/s of each network of `cfg.experiment.deep` on random windows (after 5 warm-up steps)."
    import torch
    from omegaconf import OmegaConf
    from volnb.panel_features import feature_groups
    from volnb.panel_models import PanelForecaster, panel_loss
    deep = OmegaConf.to_container(cfg.experiment.deep, resolve=True)
    torch.set_num_threads(int(deep["threads"]))
    n_feat = sum(len(v) for v in feature_groups().values())
    out = {}
    for name, m in deep["models"].items():
        m = {k: v for k, v in m.items() if k != "label"}
        torch.manual_seed(0)
        net = PanelForecaster(n_feat, 120, 12, 4, n_horizons=len(cfg.experiment.horizons), n_quantiles=len(deep["quantiles"]),
                              encoder=m.pop("encoder"), window=deep["window"], **m)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x, s = torch.randn(batch, deep["window"], n_feat), torch.zeros(batch, 3, dtype=torch.long)
        yd, yv = torch.randint(0, 2, (batch, len(cfg.experiment.horizons))).float(), torch.rand(batch, len(cfg.experiment.horizons)) + 0.1
        for i in range(steps + 5):
            if i == 5: t = time.perf_counter()
            loss = panel_loss(net(x, s), yd, yv, deep["quantiles"])["loss"]
            opt.zero_grad(); loss.backward(); opt.step()
        out[name] = round(steps * batch / (time.perf_counter() - t), 1)
    return out


def paper_projection(cpu_stage_s, cpu_runs):
    "Projected wall time of the paper profile from its sizes and measured throughputs."
    from volnb.core import compose_config
    from volnb.walkforward import blocks_from_config
    cpu, paper = compose_config("experiment=multitoken"), compose_config("experiment=multitoken_paper")
    thr = {"cpu": network_throughput(cpu), "paper": network_throughput(paper)}
    dp = paper.experiment.deep
    n_blocks_paper, n_blocks_cpu = len(blocks_from_config(paper.experiment)), len(blocks_from_config(cpu.experiment))
    summary = pd.read_csv(ROOT / "data" / "binance_spot_usdt_1h_116tokens_summary.csv")
    n_tok_paper, n_tok_cpu = len(summary), len(cpu.experiment.tokens)
    rows = []
    for name in dp.models:
        epochs = int(dp.epochs_first) + (n_blocks_paper - 1) * int(dp.epochs_refit)       # upper bound: no early stop
        samples = epochs * int(dp.samples_per_epoch)
        rows.append({"model": name, "blocks": n_blocks_paper, "max_epochs": epochs, "samples": samples,
                     "samples_per_s": thr["paper"][name], "projected_hours": round(samples / thr["paper"][name] / 3600, 1)})
    scale = (n_tok_paper / n_tok_cpu) * (n_blocks_paper / n_blocks_cpu)
    base = cpu_stage_s.get("multitoken_baselines")
    return {"throughput_cpu_profile_networks": thr["cpu"], "throughput_paper_profile_networks": thr["paper"],
            "deep": rows, "tokens": {"cpu": n_tok_cpu, "paper": n_tok_paper},
            "blocks": {"cpu": n_blocks_cpu, "paper": n_blocks_paper},
            "baselines_projected_minutes": None if base is None else round(base * scale / 60, 1),
            "baselines_scale": round(scale, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--keep", default=None, help="write the runs into this folder and keep it")
    a = ap.parse_args(argv)
    stages = a.stages.split(",")
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        rep = Path(a.keep or d) / "reports"
        rows = []
        for s in stages:
            r = run_stage(s, rep, Path(a.keep or d) / f"{s}.log")
            rows.append(r)
            print(f"{s}: exit {r['exit_code']}, {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB", flush=True)
            if r["exit_code"]: break
        runs_csv = rep / "tables" / "multitoken" / "deep_runs.csv"
        runs = pd.read_csv(runs_csv) if runs_csv.exists() else None
    load1 = os.getloadavg()
    stage_s = {r["stage"]: r["wall_s"] for r in rows}
    proj = paper_projection(stage_s, runs)
    res = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_before": load0, "load_average_after": load1,
           "stages": rows, "total_s": round(sum(stage_s.values()), 1), "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
           "deep_runs": None if runs is None else runs[["model", "block", "epochs", "n_train_samples", "fit_seconds",
                                                         "train_samples_per_s", "predict_seconds"]].to_dict("records"),
           "paper_projection": proj}
    out = ROOT / "reports" / "benchmarks"
    (out / "multitoken.json").write_text(json.dumps(res, indent=1, default=str))
    lines = ["# The multi-token study: stage times, memory, training throughput, and the paper profile's projection", "",
             f"Produced by `python scripts/bench_multitoken.py` ({res['cpus']} CPUs; load average before "
             f"{load0[0]:.1f}, after {load1[0]:.1f}: the machine is shared, so times are upper bounds). Each stage runs as "
             "`volnb stage NAME` on the CPU profile (`experiment=multitoken`) into a temporary reports folder; peak RSS is "
             "the largest process it started.", "",
             "| stage | exit | wall (s) | peak RSS (MiB) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['exit_code']} | {r['wall_s']} | {r['peak_rss_mib']} |" for r in rows]
    lines += [f"| **all** | | **{res['total_s']}** | **{res['peak_rss_mib']}** |", "",
              "CPU-profile budget (issue 11): at most 30 minutes and 6 GB for the multi-token stages: "
              f"{'met' if res['total_s'] <= 1800 and res['peak_rss_mib'] <= 6144 else 'NOT met'} "
              f"({res['total_s'] / 60:.1f} min, {res['peak_rss_mib'] / 1024:.2f} GiB).", ""]
    if runs is not None:
        lines += ["## Training throughput of the global networks (from `deep_runs.csv` of this run)", "",
                  "| model | block | epochs | samples | fit (s) | samples/s | predict (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r.model} | {r.block} | {r.epochs} | {r.n_train_samples} | {r.fit_seconds:.1f} | {r.train_samples_per_s:.0f} | "
                  f"{r.predict_seconds:.1f} |" for r in runs.itertuples()]
        lines.append("")
    p = proj
    lines += ["## The paper profile, projected", "",
              f"`experiment=multitoken_paper`: {p['tokens']['paper']} tokens (CPU profile {p['tokens']['cpu']}), "
              f"{p['blocks']['paper']} monthly blocks (CPU profile {p['blocks']['cpu']} quarterly), networks trained from "
              "scratch every block. Throughput measured here on random windows (training samples/s, batch 256): CPU-profile "
              f"networks {p['throughput_cpu_profile_networks']}, paper-profile networks {p['throughput_paper_profile_networks']}.", "",
              "| model | blocks | epochs (at most) | training samples | samples/s | projected hours |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['blocks']} | {r['max_epochs']} | {r['samples']:,} | {r['samples_per_s']} | {r['projected_hours']} |"
              for r in p["deep"]]
    if p["baselines_projected_minutes"] is not None:
        lines += ["", f"Baselines (per-token GARCH, HAR, ... refits): the CPU profile's time x {p['baselines_scale']} "
                      f"(tokens x refits) = about {p['baselines_projected_minutes']} minutes."]
    total_h = sum(r["projected_hours"] for r in p["deep"])
    lines += ["", f"The paper profile's deep training alone projects to about {total_h:.0f} hours on this machine: it outgrows one "
                  "2-core machine and is meant for Lightning's multi-node training (`Trainer(num_nodes=..., strategy='ddp')`) "
                  "or the sweep command's Ray executor across blocks, not a home-made scheduler."]
    (out / "multitoken.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
