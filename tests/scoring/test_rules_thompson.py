"""Content rules and Thompson ranking: the Numba kernels against their NumPy twins."""
from __future__ import annotations

import numpy as np
import pytest

import scoring
from scoring import reference as R
from scoring import thompson as T
from scoring.rules import ContentRules, make_rules

SHAPES = [(1, 2), (120, 64), (257, 13), (1000, 64)]


def _world(M: int, F: int, seed: int, B: int = 6):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((M, F), dtype=np.float32)
    X = rng.standard_normal((B, F), dtype=np.float32)
    X[:, 0] = 1.0
    return theta, X


def _random_rules(M: int, F: int, per_ad: int, seed: int) -> ContentRules:
    """per_ad rules per ad on random non-bias features, thresholds near the N(0,1) median
    so roughly half of the users trip each rule."""
    rng = np.random.default_rng(seed)
    triples = [(a, int(rng.integers(1, F)) if F > 1 else 0, float(rng.normal(1.0, 0.5)))
               for a in range(M) for _ in range(per_ad)]
    rng.shuffle(triples)  # make_rules must group by ad itself
    return make_rules(M, F, triples)


# ---------------------------------------------------------------- rules values
def test_make_rules_builds_csr_and_names_bad_rules() -> None:
    r = make_rules(4, 3, [(2, 1, 0.5), (0, 2, -1.0), (2, 0, 3.0)])
    assert r.ad_ptr.tolist() == [0, 1, 1, 3, 3]
    assert r.feature.tolist() == [2, 1, 0] and r.threshold.tolist() == [-1.0, 0.5, 3.0]
    assert r.of_ad(2) == [(1, 1, 0.5), (2, 0, 3.0)] and r.n_rules == 3 and r.n_ads == 4
    assert not r.ad_ptr.flags.writeable
    with pytest.raises(ValueError, match=r"rule 1: ad index 4 is out of range \[0, 4\)"):
        make_rules(4, 3, [(0, 0, 1.0), (4, 0, 1.0)])
    with pytest.raises(ValueError, match=r"rule 0: feature index 3 is out of range"):
        make_rules(4, 3, [(0, 3, 1.0)])
    with pytest.raises(ValueError, match=r"rule 0 \(ad 1, feature 2\): threshold nan is not finite"):
        make_rules(4, 3, [(1, 2, float("nan"))])
    with pytest.raises(ValueError, match="not finite as float32"):
        make_rules(4, 3, [(1, 2, 1e39)])  # overflows float32
    with pytest.raises(ValueError, match="feature index 9 is out of range"):
        scoring.topk_one(np.zeros((4, 3), np.float32), np.zeros(3, np.float32), 2,
                         rules=ContentRules(np.array([0, 1, 1, 1, 1], np.int32), np.array([9], np.int32),
                                            np.array([0.0], np.float32)))
    with pytest.raises(ValueError, match="expected M\\+1 = 5"):
        scoring.topk_batch(np.zeros((4, 3), np.float32), np.zeros((1, 3), np.float32), 2,
                           rules=make_rules(3, 3, []))


def test_rule_threshold_is_strict_and_twin_names_the_first_firing_rule() -> None:
    r = make_rules(3, 3, [(0, 1, 0.5), (0, 2, 0.0), (2, 2, 0.25)])
    x = np.array([1.0, 0.5, 0.25], np.float32)  # ad 0: rule 0 at threshold (no), rule 1 fires
    ex, rule = R.rules_excluding(r, x)
    assert ex.tolist() == [True, False, False] and rule.tolist() == [1, -1, -1]
    x2 = np.array([1.0, 0.75, 0.5], np.float32)
    assert R.rules_excluding(r, x2)[1].tolist() == [0, -1, 2]


# ---------------------------------------------------------------- rules in the kernels
@pytest.mark.parametrize("M,F", SHAPES)
@pytest.mark.parametrize("k", [1, 10, 65, 5000])
def test_topk_with_rules_matches_twin(M: int, F: int, k: int) -> None:
    theta, X = _world(M, F, seed=M + F + k)
    rules = _random_rules(M, F, per_ad=3, seed=M * 3 + k)
    allow = (np.arange(M) % 5 != 3).astype(np.uint8)
    for a in (None, allow):
        for x in X:
            got = scoring.topk_one(theta, x, k, a, rules)
            want = R.topk_one_rules(theta, x, k, a, rules)
            assert np.array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-5)
            excluded = R.rules_excluding(rules, x)[0]
            assert not excluded[got[0]].any()
        gi, gl, gp = scoring.topk_batch(theta, X, k, a, rules)
        ti, tl, tp = R.topk_batch_rules(theta, X, k, a, rules)
        assert np.array_equal(gi, ti)
        assert np.array_equal(np.isinf(gl), np.isinf(tl)) and np.array_equal(gp == 0, tp == 0)
        fin = np.isfinite(tl)
        np.testing.assert_allclose(gl[fin], tl[fin], rtol=1e-6, atol=1e-5)
        n_allowed = M if a is None else int(a.sum())
        assert gi.shape == (X.shape[0], min(k, n_allowed))
        # a padded row: -1 after the last eligible ad, never before
        for row, lrow in zip(gi, gl):
            n = int((row >= 0).sum())
            assert (row[:n] >= 0).all() and (row[n:] == -1).all() and np.all(lrow[n:] == -np.inf)


def test_rules_exclude_exactly_the_named_ads_for_users_above_threshold() -> None:
    theta = np.zeros((4, 3), np.float32)
    theta[:, 0] = [3.0, 2.0, 1.0, 0.0]  # ad order without rules: 0, 1, 2, 3
    rules = make_rules(4, 3, [(0, 1, 0.5), (2, 2, 0.0)])  # "meat ad 0 not for vegetarians (f1 > 0.5)"
    veg = np.array([1.0, 0.9, -1.0], np.float32)
    omni = np.array([1.0, 0.1, -1.0], np.float32)
    both = np.array([1.0, 0.9, 1.0], np.float32)
    assert scoring.topk_one(theta, veg, 4, rules=rules)[0].tolist() == [1, 2, 3]
    assert scoring.topk_one(theta, omni, 4, rules=rules)[0].tolist() == [0, 1, 2, 3]
    assert scoring.topk_one(theta, both, 4, rules=rules)[0].tolist() == [1, 3]
    idx, lg, pr = scoring.topk_batch(theta, np.stack([veg, omni, both]), 4, rules=rules)
    assert idx.tolist() == [[1, 2, 3, -1], [0, 1, 2, 3], [1, 3, -1, -1]]
    assert lg[2].tolist()[2:] == [-np.inf, -np.inf] and pr[2].tolist()[2:] == [0.0, 0.0]
    Z = scoring.score_matrix(theta, np.stack([veg, omni, both]), rules)
    assert np.array_equal(Z, R.score_matrix_rules(theta, np.stack([veg, omni, both]), rules))
    assert np.isinf(Z).sum() == 3
    # unchecked variants take the same rules
    assert scoring.topk_one_unchecked(theta, veg, 4, None, rules)[0].tolist() == [1, 2, 3]
    assert scoring.topk_batch_unchecked(theta, veg[None], 2, None, rules)[0].tolist() == [[1, 2]]
    # every ad excluded for a user: empty answer, padded batch row
    all_out = make_rules(4, 3, [(a, 1, 0.5) for a in range(4)])
    assert scoring.topk_one(theta, veg, 3, rules=all_out)[0].size == 0
    assert scoring.topk_batch(theta, np.stack([veg, omni]), 3, rules=all_out)[0].tolist() == [[-1] * 3, [0, 1, 2]]


def test_rules_work_in_the_parallel_batch_kernel() -> None:
    import numba

    theta, X = _world(300, 16, seed=3, B=40)
    rules = _random_rules(300, 16, per_ad=2, seed=4)
    seq = scoring.topk_batch(theta, X, 12, None, rules)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("only one Numba thread available")
    try:
        scoring.set_threads(2)
        par = scoring.topk_batch(theta, X, 12, None, rules)
    finally:
        scoring.set_threads(1)
    for a, b in zip(seq, par):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------- Thompson
def test_normal_draws_match_twin_and_look_standard_normal() -> None:
    theta = np.zeros((20000, 1), np.float32)
    sigma = np.ones_like(theta)
    x = np.ones(1, np.float32)
    idx, lg, _, smp = scoring.topk_one_thompson(theta, sigma, x, 20000, seed=123)
    z = np.empty(20000)
    z[idx] = smp
    want = R.normal_draws(123, 20000)
    np.testing.assert_allclose(z, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.03 and np.all(lg == 0.0)
    assert np.array_equal(T.row_seeds(np.uint64(5), 4), R.row_seeds(5, 4))


def test_inverse_normal_cdf_is_accurate_and_kernel_equals_twin() -> None:
    from scipy.special import ndtri

    u = np.concatenate([np.linspace(2.0**-54, 1 - 2.0**-53, 400_001), np.logspace(-16, -1, 500),
                        1 - np.logspace(-16, -1, 500), [0.02425, 1 - 0.02425, 0.5]])
    z = R.inv_normal(u)
    ref = ndtri(u)
    assert np.max(np.abs(z - ref) / np.maximum(np.abs(ref), 1e-300)) < 1.2e-9
    assert np.all(np.sign(z) == np.sign(u - 0.5))  # the kernels' sign shortcut relies on this
    got = np.array([T._inv_normal(v) for v in u[::997]])
    np.testing.assert_allclose(got, z[::997], rtol=1e-14, atol=0.0)
    # the extreme uniforms the generator can produce stay finite and inside the skip table
    lo, hi = T._inv_normal(2.0**-53), T._inv_normal(1 - 2.0**-53)
    assert np.isfinite([lo, hi]).all() and -T._ZU[-1] < lo < hi < T._ZU[-1]
    # each bucket's table entry bounds every draw in it (the kernels skip ads by it)
    j = np.arange(1024)
    top = R.inv_normal(np.minimum((j + 1) / 1024.0 - 2.0**-53, 1 - 2.0**-53))
    assert np.all(top < T._ZU) and np.all(T._ZU[:511] < 0)


@pytest.mark.parametrize("M,F", SHAPES)
@pytest.mark.parametrize("k", [1, 10, 200])
def test_thompson_matches_twin(M: int, F: int, k: int) -> None:
    theta, X = _world(M, F, seed=7 * M + F)
    sigma = np.abs(np.random.default_rng(M).normal(0.0, 0.3, (M, F))).astype(np.float32)
    rules = _random_rules(M, F, per_ad=2, seed=k)
    bound = scoring.sigma_row_norms(sigma)
    for x in X:
        for r in (None, rules):
            got = scoring.topk_one_thompson(theta, sigma, x, k, 99, rules=r)
            want = R.topk_one_thompson(theta, sigma, x, k, 99, rules=r)
            pruned = scoring.topk_one_thompson(theta, sigma, x, k, 99, rules=r, sigma_bound=bound)
            assert all(np.array_equal(a, b) for a, b in zip(got, pruned))  # the bound only skips work
            assert np.array_equal(got[0], want[0])
            np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-5)
            assert np.all(np.diff(got[3]) <= 0)
    seeds = np.arange(X.shape[0], dtype=np.uint64) * np.uint64(1000003)
    gi, gl, gp, gs = scoring.topk_batch_thompson(theta, sigma, X, k, seeds, rules=rules)
    ti, tl, tp, ts = R.topk_batch_thompson(theta, sigma, X, k, seeds, rules=rules)
    assert np.array_equal(gi, ti) and np.array_equal(gp == 0, tp == 0)


def test_thompson_seed_reproducible_layout_free_and_sigma_zero_is_greedy() -> None:
    theta, X = _world(500, 32, seed=1, B=8)
    sigma = np.full_like(theta, 0.5)
    a = scoring.topk_one_thompson(theta, sigma, X[0], 10, 2024)
    b = scoring.topk_one_thompson(theta, sigma, X[0], 10, 2024)
    c = scoring.topk_one_thompson(theta, sigma, X[0], 10, 2025)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    # the returned logit/ctr are the mean ones, not the sample
    assert np.array_equal(a[1], scoring.score_all(theta, X[0])[a[0]])
    assert not np.array_equal(a[1], a[3])
    # per-row seeds: a row's answer does not depend on the batch around it
    seeds = np.array([11, 22, 33, 44, 55, 66, 77, 88], np.uint64)
    full = scoring.topk_batch_thompson(theta, sigma, X, 10, seeds)
    part = scoring.topk_batch_thompson(theta, sigma, np.ascontiguousarray(X[[5, 2]]), 10, seeds[[5, 2]])
    assert np.array_equal(full[0][[5, 2]], part[0])
    assert np.array_equal(full[0][3], scoring.topk_one_thompson(theta, sigma, X[3], 10, 44)[0])
    # one seed for a batch -> documented per-row seeds
    one = scoring.topk_batch_thompson(theta, sigma, X, 10, 9)
    assert np.array_equal(one[0], scoring.topk_batch_thompson(theta, sigma, X, 10, R.row_seeds(9, 8))[0])
    # sigma = 0: exactly the greedy ranking, logits and all
    zero = np.zeros_like(theta)
    for x in X:
        t = scoring.topk_one_thompson(theta, zero, x, 25, 5)
        g = scoring.topk_one(theta, x, 25)
        assert np.array_equal(t[0], g[0]) and np.array_equal(t[1], g[1]) and np.array_equal(t[3], g[1])
    tb = scoring.topk_batch_thompson(theta, zero, X, 7, 3)
    assert np.array_equal(tb[0], scoring.topk_batch(theta, X, 7)[0])


@pytest.mark.parametrize("scale", [1e-3, 0.05, 0.5, 3.0])
def test_thompson_bound_pruning_is_exact_at_any_spread(scale: float) -> None:
    """The per-ad bound skips most variances when the spread is small; the ranking and the
    samples are those of scoring every ad, for one user and in a batch."""
    rng = np.random.default_rng(int(scale * 1000))
    theta = rng.normal(0.0, 0.3, (1000, 64)).astype(np.float32)
    sigma = np.abs(rng.normal(0.0, scale, (1000, 64))).astype(np.float32)
    sigma[::7] = 0.0  # some ads without spread: their sample is the mean
    X = rng.random((12, 64), dtype=np.float32)
    X[:, 0] = 1.0
    bound = scoring.sigma_row_norms(sigma)
    assert not bound.flags.writeable and bound.shape == (1000,)
    seeds = np.arange(12, dtype=np.uint64) + np.uint64(2**63)
    for k in (1, 10, 64):
        a = scoring.topk_batch_thompson(theta, sigma, X, k, seeds, sigma_bound=bound)
        b = R.topk_batch_thompson(theta, sigma, X, k, seeds)
        assert np.array_equal(a[0], b[0])
        np.testing.assert_allclose(a[3], b[3], rtol=1e-5, atol=1e-5)
        for i in (0, 5, 11):
            one = scoring.topk_one_thompson(theta, sigma, X[i], k, int(seeds[i]), sigma_bound=bound)
            assert np.array_equal(one[0], a[0][i]) and np.array_equal(one[3], a[3][i])


def test_thompson_validates_inputs() -> None:
    theta, X = _world(5, 3, seed=0)
    sigma = np.zeros_like(theta)
    with pytest.raises(ValueError, match=r"sigma_bound must be scoring.sigma_row_norms\(sigma\): float64 \[5\]"):
        scoring.topk_one_thompson(theta, sigma, X[0], 2, 1, sigma_bound=np.zeros(4))
    with pytest.raises(ValueError, match="sigma_bound must be"):
        scoring.topk_batch_thompson(theta, sigma, X, 2, 1, sigma_bound=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="sigma has shape"):
        scoring.topk_one_thompson(theta, sigma[:, :2].copy(), X[0], 2, 1)
    with pytest.raises(ValueError, match="seed must be an integer"):
        scoring.topk_one_thompson(theta, sigma, X[0], 2, 1.5)
    with pytest.raises(ValueError, match="seed must be in"):
        scoring.topk_one_thompson(theta, sigma, X[0], 2, -1)
    with pytest.raises(ValueError, match="seed array"):
        scoring.topk_batch_thompson(theta, sigma, X, 2, np.zeros(2, np.uint64))
    bad = X[0].copy()
    bad[1] = np.inf
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        scoring.topk_one_thompson(theta, sigma, bad, 2, 1)


def test_block_mask_helper_for_a_blocked_kernel() -> None:
    """scoring.rules._mask_block masks a [users x ads] logit block at any offset, like the twin."""
    from scoring.rules import _mask_block

    theta, X = _world(50, 9, seed=8, B=12)
    rules = _random_rules(50, 9, per_ad=3, seed=9)
    full = R.score_matrix_rules(theta, X, rules)
    Z = scoring.score_matrix(theta, X)
    ex = np.zeros(50, np.uint8)
    n = 0
    for b0 in range(0, 12, 5):
        for a0 in range(0, 50, 16):
            blk = np.ascontiguousarray(Z[b0:b0 + 5, a0:a0 + 16])
            n += _mask_block(blk, X, b0, a0, *rules.by_feature, ex)
            Z[b0:b0 + 5, a0:a0 + 16] = blk
    assert np.array_equal(Z, full) and n == int(np.isinf(full).sum()) > 0
    assert not ex.any()  # the scratch mask is left clean
