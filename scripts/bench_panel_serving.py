"""Benchmark the multi-token route of the service (POST /multitoken/predict): the Vayyasi paper's Table 4 rows we can measure.

Usage: .venv/bin/python scripts/bench_panel_serving.py [--requests N] [--max-seconds S] [--rounds R] [--hours H]
           [--concurrency C ...] [--scopes cpu all] [--threads T] [--bundle PATH]
Writes reports/benchmarks/multitoken_serving.{md,json}.

One request scores every token at 1h/4h/24h for the latest hour: the body holds the last H hourly bars of every token
(default 336 = the stage's 168-hour window + 168-hour warm-up, the least the model needs) and the last 10 days of the
fear & greed index; the server computes the causal features (volnb.panel_features), scales them, runs one batched
forward pass and answers P(up), the volatility forecast and its quantiles per token and horizon
(volnb.panel_service). Two scopes:

- `cpu`: the CPU profile's 17 tokens (experiment=multitoken, reports/artifacts/multitoken/prepare/panel.parquet), with
  the stage's transformer bundle of the last walk-forward block (reports/artifacts/multitoken/deep/models/transformer/
  block7/model.pt) when it exists (or --bundle), else a bundle of the same architecture trained for 0 epochs (said so in
  the report);
- `all`: every token of the panel (the raw Binance file, cleaned with the experiment's rules, last 77 days), with a
  bundle of the same architecture trained for 0 epochs (no stage trains on all tokens in the CPU profile).

Each bundle is registered in a temporary multi-token registry (volnb.panel_service.register_multitoken, kind
multitoken) and served by `volnb.api.run_server` in a subprocess on 127.0.0.1 (one uvicorn worker, JSON access log on,
rate limit off), beside a copy of the spike registry when the pipeline has built one (the spike routes are not measured).
The client is a minimal asyncio HTTP/1.1 client in this process, one keep-alive connection per concurrent client,
timing each request from the first byte sent to the last byte read. Scenarios, each bounded by --requests and
--max-seconds after 3 untimed warm-up requests: the model answering (1 and 2 concurrent clients), and the fallback
(the registry's variant set to `baseline`: every token by the EWMA baseline). The server-side time of each step comes
from the answers' `timings_ms`. The paper's values are read from conf/paper/vayyasi/table4.csv.
"""
import argparse
import asyncio
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "reports" / "benchmarks"
REAL_BUNDLE = ROOT / "reports" / "artifacts" / "multitoken" / "deep" / "models" / "transformer" / "block7" / "model.pt"
CPU_PANEL = ROOT / "reports" / "artifacts" / "multitoken" / "prepare" / "panel.parquet"
SPIKE_REGISTRY = ROOT / "reports" / "artifacts" / "spike60s" / "registry"
PAPER = ROOT / "conf" / "paper" / "vayyasi" / "table4.csv"
PATH = "/multitoken/predict"
WARMUP = 3


# ------------------------------------------------------------------------------------------------ server side
def bare_main(port: int) -> None:
    """Child process: a bare FastAPI endpoint at the same path, for the HTTP floor: it reads the body (bytes, not parsed)
    and answers a fixed 2-byte JSON. Same uvicorn settings (`volnb.api.uvicorn_config`); no middleware, model or log."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from volnb.api import uvicorn_config
    app = FastAPI()

    @app.post(PATH)
    async def predict(request: Request):
        await request.body()
        return Response(b"{}", media_type="application/json")

    @app.get("/health")
    async def health(): return {"status": "ok"}
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, "warning")).run()


def serve_main(mt_root: str, spike_root: str, port: int, threads: int) -> None:
    "Child process: the service (spike routes and the multi-token route) on `port`."
    from volnb.api import create_app, run_server
    from volnb.panel_service import MultitokenSettings
    from volnb.service import load_settings
    s = load_settings([f"serve.port={port}", "serve.rate_limit_per_minute=0", "serve.log_level=info"])
    s = s.model_copy(update={"registry": Path(spike_root)})
    mt = MultitokenSettings(registry=Path(mt_root), max_body_bytes=64 << 20, threads=threads or None)
    run_server(s, app=create_app(s.registry, s, multitoken=mt))


# ------------------------------------------------------------------------------------------------ data and bundles
def experiment():
    from volnb.core import compose_config
    return compose_config("experiment=multitoken")


def cpu_panel(cfg) -> pd.DataFrame:
    "The CPU profile's cleaned panel (the stage's, else cleaned here from the raw file)."
    if CPU_PANEL.exists(): return pd.read_parquet(CPU_PANEL)
    from volnb.core import resolve_path
    from volnb.panel import clean_panel, load_panel, select_tokens
    e = cfg.experiment
    raw = load_panel(resolve_path(cfg, "data_dir") / cfg.data.hourly_panel)
    return select_tokens(clean_panel(raw, e.cleaning)[0], e.tokens, e.cleaning)


def all_panel(cfg, start="2023-10-15") -> pd.DataFrame:
    "Every token of the raw panel from `start` on, cleaned with the experiment's rules."
    from volnb.core import resolve_path
    from volnb.panel import clean_panel, load_panel
    raw = load_panel(resolve_path(cfg, "data_dir") / cfg.data.hourly_panel, start=start)
    return clean_panel(raw, cfg.experiment.cleaning, start=start)[0]


def zero_epoch_bundle(panel, cfg, block, dest: Path, min_token_hours: int) -> Path:
    "A bundle of the experiment's transformer, built as the stage builds one for `block`, trained for 0 epochs."
    import torch
    from omegaconf import OmegaConf
    from volnb.core import resolve_path
    from volnb.panel_features import panel_features, panel_targets
    from volnb.panel_models import block_data, build_panel_model, init_output_bias, save_bundle
    from volnb.panel_service import experiment_categories
    e = cfg.experiment
    deep = OmegaConf.to_container(e.deep, resolve=True)
    cats, dirs = experiment_categories()
    feats = panel_features(panel, fear_greed=resolve_path(cfg, "data_dir") / cfg.data.fear_greed_daily)
    horizons = list(e.horizons)
    data = block_data(panel, feats, panel_targets(panel, horizons), cats, block, horizons, deep["window"], deep["warmup"],
                      min_token_hours, deep["n_buckets"], [t for t in dirs if t in set(panel.token)])
    torch.manual_seed(0)
    model_cfg = deep["models"]["transformer"]
    net = build_panel_model(model_cfg, data, deep["window"], len(deep["quantiles"])).eval()
    init_output_bias(net, data, deep["quantiles"])
    liq = dict(zip(data.tokens, [0] * len(data.tokens)))
    for t, l in zip(panel["token"].to_numpy()[data.test], data.static[data.test, 2].numpy()): liq[t] = int(l)
    return save_bundle(dest, net, data, "transformer", model_cfg, deep, horizons, block, liq)


def request_body(panel: pd.DataFrame, hour, hours: int, fear_greed: pd.DataFrame) -> bytes:
    "The JSON body: the last `hours` bars of every token up to `hour`, and the fear & greed index of the last 10 days."
    p = panel[(panel.timestamp <= hour) & (panel.timestamp > hour - pd.Timedelta(hours=hours))]
    bars = {t: {"timestamp": g.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist(),
                **{c: g[c].astype(float).tolist() for c in ("open", "high", "low", "close", "volume")}}
            for t, g in p.groupby("token", sort=True)}
    fg = fear_greed.assign(date=pd.to_datetime(fear_greed["date"]))
    fg = fg[(fg.date <= hour) & (fg.date > hour - pd.Timedelta(days=10))]
    return json.dumps({"bars": bars, "fear_greed": {f"{d:%Y-%m-%d}": float(v) for d, v in zip(fg.date, fg.fear_greed_index)},
                       "asof": f"{hour:%Y-%m-%dT%H:%M:%SZ}"}).encode()


# ------------------------------------------------------------------------------------------------ client side
async def _worker(port: int, request: bytes, todo: list, deadline: float, out: list) -> None:
    "One keep-alive connection sending requests while the shared budget `todo[0]` lasts and before `deadline`."
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
    try:
        while todo[0] > 0 and time.perf_counter() < deadline:
            todo[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")[1:] if l.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            dt = time.perf_counter() - t0
            status = int(head.split(b" ", 2)[1])
            if status != 200: raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
            out.append((dt, body))
    finally:
        writer.close()


async def run_scenario(port: int, body: bytes, n: int, concurrency: int, max_seconds: float) -> dict:
    "Up to `n` timed requests over `concurrency` connections, stopping after `max_seconds` (after an untimed warm-up)."
    request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    await _worker(port, request, [WARMUP], time.perf_counter() + 10 * max_seconds, [])
    out, todo = [], [n]
    t0 = time.perf_counter()
    await asyncio.gather(*[_worker(port, request, todo, t0 + max_seconds, out) for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    answers = [json.loads(b) for _, b in out if len(b) > 2]
    return {"ms": np.array([d for d, _ in out]) * 1000, "wall": wall, "answers": answers}


def summarise(parts: list, n_tokens: int) -> dict:
    "Rounds pooled: latency percentiles over every timed request, throughput = requests / total wall time."
    ms = np.concatenate([p["ms"] for p in parts])
    wall = sum(p["wall"] for p in parts)
    answers = [a for p in parts for a in p["answers"]]
    out = {"requests": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
           "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "max_ms": float(ms.max()),
           "req_per_s": len(ms) / wall, "token_forecasts_per_s": len(ms) / wall * n_tokens, "wall_s": wall}
    if not answers: return {**out, "server_median_ms": {}, "n_fallback": 0, "model_variant": None, "version": None,
                            "fallback_reasons": [], "warnings": []}     # the bare endpoint
    server = {k: float(np.median([a["timings_ms"].get(k, 0.0) for a in answers])) for k in ("wait", "features", "forward", "baseline", "total")}
    a0 = answers[-1]
    return {"requests": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "max_ms": float(ms.max()),
            "req_per_s": len(ms) / wall, "token_forecasts_per_s": len(ms) / wall * n_tokens, "wall_s": wall,
            "server_median_ms": server, "n_fallback": int(a0["n_fallback"]), "model_variant": a0["model_variant"],
            "version": a0["version"], "fallback_reasons": sorted({f["reason"] for f in a0["forecasts"] if f["reason"]}),
            "warnings": a0["warnings"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc, timeout: float = 120.0) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503): return
        except httpx.HTTPError: pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def server_memory(pid: int) -> dict:
    import psutil
    hwm = next((int(l.split()[1]) / 1024 for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmHWM:")), None)
    return {"rss_mib": round(psutil.Process(pid).memory_info().rss / 2**20, 1), "peak_rss_mib": None if hwm is None else round(hwm, 1)}


# ------------------------------------------------------------------------------------------------ main
def prepare(scope: str, cfg, tmp: Path, args) -> dict:
    "The panel, bundle and registry of one scope, and a description of them."
    from volnb.panel_service import experiment_categories, register_multitoken
    from volnb.walkforward import Block, blocks_from_config
    if scope == "cpu":
        panel = cpu_panel(cfg)
        bundle = Path(args.bundle) if args.bundle else REAL_BUNDLE
        if bundle.exists():
            what = f"the stage's bundle `{bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle}` (trained)"
        else:
            block = blocks_from_config(cfg.experiment)[-1]
            bundle = zero_epoch_bundle(panel, cfg, block, tmp / scope / "bundle" / "model.pt", int(cfg.experiment.deep.min_token_hours))
            what = (f"NOT the stage's bundle ({REAL_BUNDLE.relative_to(ROOT)} did not exist when this ran): a bundle of the "
                    f"same architecture (experiment.deep.models.transformer) built as the stage builds the last block's "
                    f"({block.test[0]:%Y-%m-%d}..{block.test[1]:%Y-%m-%d}), trained for 0 epochs")
    else:
        panel = all_panel(cfg)
        t1 = panel.timestamp.max()
        block = Block((None, t1 - pd.Timedelta(days=25)), (t1 - pd.Timedelta(days=25), t1 - pd.Timedelta(days=20)),
                      (t1 - pd.Timedelta(days=20), t1 + pd.Timedelta(hours=1)))
        bundle = zero_epoch_bundle(panel, cfg, block, tmp / scope / "bundle" / "model.pt", 1)
        what = ("a bundle of the same architecture (experiment.deep.models.transformer) for every token of the panel, "
                "built as the stage builds one (scaler fitted on the first 52 of the 77 days loaded), trained for 0 epochs: "
                "no stage trains on all tokens in the CPU profile")
    cats, dirs = experiment_categories()
    root = tmp / scope / "registry"
    version = register_multitoken(root, bundle, cats, dirs)
    btc = panel[panel.token == "BTC"].timestamp
    hour = btc.max()
    return {"scope": scope, "panel": panel, "bundle": what, "registry": root, "version": version, "hour": hour,
            "panel_tokens": int(panel.token.nunique())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs=4, metavar="ARG", help=argparse.SUPPRESS)     # MT_REGISTRY SPIKE_REGISTRY PORT THREADS
    ap.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=200, help="at most this many timed requests per scenario and round")
    ap.add_argument("--max-seconds", type=float, default=45.0, help="and at most this long per scenario and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hours", type=int, default=336, help="hourly bars per token in a request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scopes", nargs="+", default=["cpu", "all"], choices=["cpu", "all"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the server")
    ap.add_argument("--bundle", default=None, help="bundle of the cpu scope (default: the stage's transformer block7)")
    args = ap.parse_args(argv)
    if args.serve: return serve_main(args.serve[0], args.serve[1], int(args.serve[2]), int(args.serve[3]))
    if args.serve_bare: return bare_main(args.serve_bare)

    from volnb.core import resolve_path
    from volnb.registry import Registry
    cfg = experiment()
    fear_greed = pd.read_csv(resolve_path(cfg, "data_dir") / cfg.data.fear_greed_daily)
    tmp = Path(tempfile.mkdtemp(prefix="bench_panel_serving_"))
    results, scopes = [], {}
    try:
        spike = tmp / "spike_registry"
        if (SPIKE_REGISTRY / "state.json").exists(): shutil.copytree(SPIKE_REGISTRY, spike)
        else: spike.mkdir()
        for scope in args.scopes:
            t0 = time.perf_counter()
            sc = prepare(scope, cfg, tmp, args)
            body = request_body(sc["panel"], sc["hour"], args.hours, fear_greed)
            sc.update(body_bytes=len(body), prepare_s=round(time.perf_counter() - t0, 1),
                      tokens_in_request=len(json.loads(body)["bars"]))
            port, bare_port = free_port(), free_port()
            logf = open(tmp / f"{scope}.log", "wb")
            proc = subprocess.Popen([sys.executable, __file__, "--serve", str(sc["registry"]), str(spike), str(port), str(args.threads)],
                                    stdout=subprocess.DEVNULL, stderr=logf, cwd=ROOT)
            bare = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(bare_port)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd=ROOT)
            try:
                wait_ready(port, proc)
                wait_ready(bare_port, bare)
                sc["memory_start"] = server_memory(proc.pid)
                reg = Registry(sc["registry"])
                scen = [("model", c) for c in args.concurrency] + [("fallback", 1), ("bare", 1)]
                parts = {s: [] for s in scen}
                for rnd in range(args.rounds):
                    for kind, c in (scen if rnd % 2 == 0 else scen[::-1]):
                        if kind != "bare":
                            reg.set_variant("baseline" if kind == "fallback" else "ml")
                            time.sleep(1.2)                               # the server re-reads state.json within 1 s
                        load = os.getloadavg()[0]
                        r = asyncio.run(run_scenario(bare_port if kind == "bare" else port, body, args.requests, c, args.max_seconds))
                        want = {"bare": set(), "fallback": {"baseline"}, "model": {"ml"}}[kind]
                        got = {a["model_variant"] for a in r["answers"]}
                        if got != want: raise RuntimeError(f"{scope}/{kind}: answers by {got}, expected {want}")
                        r["load"] = load
                        parts[(kind, c)].append(r)
                        print(scope, rnd, kind, c, f"{len(r['ms'])} requests, p50 {np.percentile(r['ms'], 50):.1f} ms", flush=True)
                sc["memory_end"] = server_memory(proc.pid)
            finally:
                for pr in (proc, bare):
                    pr.terminate()
                    pr.wait(20)
                logf.close()
            for (kind, c), ps in parts.items():
                s = summarise(ps, sc["tokens_in_request"])
                s.update(scope=scope, scenario=kind, concurrency=c, tokens=sc["tokens_in_request"], body_bytes=sc["body_bytes"],
                         load_max=max(p["load"] for p in ps))
                results.append(s)
            scopes[scope] = {k: (str(v) if isinstance(v, (Path, pd.Timestamp)) else v) for k, v in sc.items() if k != "panel"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_report(results, scopes, args, argv)


def write_report(results: list, scopes: dict, args, argv) -> None:
    import fastapi, torch, uvicorn  # noqa: E401
    paper = pd.read_csv(PAPER)
    pv = dict(zip(paper.metric, paper.value))
    cmd = "python scripts/bench_panel_serving.py" + ("" if not (argv or sys.argv[1:]) else " " + " ".join(argv or sys.argv[1:]))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    DEST.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
               "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__}
    (DEST / "multitoken_serving.json").write_text(json.dumps({"command": cmd, "machine": machine, "scopes": scopes, "results": results,
                                                              "paper": paper.to_dict(orient="records")}, indent=1, default=str) + "\n")
    by = {(r["scope"], r["scenario"], r["concurrency"]): r for r in results}
    names = {"cpu": "CPU profile", "all": "all tokens"}
    md = ["# Serving the multi-token model: POST /multitoken/predict, the paper's Table 4 beside ours", "",
          f"Produced by `{cmd}` on {machine['cpus']} CPUs ({cpu}); Python {machine['python']}, torch {machine['torch']} "
          f"({args.threads} intra-op thread(s) in the server), FastAPI {machine['fastapi']}, uvicorn {machine['uvicorn']}. "
          "Client and server share the machine, and so did whatever else ran on it (the highest 1-minute load average seen "
          "before each scenario is given: above ~1, other work inflates the figures).", "",
          "One request = one forecast of **every token of the request at 1h, 4h and 24h** for the latest hour: the body holds "
          f"the last {args.hours} hourly bars of each token and 10 days of the fear & greed index; the server validates it, "
          "computes the causal features (`volnb.panel_features`), scales them, runs one batched forward pass of the "
          "transformer and answers P(up), the volatility forecast and its quantiles per token and horizon "
          "(`volnb.panel_service`; one uvicorn worker, JSON access log on, rate limit off). Latency is measured by the client "
          "from the first byte sent to the last byte read over a keep-alive connection on 127.0.0.1.", ""]
    for s, sc in scopes.items():
        md.append(f"- **{names[s]}** ({sc['tokens_in_request']} tokens, request {sc['body_bytes'] / 1e6:.2f} MB, forecast hour "
                  f"{pd.Timestamp(sc['hour']):%Y-%m-%d %H:%M} UTC): model {sc['bundle']}; registered as multitoken `{sc['version']}`. "
                  f"The panel loaded has {sc['panel_tokens']} tokens; {sc['tokens_in_request']} have bars in the request's "
                  f"{args.hours} hours (the others were delisted, or split off, before).")
    md += ["", "## Table 4 beside ours", "",
           "The paper's figures are from `conf/paper/vayyasi/table4.csv` (its Table 4, measured on AWS EKS, 12-36 c5.2xlarge "
           "instances, TensorFlow Serving behind Kafka and Redis). It does not say what one \"prediction\" is (one token? all "
           "150?), nor under which load; ours are one request for every token, on this one machine. Section 6.6 calls 178 ms "
           "the *average* latency; Table 4 gives it as the p95.", "",
           "| Table 4 row | paper | paper target | " + " | ".join(f"ours, {names[s]} ({scopes[s]['tokens_in_request']} tokens), 1 client"
                                                         for s in scopes) + " |",
           "|---|---:|---:|" + "---:|" * len(scopes)]
    for q in ("p50", "p95", "p99"):
        md.append(f"| Prediction latency ({q}) | {pv[f'latency_{q}']:.0f} ms | < {pv[f'latency_{q}_target']:.0f} ms | "
                  + " | ".join(f"{by[(s, 'model', 1)][f'{q}_ms']:.0f} ms" for s in scopes) + " |")
    md.append(f"| Mean latency (Section 6.6) | {pv['latency_mean']:.0f} ms | | "
              + " | ".join(f"{by[(s, 'model', 1)]['mean_ms']:.0f} ms" for s in scopes) + " |")
    md.append(f"| Daily observations processed | {pv['daily_observations'] / 1e6:.1f} M | 2.8 M | "
              + " | ".join(f"{by[(s, 'model', max(args.concurrency))]['token_forecasts_per_s'] * 86400 / 1e6:.1f} M token forecasts/day "
                           f"(capacity at {max(args.concurrency)} clients)" for s in scopes) + " |")
    for m, label in (("availability", "System availability"), ("autoscaling_response", "Auto-scaling response time"),
                     ("retraining_duration", "Model retraining duration"), ("monthly_cost", "Monthly infrastructure cost")):
        row = paper[paper.metric == m].iloc[0]
        md.append(f"| {label} | {row.value:g} {row.unit} | | " + " | ".join("not measured (one machine, no deployment)" for _ in scopes) + " |")
    md += ["", "## Latency and throughput", "",
           "| scope | tokens | scenario | concurrent clients | requests | p50 (ms) | p95 (ms) | p99 (ms) | mean (ms) | max (ms) | "
           "requests/s | token forecasts/s | tokens by fallback | load avg (max) |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        bare = r["scenario"] == "bare"
        md.append(f"| {names[r['scope']]} | {r['tokens']} | {r['scenario']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {r['max_ms']:.1f} | {r['req_per_s']:.2f} | "
                  f"{'' if bare else format(r['token_forecasts_per_s'], '.0f')} | {'' if bare else r['n_fallback']} | {r['load_max']:.2f} |")
    md += ["", "`model`: the registry's current version answers (tokens it cannot score get the EWMA baseline, counted in "
               "\"tokens by fallback\"). `fallback`: the registry's variant set to `baseline`, so every token gets the EWMA "
               "baseline (no features, no network): the latency of the fallback path. `bare`: a bare FastAPI endpoint at the "
               "same path, same uvicorn settings, that reads the same body and answers `{}`: the floor of HTTP transport on "
               "this machine (uvicorn's pure-Python h11 parser; httptools is not installed). The service scores one request "
               "at a time per process (`volnb.panel_service.PanelService.predict`), so with 2 clients a request mostly waits "
               "for the other's scoring.", ""]
    for s in scopes:
        r = by[(s, "model", 1)]
        if r["n_fallback"]:
            md.append(f"- {names[s]}: {r['n_fallback']} token(s) fell back in the model scenario ({', '.join(r['fallback_reasons'])}): "
                      "tokens without a bar for the forecast hour (delisted) or without 336 contiguous hours.")
        if r["warnings"]: md.append(f"- {names[s]}: warnings: {'; '.join(r['warnings'])}")
    md += ["", "## Where the time goes (one client)", "",
           "Medians of the server's own step times (`timings_ms` of the answers) beside the client's p50 and the bare "
           "endpoint's. Medians do not add up exactly; the rest is parsing the JSON body, validating it (pydantic), building "
           "the panel from it (`bars_frame`) and serialising the answer.", "",
           "| scope | scenario | client p50 (ms) | HTTP floor: bare p50 (ms) | server scoring total (ms) | features (ms) | forward pass (ms) | "
           "baseline (ms) | rest: JSON parse, validation, panel, answer (ms) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in scopes:
        for kind in ("model", "fallback"):
            r, b = by[(s, kind, 1)], by[(s, "bare", 1)]
            t = r["server_median_ms"]
            md.append(f"| {names[s]} | {kind} | {r['p50_ms']:.1f} | {b['p50_ms']:.1f} | {t['total']:.1f} | {t['features']:.1f} | "
                      f"{t['forward']:.1f} | {t['baseline']:.1f} | {r['p50_ms'] - b['p50_ms'] - t['total'] - t['wait']:.1f} |")
    md += ["", "Server memory (RSS): " + "; ".join(
        f"{names[s]}: {sc['memory_start']['rss_mib']} MiB after start-up, {sc['memory_end']['rss_mib']} MiB after the runs, "
        f"peak {sc['memory_end']['peak_rss_mib']} MiB" for s, sc in scopes.items()) + ".",
        "", f"Bounds: at most {args.requests} timed requests and {args.max_seconds:.0f} s per scenario and round, {args.rounds} rounds "
            f"(alternating the order of the scenarios), after {WARMUP} untimed warm-up requests each."]
    (DEST / "multitoken_serving.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
