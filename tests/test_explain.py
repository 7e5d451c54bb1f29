"""volnb.explain: attributions, rankings, families and attention summaries on tiny models of known structure."""
import re

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from volnb.attention import ATTENTION_VARIANTS, causal_mask
from volnb.explain import (attention_by_lag, compare_rankings, explain_crosscheck, feature_ablation,
                           feature_importance_table, group_importance, importance_by_family, importance_table,
                           integrated_gradients, over_seeds, plot_attention_by_lag, plot_importance,
                           plot_importance_heatmap, plot_synthetic_matrices, synthetic_matrices, table5, top_features)
from volnb.models import DecoderTransformer, LSTMRegressor

NAMES = ["f0", "f1", "f2", "f3"]
N, L, F = 24, 6, 4


class OnlyFeature2(nn.Module):
    "Causal linear toy model: y_t = 3 x_{t,2}; the last forecast depends on x_{L,2} only."
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        return self.w * x[..., 2]


class Smooth(nn.Module):
    "Causal non-linear toy model: y_t = tanh(x_t . a) + 0.5 (x_t . b)^2 + 0.1 * mean_{s<=t} x_{s,0}."
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = nn.Parameter(torch.randn(F, generator=g))
        self.b = nn.Parameter(torch.randn(F, generator=g))

    def forward(self, x):
        cum = x[..., 0].cumsum(1) / torch.arange(1, x.shape[1] + 1)
        return torch.tanh(x @ self.a) + 0.5 * (x @ self.b) ** 2 + 0.1 * cum


@pytest.fixture
def windows():
    return torch.randn(N, L, F, generator=torch.Generator().manual_seed(0))     # synthetic windows


def tiny_transformer(attention, seed=0, n_layers=2):
    torch.manual_seed(seed)
    return DecoderTransformer(n_features=F, d_model=8, n_heads=2, n_layers=n_layers, max_len=L,
                              attention=attention, rank=3)


# --- feature ablation / integrated gradients ------------------------------------------------------------

def test_ablation_zero_baseline_by_hand(windows):
    t = feature_ablation(OnlyFeature2(), windows, NAMES, batch_size=5).set_index("feature")
    per_window = 3.0 * windows[:, -1, 2].double().numpy()                       # f(x) - f(x with col 2 = 0)
    assert_allclose(t.loc["f2", "mean"], per_window.mean(), rtol=1e-6)
    assert_allclose(t.loc["f2", "abs_mean"], np.abs(per_window).mean(), rtol=1e-6)
    assert (t.loc[["f0", "f1", "f3"], ["mean", "abs_mean"]].to_numpy() == 0).all()
    assert t.loc["f2", "rank"] == 1


def test_ablation_mean_baseline_by_hand(windows):
    t = feature_ablation(OnlyFeature2(), windows, NAMES, baseline="mean").set_index("feature")
    m2 = windows[..., 2].double().mean()
    per_window = 3.0 * (windows[:, -1, 2].double() - m2).numpy()
    assert_allclose(t.loc["f2", "mean"], per_window.mean(), atol=1e-6)
    assert_allclose(t.loc["f2", "abs_mean"], np.abs(per_window).mean(), rtol=1e-5)


def test_ablation_perturbs_whole_feature_column(windows):
    "The group is all L positions: a model reading feature 1 at the FIRST position is attributed too."
    class FirstPos(nn.Module):
        def __init__(self):
            super().__init__(); self.w = nn.Parameter(torch.tensor(1.0))
        def forward(self, x):
            return (self.w * x[:, :1, 1]).expand(-1, x.shape[1])                 # y_t = x_{0,1} for every t
    t = feature_ablation(FirstPos(), windows, NAMES).set_index("feature")
    assert_allclose(t.loc["f1", "mean"], windows[:, 0, 1].double().mean(), rtol=1e-6)
    assert t.loc[["f0", "f2", "f3"], "abs_mean"].eq(0).all()


def test_ig_equals_ablation_for_linear_model(windows):
    fa = feature_ablation(OnlyFeature2(), windows, NAMES).set_index("feature").loc[NAMES]
    ig = integrated_gradients(OnlyFeature2(), windows, NAMES, n_steps=8)
    assert ig.attrs["max_abs_delta"] < 1e-5
    ig = ig.set_index("feature").loc[NAMES]
    assert_allclose(ig[["mean", "abs_mean"]].to_numpy(), fa[["mean", "abs_mean"]].to_numpy(), atol=1e-5)


def test_ig_completeness_nonlinear(windows):
    "Sum over features of IG = f(x) - f(0) (on the mean, exactly for the signed attributions)."
    model = Smooth()
    ig = integrated_gradients(model, windows, NAMES, n_steps=64)
    with torch.no_grad():
        gap = (model(windows)[:, -1] - model(torch.zeros_like(windows))[:, -1]).double().mean()
    assert_allclose(ig["mean"].sum(), float(gap), atol=1e-3)
    assert ig.attrs["max_abs_delta"] < 1e-2


def test_ablation_of_an_unused_feature_in_a_transformer_is_zero(windows):
    model = tiny_transformer("dot")
    with torch.no_grad():
        model.inp.weight[:, 0] = 0.0                                             # feature 0 never enters
    model.train()
    t = feature_ablation(model, windows, NAMES, batch_size=10).set_index("feature")
    assert t.loc["f0", "abs_mean"] < 1e-6
    assert (t.loc[["f1", "f2", "f3"], "abs_mean"] > 1e-4).all()
    assert model.training                                                        # mode restored


def test_lstm_is_explained_too(windows):
    torch.manual_seed(0)
    t = feature_ablation(LSTMRegressor(F, hidden=8, n_layers=1), windows, NAMES)
    assert list(t.columns) == ["feature", "mean", "abs_mean", "rank"]
    assert sorted(t.feature) == NAMES and t["rank"].tolist() == [1, 2, 3, 4]
    assert (t.abs_mean.diff().dropna() <= 0).all()


@pytest.mark.parametrize("bad, msg", [
    (lambda w: w[0], "(N, L, F)"),
    (lambda w: w[:, :, :3], "feature names"),
    (lambda w: torch.where(torch.arange(F) == 1, float("nan"), w), "NaN"),
])
def test_bad_windows_rejected(windows, bad, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        feature_ablation(OnlyFeature2(), bad(windows), NAMES)


def test_bad_baseline_rejected(windows):
    with pytest.raises(ValueError, match="baseline"):
        feature_ablation(OnlyFeature2(), windows, NAMES, baseline="median")


# --- rankings, Table 5, families ------------------------------------------------------------------------

def table(values):
    return importance_table(np.array([values], dtype=float), NAMES)


def test_compare_rankings_known():
    a, b = table([4, 3, 2, 1]), table([1, 2, 3, 4])
    c = compare_rankings(a, b, top=2)
    assert c["spearman"] == pytest.approx(-1.0)
    assert (c["top_a"], c["top_b"]) == (["f0", "f1"], ["f3", "f2"])
    assert (c["only_a"], c["only_b"], c["agree"]) == (["f0", "f1"], ["f3", "f2"], False)
    same = compare_rankings(a, table([8, 6, 4, 2]), top=3)
    assert same["spearman"] == pytest.approx(1.0) and same["agree"] and same["only_a"] == []
    swap = compare_rankings(a, table([3, 4, 2, 1]), top=2)
    assert swap["spearman"] == pytest.approx(0.8) and swap["agree"]              # 1 - 6*2/(4*15)


def test_compare_rankings_needs_same_features():
    with pytest.raises(ValueError, match="different features"):
        compare_rankings(table([1, 2, 3, 4]), table([1, 2, 3, 4]).replace({"f0": "zz"}))


def test_top_features_table5_format():
    t5 = top_features({"LSTM": table([1, 5, 3, 2]), "Synthesizer R": table([9, 1, 1, 4])}, k=3)
    assert list(t5.columns) == ["model", "top1", "top1_score", "top2", "top2_score", "top3", "top3_score"]
    assert t5.iloc[0][["top1", "top2", "top3"]].tolist() == ["f1", "f2", "f3"]
    assert t5.iloc[0][["top1_score", "top2_score", "top3_score"]].tolist() == [5.0, 3.0, 2.0]
    assert t5.iloc[1][["model", "top1", "top2"]].tolist() == ["Synthesizer R", "f0", "f3"]


def test_group_importance_sums_by_family(root):
    fmap = pd.read_csv(root / "reports/tables/herremans/feature_map.csv")
    inc = fmap[fmap.include.astype(bool)]
    t = importance_table(np.arange(1, len(inc) + 1, dtype=float)[None] * np.where(np.arange(len(inc)) % 2, -1, 1),
                         list(inc.name))
    g = group_importance(t, fmap).set_index("category")
    cat = dict(zip(fmap.name, fmap.category))
    for c in g.index:
        members = [f for f in t.feature if cat[f] == c]
        rows = t.set_index("feature").loc[members]
        assert g.loc[c, "abs_mean"] == pytest.approx(rows.abs_mean.sum())
        assert g.loc[c, "mean"] == pytest.approx(rows["mean"].sum())
        assert g.loc[c, "n_features"] == len(members)
    assert (g.abs_mean.diff().dropna() <= 0).all()                               # largest family first
    assert set(g.index) <= {"price_technical", "exchange_flows", "miner_flows", "derivatives", "valuation", "sentiment"}
    assert g["share"].sum() == pytest.approx(1.0)
    assert g.n_features.sum() == len(inc)


def test_group_importance_small_and_unknown():
    g = group_importance(table([1, -2, 3, 4]), {"f0": "a", "f1": "a", "f2": "b", "f3": "b"}).set_index("category")
    assert g.loc["a", "mean"] == -1 and g.loc["a", "abs_mean"] == 3
    assert g.loc["b", "mean"] == 7 and g.index[0] == "b"
    with pytest.raises(ValueError, match="without a category"):
        group_importance(table([1, 2, 3, 4]), {"f0": "a"})


# --- the stage's tables over seeds ---------------------------------------------------------------------

def per_seed_rows(model, seed, abs_means, means=None):
    t = table(abs_means if means is None else means)                      # importance_table of one window
    t["abs_mean"] = t.feature.map(dict(zip(NAMES, abs_means)))
    return t.assign(model=model, seed=seed)


def test_over_seeds_by_hand():
    rows = pd.concat([per_seed_rows("z", 0, [4, 1, 2, 0], [4, -1, 2, 0]), per_seed_rows("z", 1, [2, 3, 2, 1], [-2, -3, 2, 1]),
                      per_seed_rows("a", 0, [1, 2, 3, 4])], ignore_index=True)
    g = over_seeds(rows, "feature_ablation")
    assert g.columns.tolist() == ["method", "model", "feature", "mean", "abs_mean", "rank"]
    assert (g.method == "feature_ablation").all() and g.model.tolist() == ["a"] * 4 + ["z"] * 4   # models sorted, then rank
    z = g[g.model == "z"].set_index("feature")
    # abs means over the two seeds: f0 3, f1 2, f2 2, f3 0.5; signed: f0 1, f1 -2, f2 2, f3 0.5
    assert z.abs_mean.to_dict() == {"f0": 3.0, "f1": 2.0, "f2": 2.0, "f3": 0.5}
    assert z["mean"].to_dict() == {"f0": 1.0, "f1": -2.0, "f2": 2.0, "f3": 0.5}
    # f1 and f2 tie at 2: f2 ranks first, as it came first (seed 0 ranked it above f1)
    assert z["rank"].to_dict() == {"f0": 1, "f2": 2, "f1": 3, "f3": 4} and z.index.tolist() == ["f0", "f2", "f1", "f3"]
    assert g[g.model == "a"].feature.tolist() == ["f3", "f2", "f1", "f0"]
    with pytest.raises(ValueError, match="missing column"):
        over_seeds(rows.drop(columns="model"), "x")


def test_stage_tables_from_two_seeds(windows):
    "Two 'seeds' of a model reading only f2 (weights 3 and 1): f2 gets the mean of 3|x| and |x|, the rest exactly 0."
    seeds = {0: OnlyFeature2(), 1: OnlyFeature2()}
    with torch.no_grad(): seeds[1].w.fill_(1.0)
    abl = pd.concat([feature_ablation(m, windows, NAMES).assign(model="lin", seed=s) for s, m in seeds.items()])
    ig = pd.concat([integrated_gradients(m, windows, NAMES).assign(model="lin", seed=s) for s, m in seeds.items()])
    abl_m, ig_m = over_seeds(abl, "feature_ablation"), over_seeds(ig, "integrated_gradients")
    x = windows[:, -1, 2].double().abs().mean().item()
    assert abl_m.set_index("feature").loc["f2", "abs_mean"] == pytest.approx((3 * x + x) / 2, rel=1e-6)
    labels = {"lin": "Linear"}
    fi = feature_importance_table([abl_m, ig_m], labels)
    assert fi.columns.tolist() == ["method", "label", "model", "feature", "mean", "abs_mean", "rank"] and len(fi) == 8
    t5 = table5(abl_m, ["lin"], labels)
    assert t5.columns.tolist() == ["model", "label", "top1", "top1_score", "top2", "top2_score", "top3", "top3_score"]
    assert (t5.top1.iloc[0], t5.top2_score.iloc[0], t5.label.iloc[0]) == ("f2", 0.0, "Linear")
    cc = explain_crosscheck(abl_m, ig_m, ["lin"], labels).iloc[0]          # a linear model: both methods agree
    assert cc.top3_agree and cc.spearman == pytest.approx(1.0) and cc.only_ablation == cc.only_ig == ""
    fam = importance_by_family(abl_m, {"f0": "valuation", "f1": "valuation", "f2": "sentiment", "f3": "derivatives"}, labels)
    assert fam.columns.tolist() == ["label", "model", "category", "mean", "abs_mean", "n_features", "share"]
    assert fam.category.tolist()[0] == "sentiment" and fam.share.iloc[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no display label"):
        table5(abl_m, ["lin"], {})
    with pytest.raises(ValueError, match="no importance rows for model 'lstm'"):
        explain_crosscheck(abl_m, ig_m, ["lin", "lstm"], labels)
    fig = plot_importance_heatmap(abl_m, ["lin"], labels)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Linear"]
    import matplotlib.pyplot as plt
    plt.close("all")


# --- attention ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_attention_by_lag_is_a_distribution_over_nonnegative_lags(variant, windows):
    df = attention_by_lag(tiny_transformer(variant), windows, batch_size=7)
    assert list(df.columns) == ["layer", "head", "lag", "weight"]
    assert len(df) == 2 * 2 * L and df.lag.min() == 0 and df.lag.max() == L - 1
    assert_allclose(df.groupby(["layer", "head"]).weight.sum(), 1.0, atol=1e-6)
    assert (df.weight >= 0).all()


def test_attention_by_lag_by_hand(windows):
    "Dot attention, one layer: mean over windows of (1/L) sum_t A[t, t-k], from attention_maps directly."
    model = tiny_transformer("dot", n_layers=1).eval()
    with torch.no_grad():
        A = model.attention_maps(windows)[0].double()                            # (N, nh, L, L)
    hand = np.array([[sum(A[:, h, t, t - k].mean().item() for t in range(k, L)) / L for k in range(L)]
                     for h in range(2)])
    df = attention_by_lag(model, windows)
    assert_allclose(df.weight.to_numpy(), hand.ravel(), atol=1e-6)


def test_attention_by_lag_needs_attention(windows):
    with pytest.raises(TypeError, match="no attention maps"):
        attention_by_lag(LSTMRegressor(F, hidden=8), windows)


def test_synthetic_matrices_random_exact():
    model = tiny_transformer("random")
    with torch.no_grad():
        for blk in model.blocks: blk.attn.r.normal_()
    mats = synthetic_matrices(model)
    assert len(mats) == 2
    for blk, m in zip(model.blocks, mats):
        want = torch.softmax(blk.attn.r.detach().double() + causal_mask(L, dtype=torch.float64), -1).numpy()
        assert m.shape == (2, L, L)
        assert_allclose(m, want, rtol=0, atol=1e-12)
        assert np.triu(m, 1).max() == 0 and m.sum(-1) == pytest.approx(np.ones((2, L)))


def test_synthetic_matrices_factorized_random_and_random_dot():
    fr = tiny_transformer("factorized_random")
    a = fr.blocks[1].attn
    want = torch.softmax((a.r1 @ a.r2.transpose(-1, -2)).detach().double()          # (nh, L, L)
                         + causal_mask(L, dtype=torch.float64), -1).numpy()
    assert_allclose(synthetic_matrices(fr)[1], want, atol=1e-7)
    rd = tiny_transformer("random_dot")
    a = rd.blocks[0].attn
    with torch.no_grad(): a.alpha.fill_(2.0)
    scale = torch.nn.functional.softplus(torch.tensor(2.0, dtype=torch.float64))
    want = torch.softmax(scale * a.r.detach().double() + causal_mask(L, dtype=torch.float64), -1).numpy()
    assert_allclose(synthetic_matrices(rd)[0], want, atol=1e-6)


def test_synthetic_matrices_dense_and_dot(windows):
    assert synthetic_matrices(tiny_transformer("dot")) is None
    dense = tiny_transformer("dense", n_layers=1).eval()
    assert synthetic_matrices(dense) is None                                     # input dependent: needs windows
    mats = synthetic_matrices(dense, windows)
    with torch.no_grad():
        A = dense.attention_maps(windows)[0].double().mean(0).numpy()            # dense only: A = softmax(S_syn + M)
    assert_allclose(mats[0], A, atol=1e-6)


# --- figures --------------------------------------------------------------------------------------------

def test_plots_return_figures(windows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    model = tiny_transformer("random")
    f1 = plot_importance(feature_ablation(OnlyFeature2(), windows, NAMES))
    assert [t.get_text() for t in f1.axes[0].get_yticklabels()][-1] == "f2"     # most important on top
    f2 = plot_attention_by_lag(attention_by_lag(model, windows))
    assert len(f2.axes) == 2 and len(f2.axes[0].lines) == 2
    f3 = plot_synthetic_matrices(synthetic_matrices(model))
    assert len(f3.axes) == 2 * 2 + 1
    with pytest.raises(ValueError, match="no synthetic"):
        plot_synthetic_matrices(None)
    plt.close("all")


# --- windows --------------------------------------------------------------------------------------------

def test_explain_windows_match_the_scaled_split():
    from volnb.explain import explain_windows
    from volnb.features import fit_scaler
    idx = pd.date_range("2021-01-01", periods=30, freq="D", tz="UTC", name="date")
    rng = np.random.default_rng(0)
    feats = pd.DataFrame(rng.normal(size=(30, F)), index=idx, columns=NAMES)       # synthetic features
    split = pd.Series(["train"] * 20 + ["validation"] * 5 + ["test"] * 5, index=idx)
    market = pd.DataFrame({"target": rng.normal(size=30), "split": split})
    scaler = fit_scaler(feats, split.eq("train").to_numpy())
    xs, ts = explain_windows(feats, market, scaler, window=4, split="test")
    assert xs.shape == (5, 4, F) and list(ts) == list(idx[25:])
    scaled = (feats - feats.iloc[:20].mean()) / feats.iloc[:20].std(ddof=0)
    assert_allclose(xs[-1].numpy(), scaled.iloc[26:30].to_numpy(), rtol=1e-5, atol=1e-6)
    assert_allclose(xs[0].numpy(), scaled.iloc[22:26].to_numpy(), rtol=1e-5, atol=1e-6)
