"""Benchmark the live feed's ingest on the recorded Binance spot session (data/intraday, PROVENANCE I7).

Measures messages per second for
  - parse + bar building in-process (the client's per-message work: json.loads, parse_binance, BarStream),
  - the batch path bars_from_recording (gzip read + the same work, all lines incl. depth),
  - end to end over a loopback WebSocket at speed 0: ReplayServer in a child process, FeedClient here
    (also with the server in the same process and event loop, and with three dropped connections + REST backfill),
  - kline mode: the one-minute file of PROVENANCE I3 (a month, 43,199 bars) played as `btcusdt@kline_1m` at speed 0
    to a FeedClient in the same loop, and `run_live` with a HISTORY_BARS-bar (61) REST warm-up and OnlineFeatures (a feature row per bar),
and the peak resident memory of each process.

Usage: .venv/bin/python scripts/bench_ingest.py [repeats]   (default 5)
Writes reports/benchmarks/ingest.{md,csv}.
"""
from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from volnb.intraday import HISTORY_BARS     # bars one feature row needs (61): the warm-up and the replay start

ROOT = Path(__file__).resolve().parents[1]
I3 = ROOT / "data/intraday/btcusdt_1m_binance_spot_freqtrade_2023-04-05_2023-05-05.json.gz"
SPOT = [ROOT / "data/intraday/ws_binance_spot_btcusdt_20240808_2354-2400_hftbacktest.gz",
        ROOT / "data/intraday/ws_binance_spot_btcusdt_20240809_0000-0005_hftbacktest.gz"]


def rss_mib() -> float:
    "Current resident set size of this process (MiB), from /proc."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def serve_child(queue, drop_after, missed):
    "Child process: a ReplayServer of the spot session; puts (port, symbol), then serves until killed."
    from volnb.replay import ReplayServer

    async def main():
        async with ReplayServer(SPOT, drop_after=drop_after, missed_on_drop=missed) as srv:
            queue.put((srv.port, srv.symbol, len(srv)))
            await srv.finished.wait()
            await asyncio.sleep(0.5)
            queue.put(("done", srv.sent, peak_rss_mib()))
    asyncio.run(main())


async def consume(feed):
    "Drain the feed: (wall seconds, bars, CPU seconds of this process meanwhile)."
    t0, c0, bars = time.perf_counter(), time.process_time(), 0
    async for _ in feed.bars():
        bars += 1
    return time.perf_counter() - t0, bars, time.process_time() - c0


def e2e_child_server(drop_after=(), missed=0):
    "Client here, server in a child process: (messages, seconds, bars, stats, server peak RSS)."
    from volnb.feeds import FeedClient
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=serve_child, args=(q, list(drop_after), missed), daemon=True)
    p.start()
    port, symbol, _ = q.get(timeout=120)
    feed = FeedClient("binance", url=f"ws://127.0.0.1:{port}/stream?streams={symbol.lower()}@trade/{symbol.lower()}@bookTicker",
                      symbol=symbol, rest_url=f"http://127.0.0.1:{port}", backoff=0.01, backoff_max=0.05, seed=0)
    secs, bars, cpu = asyncio.run(consume(feed))
    _, sent, server_rss = q.get(timeout=60)
    p.join(timeout=10)
    return feed.stats["messages"], secs, bars, feed.stats, server_rss, cpu


def e2e_same_loop():
    "Server and client in this process and event loop (what the tests do)."
    from volnb.feeds import FeedClient
    from volnb.replay import ReplayServer

    async def main():
        async with ReplayServer(SPOT) as srv:
            feed = FeedClient.replay(srv)
            secs, bars, cpu = await consume(feed)
            return feed.stats["messages"], secs, bars
    return asyncio.run(main())


def kline_e2e():
    "The I3 file as klines, speed 0, server and client in one loop: (klines received, seconds, bars, server build seconds)."
    from volnb.data import load_minute_bars
    from volnb.feeds import FeedClient
    from volnb.replay import ReplayServer
    bars = load_minute_bars(I3)
    t0 = time.perf_counter()
    srv = ReplayServer(bars, start=bars.index[HISTORY_BARS])
    build = time.perf_counter() - t0

    async def main():
        async with srv:
            feed = FeedClient.replay(srv)
            secs, n, _ = await consume(feed)
            return feed.stats["messages"], secs, n
    return (*asyncio.run(main()), build)


def kline_scoring(n_bars: int = 1_000):
    "run_live on `n_bars` klines of I3 after a HISTORY_BARS-bar REST warm-up, OnlineFeatures per bar: (bars, seconds, rows, warm-up s)."
    from volnb.data import load_minute_bars
    from volnb.intraday import OnlineFeatures
    from volnb.feeds import FeedClient, run_live
    from volnb.replay import ReplayServer
    bars = load_minute_bars(I3)
    rows = []

    async def main():
        async with ReplayServer(bars, start=bars.index[HISTORY_BARS], end=bars.index[HISTORY_BARS + n_bars]) as srv:
            feed = FeedClient.replay(srv)
            t0 = time.perf_counter()
            warm = await feed.warmup(HISTORY_BARS)
            t_warm = time.perf_counter() - t0
            st = await run_live(feed, OnlineFeatures(), lambda bar, f: rows.append(f), warmup=warm)
            return st["bars_out"], time.perf_counter() - t0, t_warm
    n, secs, t_warm = asyncio.run(main())
    return n, secs, len(rows), t_warm


def in_process(raws, repeats):
    "json.loads + parse_binance + BarStream over the messages a client receives; seconds per pass."
    from volnb.bars import BarStream
    from volnb.messages import parse_binance
    times, loads_only = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in raws: json.loads(r)
        loads_only.append(time.perf_counter() - t0)
        stream, bars = BarStream(), 0
        t0 = time.perf_counter()
        for r in raws:
            ev = parse_binance(json.loads(r))
            if ev is not None: bars += len(stream.push(ev))
        bars += len(stream.flush())
        times.append(time.perf_counter() - t0)
    return times, loads_only, bars


def main(repeats: int):
    from volnb.bars import bars_from_recording
    from volnb.messages import read_binance_recording
    base = rss_mib()
    all_lines = [r for p in SPOT for _, r in read_binance_recording(p)]
    raws = [r for r in all_lines if r.startswith(('{"stream":"btcusdt@trade"', '{"stream":"btcusdt@bookTicker"'))]
    rows = []

    t, lo, bars = in_process(raws, repeats)
    rows.append({"path": "in-process: json.loads only", "messages": len(raws), "seconds": statistics.median(lo),
                 "bars": "", "note": f"median of {repeats}"})
    rows.append({"path": "in-process: json.loads + parse_binance + BarStream", "messages": len(raws),
                 "seconds": statistics.median(t), "bars": bars, "note": f"median of {repeats} (best {len(raws) / min(t):,.0f}/s)"})
    bt = []
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter(); df = bars_from_recording(SPOT); bt.append(time.perf_counter() - t0)
    rows.append({"path": "batch: bars_from_recording (gzip read, all streams incl. depth)", "messages": df.attrs["stats"]["messages"],
                 "seconds": statistics.median(bt), "bars": len(df), "note": f"median of {len(bt)}"})
    in_proc_rss = rss_mib()

    n, secs, bars = e2e_same_loop()
    rows.append({"path": "loopback WebSocket, server + client in one process/loop", "messages": n, "seconds": secs, "bars": bars,
                 "note": "speed 0"})
    n, secs, bars, st, srv_rss, cpu = e2e_child_server()
    rows.append({"path": "loopback WebSocket, server in a child process", "messages": n, "seconds": secs, "bars": bars,
                 "note": f"speed 0; client CPU {cpu:.2f} s ({n / cpu:,.0f} msgs per client CPU-second); server peak RSS {srv_rss:.0f} MiB"})
    n, secs, bars, st, srv_rss, cpu = e2e_child_server(drop_after=(20_000, 45_000, 70_000), missed=1_500)
    rows.append({"path": "loopback WebSocket, child server, 3 dropped connections", "messages": n, "seconds": secs, "bars": bars,
                 "note": f"{st['reconnects']} reconnects, {st['backfilled']} trades backfilled over REST, {st['duplicates']} duplicates"})
    n, secs, bars, build = kline_e2e()
    rows.append({"path": "kline mode: I3 one-minute file as btcusdt@kline_1m, server + client in one loop", "messages": n,
                 "seconds": secs, "bars": bars, "note": f"speed 0; building the {n:,} kline messages took {build:.2f} s"})
    n, secs, scored, t_warm = kline_scoring()
    rows.append({"path": f"kline mode: run_live, REST warm-up ({HISTORY_BARS} bars) + OnlineFeatures per bar", "messages": n,
                 "seconds": secs, "bars": n, "note": f"{scored:,} feature rows (one per bar); warm-up {t_warm * 1e3:.0f} ms; "
                                                     f"{secs / n * 1e3:.2f} ms per bar incl. features"})
    for r in rows: r["msgs_per_s"] = r["messages"] / r["seconds"]
    peak = peak_rss_mib()

    cmd = "python scripts/bench_ingest.py" + (f" {repeats}" if repeats != 5 else "")
    dest = ROOT / "reports" / "benchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "ingest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "messages", "seconds", "msgs_per_s", "bars", "note"])
        w.writeheader()
        for r in rows: w.writerow({**r, "seconds": round(r["seconds"], 4), "msgs_per_s": round(r["msgs_per_s"])})
    md = ["# Live feed ingest: recorded Binance spot BTCUSDT session and kline mode", "",
          f"Produced by `{cmd}` on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}). Data: the two spot recordings of `data/intraday` (PROVENANCE I7, about 11 minutes, "
          f"{len(raws):,} trade + bookTicker messages, {len(all_lines):,} lines with depth); kline rows: the one-minute file "
          f"of PROVENANCE I3 (2023-04-05 → 2023-05-05). Goal: ≥ 20,000 messages/s.", "",
          "| path | messages | seconds | messages/s | bars | note |", "|---|---:|---:|---:|---:|---|"]
    md += [f"| {r['path']} | {r['messages']:,} | {r['seconds']:.3f} | {r['msgs_per_s']:,.0f} | {r['bars']} | {r['note']} |" for r in rows]
    md += ["", f"Memory (this process): {base:.0f} MiB resident after imports, {in_proc_rss:.0f} MiB after the in-process runs "
               f"(the {len(all_lines):,} recorded lines are held in memory for them), peak {peak:.0f} MiB. The client's own "
               "state is one open bar, two id sets of recent trades and the counters: it does not grow with the session.",
           "", "End-to-end times run from the client's first connect to the last bar (the server closes with code 4000 at "
               "the end of the recording); they include the WebSocket framing on both sides. No number here is asserted by a test."]
    (dest / "ingest.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
