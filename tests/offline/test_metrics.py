"""offline/metrics.py against hand-computed small cases and scipy's rank-based AUC."""

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, rankdata

from offline import metrics as M


def scipy_auc(y, s):
    y = np.asarray(y).astype(bool)
    u = mannwhitneyu(np.asarray(s)[y], np.asarray(s)[~y], alternative="two-sided").statistic
    return u / (y.sum() * (~y).sum())


def test_auc_hand_cases():
    assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auc([1, 0], [1.0, 1.0]) == pytest.approx(0.5)  # tie counts one half
    assert M.auc([1, 1, 0], [3, 2, 1]) == 1.0
    assert M.auc([0, 0, 1], [3, 2, 1]) == 0.0
    assert np.isnan(M.auc([1, 1], [0.2, 0.3]))


def test_auc_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 300)
        s = np.round(rng.normal(size=300) + y * 0.5, 1)  # many ties
        assert M.auc(y, s) == pytest.approx(scipy_auc(y, s), abs=1e-12)
    x = rng.normal(size=50)
    x[::5] = x[1]
    assert np.allclose(M._rankdata_avg(x), rankdata(x))


def test_per_ad_auc_skips_single_class_columns():
    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    S = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.3], [0.5, 0.3, 0.1]])
    v = M.per_ad_auc(Y, S)
    assert v[0] == 1.0 and np.isnan(v[1]) and np.isnan(v[2])
    assert M.mean_per_ad_auc(Y, S) == 1.0


def test_ndcg_hand_case_and_skip_users_without_positives():
    Y = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    S = np.array([[4, 3, 2, 1], [1, 2, 3, 4], [1, 2, 3, 4]], dtype=float)
    # user 0: ranking 0,1,2,3 -> positives at positions 2 and 4 (1-based)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3)
    per = M.ndcg_from_ranking(Y, np.argsort(-S, axis=1, kind="stable"), 10)
    assert per[0] == pytest.approx(dcg / idcg)
    assert np.isnan(per[1])
    assert per[2] == pytest.approx(1 / np.log2(5))
    assert M.ndcg_at_k(Y, S, 10) == pytest.approx((dcg / idcg + 1 / np.log2(5)) / 2)
    # @1: user 0's top ad is not relevant
    assert M.ndcg_at_k(Y, S, 1) == 0.0


def test_log_loss_and_logits_agree():
    y = np.array([1, 0, 1, 0])
    z = np.array([2.0, -1.0, -0.5, 0.3])
    p = 1 / (1 + np.exp(-z))
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert M.log_loss(y, p) == pytest.approx(ref)
    assert M.log_loss_from_logits(y, z) == pytest.approx(ref)


def test_ece_equal_width_bins():
    y = np.array([0, 1, 0, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95])
    # bins (10): [0,.1): p .05,.05 rate .5 -> |.05-.5|*2/6; [.1,.2): .15 vs 0 -> .15/6; [.9,1]: .95 vs 2/3 -> *3/6
    ref = 0.45 * 2 / 6 + 0.15 / 6 + abs(0.95 - 2 / 3) * 3 / 6
    assert M.ece(y, p, 10) == pytest.approx(ref)
    t = M.reliability(y, p, 10)
    assert t["count"].sum() == 6 and np.isnan(t["mean_pred"][5])
    assert M.ece([0, 1], [0.0, 1.0]) == 0.0


def test_hit_rate_and_coverage():
    thetas = np.array([[9.0, 0.1, 0.5, 0.3, 0.2, 0.9, 0.0, 0.4],
                       [9.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    assert M.top_features(thetas[0], 5) == [5, 2, 7, 3, 4]  # intercept skipped
    assert M.hit_rate_at_k(thetas, [2, 7], 5) == 0.5
    assert M.hit_rate_at_k(thetas, [None, 1], 5) == 1.0
    # ad 0: top {5,2,7,3,4} vs G {2,6}: 1/6; ad 1: top {1..5} vs G {1,2}: 2/5
    assert M.coverage_at_k(thetas, [{2, 6}, {1, 2}], 5) == pytest.approx((1 / 6 + 2 / 5) / 2)
    assert np.isnan(M.coverage_at_k(thetas, [set(), set()], 5))


def test_direction_accuracy():
    b = np.zeros((3, 4))
    a = b.copy()
    a[0, 1] = 0.5
    a[1, 2] = -0.2
    a[2, 3] = 0.1
    assert M.direction_accuracy(b, a, [1, 2, 3], [1, 1, -1]) == pytest.approx(1 / 3)
    assert M.direction_accuracy(b, a, [1, 2, 3], [1, -1, 1]) == 1.0
    with pytest.raises(ValueError):
        M.direction_accuracy(b, a, [1, 2, 3], [1, 0, 1])


def test_ad_rank_corr_matches_scipy_spearman_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    Y = (rng.random((200, 30)) < rng.uniform(0.01, 0.3, 30)).astype(np.uint8)
    Y[:, :4] = 0  # tied observed CTRs
    s = rng.normal(size=30)
    s[5:8] = 0.25  # tied scores
    assert M.ad_rank_corr(Y, s) == pytest.approx(spearmanr(s, Y.mean(axis=0))[0], abs=1e-12)
    assert M.ad_rank_corr(Y, Y.mean(axis=0)) == pytest.approx(1.0)
    assert M.ad_rank_corr(Y, -Y.mean(axis=0)) == pytest.approx(-1.0)
    assert np.isnan(M.ad_rank_corr(Y, np.ones(30)))  # a constant score ranks nothing
    with pytest.raises(ValueError, match="one value per column"):
        M.ad_rank_corr(Y, s[:-1])


def test_metrics_match_scikit_learn_on_random_data():
    """scikit-learn is the oracle for the pooled ranking and calibration metrics."""
    from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

    rng = np.random.default_rng(3)
    Y = (rng.random((60, 9)) < 0.25).astype(np.uint8)
    Y[0] = 1  # at least one user with every ad positive
    S = np.round(rng.normal(size=Y.shape) + Y, 1)  # rounded: ties
    assert M.auc(Y, S) == pytest.approx(roc_auc_score(Y.ravel(), S.ravel()), abs=1e-12)
    per = [roc_auc_score(Y[:, a], S[:, a]) for a in range(Y.shape[1]) if 0 < Y[:, a].sum() < Y.shape[0]]
    assert M.mean_per_ad_auc(Y, S) == pytest.approx(float(np.mean(per)), abs=1e-12)
    P = 1.0 / (1.0 + np.exp(-S))
    assert M.log_loss(Y.ravel(), P.ravel()) == pytest.approx(log_loss(Y.ravel(), P.ravel()), rel=1e-6)
    assert M.log_loss_from_logits(Y, S) == pytest.approx(log_loss(Y.ravel(), P.ravel()), rel=1e-6)
    has_pos = Y.sum(axis=1) > 0
    S_untied = S + rng.random(S.shape) * 1e-6  # sklearn averages ties; we rank them by index
    assert M.ndcg_at_k(Y, S_untied, 5) == pytest.approx(ndcg_score(Y[has_pos], S_untied[has_pos], k=5), abs=1e-9)
