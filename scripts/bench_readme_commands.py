"""Benchmark the README's two commands on a fresh clone: wall time and peak memory (max RSS of any process).

Usage: .venv/bin/python scripts/bench_readme_commands.py [--keep DIR]   (writes reports/benchmarks/readme_commands.{json,md})
The clone is made from HEAD in a temporary folder with ../shared linked beside it, as CI does; `--keep DIR` makes the
clones in DIR and leaves them there (to read the fresh clone's results and logs afterwards). Each stage's wall time is
read from the `[stage] NAME: done in N s` lines that `volnb stage` prints during `dvc repro`.
"""
import argparse
import json
import re
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()


PROBE = ("import resource, subprocess, sys; rc = subprocess.run(['bash', '-c', sys.argv[1]]).returncode; "
         "print('@@peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def run(cmd, cwd, log):
    "Run `cmd` under a probe process: wall seconds, the peak RSS (MiB) of the largest process it started, stage times."
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE, cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t
    Path(log).write_text(p.stdout)
    last = [l for l in p.stdout.splitlines() if l.startswith("@@peak_kib")][-1].split()
    out = [l for l in p.stdout.strip().splitlines() if not l.startswith("@@peak_kib")]
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\[stage\] (\w+): done in (\d+) s", p.stdout, re.M)}
    return {"command": cmd, "exit_code": int(last[2]), "wall_s": round(wall, 1),
            "peak_rss_mib": round(int(last[1]) / 1024, 1), "stages_s": stages, "tail": "\n".join(out[-3:])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", default=None, help="make the clones in this (new) folder and keep them")
    a = ap.parse_args(argv)
    head = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    runs = []
    if a.keep: Path(a.keep).mkdir(parents=True, exist_ok=False)
    with (tempfile.TemporaryDirectory() if not a.keep else _Kept(a.keep)) as d:
        os.symlink(SHARED, Path(d) / "shared")
        for n in ("a", "b"): subprocess.check_call(["git", "clone", "-q", str(ROOT), str(Path(d) / n / "volnb")])
        for n in ("a", "b"): os.symlink(SHARED, Path(d) / n / "shared")
        cases = [("a", "main job, fresh clone (installs everything, full dvc repro)", "bash scripts/repro.sh"),
                 ("b", "tests, fresh clone (installs everything)", "bash scripts/test.sh"),
                 ("a", "main job again, up to date", "bash scripts/repro.sh"),
                 ("a", "tests, set up already", "bash scripts/test.sh")]
        for i, (clone, label, cmd) in enumerate(cases):
            r = run(cmd, Path(d) / clone / "volnb", Path(d) / f"case{i}.log")
            r["case"] = label
            runs.append(r)
            print(f"{label}: exit {r['exit_code']}, {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB", flush=True)
    out = {"commit": head, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
           "produced_by": "python scripts/bench_readme_commands.py", "runs": runs}
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "readme_commands.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# The README's two commands: wall time and peak memory", "",
             f"Produced by `python scripts/bench_readme_commands.py` on commit `{head[:10]}` "
             f"({out['machine']['cpus']} CPUs, {out['machine']['mem_gib']} GiB, Python {out['machine']['python']}).",
             "Peak RSS is the largest resident set of any single process the command started "
             "(pip while installing; the notebook kernels while running).", "",
             "| case | command | exit | wall (s) | peak RSS (MiB) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['case']} | `{r['command']}` | {r['exit_code']} | {r['wall_s']} | {r['peak_rss_mib']} |" for r in runs]
    first = runs[0]
    if first["stages_s"]:
        total = sum(first["stages_s"].values())
        lines += ["", f"Stages of the first case ({first['case']}), as `volnb stage` timed them "
                      f"({total:.0f} s of {first['wall_s']} s; the rest is installs, `dvc pull` and DVC itself):", "",
                  "| stage | wall (s) |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in first["stages_s"].items()]
    (dest / "readme_commands.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


class _Kept:
    "A context manager like TemporaryDirectory that keeps its folder."
    def __init__(self, d): self.d = str(Path(d).resolve())
    def __enter__(self): return self.d
    def __exit__(self, *exc): return False


if __name__ == "__main__":
    sys.exit(main())
