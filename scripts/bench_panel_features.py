"""Benchmark volnb.panel_features on the real Binance hourly panel (116 tokens, raw file, no cleaning).

Usage: .venv/bin/python scripts/bench_panel_features.py [N_TOKENS]   (default: all tokens)
Reads data/binance_spot_usdt_1h_116tokens_2021-2023.csv.gz directly with pandas (token = ticker without USDT,
filled = False), then times panel_features (with the lagged fear & greed index), panel_targets and
static_covariates. Prints rows/s and the peak RSS of the process; writes reports/benchmarks/panel_features.{json,md}.
"""
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from volnb.panel_features import FEATURES, panel_features, panel_targets, static_covariates

ROOT = Path(__file__).resolve().parents[1]
PANEL = ROOT / "data" / "binance_spot_usdt_1h_116tokens_2021-2023.csv.gz"
SUMMARY = ROOT / "data" / "binance_spot_usdt_1h_116tokens_summary.csv"
FEAR_GREED = ROOT / "data" / "fear_greed_daily_alternative_me.csv"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_raw(n_tokens=None) -> pd.DataFrame:
    raw = pd.read_csv(PANEL, dtype={k: "float64" for k in ("open", "high", "low", "close", "volume")})
    panel = pd.DataFrame({"token": raw["ticker"].str.removesuffix("USDT"), "timestamp": pd.to_datetime(raw["date"]),
                          **{k: raw[k] for k in ("open", "high", "low", "close", "volume")}})
    del raw
    panel["filled"] = False
    if n_tokens is not None:
        keep = panel["token"].drop_duplicates().iloc[:n_tokens]      # the file's order: BTC, ETH, BNB, ...
        panel = panel[panel["token"].isin(keep)]
    return panel.sort_values(["token", "timestamp"], kind="stable").reset_index(drop=True)


def main(n_tokens=None):
    t0 = time.perf_counter()
    panel = load_raw(n_tokens)
    t_load = time.perf_counter() - t0
    rss_load = peak_rss_mib()
    n, tokens = len(panel), panel["token"].nunique()
    print(f"loaded {n:,} rows, {tokens} tokens in {t_load:.1f} s (peak RSS {rss_load:.0f} MiB)", flush=True)

    t0 = time.perf_counter()
    feats = panel_features(panel, fear_greed=FEAR_GREED)
    t_feat = time.perf_counter() - t0
    rss_feat = peak_rss_mib()
    print(f"panel_features: {t_feat:.1f} s, {n / t_feat:,.0f} rows/s, {feats.shape[1]} features, "
          f"{feats.memory_usage(index=False).sum() / 2**20:.0f} MiB float32 (peak RSS {rss_feat:.0f} MiB)", flush=True)

    t0 = time.perf_counter()
    targ = panel_targets(panel)
    t_targ = time.perf_counter() - t0
    print(f"panel_targets: {t_targ:.1f} s, {n / t_targ:,.0f} rows/s", flush=True)

    t0 = time.perf_counter()
    cov = static_covariates(panel, pd.read_csv(SUMMARY), asof="2022-01-01")
    t_cov = time.perf_counter() - t0
    print(f"static_covariates: {t_cov:.2f} s; buckets {cov['liquidity_bucket'].value_counts(dropna=False).to_dict()}", flush=True)

    nan_share = feats.isna().mean()
    out = {"produced_by": "python scripts/bench_panel_features.py" + (f" {n_tokens}" if n_tokens else ""),
           "cpus": os.cpu_count(), "python": platform.python_version(), "pandas": pd.__version__, "numpy": np.__version__,
           "rows": n, "tokens": tokens, "features": feats.shape[1], "load_s": round(t_load, 1),
           "panel_features_s": round(t_feat, 2), "panel_features_rows_per_s": round(n / t_feat),
           "panel_targets_s": round(t_targ, 2), "panel_targets_rows_per_s": round(n / t_targ),
           "static_covariates_s": round(t_cov, 3), "features_mib": round(feats.memory_usage(index=False).sum() / 2**20, 1),
           "targets_mib": round(targ.memory_usage(index=False).sum() / 2**20, 1),
           "peak_rss_after_load_mib": round(rss_load), "peak_rss_mib": round(peak_rss_mib()),
           "nan_share": {k: round(float(v), 4) for k, v in nan_share.items()}}
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "panel_features.json").write_text(json.dumps(out, indent=2) + "\n")
    worst = nan_share.sort_values(ascending=False).head(6)
    md = ["# Multi-token panel features: time and memory", "",
          f"Produced by `{out['produced_by']}` ({out['cpus']} CPUs, shared; Python {out['python']}, pandas {out['pandas']}). "
          "Input: the raw Binance hourly file read with pandas, not cleaned (`filled` all False); "
          f"{n:,} token-hours of {tokens} tokens.", "",
          "| step | time (s) | rows/s |", "|---|---:|---:|",
          f"| read the csv.gz and build the panel | {out['load_s']} | |",
          f"| `panel_features` ({out['features']} float32 features, with lagged fear & greed) | {out['panel_features_s']} | {out['panel_features_rows_per_s']:,} |",
          f"| `panel_targets` (1h/4h/24h: forward return, direction, volatility) | {out['panel_targets_s']} | {out['panel_targets_rows_per_s']:,} |",
          f"| `static_covariates` (asof 2022-01-01) | {out['static_covariates_s']} | |", "",
          f"Peak RSS of the process: {out['peak_rss_after_load_mib']} MiB after loading, {out['peak_rss_mib']} MiB at the end. "
          f"The feature frame takes {out['features_mib']} MiB, the targets {out['targets_mib']} MiB.", "",
          "Largest shares of NaN features (warm-up windows, holes, late listings, zero volumes): "
          + ", ".join(f"`{k}` {v:.1%}" for k, v in worst.items()) + "."]
    (dest / "panel_features.md").write_text("\n".join(md) + "\n")
    print((dest / "panel_features.md").read_text())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
