"""Normalisation + intercept calibration (paper eq. 2) against a plain bisection twin."""

import numpy as np
import pytest

from offline.stages.calibrate import calibrate, mean_ctr, neighbour_alpha, solve_shift


def _sig(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _users(S=400, F=8, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(S, F)).astype(np.float32) * scale
    X[:, 0] = 1.0
    return X


def _bisect_shift(z, alpha, lo=-200.0, hi=200.0):
    """Plain twin: 200 bisection steps on mean(sigmoid(z + d)) - alpha."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.mean(_sig(z + mid)) < alpha:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("alpha", [0.5, 0.03, 0.2, 1e-6, 1 - 1e-6, 1e-9])
def test_hits_alpha(alpha):
    X = _users()
    theta = np.random.default_rng(3).normal(size=8).astype(np.float32) * 2
    r = calibrate(theta, X, alpha)
    assert r.theta.dtype == np.float32 and r.theta.shape == (8,)
    achieved = np.mean(_sig(X.astype(np.float64) @ r.theta.astype(np.float64)))
    assert abs(achieved - alpha) < 1e-6
    assert abs(r.achieved - achieved) < 1e-12
    assert abs(achieved - alpha) / alpha < 1e-3  # relative too, also for tiny alpha
    # paper: the whole vector is divided by its norm, then only the intercept moves
    unit = theta.astype(np.float64) / np.linalg.norm(theta.astype(np.float64))
    np.testing.assert_allclose(r.theta[1:], unit[1:], rtol=1e-6)
    assert r.theta[0] == pytest.approx(unit[0] + r.delta, abs=1e-5)
    assert r.scale == pytest.approx(1 / np.linalg.norm(theta.astype(np.float64)))


def test_delta_matches_bisection_twin():
    X = _users(S=300, seed=5)
    theta = np.random.default_rng(9).normal(size=8)
    for alpha in (0.01, 0.4, 0.97):
        r = calibrate(theta.astype(np.float32), X, alpha, normalize=False)
        z = X.astype(np.float64) @ theta.astype(np.float32).astype(np.float64)
        assert r.delta == pytest.approx(_bisect_shift(z, alpha), abs=1e-9)


def test_extreme_logit_spread():
    X = _users(S=200, scale=30.0)  # logits spread over hundreds of units
    theta = np.ones(8, dtype=np.float32)
    for alpha in (1e-4, 0.5, 0.9999):
        r = calibrate(theta, X, alpha, normalize=False)
        assert abs(mean_ctr(r.theta, X) - alpha) < 1e-6
    d = solve_shift(np.array([-800.0, 0.0, 800.0]), 0.5)
    assert abs(np.mean(_sig(np.array([-800.0, 0.0, 800.0]) + d)) - 0.5) < 1e-9


def test_switches_and_norm_scope():
    X = _users()
    theta = np.array([0.5, 3.0, -4.0, 0, 0, 0, 0, 0], dtype=np.float32)
    r = calibrate(theta, X, 0.1, normalize=False, shift=False)
    np.testing.assert_array_equal(r.theta, theta)
    assert r.delta == 0.0 and r.scale == 1.0
    r = calibrate(theta, X, 0.1, normalize=True, shift=False)
    np.testing.assert_allclose(r.theta, theta / np.linalg.norm(theta), rtol=1e-6)
    r = calibrate(theta, X, 0.1, normalize=True, shift=True, norm_scope="features")
    np.testing.assert_allclose(r.theta[1:3], [0.6, -0.8], rtol=1e-6)
    assert np.linalg.norm(r.theta[1:]) == pytest.approx(1.0, rel=1e-6)
    assert r.theta[0] == pytest.approx(0.5 + r.delta, abs=1e-5)
    assert abs(r.achieved - 0.1) < 1e-6
    z = calibrate(np.zeros(8, np.float32), X, 0.2)  # zero vector: no scaling, just the shift
    assert z.scale == 1.0 and abs(z.achieved - 0.2) < 1e-6


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        calibrate(np.ones(8, np.float32), _users(), alpha)


def test_bad_shapes():
    X = _users()
    with pytest.raises(ValueError, match="features"):
        calibrate(np.ones(5, np.float32), X, 0.1)
    with pytest.raises(ValueError, match="intercept"):
        calibrate(np.ones(8, np.float32), X * 2, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        calibrate(np.array([np.nan] * 8, np.float32), X, 0.1)
    with pytest.raises(ValueError, match="norm_scope"):
        calibrate(np.ones(8, np.float32), X, 0.1, norm_scope="bias")


def test_neighbour_alpha():
    X = _users(S=100)
    T = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    per = [np.mean(_sig(X.astype(np.float64) @ t.astype(np.float64))) for t in T]
    assert neighbour_alpha(T, X) == pytest.approx(np.mean(per), rel=1e-12)
    sims = np.array([0.9, 0.3, -0.5])
    assert neighbour_alpha(T, X, sims) == pytest.approx((0.9 * per[0] + 0.3 * per[1]) / 1.2, rel=1e-12)
    assert neighbour_alpha(T, X, np.zeros(3)) == pytest.approx(np.mean(per), rel=1e-12)
    big = np.full((1, 8), 0, np.float32)
    big[0, 0] = 80.0
    assert neighbour_alpha(big, X) == 1 - 1e-9  # clipped: always a valid calibration target
    with pytest.raises(ValueError):
        neighbour_alpha(T, X, np.ones(2))
    with pytest.raises(ValueError):
        neighbour_alpha(np.zeros((0, 8)), X)
