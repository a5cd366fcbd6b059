"""The small-catalog batch path (scoring.batch_small) against the twins and the row-major path.

Every case here is one that ``scoring.topk_batch`` sends to the transposed kernel (each test
asserts ``use_small``), so a change of the dispatch rule cannot silently leave it untested.
The row-major path is forced with a no-op exclusion hook (hooks only run there).
"""
from __future__ import annotations

import numpy as np
import pytest

import scoring
from scoring import batch_small as S
from scoring import reference as R
from tests.scoring.test_batch import _same, _world


def _row_major(theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray | None = None) -> tuple:
    return scoring.topk_batch(theta, X, k, allow, exclude=lambda Z, row0: None)


def _kk(M: int, k: int, allow: np.ndarray | None = None) -> int:
    return min(k, M if allow is None else int(np.count_nonzero(allow)))


@pytest.mark.parametrize("M,F,B,k", [(120, 64, 300, 10), (40, 8, 257, 10), (319, 16, 600, 10),
                                     (80, 7, 5, 3), (256, 12, 70, 64), (2047, 4, 9, 64),
                                     (20, 33, 1, 1), (30, 5, 513, 2)])
def test_matches_twins_the_single_user_kernel_and_the_row_major_path(M: int, F: int, B: int, k: int) -> None:
    theta, X = _world(M, F, B, seed=M * 7 + F + k)
    assert S.use_small(M, _kk(M, k))
    got = scoring.topk_batch(theta, X, k)
    _same(got, R.topk_batch_gemm(theta, X, k))
    _same(got, _row_major(theta, X, k))
    idx, lg, pr = R.topk_batch(theta, X, k)
    assert np.array_equal(got[0], idx) and np.array_equal(got[1], lg)
    np.testing.assert_allclose(got[2], pr, rtol=1e-6)
    for b in sorted({0, B // 2, B - 1}):
        _same(tuple(a[b] for a in got), scoring.topk_one(theta, X[b], k))


@pytest.mark.parametrize("k", [10, 20, 40])
def test_exact_ties_go_to_lower_index_with_a_mask(k: int) -> None:
    # 4 distinct rows repeated: whole groups of equal logits, so the candidate tightening runs
    rng = np.random.default_rng(k)
    theta = np.ascontiguousarray(rng.standard_normal((4, 16), dtype=np.float32)[rng.integers(0, 4, 300)])
    X = rng.standard_normal((300, 16), dtype=np.float32)
    allow = (np.arange(300) % 3 != 0).astype(np.uint8)
    assert S.use_small(300, _kk(300, k, allow))
    got = scoring.topk_batch(theta, X, k, allow)
    _same(got, R.topk_batch_gemm(theta, X, k, allow))
    _same(got, _row_major(theta, X, k, allow))
    for b in range(0, 300, 37):
        assert np.array_equal(got[0][b], R.topk_one(theta, X[b], k, allow)[0])
    assert not np.isin(got[0], np.flatnonzero(allow == 0)).any()


def test_near_ties_that_sgemm_reorders() -> None:
    # permuted rows: equal exact logits up to float32 rounding of the sgemm, which the
    # margin must keep, and a mask that empties whole groups of consecutive ads
    rng = np.random.default_rng(11)
    base = rng.normal(0, 1, size=32).astype(np.float32)
    theta = np.ascontiguousarray(np.stack([rng.permutation(base) for _ in range(200)]))
    theta[::5] *= np.float32(1 + 2**-20)
    X = np.ascontiguousarray(np.repeat(rng.normal(0, 1, size=(1, 32)).astype(np.float32), 300, axis=0)
                             + rng.normal(0, 1e-3, (300, 32)).astype(np.float32))
    allow = np.ones(200, np.uint8)
    allow[20:60] = 0
    for k, mask in ((10, None), (10, allow), (30, allow)):
        assert S.use_small(200, _kk(200, k, mask))
        got = scoring.topk_batch(theta, X, k, mask)
        _same(got, R.topk_batch_gemm(theta, X, k, mask))
        for b in range(0, 300, 41):
            _same(tuple(a[b] for a in got), scoring.topk_one(theta, X[b], k, mask))


def test_bad_theta_rows_raise_unless_masked_and_huge_logits_are_exact() -> None:
    theta, X = _world(100, 8, 300, seed=4)
    assert S.use_small(100, 10)
    bad = theta.copy()
    bad[17, 2] = np.inf
    with pytest.raises(ValueError, match="theta contains NaN or inf"):
        scoring.topk_batch(bad, X, 10)
    allow = np.ones(100, np.uint8)
    allow[17] = 0
    _same(scoring.topk_batch(bad, X, 10, allow), scoring.topk_batch(theta, X, 10, allow))
    huge = theta.copy()
    huge[:, 0] = 3e38  # the sgemm overflows float32: every candidate is scored exactly
    huge[:, 1] = -3e38
    got = scoring.topk_batch(huge, X[:6], 10)
    _same(got, tuple(np.stack(a) for a in zip(*[scoring.topk_one(huge, x, 10) for x in X[:6]])))


def test_dispatch_rule_and_group_sizes() -> None:
    assert S.use_small(120, 10) and not S.use_small(320, 10) and not S.use_small(39, 10)
    assert not S.use_small(1000, 65)  # above the insertion buffer
    for M, kk in ((120, 10), (40, 10), (2047, 64), (80, 3)):
        C = S.group_size(M, kk)
        G = -(-M // C)
        assert kk <= G <= 3 * kk  # enough groups for the bound, few enough to count


@pytest.mark.parametrize("per_ad", [1, 10])
def test_content_rules_are_masked_into_the_transposed_block(per_ad: int) -> None:
    # rules fire for about half of the users per rule, so some users lose most of the
    # catalog (short rows padded with -1 / -inf / 0), and a mask on top
    from scoring.rules import make_rules

    M, F, B, k = 120, 12, 300, 10
    rng = np.random.default_rng(per_ad)
    theta = rng.standard_normal((M, F), dtype=np.float32)
    X = rng.standard_normal((B, F), dtype=np.float32)
    X[:, 0] = 1.0
    rules = make_rules(M, F, [(a, int(rng.integers(1, F)), float(rng.normal(1.0 - per_ad / 10, 0.5)))
                              for a in range(M) for _ in range(per_ad)])
    allow = (np.arange(M) % 4 != 1).astype(np.uint8)
    assert S.use_small(M, _kk(M, k, allow))
    got = scoring.topk_batch(theta, X, k, allow, rules)
    _same(got, R.topk_batch_rules(theta, X, k, allow, rules))
    row_major = scoring.topk_batch(theta, X, k, allow, rules, exclude=lambda Z, row0: None)
    _same(got, row_major)
    if per_ad == 10:
        assert (got[0] == -1).any()  # some users really had fewer than k eligible ads
    for b in range(0, B, 53):
        want = scoring.topk_one(theta, X[b], k, allow, rules)
        n = want[0].shape[0]
        assert np.array_equal(got[0][b, :n], want[0]) and np.array_equal(got[1][b, :n], want[1])
