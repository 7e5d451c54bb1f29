"""volnb.paper: the transcriptions of the papers' numbers (loaders and their errors), the paper checked against itself,
the verdict rules on inputs small enough to check by hand, and the ledgers built from them."""
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from volnb.core import DataValidationError
from volnb.paper import (MODELS, NOT_REPRODUCED, NOT_TESTABLE, NOT_YET, REPRODUCED, SYNTHESIZERS, VERDICTS, Claim, Decision,
                         all_beat, all_within, auc_interval, beats, claim, claims_frame, deck_claims, deck_consistency,
                         fractions_matching, hanley_mcneil_se, herremans_claims, herremans_consistency, in_confidence_set,
                         intervals_overlap, load_deck, load_herremans, matches_printed, not_testable, paper_as_ours_table3,
                         paper_dir, parse_number, printed, published_rmse, printed_decimals, printed_interval, read_transcription, recurs,
                         seed_interval, share_above, side_by_side_table3, top_k_match, verdict_counts, within_tolerance)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def P():
    return load_herremans(ROOT)


@pytest.fixture
def copy_root(tmp_path):
    "A copy of conf/paper under a temporary root, to spoil one cell at a time."
    shutil.copytree(paper_dir(ROOT), tmp_path / "conf" / "paper")
    def spoil(name, old, new, count=1):
        f = tmp_path / "conf" / "paper" / f"{name}.csv"
        text = f.read_text()
        assert old in text
        f.write_text(text.replace(old, new, count))
        return f
    return tmp_path, spoil


# ---------------------------------------------------------------- printed numbers

def test_parse_number_as_printed():
    assert parse_number("2,090") == 2090 and parse_number("52,787") == 52787 and parse_number("-0.006") == -0.006
    assert math.isnan(parse_number(""))
    for bad in ("2,09", "1,0000", "0..834", "abc"):
        with pytest.raises(ValueError): parse_number(bad)


def test_printed_precision():
    assert printed_decimals("0.370") == 3 and printed_decimals("60") == 0 and printed_decimals("2,090") == 0
    lo, hi = printed_interval("0.370")
    assert math.isclose(lo, 0.3695) and math.isclose(hi, 0.3705)
    assert matches_printed(60 / 159, "0.377") and not matches_printed(60 / 159, "0.374")   # Synthesizer R: 2*30/(60+69+30)
    assert matches_printed(0.4625, "0.463") and matches_printed(0.4625, "0.462")          # a half-way value rounds either way


# ---------------------------------------------------------------- the transcriptions

def test_table3_transcribed(P):
    t3 = P["table3"]
    assert list(t3.model) == list(MODELS)
    fd = t3.set_index("model").loc["synth_factorized_dense"]
    assert (fd.rmse, fd.f1, fd.precision, fd.recall, fd.tp, fd.fn, fd.tn, fd.fp) == (0.101, 0.463, 0.370, 0.617, 37, 23, 191, 63)
    assert printed(t3, "precision", {"model": "synth_factorized_dense"}) == "0.370"
    assert set(t3.source) == {"Table 3"} and t3.source_row.iloc[0] == "GARCH(1,1)"


def test_every_transcription_loads_with_sources(P):
    assert set(P) >= {"table1_grid", "table2_best", "table3", "table4", "table5", "table6", "splits", "text", "appendix_b", "appendix_c"}
    for name, df in P.items():
        assert (df.source.str.strip() != "").all(), name
    assert len(P["table4"]) == 27 and len(P["table6"]) == 43 and len(P["appendix_b"]) == 66
    assert set(P["appendix_c"].stage) == {"before", "after"} and (P["appendix_c"].groupby("stage").size() == 65).all()
    deck = load_deck(ROOT)
    assert deck.number["best_pr_auc"] == 0.8917 and deck.number["samples"] == 1140 and deck.at["selected", "value"] == "logreg"


@pytest.mark.parametrize("name, old, new, column, row", [
    ("herremans/table3", "0.303", "0.3o3", "rmse", 2),                     # a typo in a number
    ("herremans/table3", "37,23,191,63", "37.5,23,191,63", "tp", 8),       # a fractional count
    ("herremans/table4", "lstm,1.3,1,0", "lstm,1.3,-1,0", "tp", 5),         # a negative count
    ("herremans/table3", "lstm,0.095", "lsmt,0.095", "model", 3),           # an unknown model
    ("herremans/table5", "Table 5,V,Feature 1 / Score", ",V,Feature 1 / Score", "source", 2),   # a row without its source
])
def test_bad_cells_are_named(copy_root, name, old, new, column, row):
    root, spoil = copy_root
    f = spoil(name, old, new)
    with pytest.raises(DataValidationError) as e:
        read_transcription(name, root)
    assert e.value.column == column and e.value.row == row and Path(e.value.file) == f
    assert str(f) in str(e.value)


def test_missing_column_and_duplicate_key(copy_root):
    root, spoil = copy_root
    spoil("herremans/table3", "model,rmse,", "model,rmse_x,")
    with pytest.raises(DataValidationError, match=r"missing columns \['rmse'\]"):
        read_transcription("herremans/table3", root)
    spoil("herremans/table4", "garch,1.2,0,7", "garch,1.3,0,7")
    with pytest.raises(DataValidationError, match="duplicate key"):
        read_transcription("herremans/table4", root)
    with pytest.raises(ValueError, match="unknown transcription"):
        read_transcription("herremans/table9", root)


# ---------------------------------------------------------------- the paper against itself

def test_table3_recomputed_from_counts(P):
    C = herremans_consistency(P)
    f1 = C[C.check.str.startswith("f1 from counts")].set_index("item")
    assert list(f1.index[~f1.consistent]) == ["Synthesizer (R)"]            # 0.374 printed, 60/159 = 0.3774
    assert f1.at["Synthesizer (R)", "recomputed"] == "0.3774"
    assert C[C.check.str.startswith(("precision from counts", "recall from counts"))].consistent.all()
    same = C[C.check.str.contains("the same for every model")].set_index("check")
    assert same.at["TP+FN the same for every model", "recomputed"] == "60"
    assert same.at["TN+FP the same for every model", "recomputed"] == "254"
    assert same.consistent.all()


def test_paper_inconsistencies_found(P):
    C = herremans_consistency(P)
    bad = C[~C.consistent]
    assert "test spikes stated the same everywhere" in set(bad.check)          # 46 (5.1.1) vs 60
    spikes = C[C.check.str.startswith("train + validation + test spikes")].set_index("item")
    assert spikes.at["test = 46", "recomputed"] == "316" and not spikes.at["test = 46", "consistent"]
    assert spikes.at["test = 60", "consistent"]                                # 232 + 38 + 60 = 330
    rmse = C[C.check.str.contains("beats every baseline on RMSE")]
    assert not rmse.consistent.item()                                          # LSTM and V print 0.095
    assert C[C.check.str.contains("beats every baseline on F1")].consistent.item()
    orig = C[C.check.str.contains("'original' FD recall")]
    assert not orig.consistent.item() and orig.recomputed.item() == "0.617"
    assert set(C[C.check == "days = calendar days first..last (inclusive)"].consistent) == {True}


def test_deck_against_itself():
    D = deck_consistency(load_deck(ROOT)).set_index("check")
    assert D.at["F1 = harmonic mean of precision and recall", "consistent"]      # 2*.9434*.8772/1.8206 = 0.9091
    rec = D.loc["recall is a whole number of test positives out of the stated share of positives"]
    assert not rec.consistent and "57" in rec.recomputed                      # 87.72 % = 50/57; 43 % of 228 is 98


# ---------------------------------------------------------------- verdict rules

def test_within_tolerance():
    assert within_tolerance(0.10, 0.104, rel=0.05).verdict == REPRODUCED      # 0.004 <= 0.005
    assert within_tolerance(0.10, 0.106, rel=0.05).verdict == NOT_REPRODUCED  # 0.006 >  0.005
    assert within_tolerance(60, 61, abs_tol=1).verdict == REPRODUCED
    assert within_tolerance(0, 21).verdict == NOT_REPRODUCED and within_tolerance(0, 21).reason == "|21 - 0| = 21 > 0"
    assert within_tolerance(1.0, float("nan")).verdict == NOT_YET
    with pytest.raises(ValueError): within_tolerance(1.0, 1.0, rel=-1)
    with pytest.raises(ValueError): within_tolerance(float("nan"), 1.0)


def test_intervals_overlap():
    # 0.101 prints for [0.1005, 0.1015]; 0.11 ± 2*0.004 = [0.102, 0.118] misses it, 0.11 ± 2*0.005 = [0.100, 0.120] meets it
    assert intervals_overlap(printed_interval("0.101"), seed_interval(0.11, 0.004)).verdict == NOT_REPRODUCED
    assert intervals_overlap(printed_interval("0.101"), seed_interval(0.11, 0.005)).verdict == REPRODUCED
    assert seed_interval(0.3, float("nan")) == (0.3, 0.3)                      # one run: a point
    assert intervals_overlap((1, 2), (2, 3)).verdict == REPRODUCED             # touching closed intervals
    assert intervals_overlap((1, 2), (float("nan"), float("nan"))).verdict == NOT_YET
    with pytest.raises(ValueError): intervals_overlap((2, 1), (0, 3))


def test_orderings():
    assert beats(0.4, 0.3, True).verdict == REPRODUCED and beats(0.4, 0.3, False).verdict == NOT_REPRODUCED
    assert beats(0.3, 0.3, True).verdict == NOT_REPRODUCED                     # a tie is not a win
    assert beats(0.02, 0.03, False, p_value=0.01).verdict == REPRODUCED
    assert beats(0.02, 0.03, False, p_value=0.2).verdict == NOT_REPRODUCED     # lower, but not significantly
    assert beats(0.04, 0.03, False, p_value=0.01).verdict == NOT_REPRODUCED    # significantly worse
    d = all_beat([("FR", 0.41, "R", 0.37), ("FD", 0.44, "D", 0.45)], True)
    assert d.verdict == NOT_REPRODUCED and d.reason.startswith("1 of 2 pairs hold") and "FD 0.44 vs D 0.45" in d.reason
    assert all_beat([("a", 1, "b", 2)], False, [0.5]).verdict == NOT_REPRODUCED
    assert all_beat([("a", 1, "b", float("nan"))], False).verdict == NOT_YET
    with pytest.raises(ValueError): all_beat([], True)


def test_bounds_and_shares():
    assert all_within({"R": 0.374, "FD": 0.463}, lo=0.377).verdict == NOT_REPRODUCED
    assert all_within({"R": 0.38, "FD": 0.463}, lo=0.377).reason == "2 of 2 inside"
    assert all_within({"a": 0.15}, lo=0.05, hi=0.15, strict=False).verdict == REPRODUCED
    assert all_within({"a": 0.15}, lo=0.05, hi=0.15).verdict == NOT_REPRODUCED
    assert share_above({"a": True, "b": True, "c": False}).verdict == REPRODUCED           # 2/3 > 1/2
    assert share_above({"a": True, "b": False}).verdict == NOT_REPRODUCED                  # 1/2 is not more than half
    with pytest.raises(ValueError): all_within({"a": 1})


def test_confidence_set_and_features():
    mcs = pd.DataFrame({"loss": ["se"] * 3, "model": ["garch", "fd", "lstm"], "pvalue": [1.0, 0.05, 0.4],
                        "in_mcs": [True, False, True], "size": 0.1})
    assert in_confidence_set("lstm", mcs, "se").verdict == REPRODUCED
    d = in_confidence_set("fd", mcs, "se")
    assert d.verdict == NOT_REPRODUCED and "garch, lstm" in d.reason
    assert in_confidence_set("fd", mcs, "qlike").verdict == NOT_YET
    assert top_k_match(["HL_sprd", "volume"], ["volume", "HL_sprd", "high"]).verdict == REPRODUCED
    assert top_k_match(["volume", "exchange_inflow_total", "HL_sprd"], ["HL_sprd", "volume", "high"]).verdict == NOT_REPRODUCED
    tops = {"V": ["HL_sprd", "volume", "close"], "R": ["volume", "low", "high"], "D": ["close", "high", "low"]}
    assert recurs("volume", tops).verdict == REPRODUCED and recurs("close", tops, 3).verdict == NOT_REPRODUCED
    assert recurs("taker_buy_volume", tops, available=["volume"]).verdict == NOT_TESTABLE
    assert not_testable("why", yet=True).verdict == NOT_YET
    with pytest.raises(ValueError): not_testable("")
    with pytest.raises(ValueError): Decision("probably", "rule", "reason")


def test_auc_interval_by_hand():
    # A = 0.5, n1 = n0 = 2: Q1 = Q2 = 1/3, SE^2 = (1/4 + 1/12 + 1/12) / 4 = 5/48
    assert math.isclose(hanley_mcneil_se(0.5, 2, 2) ** 2, 5 / 48)
    # A = 0.8, n1 = 10, n0 = 20: Q1 = 0.8/1.2, Q2 = 1.28/1.8, SE^2 = (0.16 + 9*(2/3 - .64) + 19*(0.71111 - .64)) / 200
    se2 = (0.16 + 9 * (0.8 / 1.2 - 0.64) + 19 * (1.28 / 1.8 - 0.64)) / 200
    assert math.isclose(hanley_mcneil_se(0.8, 10, 20) ** 2, se2)
    lo, hi = auc_interval(0.99, 5, 5)
    assert hi == 1.0 and lo < 0.99
    with pytest.raises(ValueError): hanley_mcneil_se(1.2, 5, 5)
    assert fractions_matching("87.72", 60) == [(50, 57)]
    assert (1, 3) in fractions_matching("0.333", 3)


# ---------------------------------------------------------------- ledgers

def test_claims_carry_rule_verdicts_only():
    d = within_tolerance(0.101, 0.1755, rel=0.1)
    c = claim("x", "FD gets RMSE 0.101", "Section 5.3", "0.101", 0.17548, "clean", d)
    assert (c.verdict, c.rule, c.our_value) == (NOT_REPRODUCED, d.rule, "0.1755")
    with pytest.raises(TypeError): claim("x", "t", "s", 1, 1, "clean", "reproduced")
    led = claims_frame([c, claim("y", "t", "s", 1, 1, "clean", within_tolerance(1, 1))])
    cnt = verdict_counts(led).iloc[0]
    assert (cnt[REPRODUCED], cnt[NOT_REPRODUCED], cnt["total"]) == (1, 1, 2)
    with pytest.raises(ValueError, match="duplicate"): claims_frame([c, c])


def test_ledger_on_the_paper_itself(P):
    "Fed the paper's own Table 3, every Table 3 cell is reproduced; the text's claims its table contradicts are not."
    led = claims_frame(herremans_claims(P, {"table3": paper_as_ours_table3(P)}, "paper", ["table3"])).set_index("id")
    assert (led[led.index.str.startswith("T3.")].verdict == REPRODUCED).all() and len(led[led.index.str.startswith("T3.")]) == 18
    assert led.at["S.beat_baselines.rmse", "verdict"] == NOT_REPRODUCED       # LSTM 0.095 < every Synthesizer
    assert led.at["S.beat_baselines.f1", "verdict"] == REPRODUCED
    assert led.at["S.f1_floor", "verdict"] == NOT_REPRODUCED                  # R prints 0.374 < 0.377
    assert led.at["S.garch_no_spikes", "verdict"] == REPRODUCED and led.at["S.fd_f1", "verdict"] == REPRODUCED


def test_tests_group_by_hand(P):
    "Diebold-Mariano: a Synthesizer 'beats' GARCH only with a lower loss and p < 0.05."
    dm = pd.DataFrame({"model": list(SYNTHESIZERS), "reference": "garch", "loss": "se",
                       "mean_loss_model": [0.02] * 6, "mean_loss_reference": 0.03, "p_value": [0.01] * 5 + [0.2]})
    mcs = pd.DataFrame({"loss": ["se", "qlike"], "model": "synth_factorized_dense", "pvalue": [0.5, 0.01],
                        "in_mcs": [True, False], "size": 0.1})
    led = claims_frame(herremans_claims(P, {"diebold_mariano": dm, "model_confidence_set": mcs}, "clean", ["tests"])).set_index("id")
    assert led.at["S.beat_garch.dm_se", "verdict"] == NOT_REPRODUCED and "5 of 6" in led.at["S.beat_garch.dm_se", "reason"]
    assert led.at["S.fd_sota.mcs_se", "verdict"] == REPRODUCED and led.at["S.fd_sota.mcs_qlike", "verdict"] == NOT_REPRODUCED
    dm.loc[5, "p_value"] = 0.01
    led = claims_frame(herremans_claims(P, {"diebold_mariano": dm, "model_confidence_set": mcs}, "clean", ["tests"])).set_index("id")
    assert led.at["S.beat_garch.dm_se", "verdict"] == REPRODUCED
    with pytest.raises(KeyError, match="table6"): herremans_claims(P, {}, "clean", ["table6"])
    with pytest.raises(ValueError, match="unknown claim groups"): herremans_claims(P, {}, "clean", ["tabel3"])


def test_deck_ledger_by_hand():
    deck = load_deck(ROOT)
    models = pd.DataFrame({"model": ["logreg", "random_forest", "logreg", "random_forest"], "split": ["validation"] * 2 + ["test"] * 2,
                           "n": 1000, "positives": 10, "pr_auc": [0.5, 0.4, 0.45, 0.3], "roc_auc": 0.94,
                           "f1": 0.4, "precision": 0.5, "recall": 0.3})
    splits = pd.DataFrame({"split": ["validation", "test"], "rows": [1000, 1000], "positive_rate": [0.01, 0.01]})
    serving = pd.DataFrame({"server": ["volnb", "volnb", "bare"], "rows": [1, 100, 1], "concurrency": [1, 8, 1], "p95_ms": [0.7, 900.0, 0.3]})
    led = claims_frame(deck_claims(deck, models, splits, serving)).set_index("id")
    assert set(led.verdict) <= set(VERDICTS)
    assert led.at["SP.selected", "verdict"] == REPRODUCED                        # logreg 0.5 > random forest 0.4 on validation
    assert led.at["SP.pr_auc.logreg", "verdict"] == NOT_YET and "share of positives" in led.at["SP.pr_auc.logreg", "reason"]
    assert led.at["SP.roc_auc", "verdict"] == REPRODUCED                         # 0.9399 vs 0.94
    assert led.at["SP.p95_latency", "verdict"] == NOT_REPRODUCED                 # 900 ms > 800 ms
    assert led.at["SP.best_precision", "our_value"] == "50"                      # in %, as the deck prints it


def test_published_rmse_by_hand(P):
    "Mean |error| 0.15 on a target whose training range is [0.1, 1.6] is 0.1 on the published code's scale."
    assert math.isclose(published_rmse(0.15, 0.1, 1.6), 0.1)
    with pytest.raises(ValueError): published_rmse(0.1, 1.0, 1.0)
    # LSTM: 0.150 and 0.151 -> 0.1 and 0.10067, mean 0.10033 ± 2 sd = [0.0994, 0.1013], misses the paper's [0.0945, 0.0955];
    # Synthesizer D: 0.1545 twice -> 0.103 exactly, inside the paper's 0.103
    seeds = pd.DataFrame({"rule": "vol>=1", "model": ["lstm", "lstm", "synth_dense", "synth_dense"], "seed": [0, 1, 0, 1],
                          "mae": [0.150, 0.151, 0.1545, 0.1545]})
    led = claims_frame(herremans_claims(P, {"table3": paper_as_ours_table3(P), "table3_seeds": seeds,
                                            "target_range": (0.1, 1.6)}, "x", ["table3"])).set_index("id")
    row = led.loc["T3.rmse_published_definition.lstm"]
    assert row.our_value == "0.1003" and row.verdict == NOT_REPRODUCED
    assert led.loc["T3.rmse_published_definition.synth_dense", "verdict"] == REPRODUCED
    assert led.loc["T3.rmse_published_definition.transformer", "verdict"] == NOT_YET   # no seeds of ours


def test_side_by_side_table3_shape(P):
    ours = paper_as_ours_table3(P)
    t = side_by_side_table3(P, ours, None)
    assert len(t) == 9 * 8 and (t.diff_clean.abs() < 1e-12).all() and t.published_code_mean.isna().all()


def test_committed_ledgers_have_computed_verdicts():
    "The stage's ledgers (when written) use only the rule vocabulary, and every row names its rule."
    for f in (ROOT / "reports/tables/herremans/claims.csv", ROOT / "reports/tables/spike60s/claims.csv",
              ROOT / "reports/tables/multitoken/claims.csv"):
        assert f.exists(), f"{f} is missing: run `dvc repro` (herremans_claims, multitoken_claims) and commit the ledgers"
        led = pd.read_csv(f)
        assert list(led.columns) == [f for f in Claim.__dataclass_fields__]
        assert set(led.verdict) <= set(VERDICTS) and led.rule.notna().all() and led.reason.notna().all()


# ---------------------------------------------------------------- the multi-token paper (Vayyasi)

import numpy as np

from volnb.paper import (PEAK_REGIMES, VAYYASI_GROUPS, VERDICT_COLORS, in_set, load_vayyasi, plot_table3_dots, plot_verdict_grid,
                         read_vayyasi, vayyasi_claims, verdict_matrix, wilson_interval)


@pytest.fixture(scope="module")
def V():
    return load_vayyasi(ROOT)


def test_vayyasi_tables_2_3_match_the_library_constants(V):
    "conf/paper/vayyasi/table2.csv and table3.csv hold the numbers volnb.regimes and volnb.panel_explain carry."
    from volnb.panel_explain import PAPER_TABLE3
    from volnb.regimes import PAPER_TABLE2
    t2 = V["table2"].set_index("regime")
    lib = PAPER_TABLE2.set_index("regime").drop(index="all")
    assert list(t2.index) == list(lib.index)
    for ours, theirs in (("frequency", "paper_frequency"), ("transformer", "paper_transformer"), ("lstm", "paper_lstm"), ("garch", "paper_garch")):
        assert np.allclose(t2[ours] / 100, lib[theirs]), ours
    t3 = V["table3"].set_index("category")
    lib3 = PAPER_TABLE3.set_index("category")
    assert list(t3.index) == list(lib3.index) and np.allclose(t3.attention_pct, lib3.paper_attention_pct)
    assert (t3.peak == lib3.paper_peak).all() and (t3.label == lib3.paper_label).all()


def test_vayyasi_paper_against_itself(V):
    "Table 2's advantage is transformer - LSTM; Table 2's frequencies and Table 3's weights sum to 100; Table 1's improvement row."
    t2 = V["table2"]
    assert np.allclose(t2.transformer - t2.lstm, t2.advantage_vs_lstm)
    assert math.isclose(t2.frequency.sum(), 100) and math.isclose(V["table3"].attention_pct.sum(), 100)
    t1 = V["table1"].set_index(["paper_model", "metric", "horizon"]).value
    txt = V["text"].attrs["printed"].set_index("id").value
    assert matches_printed(100 * (1 - t1["Transformer (Generative)", "mape", ""] / t1["LSTM", "mape", ""]), txt["impr_mape"])   # 14.49 -> 14.5
    assert matches_printed(100 * (t1["Transformer (Generative)", "sharpe", "1h"] / t1["LSTM", "sharpe", "1h"] - 1), txt["impr_sharpe"])
    assert set(PEAK_REGIMES) < set(V["table3"].peak)


def test_read_vayyasi_names_a_bad_cell(copy_root):
    root, spoil = copy_root
    spoil("vayyasi/text", ",47,%", ",4 7,%")
    with pytest.raises(DataValidationError) as e:
        read_vayyasi("text", root)
    assert e.value.column == "value" and e.value.row == 10
    with pytest.raises(ValueError, match="unknown transcription"):
        read_vayyasi("table9", root)


def test_in_set_and_wilson_interval():
    assert in_set("euphoria", ("euphoria", "capitulation")).verdict == REPRODUCED
    assert in_set("range_bound", ("euphoria",)).verdict == NOT_REPRODUCED
    assert in_set(float("nan"), ("euphoria",)).verdict == NOT_YET
    with pytest.raises(ValueError): in_set("x", ())
    # 8 of 10, by hand: centre (0.8 + z²/20)/(1 + z²/10) = 0.7164, half-width 1.96·sqrt(0.016 + z²/400)/(1 + z²/10) = 0.2264
    lo, hi = wilson_interval(0.8, 10)
    assert math.isclose(lo, 0.49016, abs_tol=1e-4) and math.isclose(hi, 0.94332, abs_tol=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(float("nan"), 10))


def _tiny_table1():
    rows = [("direction", h, m, a, a - 0.004, a + 0.004, math.nan, math.nan, math.nan)
            for h in ("1h", "4h", "24h") for m, a in (("transformer", 0.6843), ("lstm", 0.55), ("majority", 0.50))]
    rows += [("volatility", h, m, math.nan, math.nan, math.nan, mp, mp - 0.01, mp + 0.01)
             for h in ("1h", "4h", "24h") for m, mp in (("transformer", 0.183), ("lstm", 0.214), ("garch", 0.276), ("ha", 0.342))]
    t1 = pd.DataFrame(rows, columns=["task", "horizon", "model", "accuracy", "accuracy_lo", "accuracy_hi", "mape", "mape_lo", "mape_hi"])
    ss = pd.DataFrame({"model": ["transformer", "lstm", "majority"], "fee": 0.001, "sharpe": [1.6, 0.9, 0.42]})
    return {"table1": t1, "strategy_sharpe": ss}


def test_vayyasi_table1_claims(V):
    led = claims_frame(vayyasi_claims(_tiny_table1(), V, groups=["table1"])).set_index("id")
    assert led.at["T1.accuracy.1h.transformer", "verdict"] == REPRODUCED       # [0.6803, 0.6883] holds 68.4 %
    assert led.at["T1.accuracy.1h.transformer", "our_value"] == "68.43"         # in the paper's unit
    assert led.at["T1.accuracy.1h.lstm", "verdict"] == NOT_REPRODUCED
    assert led.at["T1.accuracy.4h.garch", "verdict"] == NOT_TESTABLE and led.at["T1.sharpe.garch", "verdict"] == NOT_TESTABLE
    assert led.at["T1.sharpe.transformer", "verdict"] == REPRODUCED             # |1.6 - 1.67| <= 0.25
    assert led.at["T1.sharpe.lstm", "verdict"] == NOT_REPRODUCED                # |0.9 - 1.24| = 0.34 > 0.25
    # improvement on Sharpe: 1.6 / 0.9 - 1 = 78 % against 34.7 % ± 17.35 -> not reproduced; accuracy 1h: 68.43/55 - 1 = 24.4 % vs 10.9 ± 5.45
    assert led.at["T1.improvement.sharpe", "verdict"] == NOT_REPRODUCED and led.at["T1.improvement.accuracy.1h", "verdict"] == NOT_REPRODUCED
    assert led.at["S6.1.mape_order", "verdict"] == REPRODUCED and led.at["S6.1.best_direction.1h", "verdict"] == REPRODUCED
    assert set(led.verdict) <= set(VERDICTS) and led.rule.ne("").all()


def test_vayyasi_claims_errors(V):
    with pytest.raises(ValueError, match="unknown claim groups"):
        vayyasi_claims({}, V, groups=["table9"])
    with pytest.raises(KeyError, match="spillover_events"):
        vayyasi_claims({}, V, groups=["spillover"])
    assert "strategies" in VAYYASI_GROUPS


def test_vayyasi_strategy_that_never_trades_is_not_reproduced(V):
    base = dict(horizon="1h", rule="threshold", threshold=0.7, sides="long_short")
    rows = []
    for s, trades in (("transformer", 0), ("lstm", 40), ("garch", 40)):
        rows.append({**base, "strategy": s, "metric": "n_trades", "ours": trades, "lo": math.nan, "hi": math.nan})
        for metric, v in (("sharpe", 1.5), ("max_drawdown", 0.2), ("annual_return", 0.3), ("volatility", 0.3), ("win_rate", 0.6), ("win_loss_ratio", 1.5)):
            rows.append({**base, "strategy": s, "metric": metric, "ours": v if trades else math.nan, "lo": v - 0.5 if trades else math.nan,
                         "hi": v + 0.5 if trades else math.nan})
    for metric, v in (("sharpe", 0.7), ("max_drawdown", 0.5), ("annual_return", 0.47), ("volatility", 0.68)):
        rows.append(dict(strategy="buy_and_hold_btc", horizon=math.nan, rule="buy_and_hold", threshold=math.nan, sides="long_only",
                         metric=metric, ours=v, lo=v - 0.01, hi=v + 0.01))
    led = claims_frame(vayyasi_claims({"table5": pd.DataFrame(rows)}, V, groups=["strategies"])).set_index("id")
    assert led.at["T5.sharpe.transformer", "verdict"] == NOT_REPRODUCED and "trades taken" in led.at["T5.sharpe.transformer", "reason"]
    assert led.at["T5.sharpe.lstm", "verdict"] == REPRODUCED                    # [1.0, 2.0] holds 1.24
    assert led.at["T5.sharpe.buy_and_hold_btc", "verdict"] == REPRODUCED        # [0.69, 0.71] holds [0.685, 0.695]
    assert led.at["T5.volatility.buy_and_hold_btc", "verdict"] == REPRODUCED    # [0.67, 0.69] holds 68.2 %
    assert led.at["S6.8.sharpe_order", "verdict"] == NOT_REPRODUCED and led.at["S6.8.beats_hold", "verdict"] == NOT_REPRODUCED


def test_vayyasi_regime_and_system_claims(V):
    regs = list(V["table2"].regime)
    freq = [0.234, 0.187, 0.312, 0.083, 0.068, 0.116]
    regimes = pd.DataFrame({"regime": regs, "freq_test": [f + 0.04 for f in freq[:3]] + [f + 0.06 for f in freq[3:]]})
    acc_t, acc_l = [0.712, 0.60, 0.641, 0.694, 0.746, 0.618], [0.653, 0.621, 0.619, 0.587, 0.603, 0.574]
    t2 = pd.DataFrame({"regime": regs, "transformer_accuracy": acc_t, "transformer_lo": [a - 0.01 for a in acc_t],
                       "transformer_hi": [a + 0.01 for a in acc_t], "lstm_accuracy": acc_l, "lstm_lo": [a - 0.01 for a in acc_l],
                       "lstm_hi": [a + 0.01 for a in acc_l]})
    ks = pd.DataFrame({"k": [2, 6], "silhouette": [0.1, 0.2], "stability_ari": [0.9, 0.5]})
    led = claims_frame(vayyasi_claims({"regimes": regimes, "table2": t2, "regime_k_sweep": ks}, V, groups=["regimes"])).set_index("id")
    assert led.at["T2.frequency.low_vol_trending", "verdict"] == REPRODUCED and led.at["T2.frequency.euphoria", "verdict"] == NOT_REPRODUCED
    assert led.at["T2.accuracy.transformer.high_vol_trending", "verdict"] == NOT_REPRODUCED
    assert led.at["S6.3.beats_lstm", "verdict"] == NOT_REPRODUCED              # high-vol trending 0.60 < 0.621
    assert led.at["S6.3.largest_advantage", "verdict"] == NOT_REPRODUCED       # capitulation 0.107 beats high-vol trending
    assert led.at["S5.3.k6.silhouette", "verdict"] == REPRODUCED and led.at["S5.3.k6.stability_ari", "verdict"] == NOT_REPRODUCED
    serving = pd.DataFrame({"scenario": "model", "concurrency": 1, "tokens": [16, 111], "p50_ms": [135.0, 650.0], "p95_ms": [150.0, 800.0],
                            "p99_ms": [170.0, 940.0], "mean_ms": [128.0, 640.0]})
    sys = claims_frame(vayyasi_claims({"serving": serving}, V, groups=["system"])).set_index("id")
    assert sys.at["T4.latency_p95.16tok", "verdict"] == REPRODUCED and sys.at["T4.latency_p95.111tok", "verdict"] == NOT_REPRODUCED
    for cid in ("T4.availability", "T4.cost", "T4.daily_observations", "C.java"):
        assert sys.at[cid, "verdict"] == NOT_TESTABLE and sys.at[cid, "reason"]


def test_verdict_grid_shape_and_colours():
    from matplotlib.colors import to_rgba
    led = claims_frame([claim("a", "a", "s", 1, 1, "clean; x", within_tolerance(1, 1)),
                        claim("b", "b", "s", 1, 2, "clean", within_tolerance(1, 2)),
                        claim("c", "c", "s", 1, "", "clean", not_testable("why", yet=True)),
                        claim("a", "a", "s", 1, "", "published_code; y", not_testable("why"))])
    m = verdict_matrix(led)
    assert list(m.index) == ["a", "b", "c"] and list(m.columns) == ["clean", "published_code"] and m.at["b", "published_code"] == ""
    fig = plot_verdict_grid(led, rows_per_panel=2)               # 3 claims in 2 balanced panels of 2 rows
    assert len(fig.axes) == 2
    rgba = np.concatenate([a.images[0].to_rgba(a.images[0].get_array()) for a in fig.axes])
    assert rgba.shape[:2] == (3, 2)
    expect = [[REPRODUCED, NOT_TESTABLE], [NOT_REPRODUCED, None], [NOT_YET, None]]
    for i, row in enumerate(expect):
        for j, v in enumerate(row):
            assert np.allclose(rgba[i, j], to_rgba(VERDICT_COLORS[v] if v else "#ffffff")), (i, j)
    with pytest.raises(ValueError, match="unknown verdicts"):
        verdict_matrix(led.assign(verdict="maybe"))


def test_table3_dots(P):
    seeds = pd.DataFrame({"rule": "vol>=1", "model": ["lstm", "lstm", "synth_dense"], "seed": [0, 1, 0], "mae": [0.15, 0.16, 0.1545],
                          "rmse": [0.2, 0.21, 0.19], "f1": [0.2, 0.3, 0.4]})
    fig = plot_table3_dots(seeds, P, target_range=(0.1, 1.6))
    rmse_ax, f1_ax = fig.axes[:2]
    xs = np.concatenate([c.get_offsets()[:, 0] for c in rmse_ax.collections if len(c.get_offsets())])
    assert np.isclose(xs, 0.1).any() and np.isclose(xs, 0.103).any()          # 0.15 / 1.5 and the paper's Synthesizer D
    assert [t.get_text() for t in rmse_ax.get_yticklabels()] == list(P["table3"].set_index("model").loc[["lstm", "synth_dense"], "source_row"])
    with pytest.raises(ValueError, match="no model"):
        plot_table3_dots(seeds.assign(model="other"), P)


# ---------------------------------------------------------------- Table 6 under both backtest rule sets

def _paper_as_ours_table6(P, **shift):
    "The paper's Table 6 in the shape of our table6.csv (buy-and-hold: one row), each metric moved by `shift`."
    t = P["table6"]
    o = pd.DataFrame({"model": t.model.fillna("").replace("", "transformer"), "strategy": t.strategy,
                      "scaled": t.sizing.eq("S"), "time_in_market_pct": t.time_in_market_pct, "sharpe": t.sharpe,
                      "max_drawdown_pct": t.max_drawdown_pct, "kelly_pct": t.kelly_pct,
                      "var95_parametric_pct": t.daily_var_pct, "pnl_pct": t.pnl_pct})
    o["sharpe_lower"], o["sharpe_upper"] = o.sharpe - 0.1, o.sharpe + 0.1
    for col, d in shift.items(): o[col] = o[col] + d
    return o


def test_side_by_side_table6_carries_both_rule_sets(P):
    from volnb.paper import side_by_side_table6
    text, pc = _paper_as_ours_table6(P, pnl_pct=1.0), _paper_as_ours_table6(P)
    t = side_by_side_table6(P, text, clean_published_rules=pc)
    assert len(t) == 43 * 6 and t.published_code.isna().all()
    pnl = t[t.metric == "pnl_pct"]
    assert (pnl.diff_clean - 1.0).abs().max() < 1e-9 and pnl.diff_clean_published_code_rules.abs().max() < 1e-9
    bh = t[(t.strategy == "buy_and_hold") & (t.metric == "sharpe")].iloc[0]
    assert (bh.paper, bh.clean_published_code_rules, bh.clean_published_code_rules_interval) == (0.8, 0.8, "[0.7, 0.9]")
    assert "sqrt(252)" in bh.comparability_published_code_rules
    alone = side_by_side_table6(P, text)
    assert alone.clean_published_code_rules.isna().all() and "no table6_published_code" in alone.comparability_published_code_rules.iloc[0]


def test_table6_published_code_claims(P):
    "The paper's own Table 6 as ours reproduces buy-and-hold under the published conventions; a Kelly 20 % off does not."
    with pytest.raises(KeyError, match="table6_published_code"): herremans_claims(P, {}, "clean", ["table6_published_code"])
    led = claims_frame(herremans_claims(P, {"table6_published_code": _paper_as_ours_table6(P)}, "clean",
                                        ["table6_published_code"])).set_index("id")
    assert led.index.str.startswith("B.pc.").all()
    for k in ("bh_pnl", "bh_mdd", "bh_sharpe", "bh_time_in_market_pct", "bh_kelly_pct", "bh_daily_var_pct"):
        assert led.at[f"B.pc.{k}", "verdict"] == REPRODUCED, k
    assert "published code's backtest rules" in led.at["B.pc.bh_pnl", "protocol"]
    off = _paper_as_ours_table6(P)
    off.loc[off.strategy == "buy_and_hold", "kelly_pct"] *= 1.2                  # 6.84 -> 8.21: outside 10 %
    led = claims_frame(herremans_claims(P, {"table6_published_code": off}, "clean", ["table6_published_code"])).set_index("id")
    assert led.at["B.pc.bh_kelly_pct", "verdict"] == NOT_REPRODUCED
    both = claims_frame(herremans_claims(P, {"table6": _paper_as_ours_table6(P), "table6_published_code": _paper_as_ours_table6(P)},
                                         "clean", ["table6", "table6_published_code"]))
    assert both.id.str.startswith("B.pc.").sum() == len(both) - both.id.str.match(r"B\.(?!pc\.)").sum()
    assert {"B.bh_pnl", "B.pc.bh_pnl"} <= set(both.id)
