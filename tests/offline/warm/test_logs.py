"""Interaction logs for a refresh: every malformed row is named by its line (offline.warm.logs)."""

from __future__ import annotations

import numpy as np
import pytest

from offline.warm.logs import (LogError, counts_between, delay_cdf, delay_quantiles, from_arrays, read_logs,
                               window_counts)

ADS = {"a0": 0, "a1": 1}
LAUNCHED = np.array([100.0, 200.0])


def _write(tmp_path, rows, header="user_id,ad_id,clicked,timestamp"):
    p = tmp_path / "interactions.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_reads_a_valid_log(tmp_path):
    logs = read_logs(_write(tmp_path, ["u1,a0,1,150", "u2,a1,0,250", "u1,a1,1,1970-01-01T00:05:00Z"]),
                     ADS, LAUNCHED, implicit=False)
    assert logs.user_ids == ["u1", "u2"]
    assert logs.ad.tolist() == [0, 1, 1] and logs.clicked.tolist() == [1, 0, 1]
    assert logs.ts.tolist() == [150.0, 250.0, 300.0] and logs.line.tolist() == [2, 3, 4]


@pytest.mark.parametrize("row, implicit, match", [
    ("u1,a9,1,150", False, r"line 3: unknown ad_id 'a9'"),
    ("u1,a1,1,150", False, r"line 3: timestamp 150 is before ad 'a1' launched"),
    ("u1,a0,1,150", False, r"line 3: duplicate row .* as line 2"),
    ("u1,a0,2,160", False, r"line 3: clicked must be 0 or 1, got '2'"),
    ("u1,a0,0,160", True, r"line 3: clicked = 0 but the logs have implicit negatives"),
    ("u1,a0,1,yesterday", False, r"line 3: unparseable timestamp 'yesterday'"),
])
def test_malformed_rows_are_named_by_line(tmp_path, row, implicit, match):
    with pytest.raises(LogError, match=match):
        read_logs(_write(tmp_path, ["u1,a0,1,150", row]), ADS, LAUNCHED, implicit)


def test_missing_file_and_column(tmp_path):
    with pytest.raises(LogError, match="logs file not found"):
        read_logs(tmp_path / "nope.csv", ADS, LAUNCHED, False)
    with pytest.raises(LogError, match="missing column"):
        read_logs(_write(tmp_path, ["u1,a0,150"], header="user_id,ad_id,timestamp"), ADS, LAUNCHED, False)


def test_implicit_trials_need_activity_on_another_ad_after_launch():
    # users 0..3; ad 0 launched at 100, ad 1 at 200
    logs = from_arrays(["u0", "u1", "u2", "u3"], np.array([0, 1, 1, 2, 3, 3]), np.array([0, 0, 1, 0, 1, 0]),
                       np.ones(6), np.array([120.0, 150.0, 260.0, 400.0, 210.0, 90.0 + 200]))
    tr, cl = window_counts(logs, 4, LAUNCHED, until=300.0, implicit=True)
    # u0 only clicked ad 0 (no other activity: dropped, or every clicker would be a trial but
    # only busy non-clickers); u1's ad-1 click at 260 is activity for ad 0 but nothing else of
    # u1 falls in ad 1's window; u2 acts after `until`; u3 clicked ad 1 at 210 and ad 0 at 290,
    # so each click is activity for the other ad
    assert tr.tolist() == [[0, 0], [1, 0], [0, 0], [1, 1]]
    assert cl.tolist() == [[0, 0], [1, 0], [0, 0], [1, 1]]
    tr_any, cl_any = counts_between(logs, 4, LAUNCHED, np.full(2, 300.0), True, other=False)
    assert tr_any.tolist() == [[1, 0], [1, 1], [0, 0], [1, 1]] and cl_any[0].tolist() == [1, 0]
    tr2, _ = counts_between(logs, 4, np.array([250.0, 250.0]), np.array([500.0, 500.0]), True, other=False)
    assert tr2.tolist() == [[0, 0], [1, 1], [1, 1], [1, 1]]


def test_delay_weighting_discounts_the_non_clicks_of_young_ads():
    q = delay_quantiles(np.arange(0.0, 101.0))  # clicks arrive uniformly over 100 s after launch
    F = delay_cdf(q)
    np.testing.assert_allclose(F(np.array([-5.0, 0.0, 25.0, 100.0, 1e9])), [0, 0, 0.25, 1, 1])
    # ad index -1: a row with some other ad (activity only)
    logs = from_arrays(["u0", "u1"], np.array([0, 1, 1]), np.array([-1, 1, -1]), np.ones(3),
                       np.array([215.0, 205.0, 210.0]))
    tr, cl = window_counts(logs, 2, LAUNCHED, until=225.0, implicit=True, cdf=F)
    # ad 0 is 125 s old at `until` (F = 1), ad 1 25 s old (F = 0.25); a click counts as one trial
    assert tr.tolist() == [[1.0, 0.25], [1.0, 1.0]]
    assert cl.tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_logged_impressions_are_counted_per_user_and_ad():
    logs = from_arrays(["u0", "u1"], np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([1, 0, 0]),
                       np.array([110.0, 120.0, 210.0]))
    tr, cl = window_counts(logs, 2, LAUNCHED, until=1e9, implicit=False)
    assert tr.tolist() == [[2, 0], [0, 1]] and cl.tolist() == [[1, 0], [0, 0]]
