"""Benchmark the README's two commands on a fresh clone: wall time and peak memory (max RSS of any process).

Usage: .venv/bin/python scripts/bench_readme_commands.py   (writes reports/benchmarks/readme_commands.{json,md})
The clone is made from HEAD in a temporary folder with ../shared linked beside it, as CI does.
"""
import json
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


def run(cmd, cwd):
    "Run `cmd` under a probe process: wall seconds and the peak RSS (MiB) of the largest process it started."
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROBE, cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t
    last = [l for l in p.stdout.splitlines() if l.startswith("@@peak_kib")][-1].split()
    out = [l for l in p.stdout.strip().splitlines() if not l.startswith("@@peak_kib")]
    return {"command": cmd, "exit_code": int(last[2]), "wall_s": round(wall, 1),
            "peak_rss_mib": round(int(last[1]) / 1024, 1), "tail": "\n".join(out[-3:])}


def main():
    head = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    runs = []
    with tempfile.TemporaryDirectory() as d:
        os.symlink(SHARED, Path(d) / "shared")
        for n in ("a", "b"): subprocess.check_call(["git", "clone", "-q", str(ROOT), str(Path(d) / n / "volnb")])
        for n in ("a", "b"): os.symlink(SHARED, Path(d) / n / "shared")
        cases = [("a", "main job, fresh clone (installs everything, full dvc repro)", "bash scripts/repro.sh"),
                 ("b", "tests, fresh clone (installs everything)", "bash scripts/test.sh"),
                 ("a", "main job again, up to date", "bash scripts/repro.sh"),
                 ("a", "tests, set up already", "bash scripts/test.sh")]
        for clone, label, cmd in cases:
            r = run(cmd, Path(d) / clone / "volnb")
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
    (dest / "readme_commands.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
