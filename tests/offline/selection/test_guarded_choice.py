"""The selection rule behind the default generator: a candidate must beat raw kNN on every part
of the retired-only objective, not only on the sum."""

from __future__ import annotations

from offline.selection.select import guarded_choice


def _row(auc: float, ndcg: float, pad: float) -> dict[str, float]:
    return {"auc": auc, "ndcg10": ndcg, "per_ad_auc": pad, "objective": auc + ndcg + pad}


REF = _row(0.70, 0.20, 0.70)


def test_a_higher_sum_bought_with_a_worse_ndcg_is_not_kept():
    table = {
        "intercept model": _row(0.80, 0.19, 0.75),  # best sum, but NDCG@10 below raw kNN
        "no intercept model": _row(0.72, 0.21, 0.75),
        "weaker still": _row(0.71, 0.205, 0.71),
    }
    assert guarded_choice(table, REF) == "no intercept model"


def test_no_candidate_that_beats_the_reference_everywhere_gives_none():
    table = {"a": _row(0.90, 0.10, 0.90), "b": _row(0.69, 0.30, 0.80), "c": _row(0.70, 0.25, 0.75)}
    assert guarded_choice(table, REF) is None  # c only ties on AUC: a tie is not a win


def test_ties_go_to_the_earlier_candidate_and_the_objective_can_be_narrowed():
    table = {"first": _row(0.75, 0.25, 0.75), "second": _row(0.75, 0.25, 0.75)}
    assert guarded_choice(table, REF) == "first"
    lopsided = {"x": _row(0.80, 0.10, 0.80)}
    assert guarded_choice(lopsided, REF) is None
    assert guarded_choice(lopsided, REF, objective=("auc", "per_ad_auc")) == "x"
