"""Benchmark volnb.attention.CausalSelfAttention: all seven variants on SYNTHETIC inputs at several sequence lengths.

Usage: .venv/bin/python scripts/bench_attention.py [L ...]   (default: 64 256 1024 4096)
Writes reports/benchmarks/attention.{json,md,png}.

Per (variant, L) -- d_model 64, n_heads 4, max_len = L, rank 8, inputs x ~ N(0, 1) of shape (batch, L, 64):
training step time (zero_grad + forward + backward of mean(y^2) + Adam step; median after warm-up),
inference latency (forward under torch.inference_mode; median and p95), parameter count, and peak memory as the
increase of the process's peak RSS (ru_maxrss) over its value after importing torch and warming up its kernels.
Each (variant, L) runs in a fresh subprocess so that peaks do not mix; the parent kills a child whose RSS passes
MEM_LIMIT_GIB or that runs past CONFIG_TIMEOUT_S and records the configuration as "skipped: reason".
"""
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, N_HEADS, RANK, THREADS = 64, 4, 8, 2
MAX_BATCH = 8
LOGITS_CAP_MIB = 512          # batch is halved until one fp32 (B, n_heads, L, L) tensor fits in this
MEM_LIMIT_GIB = 10            # child killed past this RSS
CONFIG_TIMEOUT_S = 150        # child killed past this wall time
TOTAL_BUDGET_S = 450          # configurations not started by then are skipped
# (warm-up, training repeats, inference repeats) per length; longer sequences get fewer repeats
REPEATS = {64: (2, 20, 50), 256: (2, 10, 30), 1024: (2, 5, 15), 4096: (1, 3, 7)}


def repeats_for(L):
    if L in REPEATS: return REPEATS[L]
    return REPEATS[min(REPEATS, key=lambda k: abs(math.log(k / L)))]


def batch_for(L):
    "Largest power-of-two batch <= MAX_BATCH whose (B, n_heads, L, L) fp32 logits fit in LOGITS_CAP_MIB."
    B = MAX_BATCH
    while B > 1 and B * N_HEADS * L * L * 4 / 2**20 > LOGITS_CAP_MIB: B //= 2
    return B


def percentile(xs, q):
    "Linear-interpolation percentile (numpy's default) of a list."
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


# ---------------------------------------------------------------- child: one (variant, L) in a fresh process
def child(variant, L, B):
    import torch
    from volnb.attention import CausalSelfAttention
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    warm, n_train, n_inf = repeats_for(L)

    def step(m, opt, x):
        opt.zero_grad(set_to_none=True)
        m(x).pow(2).mean().backward()
        opt.step()

    # initialise torch's lazy kernels / thread pool on a tiny model so the RSS baseline excludes them
    tiny = CausalSelfAttention(D_MODEL, N_HEADS, 8, variant, rank=RANK)
    step(tiny, torch.optim.Adam(tiny.parameters()), torch.randn(1, 8, D_MODEL))
    with torch.inference_mode(): tiny(torch.randn(1, 8, D_MODEL))
    del tiny
    base = maxrss_mib()

    out = {"variant": variant, "L": L, "batch": B}
    try:
        m = CausalSelfAttention(D_MODEL, N_HEADS, L, variant, rank=RANK)
        out["params"] = sum(p.numel() for p in m.parameters())
        x = torch.randn(B, L, D_MODEL)                                     # synthetic input
        m.eval()
        inf = []
        for i in range(warm + n_inf):
            t = time.perf_counter()
            with torch.inference_mode(): m(x)
            if i >= warm: inf.append(time.perf_counter() - t)
        out["inference_peak_rss_mib"] = round(maxrss_mib() - base, 1)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        tr = []
        for i in range(warm + n_train):
            t = time.perf_counter()
            step(m, opt, x)
            if i >= warm: tr.append(time.perf_counter() - t)
        out["train_peak_rss_mib"] = round(maxrss_mib() - base, 1)
    except (RuntimeError, MemoryError) as e:                               # e.g. "can't allocate memory"
        out["skipped"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        print(json.dumps(out), flush=True)
        return
    out.update({"warmup": warm, "train_repeats": n_train, "inference_repeats": n_inf,
                "train_step_ms": round(1e3 * statistics.median(tr), 3),
                "inference_median_ms": round(1e3 * statistics.median(inf), 3),
                "inference_p95_ms": round(1e3 * percentile(inf, 95), 3),
                "baseline_rss_mib": round(base, 1)})
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- parent: spawn, watch, collect
def run_child(variant, L, B):
    import psutil
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        p = subprocess.Popen([sys.executable, __file__, "--child", variant, str(L), str(B)],
                             cwd=ROOT, env=env, stdout=fo, stderr=fe)
        proc, t0, reason = psutil.Process(p.pid), time.perf_counter(), None
        while p.poll() is None:
            try: rss = proc.memory_info().rss
            except psutil.NoSuchProcess: break
            if rss > MEM_LIMIT_GIB * 2**30: reason = f"skipped: RSS passed {MEM_LIMIT_GIB} GiB"
            elif time.perf_counter() - t0 > CONFIG_TIMEOUT_S: reason = f"skipped: ran past {CONFIG_TIMEOUT_S} s"
            if reason:
                p.kill(); p.wait()
                break
            time.sleep(0.05)
        wall = round(time.perf_counter() - t0, 2)
        fo.seek(0); fe.seek(0)
        stdout, stderr = fo.read().decode(), fe.read().decode()
    base = {"variant": variant, "L": L, "batch": B, "wall_s": wall}
    if reason: return {**base, "skipped": reason}
    lines = [s for s in stdout.splitlines() if s.startswith("{")]
    if p.returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or ["no output"])[-1][:160]
        why = "killed (likely out of memory)" if p.returncode and p.returncode < 0 else f"exit {p.returncode}: {last}"
        return {**base, "skipped": f"skipped: {why}"}
    return {**json.loads(lines[-1]), "wall_s": wall}


def fmt(v, nd=2):
    if v is None: return "-"
    if isinstance(v, int): return f"{v:,}"
    return f"{v:.{nd}f}" if v < 100 else f"{v:.0f}"


def plot(runs, lengths, dest):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from volnb.attention import ATTENTION_VARIANTS
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, ax, title in (("train_step_ms", axes[0], "training step (fwd + bwd + Adam), median"),
                           ("inference_median_ms", axes[1], "inference forward (inference_mode), median")):
        for v in ATTENTION_VARIANTS:
            pts = [(r["L"], r[key] / r["batch"]) for r in runs if r["variant"] == v and "skipped" not in r]
            if pts: ax.plot(*zip(*pts), marker="o", label=v)
        Ls = [L for L in lengths]
        ref = [r[key] / r["batch"] for r in runs if r["variant"] == "dense" and r["L"] == Ls[-1] and "skipped" not in r]
        if ref and len(Ls) > 1:                                          # slope-2 guide through dense's last point
            ax.plot(Ls, [ref[0] * (L / Ls[-1]) ** 2 for L in Ls], "k:", lw=1, label="~ L^2 guide")
        ax.set_xscale("log", base=2); ax.set_yscale("log")
        ax.set_xticks(Ls, [str(L) for L in Ls])
        ax.set_xlabel("sequence length L (= max_len)"); ax.set_ylabel("ms per sequence (time / batch)")
        ax.set_title(title, fontsize=10); ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"CausalSelfAttention on synthetic inputs: d_model {D_MODEL}, {N_HEADS} heads, "
                 f"{THREADS} CPU threads (batch {', '.join(f'{batch_for(L)}@{L}' for L in lengths)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)


def main(lengths):
    import torch
    from volnb.attention import ATTENTION_VARIANTS
    t_start = time.perf_counter()
    runs = []
    for L in lengths:
        B = batch_for(L)
        for v in ATTENTION_VARIANTS:
            if time.perf_counter() - t_start > TOTAL_BUDGET_S:
                r = {"variant": v, "L": L, "batch": B, "skipped": f"skipped: total budget of {TOTAL_BUDGET_S} s spent"}
            else:
                r = run_child(v, L, B)
            runs.append(r)
            print(r, flush=True)
    total = round(time.perf_counter() - t_start, 1)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    out = {"produced_by": ".venv/bin/python scripts/bench_attention.py" + "".join(f" {L}" for L in sys.argv[1:]),
           "inputs": "synthetic: x ~ N(0, 1) of shape (batch, L, d_model); loss mean(y^2)",
           "cpus": os.cpu_count(), "cpu_model": cpu, "torch_threads": THREADS, "torch": torch.__version__,
           "python": platform.python_version(),
           "config": {"d_model": D_MODEL, "n_heads": N_HEADS, "rank": RANK, "max_len": "= L", "dropout": 0.0,
                      "max_batch": MAX_BATCH, "batch_rule": f"halve until one fp32 (B, {N_HEADS}, L, L) tensor <= {LOGITS_CAP_MIB} MiB",
                      "repeats": {str(k): dict(zip(("warmup", "train", "inference"), v)) for k, v in REPEATS.items()},
                      "mem_limit_gib": MEM_LIMIT_GIB, "config_timeout_s": CONFIG_TIMEOUT_S},
           "peak_memory": "increase of the child's ru_maxrss over its value after importing torch and a tiny warm-up; "
                          "inference phase measured first, training peak is the whole-process peak (params + Adam state + activations)",
           "total_runtime_s": total, "runs": runs}
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "attention.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# Attention variants: CausalSelfAttention speed and memory on synthetic inputs", "",
          f"Produced by `{out['produced_by']}` on {out['cpus']} CPUs ({cpu}), torch {out['torch']} with "
          f"torch.set_num_threads({THREADS}); total runtime {total} s.", "",
          f"**Inputs are synthetic**: x ~ N(0, 1) of shape (batch, L, {D_MODEL}), loss mean(y^2); no project data is used. "
          f"d_model {D_MODEL}, {N_HEADS} heads, max_len = L, rank {RANK}, dropout 0. Batch {MAX_BATCH}, halved while one "
          f"fp32 (B, {N_HEADS}, L, L) logits tensor exceeds {LOGITS_CAP_MIB} MiB (the batch column says what was used; "
          "the per-sequence columns divide by it). At a reduced batch the per-sequence figures overstate `random` and "
          "`factorized_random`, whose input-independent (1, heads, L, L) logits, mask and softmax are computed once per "
          "batch and shared by its sequences.", "",
          "Train step = zero_grad + forward + backward + Adam step, median over the repeats after warm-up; inference = "
          "forward under torch.inference_mode, median and p95 (with few repeats p95 is close to the maximum). "
          "Peak RSS = rise of a fresh subprocess's peak RSS over its baseline after importing torch, first after the "
          "inference phase, then after training (parameters + Adam state + activations). "
          "`dot` without returned weights uses F.scaled_dot_product_attention (no (L, L) tensor materialised).", "",
          "| variant | L | batch | params | repeats (train/inf) | train step (ms) | train ms/seq | inference median (ms) | inference p95 (ms) | inf ms/seq | peak RSS inference (MiB) | peak RSS train (MiB) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if "skipped" in r:
            md.append(f"| {r['variant']} | {r['L']} | {r['batch']} | {fmt(r.get('params'))} | | {r['skipped']} | | | | | | |")
            continue
        md.append(f"| {r['variant']} | {r['L']} | {r['batch']} | {fmt(r['params'])} | {r['train_repeats']}/{r['inference_repeats']} | "
                  f"{fmt(r['train_step_ms'])} | {fmt(r['train_step_ms'] / r['batch'])} | {fmt(r['inference_median_ms'])} | "
                  f"{fmt(r['inference_p95_ms'])} | {fmt(r['inference_median_ms'] / r['batch'])} | "
                  f"{fmt(r['inference_peak_rss_mib'], 1)} | {fmt(r['train_peak_rss_mib'], 1)} |")
    md += ["", "![step time and inference latency per sequence vs L](attention.png)"]
    (dest / "attention.md").write_text("\n".join(md) + "\n")
    plot(runs, lengths, dest / "attention.png")
    print(f"total runtime {total} s", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main([int(a) for a in sys.argv[1:]] or [64, 256, 1024, 4096])
