"""The sgemm-pruned batch kernel (scoring.batch) against its NumPy twin and the exact twin."""
from __future__ import annotations

import numpy as np
import pytest

import scoring
from scoring import batch as KB
from scoring import reference as R


def _world(M: int, F: int, B: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = rng.normal(0.0, 0.4, size=(M, F)).astype(np.float32)
    theta[:, 0] = rng.normal(-3.0, 0.5, size=M)
    X = rng.random((B, F), dtype=np.float32)
    X[:, 0] = 1.0
    return theta, X


def _same(a: tuple, b: tuple) -> None:
    for u, v in zip(a, b):
        assert u.shape == v.shape and u.dtype == v.dtype
        assert np.array_equal(u, v)


@pytest.mark.parametrize("M,F,B,k", [(120, 64, 300, 10), (1000, 64, 70, 20), (3000, 16, 40, 64),
                                     (500, 8, 33, 65), (7, 3, 9, 4), (64, 5, 1, 200), (2500, 32, 1100, 3)])
def test_matches_exact_twin_and_numpy_twin(M: int, F: int, B: int, k: int) -> None:
    theta, X = _world(M, F, B, seed=M + F + k)
    got = scoring.topk_batch(theta, X, k)
    _same(got, R.topk_batch_gemm(theta, X, k))
    idx, lg, pr = R.topk_batch(theta, X, k)
    assert np.array_equal(got[0], idx) and np.array_equal(got[1], lg)
    np.testing.assert_allclose(got[2], pr, rtol=1e-6)
    for b in (0, B // 2, B - 1):  # and each row is exactly the fused single-user kernel's answer
        _same(tuple(a[b] for a in got), scoring.topk_one(theta, X[b], k))


def test_near_ties_that_sgemm_reorders() -> None:
    # Rows that are permutations of each other have equal exact logits only up to float32
    # rounding of the sgemm; the pruning margin must keep every one of them.
    rng = np.random.default_rng(7)
    base = rng.normal(0, 1, size=32).astype(np.float32)
    theta = np.ascontiguousarray(np.stack([rng.permutation(base) for _ in range(400)]))
    theta[::7] *= np.float32(1 + 2**-20)
    X = rng.normal(0, 1, size=(50, 32)).astype(np.float32)
    X = np.ascontiguousarray(np.repeat(X[:1], 50, axis=0) + rng.normal(0, 1e-3, (50, 32)).astype(np.float32))
    for k in (1, 10, 64, 100):
        got = scoring.topk_batch(theta, X, k)
        for b in range(0, 50, 7):
            _same(tuple(a[b] for a in got), scoring.topk_one(theta, X[b], k))
        _same(got, R.topk_batch_gemm(theta, X, k))


@pytest.mark.parametrize("k", [3, 10, 64, 65, 150, 400])
def test_exact_ties_go_to_lower_index_with_mask(k: int) -> None:
    rng = np.random.default_rng(3)
    theta = np.ascontiguousarray(rng.standard_normal((4, 16), dtype=np.float32)[rng.integers(0, 4, 300)])
    X = rng.standard_normal((6, 16), dtype=np.float32)
    allow = (np.arange(300) % 3 != 0).astype(np.uint8)
    got = scoring.topk_batch(theta, X, k, allow)
    _same(got, R.topk_batch_gemm(theta, X, k, allow))
    for b in range(6):
        assert np.array_equal(got[0][b], R.topk_one(theta, X[b], k, allow)[0])


def test_k_above_m_all_denied_and_deny_mask() -> None:
    theta, X = _world(50, 6, 5, seed=1)
    got = scoring.topk_batch(theta, X, 10**6)
    assert got[0].shape == (5, 50) and sorted(got[0][0].tolist()) == list(range(50))
    none = np.zeros(50, np.uint8)
    assert [a.shape for a in scoring.topk_batch(theta, X, 5, none)] == [(5, 0)] * 3
    deny = np.ones(50, np.uint8)
    deny[[1, 2, 3]] = 0
    idx = scoring.topk_batch(theta, X, 47, deny)[0]
    assert idx.shape == (5, 47) and not np.isin(idx, [1, 2, 3]).any()


def test_results_are_finite_and_probabilities_in_range() -> None:
    theta, X = _world(2000, 24, 200, seed=5)
    idx, lg, pr = scoring.topk_batch(theta, X, 25)
    assert np.isfinite(lg).all() and np.isfinite(pr).all()
    assert ((pr > 0) & (pr < 1)).all() and (idx >= 0).all()
    assert np.all(np.diff(lg, axis=1) <= 0)


def test_exclusion_hook_removes_ads_per_user_and_pads() -> None:
    theta, X = _world(40, 5, 12, seed=9)
    rng = np.random.default_rng(0)
    excl = rng.random((12, 40)) < 0.5
    excl[3] = True          # user 3: everything excluded
    excl[4, :] = True
    excl[4, [5, 9]] = False  # user 4: two ads left

    def hook(Z: np.ndarray, row0: int) -> None:
        Z[excl[row0 : row0 + Z.shape[0]]] = -np.inf

    got = scoring.topk_batch(theta, X, 6, exclude=hook)
    _same(got, R.topk_batch_gemm(theta, X, 6, exclude=excl))
    idx, lg, pr = got
    assert (idx[3] == -1).all() and np.isneginf(lg[3]).all() and (pr[3] == 0).all()
    assert sorted(idx[4, :2].tolist()) == [5, 9] and (idx[4, 2:] == -1).all()
    for b in (0, 1, 7):
        assert not excl[b, idx[b][idx[b] >= 0]].any()


def test_blocks_and_bad_theta_rows() -> None:
    # more users than one block, and a non-finite theta row: raises unless masked out
    M = 300
    theta, X = _world(M, 8, 3 * KB.block_rows(M) + 5, seed=2)
    _same(scoring.topk_batch(theta, X, 7), R.topk_batch_gemm(theta, X, 7))
    bad = theta.copy()
    bad[11, 3] = np.nan
    with pytest.raises(ValueError, match="theta contains NaN or inf"):
        scoring.topk_batch(bad, X[:20], 7)
    allow = np.ones(M, np.uint8)
    allow[11] = 0
    _same(scoring.topk_batch(bad, X[:20], 7, allow), scoring.topk_batch(theta, X[:20], 7, allow))
    huge = theta.copy()
    huge[:, 0] = 3e38  # sgemm would overflow float32: those rows are scored exactly
    huge[:, 1] = -3e38
    _same(scoring.topk_batch(huge, X[:4], 5), tuple(np.stack(a) for a in zip(*[scoring.topk_one(huge, x, 5) for x in X[:4]])))
