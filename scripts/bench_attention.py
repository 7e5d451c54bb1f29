"""Benchmark volnb.attention.CausalSelfAttention: every variant on SYNTHETIC inputs from L = 64 up to the longest
length it can afford, and where the linear-time variant overtakes fused dot-product attention on this CPU.

Usage: .venv/bin/python scripts/bench_attention.py [--threads N] [L ...]
       (default lengths: 64, 128, ..., 8192 and, for whatever still fits, 16384 ... 131072)
Writes reports/benchmarks/attention.{json,md,png}.

Per (variant, L) -- d_model 64, n_heads 4, max_len = L, rank 8, inputs x ~ N(0, 1) of shape (batch, L, 64):
training step time (zero_grad + forward + backward of mean(y^2) + Adam step; median), inference latency (forward under
torch.inference_mode; median and p95), parameter count, and peak memory as the rise of the process's peak resident set
size (ru_maxrss) over its value after a tiny warm-up model has run (so torch's own libraries and kernels are excluded),
and, exactly and independently of the allocator, the bytes of the tensors autograd saves for the backward pass of one
training forward (the activations; counted once per storage through torch.autograd.graph.saved_tensors_hooks).
Each (variant, L) runs in its own child process, forked from a parent that has imported torch but run nothing (so the
children start in a fraction of a second and their peaks do not mix); the parent kills a child whose RSS passes
MEM_LIMIT_GIB or that runs past CONFIG_TIMEOUT_S. A variant is not run at longer L once a point was killed, took more
than STEP_LIMIT_S per training step, or raised the RSS by more than MEM_SOFT_MIB (at 2L a quadratic variant needs ~4x).
`dot` and `linear` are measured first, over every length, back to back at each L (so that both see the same load),
then the Synthesizers, length by length, so that the total budget (TOTAL_BUDGET_S) cuts their longest lengths only.

The crossover (where `linear` becomes faster than `dot`, i.e. F.scaled_dot_product_attention) and the log-log slopes
are computed from the measurements below and written into the report; nothing in it is typed by hand.
"""
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, N_HEADS, RANK = 64, 4, 8
THREADS = 1                   # --threads: one by default, see the note written into the report
MAX_BATCH = 8
LOGITS_CAP_MIB = 32           # batch is halved until one fp32 (B, n_heads, L, L) tensor fits in this
LENGTHS = [64 * 2 ** i for i in range(8)]                       # 64 ... 8192
EXTENDED = [16384, 32768, 65536, 131072]                        # tried by whatever variant still fits
FIRST = ("dot", "linear")     # measured first, over every length
MEM_LIMIT_GIB = 6             # child killed past this RSS (other agents share the machine's memory)
CONFIG_TIMEOUT_S = 60         # child killed past this wall time
STEP_LIMIT_S = 1.5            # a variant whose training step took longer is not run at longer L
MEM_SOFT_MIB = 1536           # ... nor one whose peak training RSS rise was larger
TOTAL_BUDGET_S = 400          # points not started by then are skipped
# (warm-up calls, seconds to aim for, minimum and maximum timed calls): repeats stop after the minimum once the time
# is spent, so short sequences get many calls and long ones the minimum
INFERENCE_REPEATS = (1, 0.3, 3, 50)
TRAIN_REPEATS = (1, 0.6, 3, 20)
SLOPE_FROM = 1024             # log-log slopes are fitted on the measured points with L >= this


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


def timed(fn, warm, target_s, n_min, n_max):
    "Seconds per call of fn: `warm` untimed calls, then at least n_min timed calls, more while target_s lasts."
    for _ in range(warm): fn()
    ts, stop = [], time.perf_counter() + target_s
    while len(ts) < n_min or (len(ts) < n_max and time.perf_counter() < stop):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


# ---------------------------------------------------------------- child: one (variant, L) in its own process
def measure(variant, L, B, threads):
    import torch
    from volnb.attention import CausalSelfAttention
    torch.set_num_threads(threads)
    torch.manual_seed(0)

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

        def infer():
            with torch.inference_mode(): m(x)
        inf = timed(infer, *INFERENCE_REPEATS)
        out["inference_peak_rss_mib"] = round(maxrss_mib() - base, 1)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        tr = timed(lambda: step(m, opt, x), *TRAIN_REPEATS)
        out["train_peak_rss_mib"] = round(maxrss_mib() - base, 1)
        out["saved_for_backward_mib"] = round(saved_for_backward(m, x) / 2**20, 2)
    except (RuntimeError, MemoryError) as e:                               # e.g. "can't allocate memory"
        out["skipped"] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return out
    out.update({"warmup": INFERENCE_REPEATS[0], "train_repeats": len(tr), "inference_repeats": len(inf),
                "train_step_ms": round(1e3 * statistics.median(tr), 3),
                "inference_median_ms": round(1e3 * statistics.median(inf), 3),
                "inference_p95_ms": round(1e3 * percentile(inf, 95), 3),
                "baseline_rss_mib": round(base, 1)})
    return out


def saved_for_backward(m, x):
    "Bytes of the storages autograd saves for backward in one forward of m on x (each storage counted once)."
    import torch
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return sum(seen.values())


def _child_main(conn, variant, L, B, threads):
    conn.send(json.dumps(measure(variant, L, B, threads)))
    conn.close()


# ---------------------------------------------------------------- parent: fork, watch, collect
def run_child(variant, L, B, threads):
    import psutil
    ctx = mp.get_context("fork")              # the parent has imported torch but run no op: safe to fork
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_main, args=(send, variant, L, B, threads))
    t0, reason = time.perf_counter(), None
    p.start()
    send.close()
    proc = psutil.Process(p.pid)
    while p.is_alive():
        try: rss = proc.memory_info().rss
        except psutil.NoSuchProcess: break
        if rss > MEM_LIMIT_GIB * 2**30: reason = f"skipped: RSS passed {MEM_LIMIT_GIB} GiB"
        elif time.perf_counter() - t0 > CONFIG_TIMEOUT_S: reason = f"skipped: ran past {CONFIG_TIMEOUT_S} s"
        if reason:
            p.kill()
            break
        p.join(0.05)
    p.join()
    wall = round(time.perf_counter() - t0, 2)
    base = {"variant": variant, "L": L, "batch": B, "wall_s": wall}
    if reason: return {**base, "skipped": reason, "killed": True}
    msg = recv.recv() if recv.poll() else None
    recv.close()
    if p.exitcode != 0 or msg is None:
        why = "killed (likely out of memory)" if p.exitcode and p.exitcode < 0 else f"exit {p.exitcode}"
        return {**base, "skipped": f"skipped: {why}", "killed": True}
    return {**json.loads(msg), "wall_s": wall}


# ---------------------------------------------------------------- analysis of the measurements
def per_seq(r, key):
    return r[key] / r["batch"]


def measured(runs, variant, key):
    "[(L, value per sequence)] of a variant's measured points, by L."
    return sorted((r["L"], per_seq(r, key)) for r in runs if r["variant"] == variant and "skipped" not in r)


def slope(points, from_L=SLOPE_FROM):
    "Least-squares slope of log(value) on log(L) over the points with L >= from_L (None if fewer than two)."
    pts = [(math.log(L), math.log(v)) for L, v in points if L >= from_L and v > 0]
    if len(pts) < 2: return None
    mx, my = (sum(p[i] for p in pts) / len(pts) for i in (0, 1))
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def crossover(a, b):
    """Where series a (L -> value) becomes and stays <= series b, on the lengths both measured.
    Returns a dict: kind 'always' (a <= b at every common L), 'never', or 'between' with the log-log interpolated
    length L* where a/b crosses 1 between the last L with a > b and the next one; plus the ratios a/b."""
    common = sorted(set(a) & set(b))
    ratios = {L: a[L] / b[L] for L in common}
    out = {"common_lengths": common, "ratio": {str(L): round(ratios[L], 4) for L in common}}
    if not common: return {**out, "kind": "never"}
    k = next((i for i in range(len(common)) if all(ratios[L] <= 1 for L in common[i:])), None)
    if k is None: return {**out, "kind": "never", "max_common": common[-1]}
    if k == 0: return {**out, "kind": "always", "from": common[0]}
    L0, L1 = common[k - 1], common[k]
    r0, r1 = math.log(ratios[L0]), math.log(ratios[L1])
    x = math.log(L0) + (0 - r0) * (math.log(L1) - math.log(L0)) / (r1 - r0) if r1 != r0 else math.log(L1)
    return {**out, "kind": "between", "below": L0, "above": L1, "L_star": round(math.exp(x))}


def analyse(runs, variants):
    keys = {"train": "train_step_ms", "inference": "inference_median_ms", "memory": "train_peak_rss_mib",
            "saved": "saved_for_backward_mib"}
    slopes = {v: {name: slope(measured(runs, v, key)) for name, key in keys.items()} for v in variants}
    cross = {name: crossover(dict(measured(runs, "linear", key)), dict(measured(runs, "dot", key)))
             for name, key in keys.items()}
    longest = {v: max((r["L"] for r in runs if r["variant"] == v and "skipped" not in r), default=None)
               for v in variants}
    return {"slopes": slopes, "crossover_linear_vs_dot": cross, "longest_measured_L": longest,
            "slope_fit": f"least squares of log(per-sequence value) on log(L), measured points with L >= {SLOPE_FROM}"}


def crossover_sentence(what, c):
    if c["kind"] == "always":
        return f"{what}: `linear` is at least as fast as `dot` at every length both measured ({c['from']} and up)."
    if c["kind"] == "never":
        last = c.get("max_common")
        return (f"{what}: `linear` does not overtake `dot` at the lengths both measured"
                + (f" (up to {last}; ratio linear/dot there {c['ratio'][str(last)]})." if last else "."))
    return (f"{what}: `linear` overtakes `dot` between L = {c['below']} (linear/dot = {c['ratio'][str(c['below'])]}) "
            f"and L = {c['above']} (linear/dot = {c['ratio'][str(c['above'])]}), at L* ~ {c['L_star']} by log-log "
            "interpolation, and stays faster at every longer length both measured.")


# ---------------------------------------------------------------- report
def fmt(v, nd=2):
    if v is None: return "-"
    if isinstance(v, int): return f"{v:,}"
    return f"{v:.{nd}f}" if abs(v) < 100 else f"{v:.0f}"


def plot(runs, variants, lengths, analysis, threads, dest):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.4))
    panels = (("train_step_ms", "training step (fwd + bwd + Adam), median", "ms per sequence (time / batch)", "train"),
              ("inference_median_ms", "inference forward (inference_mode), median", "ms per sequence (time / batch)",
               "inference"),
              ("train_peak_rss_mib", "peak RSS rise while training", "MiB per sequence (rise / batch)", "memory"),
              ("saved_for_backward_mib", "tensors saved for backward (exact)", "MiB per sequence (bytes / batch)", "saved"))
    styles = {"dot": dict(color="k", lw=2.2, marker="o"), "linear": dict(color="tab:red", lw=2.2, marker="s")}
    others = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    for v in variants:
        styles.setdefault(v, dict(color=next(others), marker=".", lw=1, alpha=0.8))
    used = sorted({r["L"] for r in runs if "skipped" not in r})
    for (key, title, ylabel, name), ax in zip(panels, axes):
        for v in variants:
            pts = measured(runs, v, key)
            if not pts: continue
            s = analysis["slopes"][v][name]
            ax.plot(*zip(*pts), label=f"{v} (slope {s:.2f})" if s is not None else v,
                    **styles[v])
        for v, p, ls in (("linear", 1, "--"), ("dot", 2, ":")):             # slope guides through L = SLOPE_FROM
            pts = dict(measured(runs, v, key))
            anchor = pts.get(SLOPE_FROM)
            if anchor:
                xs = [L for L in sorted(pts) if L >= 256]
                ax.plot(xs, [anchor * (L / SLOPE_FROM) ** p for L in xs], color="grey", ls=ls, lw=1,
                        label=f"~ L^{p} guide")
        ax.set_xscale("log", base=2); ax.set_yscale("log")
        c = analysis["crossover_linear_vs_dot"][name]
        if c["kind"] == "between":
            ax.axvline(c["L_star"], color="tab:red", lw=0.8, alpha=0.6)
            ax.annotate(f"linear < dot\nfrom L* ~ {c['L_star']}", (c["L_star"], 0.03), xycoords=("data", "axes fraction"),
                        fontsize=8, color="tab:red", xytext=(4, 0), textcoords="offset points")
        ax.set_xticks(used, [str(L) if L < 1024 else f"{L // 1024}k" for L in used], fontsize=8)
        ax.set_xlabel("sequence length L (= max_len)"); ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10); ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ones = [L for L in lengths if batch_for(L) == 1]
    batches = ", ".join(f"{batch_for(L)}@{L}" for L in lengths if batch_for(L) > 1) + (f", 1 from {ones[0]}" if ones else "")
    fig.suptitle(f"CausalSelfAttention on synthetic inputs: d_model {D_MODEL}, {N_HEADS} heads, {threads} CPU thread(s) "
                 f"on a CPU shared with other jobs; batch {batches}; slopes fitted on L >= {SLOPE_FROM}", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main(lengths, threads, argv):
    import torch
    from volnb.attention import ATTENTION_VARIANTS
    first = [v for v in FIRST if v in ATTENTION_VARIANTS]
    passes = [first, [v for v in ATTENTION_VARIANTS if v not in FIRST]]
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    runs, stop = [], {}                               # stop[v]: why v is not run at longer lengths
    for group in passes:                              # each pass goes up in L, its variants back to back at each L
        for L in lengths:
            B = batch_for(L)
            for v in group:
                if v in stop:
                    r = {"variant": v, "L": L, "batch": B, "skipped": stop[v]}
                elif time.perf_counter() - t_start > TOTAL_BUDGET_S:
                    r = {"variant": v, "L": L, "batch": B, "skipped": f"skipped: total budget of {TOTAL_BUDGET_S} s spent"}
                else:
                    r = run_child(v, L, B, threads)
                    if r.pop("killed", False): stop[v] = f"skipped: L={L} was not measured"
                    elif "skipped" in r: stop[v] = f"skipped: L={L} failed"
                    elif r["train_step_ms"] > 1e3 * STEP_LIMIT_S:
                        stop[v] = f"skipped: training step at L={L} took {r['train_step_ms'] / 1e3:.2f} s > {STEP_LIMIT_S} s"
                    elif r["train_peak_rss_mib"] > MEM_SOFT_MIB:
                        stop[v] = f"skipped: peak RSS rise at L={L} was {r['train_peak_rss_mib']:.0f} MiB > {MEM_SOFT_MIB} MiB"
                runs.append(r)
                print(json.dumps(r), flush=True)
    runs.sort(key=lambda r: (r["L"], ATTENTION_VARIANTS.index(r["variant"])))
    total = round(time.perf_counter() - t_start, 1)
    load_end = os.getloadavg()
    analysis = analyse(runs, ATTENTION_VARIANTS)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    out = {"produced_by": ".venv/bin/python scripts/bench_attention.py" + "".join(f" {a}" for a in argv),
           "inputs": "synthetic: x ~ N(0, 1) of shape (batch, L, d_model); loss mean(y^2)",
           "cpus": os.cpu_count(), "cpu_model": cpu, "torch_threads": threads, "torch": torch.__version__,
           "python": platform.python_version(),
           "load_average_1_5_15min": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in load_end]},
           "config": {"d_model": D_MODEL, "n_heads": N_HEADS, "rank": RANK, "max_len": "= L", "dropout": 0.0,
                      "linear_chunk": "CausalSelfAttention default", "lengths": lengths,
                      "max_batch": MAX_BATCH, "batch_rule": f"halve until one fp32 (B, {N_HEADS}, L, L) tensor <= {LOGITS_CAP_MIB} MiB",
                      "repeats": {"inference": dict(zip(("warmup", "target_s", "min", "max"), INFERENCE_REPEATS)),
                                  "train": dict(zip(("warmup", "target_s", "min", "max"), TRAIN_REPEATS))},
                      "mem_limit_gib": MEM_LIMIT_GIB, "config_timeout_s": CONFIG_TIMEOUT_S,
                      "step_limit_s": STEP_LIMIT_S, "mem_soft_mib": MEM_SOFT_MIB, "total_budget_s": TOTAL_BUDGET_S},
           "peak_memory": "increase of the child's ru_maxrss over its value after a tiny warm-up model has run; "
                          "inference phase measured first, training peak is the whole-process peak (params + Adam state + activations)",
           "saved_for_backward": "bytes of the storages autograd saves in one training forward (saved_tensors_hooks), each once",
           "total_runtime_s": total, "analysis": analysis, "runs": runs}
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "attention.json").write_text(json.dumps(out, indent=2) + "\n")

    cr = analysis["crossover_linear_vs_dot"]
    md = ["# Attention variants: CausalSelfAttention speed and memory on synthetic inputs", "",
          f"Produced by `{out['produced_by']}` on {out['cpus']} CPUs ({cpu}), torch {out['torch']} with "
          f"torch.set_num_threads({threads}); total runtime {total} s.", "",
          f"**The CPU was shared with other jobs while this ran** (load average over 1/5/15 min: "
          f"{', '.join(f'{x:.2f}' for x in load_start)} at the start, {', '.join(f'{x:.2f}' for x in load_end)} at the end, "
          f"on {out['cpus']} CPUs), so absolute times are noisy and inflated; the slopes and the linear/dot ratios, "
          "measured under the same conditions, are the robust part. One torch thread per measurement: on the "
          "oversubscribed cores, two OpenMP threads made variants built of many small operations (such as `linear`) "
          "10-40x slower in a trial, while one thread gave stable times.", "",
          "## Headline (computed from the measurements below)", "",
          "`linear` is the kernelised causal attention of Katharopoulos et al. (2020) (elu + 1 features, chunked prefix "
          "sums, O(L) time and memory); `dot` without returned weights is F.scaled_dot_product_attention (fused, "
          "O(L) memory, O(L^2) time). Times and memory are per sequence (divided by the batch).", "",
          "- " + crossover_sentence("Training step", cr["train"]),
          "- " + crossover_sentence("Inference latency", cr["inference"]),
          "- " + crossover_sentence("Peak training memory (RSS rise)", cr["memory"]),
          "- " + crossover_sentence("Activations saved for backward", cr["saved"]),
          "- Longest length measured: " + ", ".join(f"`{v}` {fmt(L)}" for v, L in analysis["longest_measured_L"].items()
                                                      if L) + ".", "",
          f"Log-log slopes ({analysis['slope_fit']}; 1 = linear in L, 2 = quadratic):", "",
          "| variant | longest L | train step slope | inference slope | peak RSS slope | saved-for-backward slope |",
          "|---|---:|---:|---:|---:|---:|"]
    for v in ATTENTION_VARIANTS:
        s = analysis["slopes"][v]
        md.append(f"| {v} | {fmt(analysis['longest_measured_L'][v])} | {fmt(s['train'])} | {fmt(s['inference'])} | "
                  f"{fmt(s['memory'])} | {fmt(s['saved'])} |")
    md += ["", "## Method", "",
           f"**Inputs are synthetic**: x ~ N(0, 1) of shape (batch, L, {D_MODEL}), loss mean(y^2); no project data is used. "
           f"d_model {D_MODEL}, {N_HEADS} heads, max_len = L, rank {RANK}, dropout 0, `linear` with the module's default chunk. "
           f"Batch {MAX_BATCH}, halved while one fp32 (B, {N_HEADS}, L, L) logits tensor exceeds {LOGITS_CAP_MIB} MiB (the "
           "batch column says what was used; the per-sequence columns divide by it). At a reduced batch the per-sequence "
           "figures overstate `random` and `factorized_random`, whose input-independent (1, heads, L, L) logits, mask and "
           "softmax are computed once per batch and shared by its sequences.", "",
           "Train step = zero_grad + forward + backward + Adam step; inference = forward under torch.inference_mode. "
           f"After {TRAIN_REPEATS[0]} warm-up call, calls are timed until {INFERENCE_REPEATS[1]} s (inference) / "
           f"{TRAIN_REPEATS[1]} s (training) are spent, at least {TRAIN_REPEATS[2]} and at most {INFERENCE_REPEATS[3]} / "
           f"{TRAIN_REPEATS[3]} calls; the median (and the p95 of inference, close to the maximum with few calls) is reported. "
           "Peak RSS = rise of the child process's peak resident set size (ru_maxrss) over its value after a tiny warm-up "
           "model ran, first after the inference phase, then after training (parameters + Adam state + activations + "
           "whatever the allocator keeps); it is what the operating system had to provide, not a count of tensor bytes. "
           "The saved-for-backward column counts tensor bytes exactly: the storages autograd keeps from one training "
           "forward for the backward pass (each counted once): the activation memory, free of allocator effects, plus the "
           "parameters that operations keep (small, except the (heads, L, L) matrices of `random` and `random_dot`).", "",
           f"Each point runs in its own process, forked from a parent that has imported torch and run nothing. A child is "
           f"killed past {MEM_LIMIT_GIB} GiB RSS or {CONFIG_TIMEOUT_S} s; a variant is not run at longer lengths once a point "
           f"was killed, its training step took more than {STEP_LIMIT_S} s or its peak RSS rise passed {MEM_SOFT_MIB} MiB "
           f"(the reason is in the table). `dot` and `linear` run first, over every length, back to back at each L (so the "
           f"ratio compares them under the same load); then the Synthesizers, length by length; points not started within "
           f"{TOTAL_BUDGET_S} s are skipped.", "",
           "## All points", "",
           "| variant | L | batch | params | repeats (train/inf) | train step (ms) | train ms/seq | inference median (ms) | inference p95 (ms) | inf ms/seq | peak RSS inference (MiB) | peak RSS train (MiB) | saved for backward (MiB) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if "skipped" in r:
            md.append(f"| {r['variant']} | {r['L']} | {r['batch']} | {fmt(r.get('params'))} | | {r['skipped']} | | | | | | | |")
            continue
        md.append(f"| {r['variant']} | {r['L']} | {r['batch']} | {fmt(r['params'])} | {r['train_repeats']}/{r['inference_repeats']} | "
                  f"{fmt(r['train_step_ms'])} | {fmt(r['train_step_ms'] / r['batch'])} | {fmt(r['inference_median_ms'])} | "
                  f"{fmt(r['inference_p95_ms'])} | {fmt(r['inference_median_ms'] / r['batch'])} | "
                  f"{fmt(r['inference_peak_rss_mib'], 1)} | {fmt(r['train_peak_rss_mib'], 1)} | "
                  f"{fmt(r['saved_for_backward_mib'], 1)} |")
    md += ["", "![step time, inference latency and peak memory per sequence vs L, log-log](attention.png)"]
    (dest / "attention.md").write_text("\n".join(md) + "\n")
    plot(runs, ATTENTION_VARIANTS, lengths, analysis, threads, dest / "attention.png")
    print("\n".join(md[md.index("## Headline (computed from the measurements below)"):md.index("## Method")]), flush=True)
    print(f"total runtime {total} s", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--child"]:                        # one point in this process, for debugging: --child VARIANT L B
        print(json.dumps(measure(args[1], int(args[2]), int(args[3]), THREADS)))
        sys.exit()
    threads = THREADS
    if args[:1] == ["--threads"]:
        threads, args = int(args[1]), args[2:]
    main([int(a) for a in args] or LENGTHS + EXTENDED, threads, sys.argv[1:])
