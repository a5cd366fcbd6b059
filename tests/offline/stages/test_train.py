"""Warm training: batched Newton against scipy, dense vs impression path, separable data,
recovery of the synthetic ground truth, and held-out l2 choice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from offline.data.adapters.synthetic import make_synthetic
from offline.stages.train import (INTERCEPT_EPS, choose_l2, choose_l2_pairs, holdout_scores, logloss, train_logreg,
                           train_logreg_pairs)


@pytest.fixture(scope="module")
def world():
    ds, theta = make_synthetic(n_ads=60, n_users=1500, seed=4)
    idx = np.arange(ds.n_ads)
    return ds, theta, ds.labels(idx)


def scipy_fit(X: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    X = X.astype(np.float64)
    y = y.astype(np.float64)
    r = np.full(X.shape[1], l2)
    r[0] = INTERCEPT_EPS

    def f(w):
        z = X @ w
        return np.logaddexp(0, z).sum() - y @ z + 0.5 * (w * w) @ r

    def g(w):
        p = 1 / (1 + np.exp(-(X @ w)))
        return X.T @ (p - y) + w * r

    res = minimize(f, np.zeros(X.shape[1]), jac=g, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-14,
                                                                              "maxiter": 5000})
    return res.x


@pytest.mark.parametrize("l2", [0.1, 1.0, 10.0])
def test_matches_scipy(world, l2):
    ds, _, Y = world
    info: dict = {}
    th = train_logreg(ds.X, Y[:, :4], l2, info=info)
    assert th.dtype == np.float32 and th.shape == (4, ds.X.shape[1]) and th.flags.c_contiguous
    assert info["n_unconverged"] == 0
    for a in range(4):
        ref = scipy_fit(ds.X, Y[:, a], l2)
        assert np.allclose(th[a], ref, atol=2e-3, rtol=1e-3), (a, th[a], ref)


def test_pairs_path_equals_dense_path(world):
    ds, _, Y = world
    idx = np.arange(6)
    u, c, y = ds.pairs(idx)
    dense = train_logreg(ds.X, Y[:, :6], 1.0)
    sparse = train_logreg_pairs(ds.X, u, c, y, 6, 1.0)
    assert np.allclose(dense, sparse, atol=1e-4)


def test_impression_logs_recover_truth():
    ds, theta = make_synthetic(n_ads=12, n_users=3000, seed=5, implicit=False, impression_rate=0.8)
    u, c, y = ds.pairs(np.arange(ds.n_ads))
    info: dict = {}
    th = train_logreg_pairs(ds.X, u, c, y, ds.n_ads, 1.0, info=info)
    assert info["n_unconverged"] == 0
    assert np.corrcoef(th[:, 1:].ravel(), theta[:, 1:].ravel())[0, 1] > 0.85
    l2 = choose_l2_pairs(ds.X, u, c, y, ds.n_ads, grid=(0.1, 10.0, 1e4))
    assert l2 in (0.1, 10.0)  # a huge penalty flattens the targeting weights and must lose


def test_recovers_synthetic_truth(world):
    ds, theta, Y = world
    th = train_logreg(ds.X, Y, 1.0)
    assert np.corrcoef(th[:, 1:].ravel(), theta[:, 1:].ravel())[0, 1] > 0.85
    assert np.abs(th[:, 0] - theta[:, 0]).mean() < 0.5
    assert logloss(ds.X, th, Y) < logloss(ds.X, np.zeros_like(th), Y)


def test_separable_data_stays_finite():
    rng = np.random.default_rng(0)
    X = np.ones((200, 3), np.float32)
    X[:, 1:] = rng.normal(size=(200, 2))
    Y = np.stack([(X[:, 1] > 0), (X[:, 1] + X[:, 2] > 0.5), np.zeros(200, bool)], axis=1).astype(np.uint8)
    norms = []
    for l2 in (0.01, 1.0, 100.0):
        info: dict = {}
        th = train_logreg(X, Y, l2, info=info)
        assert np.all(np.isfinite(th)) and info["n_unconverged"] == 0
        norms.append(np.linalg.norm(th[:2, 1:]))
        p = 1 / (1 + np.exp(-(X @ th[0])))
        if l2 <= 1.0:
            assert ((p > 0.5) == Y[:, 0].astype(bool)).mean() > 0.97
    assert norms[0] > norms[1] > norms[2]
    assert th[2, 0] < -8  # an ad nobody clicks: very negative but finite intercept


def test_choose_l2(world):
    ds, _, Y = world
    grid = (0.01, 1.0, 1e5)
    scores = holdout_scores(ds.X, Y, grid, holdout_frac=0.25, seed=1)
    assert set(scores) == set(grid)
    assert scores[1e5] > scores[1.0]  # a huge penalty throws the targeting away
    best = choose_l2(ds.X, Y, grid, holdout_frac=0.25, seed=1)
    assert best == min(scores, key=scores.get)
    assert choose_l2(ds.X, Y, grid, holdout_frac=0.25, seed=1) == best


def test_bad_inputs(world):
    ds, _, Y = world
    with pytest.raises(ValueError, match="l2 must be"):
        train_logreg(ds.X, Y, 0.0)
    with pytest.raises(ValueError, match="Y must be"):
        train_logreg(ds.X, Y[:10], 1.0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        train_logreg(ds.X, Y * 2, 1.0)
    bad = ds.X.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        train_logreg(bad, Y, 1.0)
    with pytest.raises(ValueError, match="col index out of range"):
        train_logreg_pairs(ds.X, np.array([0]), np.array([3]), np.array([1]), 2, 1.0)
    with pytest.raises(ValueError, match="holdout_frac"):
        choose_l2(ds.X, Y, (1.0,), holdout_frac=1.0)
