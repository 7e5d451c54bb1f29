"""volnb.api: what a client and attacker test of `volnb serve` found (issue 10, section 2), request side.

Repeated JSON keys, a body sent with a non-JSON Content-Type, feature values outside their physical domain,
the rate limiter's pruning with many clients, per-row explanations and out-of-range flags. The artefacts
are fitted with volnb.spike on its SYNTHETIC frame (random numbers shaped like the spike60s features).
"""
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from volnb.api import FEATURE_DOMAINS, RateLimiter, create_app
from volnb.config import ServeSettings
from volnb.registry import Registry
from volnb.spike import fit_spike_model, save_artefact, synthetic_spike_frame

FEATURES = ["rv_1m", "rv_5m", "rv_15m", "rv_60m", "ret_5m", "hl_range", "volume_intensity"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    tr = synthetic_spike_frame(n=400, splits=("train",), seed=1)
    reg = Registry(d / "registry")
    for name, kind, params in (("z", "zscore", {"feature": "rv_5m"}), ("a", "logreg", {"C": 1.0, "max_iter": 500})):
        m = fit_spike_model(kind, tr[FEATURES], tr.label, params)
        save_artefact(m, d / name, features=FEATURES, meta={"threshold": 0.5, "data": "synthetic"}, reference=tr[FEATURES].to_numpy())
        reg.register(d / name, baseline=(kind == "zscore"))
    app = create_app(reg.root, ServeSettings(features=FEATURES, reload_interval_s=0.0, rate_limit_per_minute=0))
    with TestClient(app) as c:
        yield c


def row(**kw):
    return {**dict(zip(FEATURES, [0.001, 0.002, 0.003, 0.004, 0.0, 0.001, 1.0])), **kw}


def post_text(c, text, content_type="application/json"):
    return c.post("/predict", content=text.encode(), headers={"content-type": content_type})


# ---------------------------------------------------------------------------------------------- repeated keys
def test_repeated_json_key_in_a_row_is_422_naming_it(client):
    second = json.dumps(row())[:-1] + ', "rv_5m": 0.5}'                 # the second row says rv_5m twice
    text = '{"rows": [%s, %s]}' % (json.dumps(row()), second)
    assert json.loads(text)["rows"][1]["rv_5m"] == 0.5                  # plain json keeps the last one silently
    r = post_text(client, text)
    assert r.status_code == 422
    (e,) = r.json()["detail"]
    assert (e["field"], e["loc"], e["type"]) == ("rows[1].rv_5m", ["body", "rows", 1, "rv_5m"], "duplicate_key")
    assert "more than once" in e["msg"]


def test_repeated_top_level_key_is_422(client):
    r = post_text(client, '{"rows": [%s], "rows": [%s]}' % (json.dumps(row()), json.dumps(row(rv_1m=0.5))))
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "rows"


# ---------------------------------------------------------------------------------------------- content type
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_wrong_content_type_says_what_is_wrong(client, ctype):
    r = post_text(client, json.dumps({"rows": [row()]}), ctype)
    assert r.status_code == 422
    (e,) = r.json()["detail"]
    assert (e["field"], e["type"]) == ("content-type", "content_type")
    assert "application/json" in e["msg"] and ctype.split(";")[0] in e["msg"]
    assert "dictionary" not in e["msg"]


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8", "application/vnd.api+json"])
def test_json_content_types_are_accepted(client, ctype):
    assert post_text(client, json.dumps({"rows": [row()]}), ctype).status_code == 200


def test_a_bad_row_sent_as_json_is_still_named_by_field(client):
    r = post_text(client, json.dumps({"rows": [row(rv_1m="x")]}))
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "rows[0].rv_1m"


# ---------------------------------------------------------------------------------------------- domains
@pytest.mark.parametrize("field,value", [("rv_1m", -1e-12), ("rv_60m", -0.5), ("hl_range", -0.01), ("volume_intensity", -1.0),
                                         ("volume_intensity", 60.000001)])
def test_values_outside_the_physical_domain_are_422_naming_the_field(client, field, value):
    r = client.post("/predict", json={"rows": [row(), row(**{field: value})]})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["detail"]] == [f"rows[1].{field}"]


@pytest.mark.parametrize("field,value", [("rv_1m", 0.0), ("volume_intensity", 60.0), ("volume_intensity", 0.0), ("ret_5m", -5.0),
                                         ("ret_5m", 5.0), ("rv_60m", 1e308)])
def test_values_on_the_domain_edges_are_scored(client, field, value):
    assert client.post("/predict", json={"rows": [row(**{field: value})]}).status_code == 200


def test_openapi_states_each_domain(client):
    props = client.get("/openapi.json").json()["components"]["schemas"]["FeatureRow"]["properties"]
    for f in FEATURES:
        lo, hi = FEATURE_DOMAINS[f]
        assert props[f].get("minimum") == lo and props[f].get("maximum") == hi, f


def test_domains_hold_on_real_feature_rows(data_dir):
    "The domains are physical: every feature row of the real spike60s bars (two months of Binance minutes) lies inside."
    from volnb.core import compose_config
    from volnb.intraday import bar_features, load_spike_bars
    F = bar_features(load_spike_bars(compose_config("experiment=spike60s")))[FEATURES].dropna()
    assert len(F) > 50_000
    for f in FEATURES:
        lo, hi = FEATURE_DOMAINS[f]
        assert lo is None or F[f].min() >= lo, f
        assert hi is None or F[f].max() <= hi, f
    assert F["volume_intensity"].max() > 30 and F["ret_5m"].min() < 0        # the bounds are not vacuous here


# ---------------------------------------------------------------------------------------------- rate limiter
def test_rate_limiter_prunes_in_amortised_constant_time():
    t = [0.0]
    rl = RateLimiter(60, clock=lambda: t[0])                          # refills in 60 s
    for i in range(20_000):                                           # 20,000 clients within one refill time
        t[0] += 0.001
        assert rl.take(f"10.0.{i // 256}.{i % 256}") == 0.0
    assert len(rl.buckets) == 20_000                                  # none refilled yet: all kept
    before = rl.examined
    for i in range(1_000):
        t[0] += 0.001
        rl.take("attacker")
    assert rl.examined - before <= 2 * 1_000                          # not 1,000 scans of 20,000 buckets
    assert rl.take("attacker") > 0                                    # its bucket is still remembered and empty
    t[0] += 61.0                                                      # a full refill later everyone is forgotten...
    assert rl.take("new") == 0.0 and list(rl.buckets) == ["new"]
    assert rl.examined - before <= 2 * 1_000 + 20_001 + 1             # ...each bucket looked at once more


def test_rate_limiter_memory_is_bounded():
    t = [0.0]
    rl = RateLimiter(60, clock=lambda: t[0], max_clients=100)
    for i in range(1_000): rl.take(f"c{i}")
    assert len(rl.buckets) == 100 and "c999" in rl.buckets and "c0" not in rl.buckets


def test_rate_limiter_state_survives_pruning_of_others():
    t = [0.0]
    rl = RateLimiter(2, clock=lambda: t[0])                           # 2 per minute: refill 60 s
    assert [rl.take("a") for _ in range(2)] == [0.0, 0.0]
    t[0] = 30.0
    rl.take("b")                                                      # prunes nothing: a was seen 30 s ago
    assert rl.take("a") == 0.0                                        # a has 1 token back after 30 s...
    assert rl.take("a") == pytest.approx(30.0)                        # ...and no second one: the next in 30 s


# ---------------------------------------------------------------------------------------------- explain, out of range
def _saabas(estimator, x):
    "Path contributions of a fitted sklearn RandomForestClassifier for one row, by a plain walk (P(class 1))."
    bias, contrib = 0.0, np.zeros(len(x))
    x32 = x.astype(np.float32)
    for t in (e.tree_ for e in estimator.estimators_):
        share = t.value[:, 0, 1] / t.value[:, 0, :].sum(axis=1)
        node = 0
        bias += share[0]
        while t.children_left[node] != -1:
            f = t.feature[node]
            child = t.children_left[node] if x32[f] <= t.threshold[node] else t.children_right[node]
            contrib[f] += share[child] - share[node]
            node = child
    n = len(estimator.estimators_)
    return bias / n, contrib / n


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    "A registry whose current model is a random forest (SYNTHETIC data), the fitted sklearn model, and a client."
    d = tmp_path_factory.mktemp("forest")
    tr = synthetic_spike_frame(n=600, splits=("train",), seed=4)
    reg = Registry(d / "registry")
    z = fit_spike_model("zscore", tr[FEATURES], tr.label, {"feature": "rv_5m"})
    save_artefact(z, d / "z", features=FEATURES, meta={"threshold": 0.5}, reference=tr[FEATURES].to_numpy())
    reg.register(d / "z", baseline=True)
    rf = fit_spike_model("random_forest", tr[FEATURES], tr.label,
                         {"n_estimators": 15, "max_depth": 5, "min_samples_leaf": 5, "random_state": 0})
    save_artefact(rf, d / "rf", features=FEATURES, meta={"threshold": 0.5}, reference=tr[FEATURES].to_numpy())
    reg.register(d / "rf")
    app = create_app(reg.root, ServeSettings(features=FEATURES, reload_interval_s=0.0, rate_limit_per_minute=0))
    with TestClient(app) as c:
        yield c, rf.estimator, tr[FEATURES].to_numpy()


def test_explain_gives_the_forest_path_contributions(forest):
    c, est, ref = forest
    X = synthetic_spike_frame(n=5, splits=("test",), seed=12)[FEATURES].to_numpy()
    r = c.post("/predict?explain=true", json={"rows": [dict(zip(FEATURES, map(float, x))) for x in X]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["contributions"]) == len(X)
    for x, score, e in zip(X, body["scores"], body["contributions"]):
        bias, contrib = _saabas(est, x)                                     # brute force, independent of volnb.spike
        assert e["space"] == "probability"
        assert e["bias"] == pytest.approx(bias, abs=1e-12)
        assert [e["contributions"][f] for f in FEATURES] == pytest.approx(contrib.tolist(), abs=1e-12)
        assert e["bias"] + sum(e["contributions"].values()) == pytest.approx(score, abs=1e-12)
        assert score == pytest.approx(est.predict_proba(x[None, :])[0, 1], abs=1e-12)


def test_explain_false_has_no_contributions(forest):
    c, _, _ = forest
    body = c.post("/predict?explain=false", json={"rows": [row()]}).json()
    assert "contributions" not in body and body["out_of_range"] == []


def test_rows_far_outside_the_training_range_are_flagged(forest):
    c, _, ref = forest
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    far_up = hi[0] + 1.01 * (hi[0] - lo[0])                                  # beyond max + width: far
    near = hi[3] + 0.99 * (hi[3] - lo[3])                                    # within max + width: not far
    rows = [row(), row(rv_1m=1e308), row(rv_1m=float(far_up), rv_60m=float(near)), row(volume_intensity=60.0, ret_5m=-3.0)]
    r = c.post("/predict", json={"rows": rows})
    assert r.status_code == 200 and len(r.json()["scores"]) == 4
    assert r.json()["out_of_range"] == [{"row": 1, "fields": ["rv_1m"]}, {"row": 2, "fields": ["rv_1m"]},
                                        {"row": 3, "fields": ["ret_5m", "volume_intensity"]}]


# ---------------------------------------------------------------------------------------------- several workers
def test_two_workers_serve_and_a_feed_needs_one(tmp_path):
    "`volnb serve` with serve.workers=2: both processes share the port and answer; a feed with 2 workers is refused."
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import httpx
    d = tmp_path
    tr = synthetic_spike_frame(n=400, splits=("train",), seed=5)
    reg = Registry(d / "registry")
    for name, kind, params in (("z", "zscore", {"feature": "rv_5m"}), ("a", "logreg", {"C": 1.0, "max_iter": 500})):
        m = fit_spike_model(kind, tr[FEATURES], tr.label, params)
        save_artefact(m, d / name, features=FEATURES, meta={"threshold": 0.5}, reference=tr[FEATURES].to_numpy())
        reg.register(d / name, baseline=(kind == "zscore"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    ov = f"serve.registry={reg.root} serve.port={port} serve.workers=2 serve.rate_limit_per_minute=0"
    cli = [sys.executable, "-c", "import sys; from volnb.cli import main; sys.exit(main())", "serve", "--overrides", ov]
    bad = subprocess.run(cli + ["--replay", __file__], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "serve.workers > 1 cannot run with a feed" in bad.stderr and "Traceback" not in bad.stderr
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, up = time.monotonic() + 90, False
        while time.monotonic() < deadline and not up:
            try: up = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError: time.sleep(0.2)
        assert up, "the workers did not start"
        for _ in range(10):                                       # a new connection each: the kernel spreads them
            r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": [row()]}, timeout=5)
            assert r.status_code == 200 and r.json()["version"] == "v0001"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
    err = proc.stderr.read()
    assert err.count("Started server process") == 2               # two workers, one log line each at start-up


# ---------------------------------------------------------------------------------------------- registry CLI
def test_readme_registry_walkthrough(tmp_path, capsys):
    "The README's registry commands, on a copy of a one-version registry: rollback needs a second current version first."
    from volnb.cli import main
    tr = synthetic_spike_frame(n=400, splits=("train",), seed=6)
    reg = Registry(tmp_path / "registry")
    for name, kind, params in (("zscore", "zscore", {"feature": "rv_5m"}), ("random_forest", "random_forest", {"n_estimators": 5, "random_state": 0}),
                               ("gradient_boosting", "gradient_boosting", {"n_estimators": 5, "random_state": 0})):
        m = fit_spike_model(kind, tr[FEATURES], tr.label, params)
        save_artefact(m, tmp_path / "models" / name, features=FEATURES, meta={"threshold": 0.5}, reference=tr[FEATURES].to_numpy())
    reg.register(tmp_path / "models" / "zscore", baseline=True)
    reg.register(tmp_path / "models" / "random_forest")                 # what the pipeline builds: v0001 current
    root = ["--root", str(reg.root)]
    assert main(["registry", "rollback", *root]) == 2                  # one version: nothing to roll back to
    assert "nothing to roll back to" in capsys.readouterr().err
    assert main(["registry", "register", str(tmp_path / "models" / "gradient_boosting"), *root]) == 0
    assert reg.current() == "v0001"                                     # registered, not yet current
    assert main(["registry", "promote", "v0002", *root]) == 0 and reg.current() == "v0002"
    assert main(["registry", "rollback", *root]) == 0 and reg.current() == "v0001"
    assert main(["registry", "variant", "baseline", *root]) == 0 and reg.state()["variant"] == "baseline"
    assert main(["registry", "variant", "ml", *root]) == 0 and reg.state()["variant"] == "ml"


def test_live_bars_far_outside_the_training_range_are_flagged(forest):
    c, _, _ = forest
    svc = c.app.state.service
    assert svc.score_live(row())["out_of_range"] == []
    entry = svc.score_live(row(rv_1m=1e308, volume_intensity=60.0))
    assert entry["out_of_range"] == ["rv_1m", "volume_intensity"]
    assert c.get("/live").json()["scores"][-1] == entry                 # /live answers it as recorded
