"""The same 8-point sweep run serially, on the local process pool and on a local Ray instance: wall time and speed-up.

Usage: .venv/bin/python scripts/bench_sweeps.py   (after `dvc repro prepare`; writes reports/benchmarks/sweeps.{json,md})

The sweep is conf/sweep/herremans_bench8.yaml (2 models x 2 windows x 2 learning rates, one seed, at most 15 epochs):
every point is one papermill run of the `train` stage notebook. Each executor runs all 8 points from scratch (`force`),
twice (the second round in reverse order, after a one-point warm-up), every point pinned to 1 thread
(`train.threads_per_run=1`, OMP/MKL_NUM_THREADS=1) so that all runs compute the same numbers and differ only in how the
points are scheduled; the pool and Ray use 2 workers. The serial runs write reports/sweeps/herremans_bench8/
(git-ignored), the others temporary folders. Wall time is the whole `run_sweep` call: planning (composing 8 configs),
the points, the summary, and for Ray starting and stopping the local instance. The load average is recorded at the
start and end of each run: on a shared machine the speed-ups are indicative only.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "herremans_bench8"
WORKERS = 2
EXECUTORS = ["serial", "local", "ray"]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def one_run(executor: str, out: Path) -> dict:
    from volnb.sweep import run_sweep
    before = load()
    res = run_sweep(SPEC, executor=executor, workers=1 if executor == "serial" else WORKERS, threads=1, out=out, force=True)
    point_s = [json.loads((out / p / "status.json").read_text())["seconds"] for p in res.summary.point]
    return {"executor": executor, "points": len(res.summary), "failed": len(res.failed), "wall_s": round(res.seconds, 1),
            "point_s_mean": round(sum(point_s) / len(point_s), 1), "load_before": before, "load_after": load(),
            "val_rmse": res.summary.set_index("point")["val_rmse_mean"].to_dict()}


def main() -> int:
    from volnb.sweep import load_spec, run_sweep
    import ray
    import torch
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up, not recorded: one point, so that no executor pays for cold file caches
        run_sweep(SPEC, extra=["model=synth_dense", "train.window=16", "train.lr=0.001"], executor="serial", threads=1,
                  out=Path(tmp) / "warm", force=True)
        # two rounds, the second in reverse order, so that a drift in the machine's load falls on every executor
        for rnd, order in enumerate([EXECUTORS, EXECUTORS[::-1]], 1):
            for executor in order:
                out = ROOT / "reports" / "sweeps" / SPEC if executor == "serial" else Path(tmp) / f"{executor}{rnd}"
                runs.append({"round": rnd, **one_run(executor, out)})
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "val_rmse"}), flush=True)
        t0 = time.perf_counter()
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        ray.shutdown()
        ray_startstop = time.perf_counter() - t0
    by = {e: [r for r in runs if r["executor"] == e] for e in EXECUTORS}
    mean = {e: sum(r["wall_s"] for r in rs) / len(rs) for e, rs in by.items()}
    table = [{"executor": e, "workers": 1 if e == "serial" else WORKERS, "wall_s": [r["wall_s"] for r in rs],
              "wall_s_mean": round(mean[e], 1), "speedup": round(mean["serial"] / mean[e], 2),
              "point_s_mean": round(sum(r["point_s_mean"] for r in rs) / len(rs), 1), "failed": sum(r["failed"] for r in rs),
              "load_before": [r["load_before"] for r in rs]} for e, rs in by.items()]
    ref = runs[[r["executor"] for r in runs].index("serial")]["val_rmse"]
    same = max(abs(v - ref[p]) for r in runs for p, v in r["val_rmse"].items())
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    spec = load_spec(SPEC)
    res = {"spec": spec.model_dump(), "summary": table, "runs": runs, "max_abs_diff_val_rmse_across_runs": same,
           "ray_init_s": round(ray_start, 2), "ray_init_and_shutdown_s": round(ray_startstop, 2),
           "ranking": dict(sorted(ref.items(), key=lambda kv: kv[1])),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                       "ray": ray.__version__, "shared": True, "load_at_end": load()}, "commit": head}
    out = ROOT / "reports" / "benchmarks"
    (out / "sweeps.json").write_text(json.dumps(res, indent=1) + "\n")
    fmt_load = lambda ls: "; ".join(" / ".join(f"{x:.1f}" for x in l) for l in ls)
    rows = "\n".join(f"| {t['executor']} | {t['workers']} | {' / '.join(f'{w:.1f}' for w in t['wall_s'])} | {t['wall_s_mean']:.1f} | "
                     f"{t['speedup']:.2f}x | {t['point_s_mean']:.1f} | {t['failed']} | {fmt_load(t['load_before'])} |" for t in table)
    md = f"""# Sweeps: the same 8 points serially, on the local pool and on Ray

Produced by `python scripts/bench_sweeps.py` on commit `{head}` ({os.cpu_count()} CPUs, Python {platform.python_version()},
torch {torch.__version__}, Ray {ray.__version__}). The sweep is `conf/sweep/{SPEC}.yaml`: `{spec.base_overrides}`, grid
{dict(spec.grid)} — 8 papermill runs of the `train` stage notebook, each training one model for one seed. Every point is
pinned to 1 thread (`train.threads_per_run=1`, `OMP_NUM_THREADS=1`), so that all runs compute the same numbers and differ
only in scheduling: `volnb sweep {SPEC} --executor serial|local|ray --workers 1|{WORKERS} --threads 1 --force`. Each executor
ran the whole sweep twice (round 1: serial, local, ray; round 2 in reverse order), after a one-point warm-up.

**The machine was shared** (other agents' work and a long training run on the same {os.cpu_count()} cores): the load
averages (1 / 5 / 15 min) at the start of each run are in the table, and were {' / '.join(f'{x:.1f}' for x in load())} at the end.
With a load of 2-4 on 2 cores the sweep never had both cores to itself, and the load moved during the runs: read the
speed-ups as indicative, not as what an idle machine gives.

| executor | workers | wall s (round 1 / 2) | wall s (mean) | speed-up | s per point (mean) | failed | load at start (1 / 5 / 15 min) |
|---|---:|---:|---:|---:|---:|---:|---|
{rows}

- Wall time: the whole `run_sweep` call — composing the 8 configs, running the points (each starts a Jupyter kernel,
  imports torch and Lightning, trains, forecasts), the summary and its figure; for Ray also starting and stopping the
  local instance (`ray.init` alone took {ray_start:.1f} s here, start and shutdown {ray_startstop:.1f} s).
- Same numbers: the largest difference in a point's validation RMSE between any two of the six runs is {same:.3g}.
- A point's own seconds grow when points share the cores (the mean per point above); the speed-up is what is left of it.
  On an idle 2-core machine 2 workers can give at most 2x; Ray adds its start-up and its own processes (GCS, raylet,
  workers) on the same two cores, and otherwise schedules like the pool (one task of `num_cpus=1` per point). Its use is
  reaching other machines (`--address`), which a process pool cannot.
"""
    (out / "sweeps.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
