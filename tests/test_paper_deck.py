"""volnb.paper, the spike-detector deck at equal prevalence (issue 15): the logit interval for a PR-AUC and the deck's
PR-AUC and ROC-AUC claims against a hand-made equal-prevalence table."""
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy.special import expit

from volnb.core import DataValidationError
from volnb.paper import NOT_REPRODUCED, NOT_YET, REPRODUCED, ap_logit_interval, claims_frame, deck_claims, load_deck

ROOT = Path(__file__).resolve().parents[1]
Z = 1.959963984540054


def test_ap_logit_interval_by_hand():
    lo, hi = ap_logit_interval(0.5, 100)                 # logit 0, 1/sqrt(100 * 0.25) = 0.2
    assert math.isclose(lo, expit(-0.2 * Z)) and math.isclose(hi, expit(0.2 * Z))
    lo, hi = ap_logit_interval(0.8, 25)                  # logit(0.8) = ln 4, 1/sqrt(25 * 0.16) = 0.5
    assert math.isclose(lo, 4 * math.exp(-0.5 * Z) / (1 + 4 * math.exp(-0.5 * Z)))
    assert math.isclose(hi, 4 * math.exp(0.5 * Z) / (1 + 4 * math.exp(0.5 * Z)))
    assert ap_logit_interval(0.8, 2500)[1] - ap_logit_interval(0.8, 2500)[0] < 0.1 * (hi - lo) + 1e-3   # narrower with more positives
    for ap in (0.0, 1.0):
        with pytest.raises(ValueError, match="strictly between"): ap_logit_interval(ap, 10)
    with pytest.raises(ValueError, match="positive"): ap_logit_interval(0.5, 0)


def _tables():
    models = pd.DataFrame({"model": ["logreg", "random_forest", "logreg", "random_forest"], "split": ["validation"] * 2 + ["test"] * 2,
                           "n": 1000, "positives": 10, "pr_auc": [0.5, 0.4, 0.45, 0.3], "roc_auc": 0.94,
                           "f1": 0.4, "precision": 0.5, "recall": 0.3})
    splits = pd.DataFrame({"split": ["validation", "test"], "rows": [1000, 1000], "positive_rate": [0.01, 0.01]})
    # the deck's labels: logreg 0.88 (deck 0.89: reproduced), zscore 0.60 (deck 0.33, interval [0.24, 0.43]: not),
    # random_forest 0.32 on 100 positives (deck 0.30: reproduced); no gradient_boosting row
    ep = pd.DataFrame({"labels": ["deck"] * 3 + ["ours"], "model": ["logreg", "zscore", "random_forest", "logreg"], "split": "test",
                       "n": [1000, 1000, 1000, 1000], "positives": [100, 100, 100, 10], "share": [0.1, 0.1, 0.1, 0.01],
                       "train_share": [0.43, 0.43, 0.43, 0.05], "roc_auc": [0.80, 0.9, 0.9, 0.99], "pr_auc": 0.5,
                       "target_share": 0.43, "pr_auc_at_target": [0.88, 0.60, 0.32, 0.99]})
    return models, splits, ep


def test_deck_pr_auc_at_equal_prevalence():
    deck = load_deck(ROOT)
    models, splits, ep = _tables()
    led = claims_frame(deck_claims(deck, models, splits, None, ep)).set_index("id")
    # 0.89 on 98 deck positives: [0.811, 0.938]; 0.88 on 100: [0.80, 0.93]
    assert led.at["SP.pr_auc.logreg", "verdict"] == REPRODUCED and led.at["SP.pr_auc.logreg", "our_value"] == "0.88"
    assert "logit, 98+" in led.at["SP.pr_auc.logreg", "rule"] and "43 %" in led.at["SP.pr_auc.logreg", "protocol"]
    assert "a random classifier scores 0.43" in led.at["SP.pr_auc.logreg", "reason"]
    assert led.at["SP.best_pr_auc", "verdict"] == REPRODUCED
    assert led.at["SP.pr_auc.zscore", "verdict"] == NOT_REPRODUCED
    assert led.at["SP.pr_auc.random_forest", "verdict"] == REPRODUCED
    assert led.at["SP.pr_auc.gradient_boosting", "verdict"] == NOT_YET              # no row of ours
    assert led.at["SP.order.deck_prevalence", "verdict"] == NOT_YET                 # gradient boosting missing
    # ROC-AUC side by side: 0.94 at our labels (10+/990-) overlaps, 0.80 at the deck's (100+/900-) does not
    assert led.at["SP.roc_auc", "verdict"] == REPRODUCED
    assert led.at["SP.roc_auc.deck_prevalence", "verdict"] == NOT_REPRODUCED and led.at["SP.roc_auc.deck_prevalence", "our_value"] == "0.8"
    assert led.at["SP.best_f1", "verdict"] == NOT_YET
    # without the table the PR-AUC claims wait, and there are no deck-prevalence rows
    led0 = claims_frame(deck_claims(deck, models, splits, None)).set_index("id")
    assert led0.at["SP.pr_auc.logreg", "verdict"] == NOT_YET and "SP.roc_auc.deck_prevalence" not in led0.index


def test_deck_order_at_equal_prevalence():
    deck = load_deck(ROOT)
    models, splits, ep = _tables()
    for gb_value, verdict, reason in ((0.85, REPRODUCED, "3 of 3 pairs hold"),               # 0.88 > 0.85 > 0.60 > 0.32
                                      (0.90, NOT_REPRODUCED, "2 of 3 pairs hold; fails: logreg 0.88 vs gradient_boosting 0.9")):
        gb = ep.iloc[[0]].assign(model="gradient_boosting", pr_auc_at_target=gb_value)
        led = claims_frame(deck_claims(deck, models, splits, None, pd.concat([ep, gb]))).set_index("id")
        assert (led.at["SP.order.deck_prevalence", "verdict"], led.at["SP.order.deck_prevalence", "reason"]) == (verdict, reason)
        assert led.at["SP.order", "verdict"] == NOT_YET          # our labels: a separate row (our models table lacks two models)


def test_deck_equal_prevalence_errors():
    deck = load_deck(ROOT)
    models, splits, ep = _tables()
    with pytest.raises(DataValidationError, match="pr_auc_at_target"): deck_claims(deck, models, splits, None, ep.drop(columns="pr_auc_at_target"))
    with pytest.raises(ValueError, match="not the deck's 43 %"): deck_claims(deck, models, splits, None, ep.assign(target_share=0.2))
    with pytest.raises(DataValidationError, match="no rows labelled 'deck'"): deck_claims(deck, models, splits, None, ep[ep.labels == "ours"])


def test_deck_pr_aucs_below_a_random_ranking_are_flagged():
    "At 43 % positives a random ranking has PR-AUC 0.43: the deck's z-score (0.33) and random forest (0.30) are below it."
    from volnb.paper import deck_consistency, load_deck
    D = deck_consistency(load_deck(ROOT))
    rows = D[D.check.str.startswith("PR-AUC above the share of positives")].set_index("item")
    assert rows.consistent.to_dict() == {"gradient_boosting": True, "logreg": True, "random_forest": False, "zscore": False}
    assert "0.43" in rows.at["zscore", "recomputed"]
