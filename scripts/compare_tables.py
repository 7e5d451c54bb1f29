"""Compare the committed tables under reports/tables with those of another git revision, column by column.

Usage: .venv/bin/python scripts/compare_tables.py REV   (e.g. the commit before a change, after `dvc repro`)
For each CSV that differs: added or removed columns, row-count changes, the largest absolute difference of each numeric
column (and where missing values differ), and the number of text cells that differ, with the first example.
"""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def compare(old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    "What differs between two versions of a table."
    msg = []
    if list(old.columns) != list(new.columns):
        msg.append(f"columns -{sorted(set(old.columns) - set(new.columns))} +{sorted(set(new.columns) - set(old.columns))}")
    if len(old) != len(new):
        return msg + [f"rows {len(old)} -> {len(new)}"]
    for c in [c for c in old.columns if c in new.columns]:
        a, b = old[c], new[c]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            d = np.abs(a.to_numpy(float) - b.to_numpy(float))
            worst = float(np.nanmax(d)) if np.isfinite(d).any() else 0.0
            nan_diff = int((a.isna() != b.isna()).sum())
            if worst > 0 or nan_diff:
                msg.append(f"{c}: max |diff| {worst:.3g}" + (f", missing values differ in {nan_diff} rows" if nan_diff else ""))
        else:
            neq = a.astype(str) != b.astype(str)
            if neq.any(): msg.append(f"{c}: {int(neq.sum())} text cells differ, e.g. {a[neq].iloc[0]!r} -> {b[neq].iloc[0]!r}")
    return msg


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1: sys.exit(__doc__)
    rev = argv[0]
    files = [f for f in git("diff", "--name-only", rev, "--", "reports/tables").split() if f.endswith(".csv")]
    for f in files:
        if not (ROOT / f).exists(): print(f"{f}: removed"); continue
        try: old = pd.read_csv(io.StringIO(git("show", f"{rev}:{f}")))
        except subprocess.CalledProcessError: print(f"{f}: new"); continue
        msg = compare(old, pd.read_csv(ROOT / f))
        print(f"{f}: " + ("; ".join(msg) if msg else "same values"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
