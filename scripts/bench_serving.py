"""Benchmark the spike predictor's HTTP service (volnb.api) beside a bare FastAPI endpoint: POST /predict latency, throughput, memory.

Usage: .venv/bin/python scripts/bench_serving.py [--requests N] [--concurrency C ...] [--rows R ...]
       (defaults: 2000 requests per scenario for 1 row, 500 for 100 rows; concurrency 1 8; rows 1 100)
Writes reports/benchmarks/serving.{md,csv}.

The server is `volnb.api.run_server` in a subprocess on 127.0.0.1 (uvicorn, one worker, JSON access log on,
written to a temporary file), serving a copy of reports/artifacts/spike60s/registry when the pipeline has built one,
otherwise a registry holding a random forest fitted with the experiment's hyperparameters on volnb.spike's
SYNTHETIC frame (named as such in the report). The rate limit is switched off for the run (every request would
otherwise be a 429 after the first 100). The client is a minimal asyncio HTTP/1.1 client in this process, one
keep-alive connection per concurrent client, timing each request from the first byte sent to the last byte of the
response read; the feature rows are the artefact's own reference rows (training features). Each scenario starts
with a warm-up of 100 requests that is not timed. Server memory is the subprocess's RSS (psutil) after start-up
and after the runs, and its peak (VmHWM).
"""
import argparse
import asyncio
import csv
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "reports" / "artifacts" / "spike60s" / "registry"
SEED = {"p50_ms": 127.0, "p95_ms": 178.0, "p99_ms": 243.0, "p95_budget_ms": 800.0}   # the seed's figures (issue 5)
TARGET_P95_MS_ONE_ROW = 10.0
GOAL_P50_RATIO, GOAL_THROUGHPUT_SHARE = 1.3, 0.75      # issue 10: one row, one client, against the bare endpoint
WARMUP = 100


# ------------------------------------------------------------------------------------------------ server side
ABLATIONS = {
    "no access log": "the access logger set to WARNING: no JSON line per request",
    "constant scorer": "the model's predict_proba replaced by a constant (no tree traversal)",
    "no middleware": "ServingMiddleware removed: no rate-limit check, size check, request metrics or access log",
}


def serve_main(root: str, port: int, workers: int = 1, ablation: str = "") -> None:
    """Child process: run the server on `port` for the registry at `root`; `ablation` (one of ABLATIONS)
    removes one component, to measure what it costs (benchmark only: never how the service runs)."""
    import logging
    from volnb.api import ServingMiddleware, create_app, run_server
    from volnb.service import load_settings
    s = load_settings([f"serve.port={port}", "serve.rate_limit_per_minute=0", "serve.log_level=info"] +
                      ([f"serve.workers={workers}"] if workers > 1 else []))
    s = s.model_copy(update={"registry": Path(root)})
    if not ablation: return run_server(s)
    app = create_app(s.registry, s)
    if ablation == "no access log": logging.getLogger("volnb.serving.access").setLevel(logging.WARNING)
    elif ablation == "constant scorer":
        for m in (app.state.service.ml, app.state.service.baseline): m.scorer.predict_proba = lambda X: np.full(len(X), 0.25)
    elif ablation == "no middleware":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not ServingMiddleware]
        app.middleware_stack = None
    else: raise ValueError(f"unknown ablation {ablation!r}")
    run_server(s, app=app)


def bare_main(port: int) -> None:
    """Child process: the bare FastAPI endpoint the service is compared with. Same uvicorn settings
    (`uvicorn_config`), one worker; `POST /predict` takes the JSON body as a plain dict (parsed, not validated)
    and returns a fixed answer shaped like the service's one-row answer. No middleware, model, metrics or log."""
    import uvicorn
    from fastapi import FastAPI
    from volnb.api import uvicorn_config
    app = FastAPI()
    answer = {"scores": [0.1234], "spikes": [False], "threshold": 0.5, "model_variant": "ml", "version": "v0001",
              "ts": "2026-01-01T00:00:00.000Z"}

    @app.post("/predict")
    async def predict(body: dict) -> dict:
        return answer

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    import gc
    gc.collect(); gc.freeze()
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, "warning")).run()


def build_registry(dest: Path) -> dict:
    "A registry to serve: a copy of the pipeline's, else one fitted on SYNTHETIC data. Returns a description."
    from volnb.registry import Registry
    if (REGISTRY / "state.json").exists():
        shutil.copytree(REGISTRY, dest)
        reg = Registry(dest)
        v = reg.current()
        rec = reg.record(v)
        return {"registry": str(REGISTRY.relative_to(ROOT)) + " (a copy)", "version": v, "kind": rec["kind"],
                "data": "real (pipeline artefact, experiment=spike60s)", "source": rec.get("source")}
    from volnb.core import compose_config
    from volnb.spike import fit_spike_model, save_artefact, synthetic_spike_frame
    cfg = compose_config("experiment=spike60s")
    feats = list(cfg.experiment.features)
    params = dict(cfg.experiment.model_params.random_forest)
    tr = synthetic_spike_frame(n=5000, splits=("train",), seed=0)
    work = dest.parent / "artefacts"
    for kind, p in (("random_forest", params), ("zscore", dict(cfg.experiment.model_params.zscore))):
        m = fit_spike_model(kind, tr[feats], tr.label, p)
        save_artefact(m, work / kind, features=feats, meta={"threshold": 0.5, "data": "SYNTHETIC"},
                      reference=tr[feats].to_numpy())
    reg = Registry(dest)
    reg.register(work / "zscore", baseline=True)
    v = reg.register(work / "random_forest")
    return {"registry": "temporary, fitted on SYNTHETIC data (volnb.spike.synthetic_spike_frame)", "version": v,
            "kind": "random_forest", "data": "SYNTHETIC (not market data)", "source": str(work / "random_forest")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc, timeout: float = 60.0) -> None:
    "Poll /health until the server answers."
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code in (200, 503): return
        except httpx.HTTPError: pass
        time.sleep(0.1)
    raise RuntimeError("server did not start")


def server_memory(pid: int) -> dict:
    "RSS and peak RSS (VmHWM) of the server process, MiB."
    import psutil
    rss = psutil.Process(pid).memory_info().rss / 2**20
    hwm = None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"): hwm = int(line.split()[1]) / 1024
    return {"rss_mib": round(rss, 1), "peak_rss_mib": None if hwm is None else round(hwm, 1)}


# ------------------------------------------------------------------------------------------------ client side
async def _worker(port: int, request: bytes, todo: list, lat: list, statuses: dict) -> None:
    "One keep-alive connection sending requests until the shared budget `todo[0]` is spent."
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while todo[0] > 0:
            todo[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"): length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200: raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    finally:
        writer.close()


async def run_scenario(port: int, body: bytes, n: int, concurrency: int) -> dict:
    "Send `n` timed requests over `concurrency` connections (after an untimed warm-up)."
    request = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    await asyncio.gather(*[_worker(port, request, [WARMUP // concurrency], [], {}) for _ in range(concurrency)])
    lat, statuses, todo = [], {}, [n]
    t0 = time.perf_counter()
    await asyncio.gather(*[_worker(port, request, todo, lat, statuses) for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"ms": ms, "wall": wall, "p50_ms": np.percentile(ms, 50), "p95_ms": np.percentile(ms, 95), "req_per_s": len(ms) / wall}


def start(args: list, log_path: Path):
    "Start a server child process (`--serve ...` or `--serve-bare ...`) with stderr to `log_path`."
    logf = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=logf, cwd=ROOT)
    proc.logf = logf
    return proc


def stop(proc) -> None:
    proc.terminate()
    proc.wait(10)
    proc.logf.close()


def pooled(parts: list) -> dict:
    "One scenario's rounds pooled: percentiles over all timed requests, throughput = requests / total wall time."
    ms = np.concatenate([p["ms"] for p in parts])
    wall = sum(p["wall"] for p in parts)
    return {"requests": len(ms), "p50_ms": np.percentile(ms, 50), "p95_ms": np.percentile(ms, 95),
            "p99_ms": np.percentile(ms, 99), "mean_ms": ms.mean(), "max_ms": ms.max(), "req_per_s": len(ms) / wall}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs="+", metavar="ARG", help=argparse.SUPPRESS)     # REGISTRY PORT WORKERS [ABLATION]
    ap.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=None, help="timed requests per scenario and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each runs every scenario on both servers, alternating")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--workers", type=int, default=2, help="also measure the service with this many uvicorn workers (1: skip)")
    ap.add_argument("--no-ablations", action="store_true", help="skip the one-row ablations (what each component costs)")
    args = ap.parse_args(argv)
    if args.serve: return serve_main(args.serve[0], int(args.serve[1]), int(args.serve[2]), " ".join(args.serve[3:]))
    if args.serve_bare: return bare_main(args.serve_bare)

    from volnb.registry import Registry
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    try:
        model = build_registry(tmp / "registry")
        ref = Registry(tmp / "registry").load(model["version"]).reference          # (n_ref, n_features)
        feats = Registry(tmp / "registry").record(model["version"])["features"]
        targets = ["bare", "volnb"] + ([f"volnb_{args.workers}w"] if args.workers > 1 else [])
        ports = {t: free_port() for t in targets}
        procs = {"volnb": start(["--serve", str(tmp / "registry"), str(ports["volnb"]), "1"], tmp / "server.log"),
                 "bare": start(["--serve-bare", str(ports["bare"])], tmp / "bare.log")}
        if args.workers > 1:
            procs[targets[-1]] = start(["--serve", str(tmp / "registry"), str(ports[targets[-1]]), str(args.workers)], tmp / "workers.log")
        ablations = [] if args.no_ablations else list(ABLATIONS)
        for i, a in enumerate(ablations):
            ports[a] = free_port()
            procs[a] = start(["--serve", str(tmp / "registry"), str(ports[a]), "1", *a.split()], tmp / f"ablation{i}.log")
        try:
            for k in procs: wait_ready(ports[k], procs[k])
            mem_start = server_memory(procs["volnb"].pid)
            scen = [(n_rows, c) for n_rows in args.rows for c in args.concurrency]
            parts = {(t, r, c): [] for t in procs for r, c in scen}
            loads = {sc: [] for sc in scen}
            bodies = {}
            for n_rows in args.rows:
                X = ref[np.random.default_rng(0).choice(len(ref), n_rows, replace=False)]
                bodies[n_rows] = json.dumps({"rows": [dict(zip(feats, map(float, x))) for x in X]}).encode()
            for rnd in range(args.rounds):
                for n_rows, c in scen:
                    n = args.requests or (2000 if n_rows == 1 else 500)
                    order = targets if rnd % 2 == 0 else targets[::-1]
                    for t in order:
                        loads[(n_rows, c)].append(os.getloadavg()[0])
                        r = asyncio.run(run_scenario(ports[t], bodies[n_rows], n, c))
                        parts[(t, n_rows, c)].append(r)
                        print(rnd, t, n_rows, c, {k: round(v, 3) for k, v in r.items() if k in ("p50_ms", "p95_ms", "req_per_s")}, flush=True)
            rows_out = []
            for n_rows, c in scen:
                for t in targets:
                    r = pooled(parts[(t, n_rows, c)])
                    r.update(server=t, rows=n_rows, concurrency=c, body_bytes=len(bodies[n_rows]),
                             rows_per_s=r["req_per_s"] * n_rows, load_max=max(loads[(n_rows, c)]))
                    rows_out.append(r)
            abl_rows = []
            if ablations:                                    # one row, one client: the goal's scenario
                order = ["bare", "volnb", *ablations]
                abl_parts = {t: [] for t in order}
                X = ref[np.random.default_rng(0).choice(len(ref), 1, replace=False)]
                body1 = json.dumps({"rows": [dict(zip(feats, map(float, x))) for x in X]}).encode()
                for rnd in range(args.rounds):
                    for t in (order if rnd % 2 == 0 else order[::-1]):
                        abl_parts[t].append(asyncio.run(run_scenario(ports[t], body1, args.requests or 2000, 1)))
                        print("ablation", rnd, t, round(abl_parts[t][-1]["p50_ms"], 3), flush=True)
                abl_rows = [{"server": t, **pooled(abl_parts[t])} for t in order]
            mem_end = server_memory(procs["volnb"].pid)
        finally:
            for p in procs.values(): stop(p)
        log_lines = sum(1 for _ in open(tmp / "server.log", "rb"))
        write_report(rows_out, model, mem_start, mem_end, log_lines, argv, args.rounds, args.workers, abl_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(rows: list, model: dict, mem_start: dict, mem_end: dict, log_lines: int, argv, rounds: int, workers: int,
                 ablations: list = ()) -> None:
    "reports/benchmarks/serving.{csv,md}."
    import uvicorn, fastapi, pydantic  # noqa: E401
    cmd = "python scripts/bench_serving.py" + ("" if not argv and len(sys.argv) <= 1 else " " + " ".join(argv or sys.argv[1:]))
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    cols = ["server", "rows", "concurrency", "requests", "body_bytes", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms", "req_per_s",
            "rows_per_s", "load_max"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + ["server_rss_mib_after", "server_peak_rss_mib"])
    for r in rows:
        mem = [mem_end["rss_mib"], mem_end["peak_rss_mib"]] if r["server"] == "volnb" else ["", ""]
        w.writerow([round(r[c], 3) if isinstance(r[c], float) else r[c] for c in cols] + mem)
    (dest / "serving.csv").write_text(buf.getvalue())
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    by = {(r["server"], r["rows"], r["concurrency"]): r for r in rows}
    scen = sorted({(r["rows"], r["concurrency"]) for r in rows})
    ours = [r for r in rows if r["server"] == "volnb"]
    md = ["# Serving: POST /predict latency, throughput and memory, beside a bare FastAPI endpoint", "",
          f"Produced by `{cmd}` on {os.cpu_count()} CPUs ({cpu}); Python {platform.python_version()}, uvicorn {uvicorn.__version__} "
          f"(asyncio loop, h11 parser), FastAPI {fastapi.__version__}, pydantic {pydantic.__version__}. "
          f"Client and servers share the machine.", "",
          f"**volnb**: the service (`volnb.api.run_server`), model {model['kind']} `{model['version']}` from {model['registry']}; "
          f"data: {model['data']}; rows are the artefact's own reference (training) feature rows; JSON access log on "
          f"({log_lines} log lines written), metrics, drift window and validation as in production; rate limit off for the run.",
          "**bare**: a FastAPI app with one `POST /predict` that takes the body as a plain `dict` (parsed, not validated) and "
          "returns a fixed answer of the same shape: no middleware, model, metrics or log; same uvicorn settings.", "",
          f"Both run in their own process, one uvicorn worker each, at the same time; {rounds} rounds, each running every scenario on "
          f"both servers back to back (alternating which goes first); the figures pool the rounds. Each run starts with {WARMUP} "
          "untimed warm-up requests; latency = first byte of the request sent to last byte of the response read, keep-alive "
          "connections. The highest 1-minute load average seen before a run of the scenario is given: other work on the "
          "machine (above ~1, the client's own share) inflates the tail.", "",
          "| server | rows / request | concurrent clients | requests | p50 (ms) | p95 (ms) | p99 (ms) | mean (ms) | max (ms) | requests/s | rows/s | load avg (max) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['server']} | {r['rows']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
           f"{r['mean_ms']:.3f} | {r['max_ms']:.2f} | {r['req_per_s']:.0f} | {r['rows_per_s']:.0f} | {r['load_max']:.2f} |"
           for n, c in scen for r in rows if (r["rows"], r["concurrency"]) == (n, c)]
    md += ["", "## volnb against the bare endpoint", "",
           "| rows / request | concurrent clients | p50 ratio (volnb / bare) | p95 ratio | throughput share (volnb / bare) |",
           "|---:|---:|---:|---:|---:|"]
    for n, c in scen:
        b, v = by[("bare", n, c)], by[("volnb", n, c)]
        md.append(f"| {n} | {c} | {v['p50_ms'] / b['p50_ms']:.2f}x | {v['p95_ms'] / b['p95_ms']:.2f}x | {v['req_per_s'] / b['req_per_s']:.0%} |")
    if (1, 1) in scen:
        b, v = by[("bare", 1, 1)], by[("volnb", 1, 1)]
        r50, share = v["p50_ms"] / b["p50_ms"], v["req_per_s"] / b["req_per_s"]
        md += ["", f"Goal (issue 10), one row, one client: p50 within {GOAL_P50_RATIO}x of the bare endpoint -- {r50:.2f}x, "
                   f"{'met' if r50 <= GOAL_P50_RATIO else 'NOT met'}; at least {GOAL_THROUGHPUT_SHARE:.0%} of its throughput -- "
                   f"{share:.0%}, {'met' if share >= GOAL_THROUGHPUT_SHARE else 'NOT met'}."]
    wk = f"volnb_{workers}w"
    if workers > 1:
        md += ["", f"## One worker against {workers}", "",
               f"`{wk}`: the same service with `serve.workers={workers}` (uvicorn worker processes on one port; rate limit, "
               "metrics and drift windows are per worker, see `nbs/14d_api.ipynb`). With one client there is one connection, "
               "hence one busy worker; the machine has " + str(os.cpu_count()) + " cores, shared with the client.", "",
               f"| rows / request | concurrent clients | requests/s, 1 worker | requests/s, {workers} workers | ratio | p50 (ms), 1 worker | p50 (ms), {workers} workers |",
               "|---:|---:|---:|---:|---:|---:|---:|"]
        for n, c in scen:
            a, b = by[("volnb", n, c)], by[(wk, n, c)]
            md.append(f"| {n} | {c} | {a['req_per_s']:.0f} | {b['req_per_s']:.0f} | {b['req_per_s'] / a['req_per_s']:.2f}x | "
                      f"{a['p50_ms']:.3f} | {b['p50_ms']:.3f} |")
    if ablations:
        ab = {r["server"]: r for r in ablations}
        full, bare = ab["volnb"], ab["bare"]
        md += ["", "## Where the time goes (one row, one client)", "",
               "Each line is the service with one component taken out (a separate server process started by this script; "
               "never how the service runs), measured in the same rounds as the full service and the bare endpoint. The "
               "saving is the full service's p50 minus the line's; what is left over the bare endpoint is request validation "
               "and routing, `Service.predict` (drift window, score histogram, range flags) and the larger answer.", "",
               "| server | p50 (ms) | p50 saved (ms) | p50 / bare | requests/s | what is taken out |", "|---|---:|---:|---:|---:|---|"]
        for r in ablations:
            what = ABLATIONS.get(r["server"], "nothing (the service as it runs)" if r["server"] == "volnb" else "everything but FastAPI's routing")
            saved = "" if r["server"] in ("volnb", "bare") else f"{full['p50_ms'] - r['p50_ms']:.3f}"
            md.append(f"| {r['server']} | {r['p50_ms']:.3f} | {saved} | {r['p50_ms'] / bare['p50_ms']:.2f}x | {r['req_per_s']:.0f} | {what} |")
    md += ["", "One worker serves one request at a time, so with 8 clients each request mostly waits for the 7 others: "
               "latency there is about 8 / (requests/s), queueing rather than slower scoring. uvicorn runs without the optional "
               "httptools/uvloop (not in the project's requirements).", "",
           f"Server memory (RSS, volnb): {mem_start['rss_mib']} MiB after start-up, {mem_end['rss_mib']} MiB after the runs, "
               f"peak {mem_end['peak_rss_mib']} MiB.", "",
           "## Against the seed", "",
           "| | p50 (ms) | p95 (ms) | p99 (ms) |", "|---|---:|---:|---:|",
           f"| seed (issue 5; budget p95 <= {SEED['p95_budget_ms']:.0f} ms) | {SEED['p50_ms']:.0f} | {SEED['p95_ms']:.0f} | {SEED['p99_ms']:.0f} |"]
    md += [f"| volnb, {r['rows']} row{'s' if r['rows'] > 1 else ''}, {r['concurrency']} client{'s' if r['concurrency'] > 1 else ''} | "
           f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} |" for r in ours]
    one = [r for r in ours if r["rows"] == 1]
    if one:
        worst = max(one, key=lambda r: r["p95_ms"])
        ok = worst["p95_ms"] <= TARGET_P95_MS_ONE_ROW
        md += ["", f"Goal for one row on this machine: p95 <= {TARGET_P95_MS_ONE_ROW:.0f} ms. Worst one-row p95 measured: "
                   f"{worst['p95_ms']:.2f} ms at {worst['concurrency']} concurrent client(s) -- {'met' if ok else 'NOT met'}."]
    (dest / "serving.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
