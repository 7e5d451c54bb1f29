"""Benchmark the baselines stage's work: forecast_variances for all six models on the real herremans split.

Usage: .venv/bin/python scripts/bench_baselines.py [refit_every ...]   (default: 5 1)
Writes reports/benchmarks/baselines.{json,md}.
"""
import json
import os
import resource
import sys
import time
from pathlib import Path

from volnb.baselines import baseline_predictions, forecast_variances
from volnb.core import compose_config
from volnb.data import load_daily_sources
from volnb.features import build_dataset

ROOT = Path(__file__).resolve().parents[1]


def main(refits):
    cfg = compose_config("experiment=herremans")
    market = build_dataset(load_daily_sources(cfg), cfg).market
    rows = []
    for k in refits:
        cb = cfg.baselines.copy()
        cb.refit_every = k
        t0 = time.perf_counter()
        fc = forecast_variances(market, cb)
        t1 = time.perf_counter()
        preds = baseline_predictions(market, cb, cfg, forecasts=fc)
        t2 = time.perf_counter()
        rows.append({"refit_every": k, "models": len(cb.models), "history_days": int((market.split == "train").sum()),
                     "forecast_days": int(market.split.isin(["validation", "test"]).sum()), "fits": len(fc.fit_log),
                     "not_converged": int((~fc.fit_log.converged.astype(bool)).sum()),
                     "forecast_s": round(t1 - t0, 2), "map_to_target_s": round(t2 - t1, 3), "prediction_rows": len(preds)})
        print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"produced_by": "python scripts/bench_baselines.py " + " ".join(map(str, refits)), "cpus": os.cpu_count(),
           "peak_rss_mib": round(peak, 1), "runs": rows}
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "baselines.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# Baselines: rolling one-step-ahead forecasts, all six models", "",
          f"Produced by `{out['produced_by']}` ({out['cpus']} CPUs); peak RSS of the process {out['peak_rss_mib']} MiB.", "",
          "| refit every (days) | fits | not converged | forecast days | forecast time (s) | map to target (s) |",
          "|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['refit_every']} | {r['fits']} | {r['not_converged']} | {r['forecast_days']} | {r['forecast_s']} | {r['map_to_target_s']} |" for r in rows]
    (dest / "baselines.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [5, 1])
