"""The Numba scoring kernels against their plain-NumPy twins, plus input validation."""
from __future__ import annotations

import numpy as np
import pytest

import scoring
from scoring import kernels as K
from scoring import reference as R

SHAPES = [(1, 1), (1, 64), (3, 5), (120, 64), (257, 13), (1000, 64), (300, 128)]


def _rand(M: int, F: int, seed: int, B: int | None = None):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((M, F), dtype=np.float32)
    theta[:, 0] -= 2.0  # a negative intercept, like real CTR models
    if B is None:
        x = rng.standard_normal(F, dtype=np.float32)
    else:
        x = rng.standard_normal((B, F), dtype=np.float32)
    x[..., 0] = 1.0  # bias feature
    return theta, x


def _logit_tol(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Documented kernel-vs-twin logit tolerance: 2 float32 ulp + float64 reassociation slack."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(theta.astype(np.float64)).T
    F = theta.shape[1]
    return mag * (F * 2.0**-50)  # absolute part; the relative part is rtol below


def _assert_logits_close(got: np.ndarray, want: np.ndarray, theta, x) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    tol = _logit_tol(theta, x) + 2.0**-22 * np.abs(want.astype(np.float64))
    assert np.all(np.abs(got.astype(np.float64) - want) <= tol)


def _expected_order(z: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Independent ordering rule: logit descending, then ad index ascending."""
    return cand[np.lexsort((cand, -z[cand].astype(np.float64)))]


@pytest.mark.parametrize("M,F", SHAPES)
def test_score_all_and_matrix_match_twin(M: int, F: int) -> None:
    theta, X = _rand(M, F, seed=M * 31 + F, B=7)
    for x in X:
        _assert_logits_close(scoring.score_all(theta, x), R.score_all(theta, x), theta, x)
    got = scoring.score_matrix(theta, X)
    assert got.shape == (7, M)
    _assert_logits_close(got, R.score_matrix(theta, X), theta, X)
    # Row b of the matrix is exactly the single-user kernel's answer.
    assert np.array_equal(got[3], scoring.score_all(theta, X[3]))


def test_logits_are_correctly_rounded_dot_products() -> None:
    """The float64-accumulated logit equals the float32 rounding of an exact (float128-ish) sum."""
    theta, x = _rand(200, 64, seed=5)
    exact = (theta.astype(np.longdouble) @ x.astype(np.longdouble)).astype(np.float32)
    got = scoring.score_all(theta, x)
    # at most a rare 1-ulp boundary case, never more
    assert np.all(np.abs(got - exact) <= np.spacing(np.abs(exact)))
    assert np.mean(got == exact) > 0.95


@pytest.mark.parametrize("M,F", SHAPES)
@pytest.mark.parametrize("k", [1, 5, 64, 65, 10_000])
def test_topk_one_matches_twin(M: int, F: int, k: int) -> None:
    theta, X = _rand(M, F, seed=M + 7 * F + k, B=3)
    for x in X:
        idx, lg, pr = scoring.topk_one(theta, x, k)
        tidx, tlg, tpr = R.topk_one(theta, x, k)
        kk = min(k, M)
        assert idx.shape == lg.shape == pr.shape == (kk,)
        assert (idx.dtype, lg.dtype, pr.dtype) == (np.int64, np.float32, np.float32)
        assert np.array_equal(idx, tidx)
        _assert_logits_close(lg, tlg, theta[idx], x)
        np.testing.assert_allclose(pr, tpr, rtol=1e-6, atol=0)
        # Returned logits are the ranked ones: descending, and they are the best kk overall.
        assert np.all(np.diff(lg) <= 0)
        z = R.score_all(theta, x)
        assert np.array_equal(idx, _expected_order(z, np.arange(M))[:kk])


@pytest.mark.parametrize("k", [1, 10, 64, 65, 500])
def test_topk_one_with_mask_matches_twin(k: int) -> None:
    theta, x = _rand(500, 32, seed=k)
    rng = np.random.default_rng(k + 1)
    allow = (rng.random(500) < 0.3).astype(np.uint8)
    idx, lg, pr = scoring.topk_one(theta, x, k, allow)
    tidx, tlg, tpr = R.topk_one(theta, x, k, allow)
    assert len(idx) == min(k, int(allow.sum()))
    assert np.all(allow[idx] == 1)
    assert np.array_equal(idx, tidx)
    np.testing.assert_allclose(lg, tlg, rtol=2.0**-22, atol=1e-6)
    np.testing.assert_allclose(pr, tpr, rtol=1e-6)
    # a bool mask means the same thing
    bidx, _, _ = scoring.topk_one(theta, x, k, allow.astype(bool))
    assert np.array_equal(bidx, idx)


def test_k_at_and_above_number_of_ads() -> None:
    theta, x = _rand(9, 4, seed=1)
    full = scoring.topk_one(theta, x, 9)
    more = scoring.topk_one(theta, x, 50)
    assert len(full[0]) == 9 and sorted(full[0].tolist()) == list(range(9))
    for a, b in zip(full, more):
        assert np.array_equal(a, b)
    huge = scoring.topk_one(theta, x, 10**30)  # beyond int64: still "all ads"
    assert np.array_equal(huge[0], full[0])
    assert scoring.topk_batch(theta, x[None], 2**63)[0].shape == (1, 9)
    one_ad = scoring.topk_one(theta[:1].copy(), x, 3)
    assert one_ad[0].tolist() == [0]


def test_no_ads_and_no_features() -> None:
    empty = np.zeros((0, 5), np.float32)
    x = np.ones(5, np.float32)
    for out in (scoring.topk_one(empty, x, 3), R.topk_one(empty, x, 3)):
        assert [a.shape for a in out] == [(0,), (0,), (0,)]
    assert scoring.score_all(empty, x).shape == (0,)
    assert scoring.topk_batch(empty, x[None], 3)[0].shape == (1, 0)
    no_feat = np.zeros((4, 0), np.float32)
    idx, lg, pr = scoring.topk_one(no_feat, np.zeros(0, np.float32), 2)
    assert idx.tolist() == [0, 1] and lg.tolist() == [0.0, 0.0] and pr.tolist() == [0.5, 0.5]


def test_all_masked_out_gives_empty_results() -> None:
    theta, X = _rand(20, 6, seed=2, B=4)
    none = np.zeros(20, np.uint8)
    idx, lg, pr = scoring.topk_one(theta, X[0], 5, none)
    assert idx.shape == (0,) and lg.shape == (0,) and pr.shape == (0,)
    assert idx.dtype == np.int64 and lg.dtype == np.float32
    bidx, blg, bpr = scoring.topk_batch(theta, X, 5, none)
    assert bidx.shape == blg.shape == bpr.shape == (4, 0)
    tidx, _, _ = R.topk_batch(theta, X, 5, none)
    assert tidx.shape == (4, 0)


@pytest.mark.parametrize("k", [3, 10, 64, 65, 150, 400])
def test_ties_go_to_lower_ad_index(k: int) -> None:
    # 4 distinct rows repeated: every logit value is shared by ~75 ads.
    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 16), dtype=np.float32)
    pattern = rng.integers(0, 4, size=300)
    theta = np.ascontiguousarray(base[pattern])
    x = rng.standard_normal(16, dtype=np.float32)
    idx, lg, _ = scoring.topk_one(theta, x, k)
    z = scoring.score_all(theta, x)
    want = _expected_order(z, np.arange(300))[:k]
    assert np.array_equal(idx, want)
    assert np.array_equal(idx, R.topk_one(theta, x, k)[0])
    # inside each run of equal logits, indices ascend
    for a in range(len(idx) - 1):
        if lg[a] == lg[a + 1]:
            assert idx[a] < idx[a + 1]
    # ... also with a mask and in the batched kernel
    allow = (np.arange(300) % 3 != 0).astype(np.uint8)
    X = np.ascontiguousarray(np.stack([x, -x]))
    bidx, _, _ = scoring.topk_batch(theta, X, k, allow)
    for b in range(2):
        zb = scoring.score_all(theta, X[b])
        assert np.array_equal(bidx[b], _expected_order(zb, np.flatnonzero(allow))[:k])
        assert np.array_equal(bidx[b], R.topk_one(theta, X[b], k, allow)[0])


def test_exact_zero_and_signed_zero_logits_tie() -> None:
    theta = np.zeros((5, 3), np.float32)
    theta[2, 1] = -1.0  # products of -1 and +1 with x[1] = 0 are -0.0 and +0.0
    theta[4, 1] = 1.0
    x = np.array([1.0, 0.0, 0.0], np.float32)  # every logit is +-0
    idx, lg, pr = scoring.topk_one(theta, x, 5)
    assert idx.tolist() == [0, 1, 2, 3, 4]
    assert np.all(pr == 0.5)


def test_sigmoid_is_stable_at_huge_logits() -> None:
    F = 4
    theta = np.zeros((6, F), np.float32)
    theta[:, 0] = [1e4, -1e4, 88.0, -88.0, 0.0, -745.0]
    x = np.array([1.0, 0.5, 0.5, 0.5], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        idx, lg, pr = scoring.topk_one(theta, x, 6)
        tidx, tlg, tpr = R.topk_one(theta, x, 6)
    assert idx.tolist() == [0, 2, 4, 3, 5, 1]
    assert np.all(np.isfinite(pr)) and np.all((pr >= 0) & (pr <= 1))
    assert pr[0] == 1.0 and pr[-1] == 0.0 and pr[2] == 0.5
    assert 0 < pr[3] < 1e-37  # sigmoid(-88) is a tiny positive float32, not 0 or NaN
    assert np.array_equal(idx, tidx) and np.array_equal(lg, tlg)
    np.testing.assert_allclose(pr, tpr, rtol=1e-6, atol=0)
    z = np.array([-1e4, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4], np.float32)
    s = scoring.sigmoid(z)
    exact = np.array([1.0 / (1.0 + np.exp(-float(v))) if v > -700 else 0.0 for v in z])
    np.testing.assert_allclose(s, exact.astype(np.float32), rtol=1e-6, atol=0)
    assert np.array_equal(s, R.sigmoid(z))
    assert np.all(np.diff(s) >= 0)


@pytest.mark.parametrize("M,F,k", [(120, 64, 10), (1000, 64, 20), (50, 7, 80), (1, 3, 2)])
def test_topk_batch_matches_loop_and_twin(M: int, F: int, k: int) -> None:
    theta, X = _rand(M, F, seed=M + F + k, B=33)
    idx, lg, pr = scoring.topk_batch(theta, X, k)
    kk = min(k, M)
    assert idx.shape == lg.shape == pr.shape == (33, kk)
    for b in range(33):
        oi, ol, op = scoring.topk_one(theta, X[b], k)
        assert np.array_equal(idx[b], oi) and np.array_equal(lg[b], ol) and np.array_equal(pr[b], op)
    tidx, tlg, tpr = R.topk_batch(theta, X, k)
    assert np.array_equal(idx, tidx)
    np.testing.assert_allclose(pr, tpr, rtol=1e-6)


def test_contributions_match_twin_and_sum_to_logit() -> None:
    theta, x = _rand(10, 64, seed=9)
    for i in range(10):
        c = scoring.contributions(theta[i], x)
        assert c.dtype == np.float32 and c.shape == (64,)
        assert np.array_equal(c, R.contributions(theta[i], x))
        assert np.array_equal(c, theta[i] * x)
        np.testing.assert_allclose(c.astype(np.float64).sum(), scoring.score_all(theta, x)[i],
                                   rtol=1e-5, atol=1e-5)


def test_read_only_inputs_are_accepted_without_copy() -> None:
    theta, x = _rand(40, 8, seed=4)
    buf = theta.tobytes()
    ro = np.frombuffer(buf, dtype=np.float32).reshape(40, 8)  # read-only, like an LMDB view
    xr = np.frombuffer(x.tobytes(), dtype=np.float32)
    assert not ro.flags.writeable and not xr.flags.writeable
    mask = np.frombuffer(bytes([1, 0] * 20), dtype=np.uint8)
    assert np.array_equal(scoring.topk_one(ro, xr, 5, mask)[0], scoring.topk_one(theta, x, 5, mask)[0])
    assert np.array_equal(scoring.score_matrix(ro, xr.reshape(1, 8)), scoring.score_matrix(theta, x[None]))
    assert np.array_equal(scoring.contributions(ro[3], xr), scoring.contributions(theta[3], x))


def test_unchecked_fast_paths_agree() -> None:
    theta, X = _rand(64, 16, seed=8, B=5)
    allow = (np.arange(64) % 2).astype(np.uint8)
    for a, b in zip(scoring.topk_one_unchecked(theta, X[0], 7), scoring.topk_one(theta, X[0], 7)):
        assert np.array_equal(a, b)
    for a, b in zip(scoring.topk_batch_unchecked(theta, X, 7, allow), scoring.topk_batch(theta, X, 7, allow)):
        assert np.array_equal(a, b)


def test_non_finite_inputs_raise() -> None:
    theta, X = _rand(10, 4, seed=6, B=3)
    bad_x = X[0].copy()
    bad_x[2] = np.nan
    for fn in (scoring.score_all, lambda t, v: scoring.topk_one(t, v, 3), R.score_all):
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            fn(theta, bad_x)
    bad_X = X.copy()
    bad_X[1, 3] = np.inf
    for fn in (scoring.score_matrix, lambda t, v: scoring.topk_batch(t, v, 3), R.score_matrix):
        with pytest.raises(ValueError, match="X contains NaN or inf"):
            fn(theta, bad_X)
    bad_theta = theta.copy()
    bad_theta[7, 1] = -np.inf
    with pytest.raises(ValueError, match="theta contains NaN or inf"):
        scoring.topk_one(bad_theta, X[0], 3)
    with pytest.raises(ValueError, match="theta contains NaN or inf"):
        scoring.topk_one(bad_theta, X[0], 80)  # sort path
    with pytest.raises(ValueError, match="theta contains NaN or inf"):
        scoring.score_matrix(bad_theta, X)
    with pytest.raises(ValueError, match="theta contains NaN or inf"):
        R.topk_one(bad_theta, X[0], 3)
    # a non-finite row that is masked out is never scored
    allow = np.ones(10, np.uint8)
    allow[7] = 0
    idx, _, _ = scoring.topk_one(bad_theta, X[0], 10, allow)
    assert 7 not in idx.tolist() and len(idx) == 9
    assert np.array_equal(idx, R.topk_one(bad_theta, X[0], 10, allow)[0])


def _fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda t, x: scoring.topk_one(t.astype(np.float64), x, 3), r"theta must have dtype float32, got float64"),
        (lambda t, x: scoring.topk_one(t, x.astype(np.float16), 3), r"x must have dtype float32, got float16"),
        (lambda t, x: scoring.topk_one(t.tolist(), x, 3), r"theta must be a numpy.ndarray"),
        (lambda t, x: scoring.topk_one(_fortran(t), x, 3), r"theta must be C-contiguous"),
        (lambda t, x: scoring.topk_one(t, np.repeat(x, 2)[::2], 3), r"x must be C-contiguous"),
        (lambda t, x: scoring.topk_one(t, x[:-1], 3), r"x has 7 features but theta has 8"),
        (lambda t, x: scoring.topk_one(t, x[None, :], 3), r"x must be 1-D"),
        (lambda t, x: scoring.topk_one(t[0], x, 3), r"theta must be 2-D"),
        (lambda t, x: scoring.topk_one(t, x, 0), r"k must be >= 1, got 0"),
        (lambda t, x: scoring.topk_one(t, x, -4), r"k must be >= 1, got -4"),
        (lambda t, x: scoring.topk_one(t, x, True), r"k must be an integer"),
        (lambda t, x: scoring.topk_one(t, x, 2.0), r"k must be an integer"),
        (lambda t, x: scoring.topk_one(t, x, 3, np.ones(11, np.uint8)), r"allow must be 1-D of length M=12"),
        (lambda t, x: scoring.topk_one(t, x, 3, np.ones(12, np.int32)), r"allow must have dtype uint8 or bool, got int32"),
        (lambda t, x: scoring.topk_one(t, x, 3, np.ones((12, 1), np.uint8)), r"allow must be 1-D"),
        (lambda t, x: scoring.topk_one(t, x, 3, [1] * 12), r"allow must be a numpy uint8"),
        (lambda t, x: scoring.topk_one(t, x, 3, np.ones(24, np.uint8)[::2]), r"allow must be C-contiguous"),
        (lambda t, x: scoring.topk_batch(t, x, 3), r"X must be 2-D"),
        (lambda t, x: scoring.topk_batch(t, np.ones((2, 9), np.float32), 3), r"X has 9 features but theta has 8"),
        (lambda t, x: scoring.topk_batch(t, np.ones((2, 8)), 3), r"X must have dtype float32, got float64"),
        (lambda t, x: scoring.topk_batch(t, np.ones((4, 8), np.float32)[::2], 3), r"X must be C-contiguous"),
        (lambda t, x: scoring.topk_batch(t, x[None], 0), r"k must be >= 1"),
        (lambda t, x: scoring.score_all(t, x[:3]), r"x has 3 features but theta has 8"),
        (lambda t, x: scoring.score_matrix(t, x), r"X must be 2-D"),
        (lambda t, x: scoring.contributions(t[0], x[:4]), r"x has 4 features but theta_row has 8"),
        (lambda t, x: scoring.contributions(t, x), r"theta_row must be 1-D"),
        (lambda t, x: scoring.sigmoid(x.astype(np.float64)), r"z must have dtype float32"),
    ],
)
def test_validation_errors_name_the_problem(call, match: str) -> None:
    theta, x = _rand(12, 8, seed=0)
    with pytest.raises(ValueError, match=match):
        call(theta, x)


def test_numpy_integer_k_and_float32_subclass_dtype_are_accepted() -> None:
    theta, x = _rand(12, 8, seed=0)
    a = scoring.topk_one(theta, x, np.int64(4))[0]
    b = scoring.topk_one(theta, x, 4)[0]
    assert np.array_equal(a, b) and len(a) == 4
    le = theta.astype("<f4")  # equal dtype, possibly a different object
    assert np.array_equal(scoring.topk_one(le, x, 4)[0], b)


def test_big_endian_float32_is_rejected() -> None:
    theta, x = _rand(12, 8, seed=0)
    swapped = theta.astype(theta.dtype.newbyteorder())
    with pytest.raises(ValueError, match="theta must have dtype float32"):
        scoring.topk_one(swapped, x, 3)


def test_kernels_have_explicit_signatures_and_reject_other_types() -> None:
    for name in K.KERNELS:
        disp = getattr(K, name)
        assert len(disp.signatures) == 1, name
        assert disp._can_compile is False, f"{name} would compile new specialisations"
    theta, x = _rand(4, 3, seed=0)
    with pytest.raises(TypeError):
        K.score_all(theta.astype(np.float64), x)


def test_warmup_runs_every_kernel() -> None:
    scoring.warmup()
    for name in K.KERNELS:
        assert len(getattr(K, name).overloads) == 1


def test_set_threads_validates_and_parallel_batch_is_identical() -> None:
    import numba

    for bad in (0, -1, 1.0, "2", numba.config.NUMBA_NUM_THREADS + 1):
        with pytest.raises(ValueError, match="set_threads"):
            scoring.set_threads(bad)
    assert scoring.get_threads() == 1
    theta, X = _rand(300, 16, seed=11, B=40)
    seq = scoring.topk_batch(theta, X, 12)
    seq_m = scoring.score_matrix(theta, X)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("only one Numba thread available")
    try:
        scoring.set_threads(2)
        assert scoring.get_threads() == 2
        par = scoring.topk_batch(theta, X, 12)
        for a, b in zip(seq, par):
            assert np.array_equal(a, b)
        assert np.array_equal(scoring.score_matrix(theta, X), seq_m)
        bad = X.copy()
        bad[17, 2] = np.nan
        with pytest.raises(ValueError, match="X contains NaN or inf"):
            scoring.topk_batch(theta, bad, 12)
    finally:
        scoring.set_threads(1)
    assert scoring.get_threads() == 1
