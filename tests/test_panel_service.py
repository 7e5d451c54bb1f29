"""The multi-token model served (volnb.panel_service): agreement with the training code, the baseline, bad input, the HTTP route
on a real uvicorn server, and the registry (register, promote, rollback) of kind multitoken.

Bundles are built exactly as the stage `multitoken_deep` builds them (volnb.panel_models.block_data, build_panel_model,
save_bundle) on a SYNTHETIC panel (AR(1) log returns, not market data), with a 24-hour window and warm-up; their networks
are untrained (random initial weights): agreement with the training code does not need a good model.
"""
import json
import math
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from volnb.api import create_app, uvicorn_config
from volnb.config import ServeSettings
from volnb.panel_features import panel_features, panel_targets
from volnb.panel_models import block_data, build_panel_model, forecast_frame, predict_rows, save_bundle
from volnb.panel_service import (REASONS, MultitokenSettings, PanelScorer, ewma_variance, experiment_categories, load_bundle,
                                 load_multitoken_artefact, multitoken_artefact, register_multitoken)
from volnb.registry import Registry, loader_for, registry_command
from volnb.walkforward import Block, volatility_forecasts

TOKENS = ("AAA", "BBB", "BTC", "ETH", "USDX")
CATS = {"AAA": "defi", "BBB": "meme", "BTC": "large_cap", "ETH": "large_cap", "USDX": "stablecoin_fiat_gold"}
DIRECTION = ["AAA", "BBB", "BTC", "ETH"]
HORIZONS = [1, 4, 24]
QUANTILES = [0.05, 0.5, 0.95]
SETTINGS = {"window": 24, "warmup": 24, "quantiles": QUANTILES}
TRANSFORMER = {"encoder": "transformer", "d_model": 8, "n_heads": 2, "n_layers": 1, "patch": 4}
LSTM = {"encoder": "lstm", "d_model": 8, "n_layers": 1}
SPIKE_FEATURES = ["rv_1m", "rv_5m", "rv_15m", "rv_60m", "ret_5m", "hl_range", "volume_intensity"]
HOURS = 1300


def synthetic_panel(hours=HOURS, tokens=TOKENS, seed=0, start="2022-01-01"):
    "SYNTHETIC hourly bars: AR(1) log returns per token; USDX barely moves."
    rng, parts = np.random.default_rng(seed), []
    for k, tok in enumerate(tokens):
        e = rng.normal(0, 0.0005 if tok == "USDX" else 0.01, hours)
        r = np.zeros(hours)
        for t in range(1, hours): r[t] = -0.3 * r[t - 1] + e[t]
        c = (1.0 if tok == "USDX" else 10.0 * (k + 1)) * np.exp(np.cumsum(r))
        o = np.r_[c[0], c[:-1]]
        w = np.abs(rng.normal(0, 0.003, hours))
        parts.append(pd.DataFrame({"token": tok, "timestamp": pd.date_range(start, periods=hours, freq="h"), "open": o,
                                   "high": np.maximum(o, c) * (1 + w), "low": np.minimum(o, c) * (1 - w), "close": c,
                                   "volume": rng.lognormal(10, 0.5, hours), "filled": False}))
    return pd.concat(parts, ignore_index=True)


def fear_greed(panel):
    "A SYNTHETIC daily fear & greed index over the panel's days."
    days = pd.date_range(panel.timestamp.min().normalize() - pd.Timedelta(days=2), panel.timestamp.max().normalize(), freq="D")
    return pd.DataFrame({"date": days, "fear_greed_index": 50 + 30 * np.sin(np.arange(len(days)) / 5.0)})


def one_block(panel):
    t0 = panel.timestamp.min()
    h = lambda n: t0 + pd.Timedelta(hours=n)
    return Block((None, h(900)), (h(900), h(1050)), (h(1050), h(HOURS)))


class Built:
    "A synthetic panel, the stage's data of its block and a saved bundle of an untrained network."
    def __init__(self, root, model_cfg, seed=0, name="transformer"):
        self.panel = synthetic_panel()
        self.fg = fear_greed(self.panel)
        self.feats = panel_features(self.panel, fear_greed=self.fg)          # all 36 features: BTC, ETH and the index exist
        self.block = one_block(self.panel)
        self.data = block_data(self.panel, self.feats, panel_targets(self.panel, HORIZONS), CATS, self.block, HORIZONS,
                               window=24, warmup=24, min_token_hours=500, n_buckets=2, direction_tokens=DIRECTION)
        torch.manual_seed(seed)
        self.net = build_panel_model(model_cfg, self.data, 24, len(QUANTILES)).eval()
        liq = {t: int(v) for t, v in zip(self.panel.token.to_numpy()[self.data.test], self.data.static[self.data.test, 2].numpy())}
        self.path = save_bundle(root / name / f"block{seed}" / "model.pt", self.net, self.data, name, model_cfg, SETTINGS, HORIZONS,
                                self.block, liq)

    def reference(self, hour):
        "The training code's forecasts of every token at `hour`: predict_rows + forecast_frame on the stage's BlockData."
        ends = np.flatnonzero((self.panel.timestamp == hour).to_numpy())
        ref = forecast_frame(predict_rows(self.net, self.data, ends, 24), "m", HORIZONS, QUANTILES)
        ref.columns, ref.index = [c[2:] for c in ref.columns], self.panel.token.to_numpy()[ends]
        ref.loc[~ref.index.isin(DIRECTION), [f"dir_{h}h" for h in HORIZONS]] = np.nan       # the stage masks the stablecoin
        return ref


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return Built(tmp_path_factory.mktemp("bundles"), TRANSFORMER)


@pytest.fixture(scope="module")
def scorer(built):
    return PanelScorer(load_bundle(built.path), CATS, DIRECTION)


def json_bars(panel):
    return {t: {"timestamp": [f"{x:%Y-%m-%dT%H:%M:%SZ}" for x in g.timestamp],
                **{c: g[c].tolist() for c in ("open", "high", "low", "close", "volume")}} for t, g in panel.groupby("token")}


def fg_body(fg):
    return {f"{d:%Y-%m-%d}": float(v) for d, v in zip(pd.to_datetime(fg["date"]), fg["fear_greed_index"])}


# ---------------------------------------------------------------------------------------------- agreement with training
@pytest.mark.parametrize("model_cfg", [TRANSFORMER, LSTM], ids=["transformer", "lstm"])
def test_scores_equal_predict_rows_on_the_same_windows(tmp_path, model_cfg):
    "At several test hours, the scorer's forecasts from the bars equal volnb.panel_models.predict_rows on the stage's BlockData."
    b = Built(tmp_path, model_cfg)
    scorer = PanelScorer(load_bundle(b.path), CATS, DIRECTION)
    assert scorer.features == list(b.feats.columns) and scorer.btc == "BTC" and scorer.eth == "ETH" and scorer.uses_fear_greed
    for k in (0, 37, 150, HOURS - 1051):
        hour = b.block.test[0] + pd.Timedelta(hours=k)
        ref = b.reference(hour)
        fc = scorer.predict(b.panel, fear_greed=b.fg, asof=hour)             # the whole history up to `hour`
        assert (fc.hour, fc.n_fallback, fc.error, fc.warnings) == (hour, 0, None, [])
        assert list(fc.frame.index) == sorted(TOKENS)
        np.testing.assert_allclose(fc.frame[ref.columns].to_numpy(np.float64), ref.to_numpy(), rtol=0, atol=1e-6)
        # the last window + warm-up + 168 hours only: the RSI's exponential memory is all that differs
        recent = b.panel[b.panel.timestamp > hour - pd.Timedelta(hours=48 + 168)]
        fc2 = scorer.predict(recent, fear_greed=b.fg, asof=hour)
        np.testing.assert_allclose(fc2.frame[ref.columns].to_numpy(np.float64), ref.to_numpy(), rtol=0, atol=1e-4)
    # direction probabilities in (0, 1), quantiles sorted, none for the stablecoin
    f = fc.frame
    assert f.loc["USDX", [f"dir_{h}h" for h in HORIZONS]].isna().all()
    assert ((f.loc[DIRECTION, "dir_1h"] > 0) & (f.loc[DIRECTION, "dir_1h"] < 1)).all()
    assert (f["vol_4h_q05"] <= f["vol_4h_q50"]).all() and (f["vol_4h_q50"] <= f["vol_4h_q95"]).all()


def test_static_covariates_are_the_stages(built, scorer):
    "Token, category and liquidity ids of each token are those the stage gave its test rows."
    last = {t: i for i, t in enumerate(built.panel.token)}
    assert scorer.static == {t: tuple(built.data.static[i].tolist()) for t, i in last.items()}


def test_one_batched_forward_pass(built, scorer):
    "Every scorable token goes through the network in one call, as one batch."
    calls = []
    handle = scorer.net.register_forward_hook(lambda m, inp, out: calls.append(tuple(inp[0].shape)))
    try: scorer.predict(built.panel, fear_greed=built.fg)
    finally: handle.remove()
    assert calls == [(len(TOKENS), 24, 36)]


# ---------------------------------------------------------------------------------------------- the baseline
def test_baseline_volatility_equals_the_walk_forward_ewma(built, scorer):
    "A token the bundle does not know gets the EWMA of volnb.walkforward.volatility_forecasts (lambda 0.94), from its bars."
    p = built.panel
    new = p[p.token == "AAA"].assign(token="NEW")
    both = pd.concat([p, new], ignore_index=True).sort_values(["token", "timestamp"], ignore_index=True)
    fc = scorer.predict(both, fear_greed=built.fg)
    assert (fc.frame.at["NEW", "source"], fc.frame.at["NEW", "reason"]) == ("fallback", "unknown_token")
    wf = volatility_forecasts(both, built.block, HORIZONS, models=("ewma",))
    row = both.index[(both.token == "NEW") & (both.timestamp == p.timestamp.max())][0]
    for h in HORIZONS:
        assert fc.frame.at["NEW", f"vol_{h}h"] == pytest.approx(wf.at[row, f"ewma_vol_{h}h"], rel=1e-12)
        assert math.isnan(fc.frame.at["NEW", f"dir_{h}h"]) and math.isnan(fc.frame.at["NEW", f"vol_{h}h_q50"])
    # a known token of the direction study gets P(up) = 0.5 from the baseline
    fc = scorer.predict(p[p.timestamp > p.timestamp.max() - pd.Timedelta(hours=20)], fear_greed=built.fg)
    assert set(fc.frame.reason) == {"short_history"} and fc.frame.loc[DIRECTION, "dir_24h"].tolist() == [0.5] * 4
    assert fc.frame.loc["USDX", ["dir_1h", "dir_4h", "dir_24h"]].isna().all()


def test_ewma_by_hand():
    r1, r2 = math.log(1.01), math.log(99 / 101)
    assert ewma_variance([100, 101, 99], [0, 1, 2]) == pytest.approx(0.06 * 0.94 * r1 ** 2 + 0.06 * r2 ** 2, rel=1e-14)
    assert ewma_variance([100, 101, 99], [0, 1, 3]) == pytest.approx(0.06 * 0.94 * r1 ** 2, rel=1e-14)     # a hole: no return
    assert math.isnan(ewma_variance([100], [0]))


def test_each_fallback_case_is_flagged_with_its_reason(built, scorer):
    p, T = built.panel, built.panel.timestamp.max()
    q = p[p.timestamp > T - pd.Timedelta(hours=200)].copy()
    q = q[~((q.token == "AAA") & (q.timestamp <= T - pd.Timedelta(hours=30)))]                                     # 30 h left
    q = q[~((q.token == "BBB") & (q.timestamp == T))]                                                              # no bar at T
    q.loc[(q.token == "USDX") & (q.timestamp == T - pd.Timedelta(hours=5)), "volume"] = np.nan                     # a missing value
    fc = scorer.predict(q, fear_greed=built.fg)
    f = fc.frame
    assert f["reason"].to_dict() == {"AAA": "short_history", "BBB": "stale", "BTC": None, "ETH": None, "USDX": "nan_input"}
    assert f.at["AAA", "detail"] == "30 contiguous hour(s) end at the forecast hour; the model needs 48"
    assert f.at["BBB", "detail"].startswith("last bar ") and "1 hour(s) before the forecast hour" in f.at["BBB", "detail"]
    assert f.at["BBB", "last_bar"] == T - pd.Timedelta(hours=1)
    assert (f["source"] == np.where(f["reason"].isna(), "model", "fallback")).all()
    assert set(f["reason"].dropna()) <= set(REASONS)
    # the tokens the model scores are scored as in a request without the others
    alone = scorer.predict(q[q.token.isin(["BTC", "ETH"])], fear_greed=built.fg)
    cols = [c for c in f.columns if c.startswith(("dir_", "vol_"))]
    np.testing.assert_allclose(f.loc[["BTC", "ETH"], cols].to_numpy(np.float64), alone.frame[cols].to_numpy(np.float64), atol=1e-6)
    # a stale reference token makes every token's cross-token features missing: said once, for all
    fc = scorer.predict(q[~((q.token == "ETH") & (q.timestamp == T))], fear_greed=built.fg)
    assert fc.warnings == ["ETH has no bar for the forecast hour: the cross-token features of every token are missing there"]
    # no fear & greed index: a warning, the feature missing (scaled to its training median), still scored by the model
    fc = scorer.predict(q)
    assert fc.n_fallback == 3 and fc.warnings[0].startswith("fear_greed: no fear & greed value known at the forecast hour")


def test_full_history_rule_is_the_stages_window_ends(built, scorer):
    "A token is scored exactly when volnb.panel_models.window_ends (window + warm-up hours without a hole) holds at its last bar."
    from volnb.panel_models import window_ends
    rng = np.random.default_rng(3)
    p, T = built.panel, built.panel.timestamp.max()
    recent = p[p.timestamp > T - pd.Timedelta(hours=120)]
    seen = set()
    for _ in range(30):
        q = recent[(rng.random(len(recent)) > 0.01) | (recent.timestamp == T)].reset_index(drop=True)
        elig = scorer.eligibility(q, T)
        full = window_ends(q, 48)
        for tok, row in elig["row"].items():
            assert (elig.at[tok, "reason"] is None) == bool(full[row]), (tok, elig.at[tok, "detail"])
            seen.add(bool(full[row]))
    assert seen == {True, False}


def test_model_failure_falls_back_for_every_token(built):
    s = PanelScorer(load_bundle(built.path), CATS, DIRECTION)

    class Raising(torch.nn.Module):
        def forward(self, x, static): raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    class Infinite(torch.nn.Module):
        def __init__(self, net): super().__init__(); self.net = net
        def forward(self, x, static):
            out = self.net(x, static).clone(); out[2, 0, 0] = float("nan"); return out

    s.net = Raising()
    fc = s.predict(built.panel, fear_greed=built.fg)
    assert fc.error == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    assert set(fc.frame.reason) == {"model_error"} and fc.frame.vol_1h.notna().all()
    s.net = Infinite(built.net)
    fc = s.predict(built.panel, fear_greed=built.fg)
    assert fc.frame.reason.tolist() == [None, None, "non_finite_output", None, None]       # the third token: BTC


# ---------------------------------------------------------------------------------------------- bad input, named
def test_bad_frames_are_named(built, scorer):
    p = built.panel
    with pytest.raises(ValueError, match="lack token ETH"):
        scorer.predict(p[p.token != "ETH"])
    with pytest.raises(ValueError, match="column 'close'"):
        scorer.predict(p.drop(columns="close"))
    bad = p.copy()
    bad.loc[17, "high"] = bad.loc[17, "low"] / 2
    with pytest.raises(ValueError, match=r"high below low \(column 'high', row 17 \(token AAA"):
        scorer.predict(bad)
    with pytest.raises(ValueError, match="asof must be on the hour"):
        scorer.predict(p, asof="2022-01-20 10:15")


@pytest.fixture(scope="module")
def mt_registry(tmp_path_factory, built):
    "A multi-token registry with the transformer bundle (v0001, current) and the same network seeded otherwise (v0002)."
    d = tmp_path_factory.mktemp("mt")
    other = Built(d / "bundles", TRANSFORMER, seed=1)
    root = d / "registry"
    assert register_multitoken(root, built.path, CATS, DIRECTION) == "v0001"
    assert register_multitoken(root, other.path, CATS, DIRECTION) == "v0002"
    return root, other


@pytest.fixture(scope="module")
def client(tmp_path_factory, mt_registry):
    root, _ = mt_registry
    settings = ServeSettings(features=SPIKE_FEATURES, reload_interval_s=0.0, rate_limit_per_minute=0)
    app = create_app(tmp_path_factory.mktemp("spike") / "registry", settings,
                     multitoken=MultitokenSettings(registry=root, reload_interval_s=0.0, max_tokens=6, max_hours=400))
    with TestClient(app) as c:
        yield c


def recent_body(built, hours=216):
    p = built.panel
    return {"bars": json_bars(p[p.timestamp > p.timestamp.max() - pd.Timedelta(hours=hours)]), "fear_greed": fg_body(built.fg)}


def _with(body, token, column, i, value):
    b = json.loads(json.dumps(body))
    b["bars"][token][column][i] = value
    return b


def bad_cases(built):
    body = recent_body(built)
    bars = body["bars"]
    return {
        "negative close": (_with(body, "AAA", "close", 3, -1.0), "bars.AAA.close[3]"),
        "zero open": (_with(body, "BBB", "open", 0, 0), "bars.BBB.open[0]"),
        "string price": (_with(body, "BTC", "high", 7, "42"), "bars.BTC.high[7]"),
        "null volume": (_with(body, "ETH", "volume", 9, None), "bars.ETH.volume[9]"),
        "negative volume": (_with(body, "ETH", "volume", 9, -2.0), "bars.ETH.volume[9]"),
        "high below close": (_with(body, "AAA", "high", 5, 1e-6), "bars.AAA.high[5]"),
        "low above open": (_with(body, "AAA", "low", 6, 1e6), "bars.AAA.low[6]"),
        "time not on the hour": (_with(body, "USDX", "timestamp", 4, "2022-02-20T03:30:00Z"), "bars.USDX.timestamp[4]"),
        "not a time": (_with(body, "USDX", "timestamp", 4, "noon"), "bars.USDX.timestamp[4]"),
        "time repeated": (_with(body, "BTC", "timestamp", 2, bars["BTC"]["timestamp"][1]), "bars.BTC.timestamp[2]"),
        "lengths differ": ({**body, "bars": {**bars, "AAA": {**bars["AAA"], "close": bars["AAA"]["close"][:-1]}}}, "bars.AAA.close"),
        "missing column": ({**body, "bars": {**bars, "BBB": {k: v for k, v in bars["BBB"].items() if k != "low"}}}, "bars.BBB.low"),
        "extra column": ({**body, "bars": {**bars, "BBB": {**bars["BBB"], "trades": [1] * len(bars["BBB"]["low"])}}}, "bars.BBB.trades"),
        "too many hours": ({**body, "bars": {"AAA": json_bars(built.panel[built.panel.token == "AAA"].tail(401))["AAA"]}}, "bars.AAA.timestamp"),
        "too many tokens": ({**body, "bars": {**bars, "X1": bars["AAA"], "X2": bars["AAA"]}}, "bars"),
        "no bars": ({"bars": {}}, "bars"),
        "bad token name": ({**body, "bars": {**bars, "A A": bars["AAA"]}}, "bars.A A.[key]"),
        "fear greed above 100": ({**body, "fear_greed": {"2022-02-20": 101}}, "fear_greed.2022-02-20"),
        "fear greed bad date": ({**body, "fear_greed": {"2022-02-30": 50}}, "fear_greed.2022-02-30"),
        "asof not on the hour": ({**body, "asof": "2022-02-20T03:30:00Z"}, "asof"),
        "no BTC": ({**body, "bars": {k: v for k, v in bars.items() if k != "BTC"}}, "bars"),
        "extra key": ({**body, "rows": []}, "rows"),
    }


def test_bad_requests_are_422_naming_the_field(client, built):
    for case, (body, field) in bad_cases(built).items():
        r = client.post("/multitoken/predict", json=body)
        assert r.status_code == 422, (case, r.status_code, r.text[:300])
        assert r.json()["detail"][0]["field"] == field, (case, r.json()["detail"])


def test_repeated_token_and_wrong_content_type(client, built):
    text = json.dumps(recent_body(built))
    bars = json.dumps(json_bars(built.panel[built.panel.timestamp > built.panel.timestamp.max() - pd.Timedelta(hours=3)])["AAA"])
    twice = text[:-1] + ', "bars": {"AAA": %s}}' % bars
    r = client.post("/multitoken/predict", content=twice.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "duplicate_key" and r.json()["detail"][0]["field"] == "bars"
    r = client.post("/multitoken/predict", content=text.encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "content-type"


# ---------------------------------------------------------------------------------------------- the HTTP route
def test_route_answers_every_token_and_horizon(client, built, scorer):
    body = recent_body(built)
    r = client.post("/multitoken/predict", json=body)
    assert r.status_code == 200, r.text[:500]
    a = r.json()
    T = built.panel.timestamp.max()
    assert (a["hour"], a["version"], a["model_variant"], a["kind"]) == (f"{T:%Y-%m-%dT%H:%M:%SZ}", "v0001", "ml", "multitoken")
    assert (a["n_tokens"], a["n_fallback"], a["horizons"], a["quantiles"], a["warnings"]) == (5, 0, HORIZONS, QUANTILES, [])
    assert set(a["timings_ms"]) == {"wait", "features", "forward", "baseline", "total"}
    ref = built.reference(T)
    for f in a["forecasts"]:
        t = f["token"]
        assert (f["source"], f["reason"], f["detail"], f["last_bar"]) == ("model", None, None, f"{T:%Y-%m-%dT%H:%M:%SZ}")
        for h in HORIZONS:
            want = ref.at[t, f"dir_{h}h"]
            assert (f["direction"][f"{h}h"] is None) if np.isnan(want) else f["direction"][f"{h}h"] == pytest.approx(want, abs=1e-4)
            assert f["volatility"][f"{h}h"]["point"] == pytest.approx(ref.at[t, f"vol_{h}h"], rel=1e-3)
            assert f["volatility"][f"{h}h"]["q95"] == pytest.approx(ref.at[t, f"vol_{h}h_q95"], rel=1e-3)
    # fallbacks in the answer: a short history and an unknown token, each with its reason; asof moves the hour back
    body2 = json.loads(json.dumps(body))
    body2["bars"]["AAA"] = {k: v[-30:] for k, v in body2["bars"]["AAA"].items()}
    body2["bars"]["NEW"] = body2["bars"]["BBB"]
    body2["asof"] = f"{T - pd.Timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}"
    a = client.post("/multitoken/predict", json=body2).json()
    got = {f["token"]: f for f in a["forecasts"]}
    assert a["hour"] == f"{T - pd.Timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}" and a["n_fallback"] == 2
    assert (got["AAA"]["reason"], got["NEW"]["reason"], got["BTC"]["source"]) == ("short_history", "unknown_token", "model")
    assert got["NEW"]["direction"] == {"1h": None, "4h": None, "24h": None}        # unknown: maybe a stablecoin
    assert got["AAA"]["direction"] == {"1h": 0.5, "4h": 0.5, "24h": 0.5} and got["AAA"]["volatility"]["1h"]["q50"] is None
    assert got["AAA"]["volatility"]["1h"]["point"] > 0


def test_spike_contract_unchanged_without_multitoken(tmp_path):
    "An app built without `multitoken` has no multi-token route, and no multitoken entry in /health or /version."
    app = create_app(tmp_path / "registry", ServeSettings(features=SPIKE_FEATURES, reload_interval_s=0.0))
    with TestClient(app) as c:
        assert "/multitoken/predict" not in c.get("/openapi.json").json()["paths"]
        assert "multitoken" not in c.get("/health").json() and "multitoken" not in c.get("/version").json()
        assert c.post("/multitoken/predict", json={"bars": {}}).status_code == 404


class ServerThread:
    "A uvicorn.Server in a thread on a free loopback port (as tests/test_serving.py runs them)."
    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, "warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline: raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def test_real_server_promote_rollback_and_health(tmp_path, built, mt_registry):
    "Over real HTTP on 127.0.0.1: answers, a promote and a rollback reach the running server, /health, /version, /metrics, 413."
    src, other = mt_registry
    root = tmp_path / "registry"
    shutil.copytree(src, root)
    body = recent_body(built)
    big = {"bars": json_bars(built.panel[built.panel.timestamp > built.panel.timestamp.max() - pd.Timedelta(hours=399)])}
    limit = (len(json.dumps(body)) + len(json.dumps(big))) // 2
    settings = ServeSettings(features=SPIKE_FEATURES, reload_interval_s=0.0, rate_limit_per_minute=0, max_body_bytes=2000)
    app = create_app(tmp_path / "spike", settings, multitoken=MultitokenSettings(registry=root, reload_interval_s=0.0,
                                                                                  max_body_bytes=limit))
    with ServerThread(app) as c:
        r = c.post("/multitoken/predict", json=body)
        assert r.status_code == 200 and r.json()["version"] == "v0001"
        first = r.json()["forecasts"]
        assert registry_command("promote", "v0002", root=root, kind="multitoken") == "current version: v0002"
        a = c.post("/multitoken/predict", json=body).json()
        ref2 = other.reference(built.panel.timestamp.max())
        assert a["version"] == "v0002" and a["forecasts"][0]["volatility"]["1h"]["point"] == pytest.approx(ref2.at["AAA", "vol_1h"], rel=1e-3)
        assert a["forecasts"][0]["volatility"]["1h"]["point"] != first[0]["volatility"]["1h"]["point"]
        v = c.get("/version").json()["multitoken"]
        assert (v["version"], v["current"], v["history"], v["history_hours"], v["horizons"]) == ("v0002", "v0002", ["v0001"], 48, HORIZONS)
        assert registry_command("rollback", root=root, kind="multitoken") == "rolled back to v0001"
        assert c.post("/multitoken/predict", json=body).json()["version"] == "v0001"
        registry_command("variant", "baseline", root=root, kind="multitoken")
        a = c.post("/multitoken/predict", json=body).json()
        assert (a["model_variant"], a["version"], a["n_fallback"]) == ("baseline", None, 5)
        assert {f["reason"] for f in a["forecasts"]} == {"baseline_requested"}
        assert c.get("/health").json()["multitoken"]["status"] == "ok"
        registry_command("variant", "ml", root=root, kind="multitoken")
        # the multi-token route has its own body limit; /predict keeps serve.max_body_bytes
        r = c.post("/multitoken/predict", json=big)
        assert r.status_code == 413 and "serve.multitoken.max_body_bytes" in r.json()["detail"]
        assert c.post("/predict", json={"rows": [{f: 0.001 for f in SPIKE_FEATURES}] * 30}).status_code == 413
        # a corrupt model file, found when v0001 is loaded again: the baseline answers every token, /health says why,
        # naming the file relative to the registry
        (root / "versions" / "v0001" / "model.pt").write_bytes(b"not a torch file")
        registry_command("promote", "v0002", root=root, kind="multitoken")
        assert c.post("/multitoken/predict", json=body).json()["version"] == "v0002"
        registry_command("rollback", root=root, kind="multitoken")
        a = c.post("/multitoken/predict", json=body).json()
        assert {f["reason"] for f in a["forecasts"]} == {"model_unavailable"} and a["model_variant"] == "baseline"
        h = c.get("/health").json()["multitoken"]
        assert h["status"] == "degraded" and "versions/v0001/model.pt is corrupt" in h["reasons"][0], h
        assert str(tmp_path) not in json.dumps(h)
        m = c.get("/metrics").text
        assert 'volnb_requests_total{method="POST",path="/multitoken/predict",status="200"} 6.0' in m, m
        assert 'volnb_requests_total{method="POST",path="/multitoken/predict",status="413"} 1.0' in m
        assert 'volnb_multitoken_forecasts_total{reason="baseline_requested",source="fallback"} 5.0' in m
        assert 'volnb_multitoken_forecasts_total{reason="model_unavailable",source="fallback"} 5.0' in m
        assert 'volnb_multitoken_model_failures_total{stage="load"} 1.0' in m and "volnb_multitoken_degraded 1.0" in m
        assert 'volnb_multitoken_seconds_count{stage="features"} 4.0' in m


# ---------------------------------------------------------------------------------------------- the registry
def test_registry_command_of_kind_multitoken(tmp_path, built, scorer):
    root = tmp_path / "registry"
    assert loader_for("multitoken") is load_multitoken_artefact
    # a bundle of the stage takes its categories from the experiment, which has none for the synthetic tokens
    with pytest.raises(ValueError, match="no category for token 'AAA'"):
        registry_command("register", str(built.path), root=root, kind="multitoken")
    # a prepared artefact folder (model.pt + serving.json) is registered as it is
    art = multitoken_artefact(built.path, tmp_path / "art", CATS, DIRECTION)
    assert registry_command("register", str(art), root=root, kind="multitoken") == "registered v0001 (current: v0001)"
    listing = registry_command("list", root=root, kind="multitoken")
    assert any("v0001" in l and "current" in l and "multitoken" in l for l in listing.splitlines()), listing
    rec = Registry(root).record("v0001")
    assert (rec["kind"], sorted(rec["files"]), rec["features"], rec["threshold"]) == ("multitoken", ["model.pt", "serving.json"],
                                                                                       scorer.features, 0.5)
    with pytest.raises(ValueError, match="no baseline artefact"):
        registry_command("register-baseline", str(art), root=root, kind="multitoken")
    with pytest.raises(ValueError, match="cannot register"):                # a spike registry refuses it at the door
        Registry(tmp_path / "spike").register(art)
    served = json.loads((root / "versions" / "v0001" / "serving.json").read_text())
    assert served["categories"] == CATS and served["direction_tokens"] == DIRECTION and served["source"] == str(built.path.resolve())


def test_experiment_categories_are_the_stages():
    "Categories from the data summary and the cleaning rules (LUNA's split), as the stage multitoken_deep has them."
    cats, dirs = experiment_categories()
    assert len(cats) >= 116 and cats["LUNA2"] == "layer1_layer2" and cats["BTC"] == "large_cap"
    assert "USDC" in cats and "USDC" not in dirs and "BTC" in dirs and "LUNA2" in dirs
