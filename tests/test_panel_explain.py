"Unit tests of volnb.panel_explain (attention by lag, feature ablation by category and by patch, regimes, Table 3)."
import numpy as np
import pandas as pd
import pytest
import torch

from volnb.panel_explain import (PAPER_TABLE3, ablation_attributions, ablation_shares, attention_by_lag, attention_input_share,
                                 attention_summaries, category_ids, category_mask, explain_settings, group_ablation,
                                 importance_by_regime, join_regimes, lag_agreement, load_block_model, output_targets,
                                 patch_lags, patch_mask, peak_regimes, sample_ends, table3)
from volnb.panel_models import BlockData, FeatureScaler, PanelForecaster, build_panel_model


class OnlyGroup(torch.nn.Module):
    "Outputs (B, 1, 3) that read the features `cols` only: a direction logit 2 * sum of the last hour, a log variance mean."
    def __init__(self, cols):
        super().__init__(); self.cols = list(cols); self.dummy = torch.nn.Parameter(torch.zeros(1))
    def forward(self, x, static):
        z = x[:, :, self.cols]
        return torch.stack([2 * z[:, -1].sum(-1), z.mean((1, 2)), torch.zeros(len(x))], -1)[:, None, :] + 0 * self.dummy


NAMES = ["ret_1h", "vol", "rv", "hour_sin"]
GROUPS = {"recent_returns": ["ret_1h"], "volume": ["vol"], "realised_volatility": ["rv"], "time_of_day": ["hour_sin"]}


def small_transformer(seed=0, window=12, patch=4, n_features=4):
    torch.manual_seed(seed)
    return PanelForecaster(n_features, 3, 2, 4, n_horizons=2, n_quantiles=3, encoder="transformer", window=window, d_model=8,
                           n_heads=2, n_layers=2, patch=patch).eval()


def test_patch_lags_by_hand():
    lags = patch_lags(21, 8)
    assert lags.loc[20, ["lag_lo", "lag_hi"]].tolist() == [0, 7]          # the forecasting position's own patch
    assert lags.loc[19, ["lag_lo", "lag_hi"]].tolist() == [8, 15]
    assert lags.loc[0, ["lag_lo", "lag_hi"]].tolist() == [160, 167]        # the window's first 8 hours
    assert patch_lags(3, 1).lag_lo.tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="n_patches"):
        patch_lags(0, 8)


def test_masks_by_hand():
    assert category_ids(NAMES, GROUPS).tolist() == [0, 1, 2, 3]
    assert category_mask(NAMES, GROUPS, 2).tolist() == [[[0, 1, 2, 3], [0, 1, 2, 3]]]
    assert patch_mask(6, 2, 3).tolist() == [[[0, 0], [0, 0], [0, 0], [1, 1], [1, 1], [1, 1]]]
    with pytest.raises(ValueError, match="in no group: extra"):
        category_ids(NAMES + ["extra"], GROUPS)
    with pytest.raises(ValueError, match="in two groups"):
        category_ids(NAMES, {**GROUPS, "dup": ["rv"]})


@pytest.mark.parametrize("ablate", ["captum", "grouped"])
def test_model_of_one_group_gets_all_the_share(ablate):
    torch.manual_seed(2)
    x, st = torch.randn(9, 8, 4), torch.zeros(9, 3, dtype=torch.long)
    net = OnlyGroup([2])                                                      # realised volatility only
    fn = ablation_attributions if ablate == "captum" else group_ablation
    attr = fn(net, x, st, category_mask(NAMES, GROUPS, 8), output_targets([1]), batch_size=4)
    assert attr.shape == (9, 4, 2)
    np.testing.assert_allclose(attr[:, 2, 0], (2 * x[:, -1, 2]).double().numpy(), atol=1e-5)   # a_g = f(x) - f(0) = f(x)
    np.testing.assert_allclose(attr[:, 2, 1], x[:, :, 2].mean(1).double().numpy(), atol=1e-6)
    sh = ablation_shares(attr, list(GROUPS), ["dir_1h", "logvar_1h"])
    np.testing.assert_allclose(sh[sh.group == "realised_volatility"].share, [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(sh[sh.group != "realised_volatility"].share, 0.0, atol=1e-12)
    # by patch (2 of 4 hours): the direction logit reads the last hour only
    lag = fn(net, x, st, patch_mask(8, 4, 4), output_targets([1]))
    np.testing.assert_allclose(lag[:, 0, 0], 0.0, atol=1e-7)


def test_grouped_ablation_equals_captum_on_a_transformer():
    net = small_transformer()
    x, st = torch.randn(6, 12, 4), torch.tensor([[1, 0, 2]] * 6)
    for mask in (category_mask(NAMES, GROUPS, 12), patch_mask(12, 4, 4)):
        ref = ablation_attributions(net, x, st, mask, output_targets([1, 4]), batch_size=4)
        np.testing.assert_allclose(group_ablation(net, x, st, mask, output_targets([1, 4]), batch_size=5), ref, atol=1e-5)
        assert np.abs(ref).max() > 1e-4                                        # not vacuous


def test_attention_rows_and_rollout_sum_to_one():
    net = small_transformer()
    x, st = torch.randn(7, 12, 4), torch.tensor([[1, 0, 2]] * 7)
    rows, roll = attention_summaries(net, x, st, batch_size=3)
    assert rows.shape == (7, 2, 2, 3) and roll.shape == (7, 3)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(roll.sum(-1), 1.0, atol=1e-6)
    table = attention_by_lag(rows, roll, 4)
    assert table.lag_lo.tolist() == [8, 4, 0]
    np.testing.assert_allclose(table.filter(like="attention_").sum().to_numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(table.attention_layer1, rows[:, 0].mean((0, 1)), atol=1e-12)


def test_rollout_by_hand():
    "Both layers put all of every row's weight on position 0: R = (A/2 + I/2)^2, last row (3/4, 1/4)."
    class Fixed(torch.nn.Module):
        def attention_maps(self, x, static):
            a = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).expand(len(x), 1, 2, 2)
            return [a, a]
    rows, roll = attention_summaries(Fixed(), torch.zeros(2, 4, 1), torch.zeros(2, 3, dtype=torch.long))
    np.testing.assert_allclose(roll, [[0.75, 0.25]] * 2, atol=1e-12)
    np.testing.assert_allclose(rows[:, :, 0], [[[1.0, 0.0]] * 2] * 2)


def test_attention_rows_not_summing_to_one_are_an_error():
    class Bad(torch.nn.Module):
        def attention_maps(self, x, static): return [torch.full((len(x), 1, 2, 2), 0.3)]
    with pytest.raises(ValueError, match="do not sum to 1"):
        attention_summaries(Bad(), torch.zeros(2, 4, 1), torch.zeros(2, 3, dtype=torch.long))


def test_attention_input_share_follows_the_projection():
    net = small_transformer()
    with torch.no_grad():
        net.inp.weight.zero_(); net.inp.weight[:, [1, 5, 9, 13]] = 1.0       # feature 1 (volume) at each of 4 hours
    x, st = torch.randn(3, 12, 4), torch.tensor([[1, 0, 2]] * 3)
    rows, _ = attention_summaries(net, x, st)
    s = attention_input_share(net, x, st, category_ids(NAMES, GROUPS), rows[:, 0].mean(1))
    np.testing.assert_allclose(s, np.tile([0.0, 1.0, 0.0, 0.0], (3, 1)), atol=1e-12)


def test_lag_agreement_signs():
    by_lag = patch_lags(4, 2).assign(attention_layer1=[0.1, 0.2, 0.3, 0.4])
    up = pd.DataFrame({"target": "dir_1h", "group": [0, 1, 2, 3], "share": [0.05, 0.15, 0.3, 0.5]})
    a = lag_agreement(by_lag, up, top=2).iloc[0]
    assert a.spearman_rho == pytest.approx(1.0) and a.top2_overlap == 2 and a.ablation_top2 == "0-1 h, 2-3 h"
    down = up.assign(share=up.share[::-1].to_numpy())
    b = lag_agreement(by_lag, down, top=2).iloc[0]
    assert b.spearman_rho == pytest.approx(-1.0) and b.top2_overlap == 0


def test_regimes_join_and_breakdown():
    keys = pd.DataFrame({"token": ["A", "A", "B", "B"],
                         "timestamp": pd.to_datetime(["2023-01-01 00:00", "2023-01-01 01:00"] * 2)})
    reg = pd.DataFrame({"token": ["A", "A", "B"], "timestamp": pd.to_datetime(["2023-01-01 00:00", "2023-01-01 01:00", "2023-01-01 01:00"]),
                        "regime": ["euphoria", "euphoria", "capitulation"]})
    r = join_regimes(keys, reg)
    assert r.tolist() == ["euphoria", "euphoria", "unassigned", "capitulation"]
    attr = np.zeros((4, 2, 1)); attr[:2, 0, 0] = [1.0, 3.0]; attr[2:, 1, 0] = [2.0, 2.0]; attr[1, 1, 0] = 1.0
    rows = np.zeros((4, 2, 1, 2)); rows[..., 0] = 1.0                        # last layer: all on the oldest patch (lags 8-15)
    t = importance_by_regime(r, attr, ["a", "b"], ["dir_1h"], rows, 8).set_index("regime")
    assert t.loc["euphoria", "n"] == 2
    assert t.loc["euphoria", "a"] == pytest.approx(2.0 / 2.5)                  # mean |a| 2 vs 0.5
    assert t.loc["capitulation", "b"] == pytest.approx(1.0)
    assert t.loc["euphoria", "attention_latest_patch"] == pytest.approx(0.0)
    assert t.loc["euphoria", "attention_mean_lag_h"] == pytest.approx(11.5)
    peaks = peak_regimes(t.reset_index(), ["a", "b"], min_samples=1)
    assert peaks.to_dict() == {"a": "euphoria", "b": "capitulation"}         # "unassigned" never peaks
    with pytest.raises(ValueError, match="duplicate"):
        join_regimes(keys, pd.concat([reg, reg]))


def test_table3_beside_the_paper():
    shares = pd.DataFrame({"target": "dir_1h", "group": PAPER_TABLE3.category.to_numpy(), "share": np.arange(1, 9) / 36})
    t = table3(shares)
    assert t.category.tolist() == PAPER_TABLE3.category.tolist()             # the paper's order
    assert t.ablation_rank.tolist() == list(range(8, 0, -1))                  # the reverse of the paper's ranks
    assert t.paper_rank.tolist() == list(range(1, 9))
    assert t.ablation_share_pct_mean.sum() == pytest.approx(100.0)
    assert t.paper_attention_pct.sum() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="sentiment"):
        table3(shares[shares.group != "sentiment"])


def test_settings_and_sampling():
    assert explain_settings(None)["samples"] == 10000
    assert explain_settings({"explain": {"block": 3}})["block"] == 3
    with pytest.raises(ValueError, match="unknown explain setting"):
        explain_settings({"explain": {"blocks": 3}})
    s = sample_ends(np.arange(100, 200), 10, seed=1)
    assert len(s) == 10 and len(set(s)) == 10 and (np.diff(s) > 0).all()
    assert np.array_equal(s, sample_ends(np.arange(100, 200), 10, seed=1))
    assert sample_ends(np.array([5, 3]), 10).tolist() == [3, 5]


def test_load_block_model_checks_the_scaler(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 4))
    scaler = FeatureScaler.fit(X, NAMES)
    data = BlockData(torch.zeros(50, 4), torch.zeros(50, 3, dtype=torch.long), torch.zeros(50, 2), torch.zeros(50, 2),
                     np.array([20]), np.array([30]), np.array([40]), scaler, ["A", "B"], ["c"], ["A", "B"], 3)
    cfg = {"encoder": "transformer", "d_model": 8, "n_heads": 2, "n_layers": 1, "patch": 4}
    net = build_panel_model(cfg, data, 12, 3)
    bundle = {"state_dict": net.state_dict(), "model": cfg, "window": 12, "quantiles": [0.1, 0.5, 0.9],
              "scaler": scaler.to_dict(), "tokens": ["A", "B"], "categories": ["c"]}
    torch.save(bundle, tmp_path / "model.pt")
    loaded, _ = load_block_model(tmp_path / "model.pt", data)
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values()): assert torch.equal(a, b)
    bundle["scaler"] = {**scaler.to_dict(), "center": [float(c) + 1 for c in scaler.center]}
    torch.save(bundle, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="scaler differs"):
        load_block_model(tmp_path / "model.pt", data)
