"""MAP logistic regression under a Gaussian prior (offline.warm.posterior) and the warm-up
policies built on it (offline.warm.policies)."""

from __future__ import annotations

import numpy as np
import pytest

from offline.warm.policies import prior_from_records, refresh_weights
from offline.warm.posterior import fit_map, l2_lambda


def _data(seed: int, N: int, F: int, A: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(N), rng.normal(size=(N, F - 1))])
    truth = rng.normal(0.0, scale, size=(A, F))
    truth[:, 0] -= 1.0
    Y = (rng.random((N, A)) < 1.0 / (1.0 + np.exp(-X @ truth.T))).astype(np.float64)
    return X, truth, Y


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_zero_mean_map_is_sklearn_l2_logistic_regression(C):
    from sklearn.linear_model import LogisticRegression

    X, _, Y = _data(0, 300, 6, 3)
    # sklearn: C * sum(loss) + ||w||^2 / 2 with the intercept unpenalised == our lam = 1/C, intercept ~ 0
    fit = fit_map(X, np.ones_like(Y), Y, np.zeros(6), l2_lambda(6, 1.0 / C, intercept=1e-12))
    assert fit.converged.all()
    for a in range(3):
        sk = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X[:, 1:], Y[:, a])
        ref = np.r_[sk.intercept_, sk.coef_[0]]
        np.testing.assert_allclose(fit.theta[a], ref, atol=2e-5)


def test_ads_without_data_keep_the_prior_bit_for_bit():
    X, _, Y = _data(1, 200, 5, 4)
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(4, 5)).astype(np.float32) / 3.0
    trials = np.ones_like(Y)
    trials[:, [1, 3]] = 0.0            # ads 1 and 3 have no data at all
    clicks = Y * trials
    lam = np.full((4, 5), 4.0)
    fit = fit_map(X, trials, clicks, mu, lam)
    assert fit.has_data.tolist() == [True, False, True, False]
    assert fit.theta[[1, 3]].tobytes() == mu[[1, 3]].tobytes()
    np.testing.assert_array_equal(fit.sigma[[1, 3]], np.float32(0.5))
    np.testing.assert_array_equal(fit.prior_share[[1, 3]], 1.0)
    assert not np.array_equal(fit.theta[0], mu[0])  # the ads with data did move


def test_lots_of_data_overrules_a_wrong_prior():
    X, truth, Y = _data(2, 40_000, 4, 2, scale=0.7)
    wrong = (-truth).astype(np.float32)
    fit = fit_map(X, np.ones_like(Y), Y, wrong, np.full((2, 4), 1.0))
    np.testing.assert_allclose(fit.theta, truth, atol=0.08)
    assert fit.prior_share.max() < 0.01


def test_a_strong_prior_overrules_little_data():
    X, truth, Y = _data(4, 30, 4, 2)
    mu = np.zeros((2, 4), dtype=np.float32)
    fit = fit_map(X, np.ones_like(Y), Y, mu, np.full((2, 4), 1e6))
    assert np.abs(fit.theta).max() < 1e-3
    assert fit.prior_share.min() > 0.99


def test_full_laplace_marginals_are_at_least_the_mean_field_ones():
    X, _, Y = _data(5, 500, 5, 3)
    X[:, 2] = X[:, 1] + 0.1 * X[:, 2]  # correlated features widen the marginals
    args = (X, np.ones_like(Y), Y, np.zeros(5), np.ones(5))
    d, f = fit_map(*args, laplace="diag"), fit_map(*args, laplace="full")
    np.testing.assert_allclose(d.theta, f.theta)
    assert np.all(f.sigma >= d.sigma * (1 - 1e-6))
    assert f.sigma[:, 1].mean() > 2 * d.sigma[:, 1].mean()
    assert f.cov.shape == (3, 5, 5)


def test_switch_trains_only_ads_over_the_click_threshold_and_none_keeps_the_prior():
    X, _, Y = _data(6, 400, 4, 3)
    trials = np.ones_like(Y)
    clicks = Y.copy()
    clicks[:, 2] = 0.0
    clicks[:5, 2] = 1.0  # ad 2: 5 clicks
    mu = np.full((3, 4), 0.1, dtype=np.float32)
    prior = prior_from_records(mu, [None] * 3, scale=0.5)
    n = clicks.sum(axis=0)
    assert n[0] > 10 and n[1] > 10
    sw = refresh_weights("switch", prior, X, trials, clicks, min_clicks=10, l2=1.0)
    assert [r["updated"] for r in sw.records] == [True, True, False]
    assert sw.theta[2].tobytes() == mu[2].tobytes()
    assert sw.records[0]["data_weight"] == 1.0 and sw.records[2]["prior_weight"] == 1.0
    none = refresh_weights("none", prior, X, trials, clicks)
    assert none.theta.tobytes() == mu.tobytes()
    assert none.records[1]["clicks"] == int(n[1]) and none.records[1]["impressions"] == 400
    pr = refresh_weights("prior", prior, X, trials, clicks)
    assert all(r["updated"] for r in pr.records)
    assert 0.0 < pr.records[0]["data_weight"] < 1.0
    with pytest.raises(ValueError, match="min_clicks"):
        refresh_weights("switch", prior, X, trials, clicks)
    with pytest.raises(ValueError, match="policy"):
        refresh_weights("thompson", prior, X, trials, clicks)


def test_prior_precision_comes_from_the_recorded_sample_spread():
    mu = np.zeros((2, 3), dtype=np.float32)
    recs = [{"n_samples": 3, "spread": [0.2, 0.5, 0.01]}, {"n_samples": 1, "spread": [0.0, 0.0, 0.0]}]
    p = prior_from_records(mu, recs, scale=2.0)
    assert p.source == ["spread", "global"]
    # std = scale x spread (0.01 floored at 0.05); no usable spread: std = scale
    np.testing.assert_allclose(p.lam[0], 1.0 / (2.0 * np.array([0.2, 0.5, 0.05])) ** 2)
    np.testing.assert_allclose(p.lam[1], 0.25)
    p = prior_from_records(mu, recs, scale=2.0, intercept_scale=0.5)
    np.testing.assert_allclose(p.lam[:, 0], [1.0 / (0.5 * 0.2) ** 2, 4.0])
