"""The Markdown report (offline/report.py): Table 1 rows, gap closed, and the variant label."""

from offline.evaluation.report import markdown


def _stat(m):
    return {"mean": m, "std": 0.01, "min": m, "max": m, "n": 2}


def _result(default_options):
    stat = _stat
    summary = {n: {"auc": stat(a), "ndcg10": stat(0.2)} for n, a in
               (("lrcold", 0.55), ("popularity", 0.63), ("default", 0.73), ("lrwarm", 0.84))}
    return {"summary": summary, "gap_closed": {"default": (0.73 - 0.55) / (0.84 - 0.55)},
            "dataset": {"name": "toy", "n_retired": 10, "n_active": 5, "n_users": 50, "n_features": 4, "l2": 0.1},
            "config": {"test_frac": 0.2, "seeds": 2, "default_options": default_options}, "timings": {"total_s": 1.0}}


def test_default_row_and_gap():
    md = markdown(_result({}))
    rows = [line for line in md.splitlines() if line.startswith("| **default")]
    assert len(rows) == 1 and "0.7300 ± 0.0100" in rows[0] and "| 62% |" in rows[0]
    assert md.index("| LRcold") < md.index("| **default") < md.index("| LRwarm")


def test_variant_of_the_default_is_labelled_as_such():
    md = markdown(_result({"stack_frac": 0.1, "stack_l2": 1}))
    assert "**default: knn-content (ours)**" not in md
    assert "knn-content VARIANT (stack_frac=0.1, stack_l2=1), not the default" in md
