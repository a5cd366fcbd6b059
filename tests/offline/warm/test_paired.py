"""The paired bootstrap behind the replay's 'can the data tell?' columns (offline.warm.paired)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from offline import metrics as M
from offline.warm.paired import paired_auc_diff, weighted_auc


def _pairs(n: int, seed: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.uint8)
    s = rng.normal(size=n) + 0.8 * y
    if ties:
        s = np.round(s, 1)  # many exact ties
    return y, s


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_auc_matches_mann_whitney_and_sklearn(ties: bool) -> None:
    y, s = _pairs(500, 1, ties)
    assert weighted_auc(y, s, np.ones(y.size)) == pytest.approx(M.auc(y, s), abs=1e-12)
    w = np.random.default_rng(2).integers(0, 4, y.size).astype(np.float64)
    assert weighted_auc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    # rows of a weight matrix are independent problems
    W = np.stack([np.ones(y.size), w])
    got = weighted_auc(y, s, W)
    assert got.shape == (2,) and got[1] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)


def test_weighted_auc_one_class_is_nan() -> None:
    assert np.isnan(weighted_auc(np.zeros(5, np.uint8), np.arange(5.0), np.ones(5)))
    w = np.ones((1, 4))
    w[0, :2] = 0.0  # the only positives weigh nothing
    assert np.isnan(weighted_auc(np.array([1, 1, 0, 0]), np.arange(4.0), w)[0])


def test_same_scores_give_a_zero_interval() -> None:
    y, s = _pairs(400, 3)
    users = np.arange(y.size) // 4
    r = paired_auc_diff(y, s, s, users, resamples=200, seed=0)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0
    assert r["n_clusters"] == 100 and r["n_pos"] == int(y.sum())


def test_a_better_scorer_is_resolved_on_enough_data_and_not_on_little() -> None:
    rng = np.random.default_rng(4)
    n = 6000
    y = (rng.random(n) < 0.2).astype(np.uint8)
    good = rng.normal(size=n) + 1.0 * y
    weak = good + rng.normal(scale=1.5, size=n)  # the same signal, buried in noise
    users = np.arange(n) // 10
    big = paired_auc_diff(y, good, weak, users, resamples=300, seed=1)
    assert big["diff"] > 0 and big["lo"] > 0  # resolved
    small = paired_auc_diff(y[:60], good[:60], weak[:60], np.arange(60) // 2, resamples=300, seed=1, min_clusters=2)
    assert small["lo"] < 0 < small["hi"]  # 60 pairs cannot tell
    assert big["hi"] - big["lo"] < small["hi"] - small["lo"]


def test_too_few_users_with_a_click_give_no_interval() -> None:
    y, s = _pairs(300, 11)
    t = s + 0.3
    r = paired_auc_diff(y, s, -t, np.arange(y.size) % 3, resamples=100, seed=0)  # 3 users
    assert r["n_clusters"] == 3 and r["diff"] > 0 and np.isnan(r["lo"]) and np.isnan(r["hi"])
    r = paired_auc_diff(y, s, -t, np.arange(y.size) % 3, resamples=100, seed=0, min_clusters=3)
    assert r["lo"] > 0 and r["kept"] == 100
    # 40 users, but every click comes from 2 of them: not enough to judge
    users = np.arange(y.size) % 40
    y2 = (np.isin(users, [0, 1]) & (np.arange(y.size) // 40 % 2 == 0)).astype(np.uint8)
    r = paired_auc_diff(y2, s, t, users, resamples=100, seed=0)
    assert r["n_clusters"] == 40 and r["n_pos_clusters"] == 2 and np.isnan(r["lo"])
    # 12 users with clicks among 40: judged
    y3 = (np.isin(users, range(12)) & (np.arange(y.size) // 40 % 3 == 0)).astype(np.uint8)
    r = paired_auc_diff(y3, s, t, users, resamples=200, seed=0)
    assert r["n_pos_clusters"] >= 10 and r["kept"] == 200 and np.isfinite(r["lo"])


def test_seeded_and_clustered() -> None:
    y, s = _pairs(800, 5)
    t = s + np.random.default_rng(6).normal(scale=0.5, size=s.size)
    per_pair = paired_auc_diff(y, s, t, np.arange(y.size), resamples=300, seed=7)
    assert per_pair == paired_auc_diff(y, s, t, np.arange(y.size), resamples=300, seed=7)
    # one cluster of 20 pairs per 'user' whose labels move together: the interval must widen
    yc = np.repeat((np.random.default_rng(8).random(60) < 0.3).astype(np.uint8), 20)
    sc = np.random.default_rng(9).normal(size=yc.size) + yc
    tc = sc + np.random.default_rng(10).normal(size=yc.size)
    users = np.repeat(np.arange(60), 20)
    wide = paired_auc_diff(yc, sc, tc, users, resamples=300, seed=0)
    narrow = paired_auc_diff(yc, sc, tc, np.arange(yc.size), resamples=300, seed=0)
    assert wide["hi"] - wide["lo"] > narrow["hi"] - narrow["lo"]


def test_bad_arguments_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_auc_diff(np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="resamples"):
        paired_auc_diff(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), resamples=0)
