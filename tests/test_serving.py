"""The spike predictor's HTTP API (volnb.api, volnb.service, volnb.registry) against real uvicorn servers on loopback.

Artefacts are fitted with volnb.spike on its SYNTHETIC frame (random numbers shaped like the spike60s
features, not market data). Every server runs in a thread on a free port and is shut down by its fixture.
"""
import io
import json
import logging
import math
import shutil
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from volnb.api import JsonFormatter, create_app, uvicorn_config
from volnb.registry import Registry, registry_command
from volnb.service import DriftSettings, ServeSettings, load_settings
from volnb.spike import fit_spike_model, load_artefact, save_artefact, synthetic_spike_frame

FEATURES = ["rv_1m", "rv_5m", "rv_15m", "rv_60m", "ret_5m", "hl_range", "volume_intensity"]
PARAMS = {"zscore": {"feature": "rv_5m"}, "logreg": {"C": 1.0, "max_iter": 500},
          "random_forest": {"n_estimators": 20, "max_depth": 4, "min_samples_leaf": 10, "random_state": 0}}


# ---------------------------------------------------------------------------------------------- artefacts
def _fit(dest, kind, seed):
    "An artefact fitted on SYNTHETIC rows."
    tr = synthetic_spike_frame(n=400, splits=("train",), seed=seed)
    m = fit_spike_model(kind, tr[FEATURES], tr.label, PARAMS[kind])
    meta = {"threshold": 0.5, "data": "synthetic", "metrics": {"validation": {"pr_auc": round(0.1 + seed / 100, 4)}}}
    return save_artefact(m, dest, features=FEATURES, meta=meta, reference=tr[FEATURES].to_numpy())


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artefacts")
    return {"a": _fit(d / "a", "logreg", 1), "b": _fit(d / "b", "random_forest", 2), "z": _fit(d / "z", "zscore", 3)}


@pytest.fixture(scope="session")
def rows():
    "SYNTHETIC feature rows from the same generator as the artefacts' training rows: (100, 7)."
    return synthetic_spike_frame(n=100, splits=("test",), seed=11)[FEATURES].to_numpy()


def payload(X):
    return {"rows": [dict(zip(FEATURES, map(float, x))) for x in np.atleast_2d(X)]}


@pytest.fixture
def registry(tmp_path, artefacts):
    "baseline (zscore), v0001 (logreg), v0002 (random forest, current)."
    reg = Registry(tmp_path / "registry")
    reg.register(artefacts["z"], baseline=True)
    reg.register(artefacts["a"])
    reg.register(artefacts["b"], promote=True)
    return reg


# ---------------------------------------------------------------------------------------------- servers
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    "A uvicorn.Server in a thread on a free loopback port."
    def __init__(self, app):
        self.app, self.port = app, _free_port()
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, "warning", lifespan="on"))   # as served
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self): return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline: raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def _settings(**kw):
    base = dict(features=FEATURES, reload_interval_s=0.0, rate_limit_per_minute=0)
    return ServeSettings(**{**base, **kw})


@pytest.fixture
def serve():
    "Start servers for a registry with settings overrides; each is shut down after the test."
    started = []

    def _serve(root, loader=None, **kw):
        srv = ServerThread(create_app(root, _settings(**kw), loader=loader)).start()
        started.append(srv)
        client = httpx.Client(base_url=srv.url, timeout=10)
        client.app = srv.app
        return client

    yield _serve
    for s in started: s.stop()


def fields_of(resp):
    return [e["field"] for e in resp.json()["detail"]]


# ---------------------------------------------------------------------------------------------- contracts
def test_predict_contract(registry, serve, rows):
    c = serve(registry.root)
    want = load_artefact(registry.path("v0002")).predict_proba(rows)
    for n in (1, 100):
        r = c.post("/predict", json=payload(rows[:n]))
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"scores", "spikes", "threshold", "model_variant", "version", "ts", "out_of_range"}
        assert body["out_of_range"] == []                       # rows from the training generator: none far out
        assert (body["model_variant"], body["version"], body["threshold"]) == ("ml", "v0002", 0.5)
        np.testing.assert_array_equal(body["scores"], want[:n])
        assert body["spikes"] == [s >= 0.5 for s in body["scores"]]
        assert datetime.fromisoformat(body["ts"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0


def test_health_version_live_contract(registry, serve, rows, artefacts):
    c = serve(registry.root)
    h = c.get("/health").json()
    assert (h["status"], h["model_variant"], h["requested_variant"], h["version"], h["kind"], h["reasons"]) == \
        ("ok", "ml", "ml", "v0002", "random_forest", [])
    assert set(h["drift"]) == {"live"} and set(h["drift"]["live"]["features"]) == set(FEATURES)     # api appears with its first rows
    assert (h["drift"]["live"]["rows"], h["drift"]["live"]["flagged"], h["drift"]["live"]["affects_status"]) == (0, False, True)
    v = c.get("/version").json()
    assert (v["version"], v["current"], v["history"], v["kind"], v["features"]) == ("v0002", "v0002", ["v0001"], "random_forest", FEATURES)
    assert v["metrics"] == {"validation": {"pr_auc": 0.12}}
    live = c.get("/live").json()
    assert live == {"feed": None, "n": 0, "scores": []}

    class Feed:  # what whoever starts the live feed attaches
        def status(self): return {"connected": True, "bars": 3}
    c.app.state.live_feed = Feed()
    entry = c.app.state.service.score_live({**dict(zip(FEATURES, rows[0])), "open_time": "2026-04-22T10:00:00Z"})
    live = c.get("/live").json()
    assert live["feed"] == {"attached": True, "type": "Feed", "connected": True, "bars": 3}
    assert live["scores"] == [entry] and entry["bar_time"] == "2026-04-22T10:00:00Z" and entry["version"] == "v0002"
    assert entry["score"] == load_artefact(artefacts["b"]).predict_proba(rows[:1])[0]
    assert c.get("/live", params={"limit": 0}).status_code == 422


def test_metrics_contract(registry, serve, rows):
    c = serve(registry.root)
    assert c.post("/predict", json=payload(rows[:10])).status_code == 200
    assert c.post("/predict", json={"rows": []}).status_code == 422
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = r.text
    assert 'volnb_requests_total{method="POST",path="/predict",status="200"} 1.0' in m
    assert 'volnb_requests_total{method="POST",path="/predict",status="422"} 1.0' in m
    assert 'volnb_request_latency_seconds_count{path="/predict"} 2.0' in m
    assert 'volnb_score_count{variant="ml"} 10.0' in m
    assert 'volnb_scored_rows_total{source="api",variant="ml"} 10.0' in m
    assert 'volnb_model_info{kind="random_forest",requested="ml",variant="ml",version="v0002"} 1.0' in m
    assert "volnb_degraded 0.0" in m and 'volnb_drift_window_rows{source="api"} 10.0' in m and 'volnb_drift_window_rows{source="live"} 0.0' in m
    assert 'volnb_drift_flagged{source="api"} 0.0' in m
    assert not [l for l in m.splitlines() if l.startswith("volnb_drift{")]   # 10 rows < drift.min_rows: no statistics yet


def test_openapi_published(registry, serve):
    spec = serve(registry.root).get("/openapi.json").json()
    assert {"/predict", "/health", "/version", "/metrics", "/live"} <= set(spec["paths"])
    row = spec["components"]["schemas"]["FeatureRow"]
    assert list(row["properties"]) == FEATURES and sorted(row["required"]) == sorted(FEATURES)
    assert row["additionalProperties"] is False
    assert spec["components"]["schemas"]["PredictRequest"]["properties"]["rows"]["maxItems"] == 1000
    assert set(spec["paths"]["/predict"]["post"]["responses"]) >= {"200", "413", "422", "429", "503"}


# ---------------------------------------------------------------------------------------------- bad input
def _row(**kw):
    return {**{f: 0.001 for f in FEATURES}, **kw}


BAD = {
    "missing field": ({"rows": [{k: v for k, v in _row().items() if k != "ret_5m"}]}, "rows[0].ret_5m"),
    "extra field": ({"rows": [_row(spread_bps=1.0)]}, "rows[0].spread_bps"),
    "string value": ({"rows": [_row(), _row(hl_range="0.1")]}, "rows[1].hl_range"),
    "null value": ({"rows": [_row(rv_60m=None)]}, "rows[0].rv_60m"),
    "boolean value": ({"rows": [_row(rv_5m=True)]}, "rows[0].rv_5m"),
    "no rows key": ({}, "rows"),
    "empty rows": ({"rows": []}, "rows"),
    "rows not a list": ({"rows": _row()}, "rows"),
    "extra top-level key": ({"rows": [_row()], "model": "x"}, "model"),
    "too many rows": ({"rows": [_row()] * 6}, "rows"),
}


@pytest.fixture
def small(registry, serve):
    return serve(registry.root, max_rows=5, max_body_bytes=4096)


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_payload_names_field(small, case):
    body, field = BAD[case]
    r = small.post("/predict", json=body)
    assert r.status_code == 422
    assert field in fields_of(r)


@pytest.mark.parametrize("literal,field", [("NaN", "rv_1m"), ("Infinity", "rv_15m"), ("-Infinity", "volume_intensity"),
                                           ("1e999", "ret_5m")])
def test_nan_and_inf_rejected(small, literal, field):
    text = json.dumps({"rows": [_row()]}).replace(f'"{field}": 0.001', f'"{field}": {literal}')
    r = small.post("/predict", content=text, headers={"content-type": "application/json"})
    assert r.status_code == 422 and fields_of(r) == [f"rows[0].{field}"]
    assert r.json()["detail"][0]["type"] == "finite_number"


def test_not_json(small):
    r = small.post("/predict", content=b'{"rows": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and fields_of(r) == ["body"]


def test_oversized_payload_413(small):
    big = {"rows": [_row()] * 40}                                    # > 4096 bytes, well under max_rows' 422
    r = small.post("/predict", json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks():                                                   # streamed: no Content-Length at all
        data = json.dumps(big).encode()
        for i in range(0, len(data), 512): yield data[i:i + 512]
    r = small.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]
    assert small.get("/health").json()["status"] == "ok"            # the server is fine afterwards
    m = small.get("/metrics").text
    assert 'volnb_requests_total{method="POST",path="/predict",status="413"} 2.0' in m


def test_rate_limit_429(registry, serve, rows):
    c = serve(registry.root, rate_limit_per_minute=5)
    codes = [c.post("/predict", json=payload(rows[:1])).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    r = c.get("/version")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "5 requests per minute" in r.json()["detail"]
    assert c.get("/health").status_code == 200                      # probes are exempt
    assert 'volnb_requests_total{method="POST",path="/predict",status="429"} 2.0' in c.get("/metrics").text


def test_forwarded_for_does_not_bypass_the_rate_limit(registry, serve, rows):
    "A client that sends a new X-Forwarded-For with each request is still one client (uvicorn's proxy headers are off)."
    c = serve(registry.root, rate_limit_per_minute=100)
    codes = [c.get("/version", headers={"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"}).status_code for i in range(130)]
    assert codes[:100] == [200] * 100 and set(codes[100:]) == {429}


def test_metric_labels_are_bounded(registry, serve):
    "Invented methods and paths become 'other': 50 odd requests add no new series."
    c = serve(registry.root)
    c.get("/version")
    before = len([l for l in c.get("/metrics").text.splitlines() if l.startswith("volnb_requests_total")])
    for i in range(50): c.request(f"X{i:05d}ZZ", f"/health?i={i}"); c.request("GET", f"/nope{i}")
    lines = [l for l in c.get("/metrics").text.splitlines() if l.startswith("volnb_requests_total")]
    assert not any("X000" in l or "/nope" in l for l in lines)
    assert 'method="other"' in "".join(lines) and len(lines) <= before + 3


@pytest.mark.parametrize("per_minute,cap,expect", [(1, 7, {7}), (1, 600, {59, 60}), (120, 60, {1})])
def test_retry_after_is_a_capped_whole_number(registry, serve, per_minute, cap, expect):
    "Retry-After: whole seconds >= 1, at most serve.retry_after_max_s and the bucket's refill time (60 s at 1/min)."
    c = serve(registry.root, rate_limit_per_minute=per_minute, retry_after_max_s=cap)
    for _ in range(per_minute): assert c.get("/version").status_code == 200
    r = c.get("/version")
    assert r.status_code == 429 and r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) in expect


def test_registry_is_readable_by_other_users(tmp_path, artefacts):
    "Under umask 022 every folder the registry makes is 0755 and every file 0644 (no mkstemp/mkdtemp 0600/0700)."
    import os, stat
    old = os.umask(0o022)
    try:
        reg = Registry(tmp_path / "registry")
        reg.register(artefacts["z"], baseline=True)
        reg.register(artefacts["a"])
        reg.promote(reg.register(artefacts["b"]))
    finally: os.umask(old)
    made = [p for p in (tmp_path / "registry").rglob("*") if p.name != ".lock"]
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in made}
    assert {k for k, m in modes.items() if m != (0o755 if (tmp_path / k).is_dir() else 0o644)} == set()
    assert {"registry/state.json", "registry/versions/v0002/model.npz", "registry/baseline/meta.json"} <= set(modes)
    assert not [p for p in made if p.name.startswith(".incoming-")]           # no staging folder left behind


# ---------------------------------------------------------------------------------------------- fallback
def _corrupt_model(reg, version):
    (reg.path(version) / "model.npz").write_bytes(b"PK\x03\x04 not really a zip")


def _delete_model(reg, version):
    (reg.path(version) / "model.npz").unlink()


def _truncate_meta(reg, version):
    p = reg.path(version) / "meta.json"
    p.write_text(p.read_text()[:40])


def _remove_version(reg, version):
    shutil.rmtree(reg.path(version))


@pytest.mark.parametrize("damage,named", [(_corrupt_model, "model.npz"), (_delete_model, "model.npz"),
                                          (_truncate_meta, "meta.json"), (_remove_version, "v0002")])
def test_corrupt_model_falls_back_to_baseline(registry, serve, rows, artefacts, damage, named):
    damage(registry, "v0002")
    c = serve(registry.root)
    r = c.post("/predict", json=payload(rows[:20]))
    assert r.status_code == 200
    body = r.json()
    assert (body["model_variant"], body["version"]) == ("baseline", "baseline")
    np.testing.assert_array_equal(body["scores"], load_artefact(artefacts["z"]).predict_proba(rows[:20]))
    h = c.get("/health").json()
    assert (h["status"], h["model_variant"], h["requested_variant"]) == ("degraded", "baseline", "ml")
    assert any("v0002" in x and named in x for x in h["reasons"]), h["reasons"]
    for path in ("/version", "/metrics", "/live", "/openapi.json"): assert c.get(path).status_code < 500
    assert 'volnb_fallbacks_total{stage="load"} 1.0' in c.get("/metrics").text
    assert "volnb_degraded 1.0" in c.get("/metrics").text


def test_corruption_found_on_hot_reload(registry, serve, rows):
    c = serve(registry.root)
    assert c.post("/predict", json=payload(rows[:1])).json()["version"] == "v0002"
    _corrupt_model(registry, "v0001")
    registry.promote("v0001")                                       # a running server picks up state.json
    r = c.post("/predict", json=payload(rows[:1]))
    assert r.status_code == 200 and r.json()["version"] == "baseline"
    assert c.get("/health").json()["status"] == "degraded"


def test_ml_raising_at_predict_falls_back(registry, serve, rows, artefacts):
    class Exploding:
        def __init__(self, s): self.s = s
        def __getattr__(self, k): return getattr(self.s, k)
        def predict_proba(self, X): raise FloatingPointError("overflow in tree traversal")

    def loader(path):
        s = load_artefact(path)
        return Exploding(s) if s.kind == "random_forest" else s

    c = serve(registry.root, loader=loader)
    r = c.post("/predict", json=payload(rows[:5]))
    assert r.status_code == 200 and (r.json()["model_variant"], r.json()["version"]) == ("baseline", "baseline")
    np.testing.assert_array_equal(r.json()["scores"], load_artefact(artefacts["z"]).predict_proba(rows[:5]))
    h = c.get("/health").json()
    assert h["status"] == "degraded" and any("raised at predict: FloatingPointError" in x for x in h["reasons"])
    assert 'volnb_fallbacks_total{stage="predict"} 1.0' in c.get("/metrics").text


def test_no_model_at_all_is_503(tmp_path, serve, rows):
    c = serve(tmp_path / "empty-registry")
    r = c.post("/predict", json=payload(rows[:1]))
    assert r.status_code == 503 and "no model can answer" in r.json()["detail"]
    h = c.get("/health")
    assert h.status_code == 503 and h.json()["status"] == "unavailable"


def test_corrupt_state_json(registry, serve, rows):
    c = serve(registry.root)
    assert c.post("/predict", json=payload(rows[:1])).json()["version"] == "v0002"
    registry.state_path.write_text('{"current": "../../etc"')             # half-written by hand
    r = c.post("/predict", json=payload(rows[:1]))
    assert r.status_code == 200 and r.json()["version"] == "v0002"         # keeps serving what it had
    h = c.get("/health").json()
    assert h["status"] == "degraded" and any("state.json" in x for x in h["reasons"])


def test_corrupt_state_json_at_start(registry, serve, rows):
    registry.state_path.write_text("[]")
    c = serve(registry.root)
    r = c.post("/predict", json=payload(rows[:1]))
    assert r.status_code == 200 and r.json()["version"] == "baseline"      # the baseline needs no state
    h = c.get("/health").json()
    assert h["status"] == "degraded" and any("state.json" in x for x in h["reasons"])


# ---------------------------------------------------------------------------------------------- registry
def test_rollback_restores_exact_scores(tmp_path, artefacts, serve, rows):
    reg = Registry(tmp_path / "registry")
    reg.register(artefacts["z"], baseline=True)
    assert reg.register(artefacts["a"]) == "v0001"                   # the first version becomes current
    c = serve(reg.root)
    first = c.post("/predict", json=payload(rows)).json()
    assert first["version"] == "v0001"
    assert reg.register(artefacts["b"]) == "v0002"
    assert registry_command("promote", "v0002", root=reg.root) == "current version: v0002"
    second = c.post("/predict", json=payload(rows)).json()
    assert second["version"] == "v0002" and second["scores"] != first["scores"]
    assert registry_command("rollback", root=reg.root) == "rolled back to v0001"
    again = c.post("/predict", json=payload(rows)).json()
    assert again["version"] == "v0001" and again["scores"] == first["scores"]        # bit for bit
    assert c.get("/version").json()["history"] == []


def test_variant_switch(registry, serve, rows, artefacts):
    c = serve(registry.root)
    registry_command("variant", "baseline", root=registry.root)
    r = c.post("/predict", json=payload(rows[:3])).json()
    assert (r["model_variant"], r["version"]) == ("baseline", "baseline")
    np.testing.assert_array_equal(r["scores"], load_artefact(artefacts["z"]).predict_proba(rows[:3]))
    assert c.get("/health").json()["status"] == "ok"                # chosen, not a fallback
    registry.set_variant("ml")
    assert c.post("/predict", json=payload(rows[:3])).json()["version"] == "v0002"


def test_registry_listing_and_errors(registry):
    rows = {r["version"]: r for r in registry.versions()}
    assert (rows["v0002"]["status"], rows["v0001"]["status"], rows["baseline"]["status"]) == ("current", "previous", "baseline")
    assert rows["v0001"]["kind"] == "logreg" and rows["v0001"]["metrics"] == {"validation": {"pr_auc": 0.11}}
    with pytest.raises(ValueError, match="not a version name"): registry.promote("../v0001")
    bad = registry.root.parent / "bad-artefact"
    bad.mkdir()
    (bad / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot register .*bad-artefact"): registry.register(bad)
    assert [r["version"] for r in registry.versions()] == ["v0001", "v0002", "baseline"]
    (registry.root / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json"): registry.state()


# ---------------------------------------------------------------------------------------------- drift, logs
def test_drift_flagged_on_health_and_metrics(registry, serve):
    "Drift is kept per source: shifted /predict rows are reported under api; only live rows make /health degraded."
    ref = load_artefact(registry.path("v0002")).reference
    rows = ref[np.random.default_rng(0).choice(len(ref), 300, replace=False)]   # like the training rows
    c = serve(registry.root, drift=DriftSettings(window=500, min_rows=50))
    assert c.post("/predict", json=payload(rows)).status_code == 200
    h = c.get("/health").json()
    api, live = h["drift"]["api"], h["drift"]["live"]
    assert h["status"] == "ok" and (api["source"], api["rows"], api["flagged"], api["affects_status"]) == ("api", 300, False, False)
    assert all(v["psi"] < 0.25 and v["ks_pvalue"] > 0.01 for v in api["features"].values())
    assert (live["rows"], live["affects_status"]) == (0, True)
    shifted = rows.copy()
    shifted[:, FEATURES.index("hl_range")] *= 20                    # a regime the reference never saw
    assert c.post("/predict", json=payload(shifted)).status_code == 200     # the api window: 200 old rows, 300 shifted
    h = c.get("/health").json()
    api = h["drift"]["api"]
    assert (h["status"], h["reasons"]) == ("ok", [])                # api drift is reported, not a reason
    assert api["flagged"] and api["features"]["hl_range"]["flagged"] and api["features"]["hl_range"]["psi"] > 0.25
    assert not api["features"]["rv_5m"]["flagged"] and h["drift"]["live"]["rows"] == 0
    for x in shifted:                                               # what the live feed does, one row per closed bar
        c.app.state.service.score_live(dict(zip(FEATURES, x)))
    h = c.get("/health").json()
    live = h["drift"]["live"]
    assert h["status"] == "degraded" and (live["rows"], live["flagged"]) == (300, True)
    assert live["features"]["hl_range"]["flagged"] and not live["features"]["rv_5m"]["flagged"]
    assert h["reasons"] and all(" (source live): " in x for x in h["reasons"])
    assert any(x.startswith("drift on hl_range (source live): PSI ") for x in h["reasons"]), h["reasons"]
    m = c.get("/metrics").text
    assert 'volnb_drift_flagged{source="api"} 1.0' in m and 'volnb_drift_flagged{source="live"} 1.0' in m
    assert "volnb_degraded 1.0" in m and 'volnb_drift_window_rows{source="live"} 300.0' in m
    for src in ("api", "live"):
        line = next(l for l in m.splitlines() if l.startswith(f'volnb_drift{{feature="hl_range",source="{src}",stat="psi"}}'))
        assert math.isclose(float(line.split()[-1]), h["drift"][src]["features"]["hl_range"]["psi"], rel_tol=1e-12)


def test_structured_json_log_per_request(registry, serve, rows):
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    lg = logging.getLogger("volnb.serving.access")
    old = lg.level
    lg.addHandler(handler); lg.setLevel(logging.INFO)
    try:
        c = serve(registry.root)
        c.post("/predict", json=payload(rows[:4]))
        c.post("/predict", json={"rows": []})
        deadline = time.monotonic() + 10                             # the line is written just after the response
        while buf.getvalue().count("\n") < 2 and time.monotonic() < deadline: time.sleep(0.01)
    finally:
        lg.removeHandler(handler); lg.setLevel(old)
    lines = [json.loads(l) for l in buf.getvalue().splitlines()]
    assert [(l["method"], l["path"], l["status"]) for l in lines] == [("POST", "/predict", 200), ("POST", "/predict", 422)]
    ok = lines[0]
    assert (ok["client"], ok["variant"], ok["version"], ok["rows"], ok["level"], ok["msg"]) == \
        ("127.0.0.1", "ml", "v0002", 4, "info", "request")
    assert isinstance(ok["latency_ms"], float) and ok["latency_ms"] >= 0 and ok["ts"].endswith("Z")


def test_settings_from_hydra_config():
    s = load_settings("serve.rate_limit_per_minute=7")
    assert (s.rate_limit_per_minute, s.max_body_bytes, s.features) == (7, 1 << 20, FEATURES)
    assert s.registry.is_absolute() and s.registry.parts[-3:] == ("artifacts", "spike60s", "registry")


# ---------------------------------------------------------------------------------------------- fuzzing
from hypothesis import HealthCheck, given, settings as hsettings  # noqa: E402
import schemathesis  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, artefacts):
    reg = Registry(tmp_path_factory.mktemp("fuzz") / "registry")
    reg.register(artefacts["z"], baseline=True)
    reg.register(artefacts["b"])
    srv = ServerThread(create_app(reg.root, _settings(reload_interval_s=1.0, max_rows=50))).start()
    yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    srv.stop()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")   # rows near float64's max, in spike.py
def test_openapi_contract_fuzz(api_schema):
    "Schemathesis cases from the published OpenAPI document: no 5xx, every response as documented."
    ops = {op.path: op for op in (r.ok() for r in api_schema.get_all_operations())}
    assert set(ops) == {"/predict", "/health", "/version", "/metrics", "/live"}
    statuses = {}
    for path, op in ops.items():
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if path in ("/predict", "/live") else [])
        for mode in modes:
            @hsettings(max_examples=30 if path == "/predict" else 5, deadline=None, database=None, derandomize=True,
                       suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                r = case.call_and_validate(checks=CHECKS)
                statuses.setdefault((path, mode.value), set()).add(r.status_code)
            run()
    assert statuses[("/predict", "positive")] == {200}
    # negative cases that only break the query (e.g. an unknown key beside ?explain) still carry a valid body: 200
    assert 422 in statuses[("/predict", "negative")] and statuses[("/predict", "negative")] <= {200, 422}
    assert 422 in statuses[("/live", "negative")]          # negative cases that only add unknown query keys get 200


def test_undecodable_body_is_422_naming_body(small):
    "Bytes that are not UTF-8 JSON (the fuzzer once got a 400 here): 422, field 'body', no 5xx."
    r = small.post("/predict", content=b"C\xff", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "body"


# ---------------------------------------------------------------------------------------------- drift per source, paths
def test_repeated_row_on_predict_leaves_health_ok(registry, serve, rows):
    "A load test posting one row 300 times fills the api window, flagged, but /health stays ok: api is not a health source."
    c = serve(registry.root)
    one = payload(rows[:1])
    for _ in range(300): assert c.post("/predict", json=one).status_code == 200
    h = c.get("/health").json()
    assert (h["status"], h["reasons"]) == ("ok", [])
    assert (h["drift"]["api"]["rows"], h["drift"]["api"]["flagged"], h["drift"]["api"]["affects_status"]) == (300, True, False)
    assert (h["drift"]["live"]["rows"], h["drift"]["live"]["flagged"]) == (0, False)
    m = c.get("/metrics").text
    assert "volnb_degraded 0.0" in m and 'volnb_drift_flagged{source="api"} 1.0' in m and 'volnb_drift_flagged{source="live"} 0.0' in m


def test_drift_statistics_need_min_rows(registry, serve, rows):
    "Below drift.min_rows a source's report has its row count and min_rows only: no PSI or KS, no flag, no drift gauges."
    c = serve(registry.root)                                        # min_rows 200
    assert c.post("/predict", json=payload(rows[:3] * [1, 1, 1, 1, 1, 50, 1])).status_code == 200   # far off in hl_range
    c.app.state.service.score_live(dict(zip(FEATURES, rows[0] * 50)))
    h = c.get("/health").json()
    assert (h["status"], h["reasons"]) == ("ok", [])
    for src, n in (("api", 3), ("live", 1)):
        d = h["drift"][src]
        assert (d["rows"], d["min_rows"], d["flagged"], d["reference"]) == (n, 200, False, True)
        assert d["features"] == {f: {"psi": None, "ks": None, "ks_pvalue": None, "flagged": False} for f in FEATURES}
    m = c.get("/metrics").text
    assert not [l for l in m.splitlines() if l.startswith("volnb_drift{")]
    assert 'volnb_drift_window_rows{source="api"} 3.0' in m and 'volnb_drift_window_rows{source="live"} 1.0' in m


def test_api_drift_can_count_for_health(registry, serve, rows):
    "serve.drift.health_sources=[api, live]: drift on /predict rows makes /health degraded, naming the source."
    assert load_settings().drift.health_sources == ["live"]
    with pytest.raises(ValueError, match="health_sources"): DriftSettings(health_sources=["loadtest"])
    c = serve(registry.root, drift=DriftSettings(window=500, min_rows=50, health_sources=["api", "live"]))
    for _ in range(60): assert c.post("/predict", json=payload(rows[:1])).status_code == 200
    h = c.get("/health").json()
    assert h["status"] == "degraded" and h["drift"]["api"]["affects_status"]
    assert h["reasons"] and all(x.startswith("drift on ") and " (source api): " in x for x in h["reasons"]), h["reasons"]


DAMAGE = {     # what is done to the registry, and what /health must then say (relative to the registry)
    "corrupt model": (lambda reg: _corrupt_model(reg, "v0002"), "artefact file versions/v0002/model.npz is corrupt"),
    "missing model": (lambda reg: _delete_model(reg, "v0002"), "artefact file versions/v0002/model.npz is missing"),
    "version removed": (lambda reg: _remove_version(reg, "v0002"), "artefact directory versions/v0002 is missing"),
    "no baseline": (lambda reg: shutil.rmtree(reg.baseline_dir), "no baseline registered (baseline/ is missing)"),
    "no current version": (lambda reg: reg.state_path.write_text('{"current": null}'), "no ML version is current in state.json"),
    "state.json not JSON": (lambda reg: reg.state_path.write_text('{"current": "v0002"'), "cannot read state.json: "),
    "state.json bad field": (lambda reg: reg.state_path.write_text('{"current": "/etc/passwd"}'), "state.json: field 'current'"),
    "nothing answers": (lambda reg: (_corrupt_model(reg, "v0002"), shutil.rmtree(reg.baseline_dir)),
                        "artefact file versions/v0002/model.npz is corrupt"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_client_messages_name_no_absolute_path(tmp_path, registry, serve, rows, case):
    "/health reasons, /version and 503 details name the version and the file relative to the registry, not where it lives."
    damage, expect = DAMAGE[case]
    running = serve(registry.root)
    assert running.post("/predict", json=payload(rows[:1])).status_code == 200
    damage(registry)
    fresh = serve(registry.root)                                    # started on the damaged registry
    for c in (running, fresh):                                      # the running one re-reads state.json per request
        h, v, p = c.get("/health"), c.get("/version"), c.post("/predict", json=payload(rows[:1]))
        assert not [r.text for r in (h, v, p) if str(tmp_path) in r.text or str(tmp_path.resolve()) in r.text]
    reasons = fresh.get("/health").json()["reasons"]
    assert any(expect in x for x in reasons), reasons
    if case == "nothing answers": assert p.status_code == 503 and expect in p.json()["detail"]


def test_loader_and_predict_errors_are_redacted(tmp_path, registry, serve, rows):
    "Text from the artefact loader or the model that holds the registry's path comes out relative to it."
    def loader(path):
        if Path(path).name == "v0002": raise OSError(f"[Errno 5] Input/output error: '{path}/model.npz'")
        s = load_artefact(path)

        class Exploding:
            def __getattr__(self, k): return getattr(s, k)
            def predict_proba(self, X): raise FloatingPointError(f"overflow reading {path}/model.npz")
        return Exploding() if s.kind == "zscore" else s

    c = serve(registry.root, loader=loader)
    r = c.post("/predict", json=payload(rows[:1]))
    assert r.status_code == 503 and "overflow reading baseline/model.npz" in r.json()["detail"] and str(tmp_path) not in r.text
    h = c.get("/health")
    want = "ml artefact v0002 could not be loaded: OSError: [Errno 5] Input/output error: 'versions/v0002/model.npz'"
    assert any(x.startswith(want) for x in h.json()["reasons"]), h.json()["reasons"]
    assert str(tmp_path) not in h.text
    other = serve(registry.root, features=FEATURES[::-1])           # a service for other features than the artefacts'
    h = other.get("/health")
    assert any(x.startswith("ml artefact v0002 could not be loaded: RegistryError: artefact versions/v0002 has features") for x in h.json()["reasons"])
    assert str(tmp_path) not in h.text and str(tmp_path) not in other.post("/predict", json=payload(rows[:1])).text
