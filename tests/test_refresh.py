"""volnb.refresh against a real HTTP server on 127.0.0.1 serving recorded answers (tests/fixtures/refresh).

The served values are rows of the raw snapshot (see tests/fixtures/refresh/README.md); each test checks that
the refreshed file is byte-for-byte the matching excerpt of the snapshot file, that paging runs to the end,
that transient failures are retried, and that a bad answer or a failed request leaves the old file intact.
"""
from __future__ import annotations

import copy
import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from volnb.core import project_root
from volnb.refresh import FetchError, HttpClient, PayloadError, load_refresh_config, refresh, refresh_sources, utc_ms

FIX = Path(__file__).parent / "fixtures" / "refresh"
BITSTAMP_PATH = "/api/v2/ohlc/btcusd/"
KLINES_PATH = "/api/v3/klines"
FUNDING_PATH = "/fapi/v1/fundingRate"
CM_PATH = "/v4/timeseries/asset-metrics"
FNG_PATH = "/fng/"


def fixture(name: str):
    return json.loads((FIX / name).read_text())


def expected_lines(name: str) -> list[str]:
    return (FIX / f"expected_{name}").read_text().splitlines()


# ---------------------------------------------------------------------------------------------- the server

class State:
    "What the handler shares with the tests: request log, scripted faults, answer patches, overlap mode."
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests: list[tuple[str, dict]] = []
        self.faults: dict[str, list] = {}      # path -> [None | (status, headers, body)], consumed per request
        self.patches: dict[str, callable] = {}  # path -> f(payload, query) -> payload
        self.overlap = False                    # paged answers also repeat the row just before the cursor
        self.served: dict[str, list] = {}       # path -> keys of the paged rows served, in order

    def queries(self, path: str) -> list[dict]:
        return [q for p, q in self.requests if p == path]


def window(rows: list, key, query: dict, start_param: str, end_param: str | None, default_limit: int, overlap: bool):
    "The rows an API answers for `start <= key <= end`, at most `limit` of them (and the row before, if overlapping)."
    start = int(query.get(start_param, 0))
    end = int(query[end_param]) if end_param and end_param in query else None
    inside = [i for i, r in enumerate(rows) if key(r) >= start and (end is None or key(r) <= end)]
    if not inside: return []
    first = inside[0] - 1 if overlap and inside[0] > 0 else inside[0]
    picked = [rows[i] for i in range(first, inside[-1] + 1)]
    return picked[: int(query.get("limit", default_limit))]


def record(state: State, path: str, rows: list, key) -> list:
    with state.lock: state.served.setdefault(path, []).extend(key(r) for r in rows)
    return rows


def answer(state: State, base: str, path: str, q: dict):
    "(status, payload) for one request, from the recorded files."
    if path == BITSTAMP_PATH:
        rec = fixture("bitstamp_ohlc_btcusd_86400.json")
        key = lambda c: int(c["timestamp"])
        rec["data"]["ohlc"] = record(state, path, window(rec["data"]["ohlc"], key, q, "start", None, 1000, state.overlap), key)
        return 200, rec
    if path == KLINES_PATH:
        f = FIX / f"binance_klines_{q.get('symbol')}_{q.get('interval')}.json"
        if not f.exists(): return 400, {"code": -1121, "msg": "Invalid symbol."}
        rows = window(json.loads(f.read_text()), lambda k: k[0], q, "startTime", "endTime", 500, state.overlap)
        return 200, record(state, path, rows, lambda k: (q["symbol"], k[0]))
    if path == FUNDING_PATH:
        rows = fixture("binance_funding_BTCUSDT.json")
        key = lambda r: r["fundingTime"]
        return 200, record(state, path, window(rows, key, q, "startTime", "endTime", 100, state.overlap), key)
    if path == CM_PATH:
        page = "page2" if q.get("next_page_token") == "page2" else "page1"
        text = (FIX / f"coinmetrics_asset_metrics_{page}.json").read_text().replace("{base}", base)
        return 200, json.loads(text)
    if path == FNG_PATH:
        return 200, fixture("alternative_fng.json")
    return 404, {"error": f"no route {path}"}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args): pass

    def do_GET(self):
        st: State = self.server.state
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        with st.lock:
            st.requests.append((u.path, q))
            scripted = st.faults.get(u.path)
            fault = scripted.pop(0) if scripted else None
        if fault is not None:
            status, headers, body = fault
            return self.reply(status, body, headers)
        status, payload = answer(st, self.server.base, u.path, q)
        if u.path in st.patches: payload = st.patches[u.path](payload, q)
        self.reply(status, json.dumps(payload))

    def reply(self, status: int, body: str, headers: dict | None = None):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items(): self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.state = State()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(http_server):
    http_server.state.reset()
    return http_server


@pytest.fixture
def waits():
    return []


@pytest.fixture
def client(waits):
    "Three retries, waits recorded instead of slept (no jitter, so the waits are exact)."
    return HttpClient(timeout=5, retries=3, backoff=0.001, backoff_max=0.01, sleep=waits.append, jitter=0)


@pytest.fixture
def cfg(server):
    "The project's refresh config, pointed at the test server and at the windows the recorded answers cover."
    c = load_refresh_config()
    for s in c["sources"].values():
        s["base_url"], s["min_interval"] = server.base, 0
    src = c["sources"]
    src["bitstamp_daily"].update(start="2025-06-25", end="2025-07-04", limit=4)
    src["hourly_panel"].update(symbols=["BTCUSDT", "ETHUSDT"], start="2021-04-04 20:00", end="2021-04-05 03:00", limit=3)
    src["intraday_1m"].update(start="2021-04-02 00:00", end="2021-04-02 00:09", limit=4, output="intraday/btcusdt_1m_test.json.gz")
    src["coinmetrics_daily"].update(start="2026-03-15", page_size=5)
    src["fear_greed_daily"].update(start="2024-10-22")
    src["funding_daily"].update(start="2021-04-01", limit=3)
    return c


def run(cfg, tmp_path, client, name) -> Path:
    return refresh(cfg, tmp_path, [name], client)[name]


def ms(text: str) -> int:
    return utc_ms(text)


# ------------------------------------------------------------------------------------- formats and paging

def test_bitstamp_daily_matches_snapshot_and_pages_to_the_end(server, cfg, client, tmp_path):
    out = run(cfg, tmp_path, client, "bitstamp_daily")
    lines = out.read_text().splitlines()
    assert out.name == "btc_usd_daily_bitstamp_cdd.csv"
    assert lines[0].startswith(f"{server.base}/api/v2/ohlc/btcusd/") and not lines[0].startswith("unix")
    assert lines[1:] == expected_lines("bitstamp_daily.csv")        # header, newest first, Volume USD digits
    qs = server.state.queries(BITSTAMP_PATH)
    assert [int(q["start"]) for q in qs] == [1750809600, 1750809600 + 4 * 86400, 1750809600 + 8 * 86400]
    assert all(q["step"] == "86400" and q["limit"] == "4" and q["exclude_current_candle"] == "true" and "end" not in q for q in qs)


def test_hourly_panel_matches_snapshot(server, cfg, client, tmp_path):
    out = run(cfg, tmp_path, client, "hourly_panel")
    assert out.name.endswith(".csv.gz")
    with gzip.open(out, "rt") as f: assert f.read().splitlines() == expected_lines("hourly_panel.csv")
    qs = server.state.queries(KLINES_PATH)
    btc = [q for q in qs if q["symbol"] == "BTCUSDT"]
    t0 = ms("2021-04-04 20:00")
    assert [int(q["startTime"]) for q in btc] == [t0, t0 + 2 * 3_600_000 + 1, t0 + 5 * 3_600_000 + 1]   # pages 3, 3, 2
    assert len(qs) == 6 and all(q["interval"] == "1h" and q["endTime"] == str(ms("2021-04-05 03:00")) for q in qs)


def test_minute_bars_written_as_freqtrade_json(server, cfg, client, tmp_path):
    out = run(cfg, tmp_path, client, "intraday_1m")
    assert out == tmp_path / "intraday" / "btcusdt_1m_test.json.gz"
    with gzip.open(out, "rt") as f: text = f.read()
    assert text == (FIX / "expected_intraday_1m.json").read_text()   # same bytes as the freqtrade cache's first bars
    assert len(server.state.queries(KLINES_PATH)) == 3                 # pages of 4, 4, 2


def test_coinmetrics_follows_next_page_url(server, cfg, client, tmp_path):
    out = run(cfg, tmp_path, client, "coinmetrics_daily")
    assert out.read_text().splitlines() == expected_lines("coinmetrics_daily.csv")   # 9 days once, overlap dropped
    first, second = server.state.queries(CM_PATH)
    metrics = cfg["sources"]["coinmetrics_daily"]["metrics"]
    assert first == {"assets": "btc", "metrics": ",".join(metrics), "frequency": "1d", "page_size": "5",
                     "paging_from": "start", "start_time": "2026-03-15T00:00:00Z"}
    assert second["next_page_token"] == "page2"


def test_fear_greed_ascending_from_start(server, cfg, tmp_path):
    out = refresh(cfg, tmp_path, "fear_greed_daily")["fear_greed_daily"]      # the client built from cfg.http
    assert out.read_text().splitlines() == expected_lines("fear_greed_daily.csv")
    assert server.state.queries(FNG_PATH) == [{"limit": "0", "format": "json"}]


def test_funding_daily_mean_matches_snapshot(server, cfg, client, tmp_path):
    out = run(cfg, tmp_path, client, "funding_daily")
    assert out.read_text().splitlines() == expected_lines("funding_daily.csv")
    qs = server.state.queries(FUNDING_PATH)
    assert [int(q["startTime"]) for q in qs] == [ms("2021-04-01"), ms("2021-04-03") + 1, ms("2021-04-06") + 1]


def test_overlapping_pages_give_no_duplicate_rows(server, cfg, client, tmp_path):
    server.state.overlap = True
    written = refresh(cfg, tmp_path, ["bitstamp_daily", "hourly_panel", "funding_daily"], client)
    assert written["bitstamp_daily"].read_text().splitlines()[1:] == expected_lines("bitstamp_daily.csv")
    with gzip.open(written["hourly_panel"], "rt") as f: assert f.read().splitlines() == expected_lines("hourly_panel.csv")
    assert written["funding_daily"].read_text().splitlines() == expected_lines("funding_daily.csv")
    for path in (BITSTAMP_PATH, KLINES_PATH, FUNDING_PATH):       # the server really did serve rows twice
        keys = server.state.served[path]
        assert len(keys) > len(set(keys)), path


def test_all_sources_at_once_read_back_by_the_loaders(server, cfg, client, tmp_path):
    from volnb import data as D
    written = refresh_sources(tmp_path, None, cfg, client)
    assert set(written) == set(cfg["sources"])
    b = D.load_bitstamp_daily(written["bitstamp_daily"], drop_partial_last=False)
    assert len(b) == 10 and b["close"].iloc[-1] == 108033.0 and b["volume_btc"].iloc[-1] == 607.8822874
    cm = D.load_coinmetrics_daily(written["coinmetrics_daily"])
    assert cm.loc["2026-03-22", "PriceUSD"] == 68018.1534815897
    assert D.load_funding_daily(written["funding_daily"], drop_partial_last=False)["funding_rate"].iloc[4] == 0.00040029999999999997
    assert D.load_fear_greed(written["fear_greed_daily"], on_gap="ignore")["fear_greed_index"].tolist() == [70, 71, 69, 72, 74, 72, 72, 77, 77]
    panel = D.load_hourly_panel(written["hourly_panel"])
    assert len(panel) == 16 and set(panel["ticker"]) == {"BTCUSDT", "ETHUSDT"}
    bars = D.load_minute_bars(written["intraday_1m"])
    assert len(bars) == 10 and bars["close"].iloc[0] == 58760.34


# ------------------------------------------------------------------------------------ retries and failures

def test_retries_after_429_and_500_then_succeeds(server, cfg, client, waits, tmp_path):
    server.state.faults[FUNDING_PATH] = [
        None,                                                                     # page 1 answered
        (429, {"Retry-After": "2"}, '{"code":-1003,"msg":"Too many requests."}'),  # page 2: rate limited ...
        (500, {}, "Internal Server Error"),                                       # ... then a server error
    ]
    out = run(cfg, tmp_path, client, "funding_daily")
    assert out.read_text().splitlines() == expected_lines("funding_daily.csv")
    qs = server.state.queries(FUNDING_PATH)
    assert len(qs) == 5 and qs[1] == qs[2] == qs[3]      # the same page asked three times
    assert waits == [2.0, 0.002]                         # Retry-After honoured, then backoff·2^1


def test_retry_waits_are_jittered_and_retry_after_is_capped(server, cfg, waits, tmp_path):
    "Default jitter: waits spread below backoff·2^k; a Retry-After of a day is cut to retry_after_max."
    import random
    server.state.faults[FUNDING_PATH] = [None, (429, {"Retry-After": "86400"}, "slow down"), (503, {}, "busy"),
                                         (503, {}, "busy")]
    client = HttpClient(timeout=5, retries=3, backoff=0.5, backoff_max=8.0, retry_after_max=5.0,
                        sleep=waits.append, rng=random.Random(3))
    out = run(cfg, tmp_path, client, "funding_daily")
    assert out.read_text().splitlines() == expected_lines("funding_daily.csv")
    assert waits[0] == 5.0                                # capped, not a day
    assert 0.5 <= waits[1] <= 1.0 and 1.0 <= waits[2] <= 2.0 and waits[1:] != [1.0, 2.0]


def test_connection_errors_are_retried_then_reported(cfg, waits, tmp_path):
    with socket.socket() as s:                            # a port with nothing listening
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    cfg["sources"]["fear_greed_daily"]["base_url"] = f"http://127.0.0.1:{port}"
    client = HttpClient(timeout=2, retries=2, backoff=0.001, sleep=waits.append, jitter=0)
    with pytest.raises(FetchError, match=r"fear_greed_daily: no answer after 3 attempts .*127\.0\.0\.1:\d+/fng/\?limit=0&format=json"):
        run(cfg, tmp_path, client, "fear_greed_daily")
    assert waits == [0.001, 0.002]
    assert not (tmp_path / "fear_greed_daily_alternative_me.csv").exists()


def test_retries_exhausted_leave_the_old_file_intact(server, cfg, client, tmp_path):
    dest = tmp_path / "btc_usd_daily_bitstamp_cdd.csv"
    dest.write_text("previous snapshot\n")
    server.state.faults[BITSTAMP_PATH] = [(503, {}, "Service Unavailable")] * 4
    with pytest.raises(FetchError) as e:
        run(cfg, tmp_path, client, "bitstamp_daily")
    msg = str(e.value)
    assert "bitstamp_daily" in msg and "HTTP 503" in msg and "/api/v2/ohlc/btcusd/?step=86400" in msg
    assert len(server.state.queries(BITSTAMP_PATH)) == 4
    assert dest.read_text() == "previous snapshot\n"
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]        # no temporary file left behind


def test_unknown_symbol_fails_at_once(server, cfg, client, tmp_path):
    cfg["sources"]["hourly_panel"]["symbols"] = ["BTCUSDT", "NOPEUSDT"]
    with pytest.raises(FetchError, match=r"hourly_panel: request refused: .*Invalid symbol.*HTTP 400"):
        run(cfg, tmp_path, client, "hourly_panel")
    assert len([q for q in server.state.queries(KLINES_PATH) if q["symbol"] == "NOPEUSDT"]) == 1   # 4xx: no retry
    assert list(tmp_path.iterdir()) == []


def _drop_rate(payload, q):
    if int(q["startTime"]) > ms("2021-04-01"): del payload[1]["fundingRate"]      # second page only
    return payload

def _bad_price(payload, q):
    if q.get("next_page_token") == "page2": payload["data"][2]["PriceUSD"] = "n/a"
    return payload

def _bad_close(payload, q):
    if payload["data"]["ohlc"]: payload["data"]["ohlc"][0]["close"] = {"value": 1}
    return payload

def _bad_time(payload, q):
    payload["data"][1]["timestamp"] = "yesterday"
    return payload

@pytest.mark.parametrize("name, path, patch, field, output", [
    ("funding_daily", FUNDING_PATH, _drop_rate, "'[1].fundingRate'", "btc_funding_daily_binance_usdtm.csv"),
    ("coinmetrics_daily", CM_PATH, _bad_price, "'data[2].PriceUSD', value 'n/a'", "btc_onchain_daily_coinmetrics_community.csv"),
    ("bitstamp_daily", BITSTAMP_PATH, _bad_close, "'data.ohlc[0].close'", "btc_usd_daily_bitstamp_cdd.csv"),
    ("fear_greed_daily", FNG_PATH, _bad_time, "'data[1].timestamp', value 'yesterday'", "fear_greed_daily_alternative_me.csv"),
])
def test_malformed_answer_names_source_url_and_field(server, cfg, client, tmp_path, name, path, patch, field, output):
    dest = tmp_path / output
    dest.write_text("previous snapshot\n")
    server.state.patches[path] = patch
    with pytest.raises(PayloadError) as e:
        run(cfg, tmp_path, client, name)
    msg = str(e.value)
    assert msg.startswith(f"{name}: ") and f"url {server.base}{path}" in msg and f"field {field}" in msg
    assert e.value.source == name and e.value.url.startswith(server.base + path)
    assert dest.read_text() == "previous snapshot\n"
    assert [p.name for p in tmp_path.iterdir()] == [output]


def test_empty_window_writes_nothing(server, cfg, client, tmp_path):
    cfg["sources"]["fear_greed_daily"]["start"] = "2030-01-01"
    with pytest.raises(PayloadError, match="no rows in the requested window"):
        run(cfg, tmp_path, client, "fear_greed_daily")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- config

def test_default_config_rebuilds_the_snapshot_file_names():
    root = project_root()
    snap = yaml.safe_load((root / "conf/data/snapshot.yaml").read_text())
    src = load_refresh_config(root / "conf/refresh/default.yaml")["sources"]
    for name in ("bitstamp_daily", "coinmetrics_daily", "funding_daily", "fear_greed_daily", "hourly_panel"):
        assert src[name]["output"] == snap[name]
    assert src["intraday_1m"]["output"].startswith(snap["intraday_dir"] + "/")
    assert src["coinmetrics_daily"]["metrics"][:2] == ["AdrActCnt", "AdrBalCnt"] and len(src["coinmetrics_daily"]["metrics"]) == 31
    assert all(s["base_url"].startswith("https://") for s in src.values())


def test_config_composes_as_a_hydra_group(server, client, tmp_path):
    from volnb.core import compose_config
    cfg = compose_config("+refresh=default")
    assert cfg.refresh.sources.funding_daily.kind == "binance_funding_daily"
    from omegaconf import open_dict
    node = copy.deepcopy(cfg.refresh)
    with open_dict(node):
        for s in node.sources.values(): s.base_url, s.min_interval = server.base, 0
        node.sources.fear_greed_daily.start = "2024-10-22"
    out = refresh_sources(tmp_path, "fear_greed_daily", node, client)["fear_greed_daily"]   # an OmegaConf node works
    assert out.read_text().splitlines() == expected_lines("fear_greed_daily.csv")


def test_expected_excerpts_are_snapshot_lines():
    "The expected files are verbatim excerpts of the snapshot (skipped when data/ has not been pulled)."
    data = project_root() / "data"
    if not (data / "btc_funding_daily_binance_usdtm.csv").exists(): pytest.skip("snapshot not pulled")
    def contains_all(path, lines):
        "Stream the file until every expected line has been seen (the hourly panel is 227 MB unpacked)."
        left = set(lines)
        with (gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)) as f:
            for line in f:
                left.discard(line.rstrip("\n"))
                if not left: return True
        return False
    for exp, snap in [("bitstamp_daily.csv", "btc_usd_daily_bitstamp_cdd.csv"), ("hourly_panel.csv", "binance_spot_usdt_1h_116tokens_2021-2023.csv.gz"),
                      ("coinmetrics_daily.csv", "btc_onchain_daily_coinmetrics_community.csv"),
                      ("fear_greed_daily.csv", "fear_greed_daily_alternative_me.csv"), ("funding_daily.csv", "btc_funding_daily_binance_usdtm.csv")]:
        assert contains_all(data / snap, expected_lines(exp)), exp
    minute = gzip.open(data / "intraday/btcusdt_1m_binance_spot_freqtrade_2021-04-02_2021-05-14.json.gz", "rt").read(4000)
    assert minute.startswith((FIX / "expected_intraday_1m.json").read_text()[:-1])
