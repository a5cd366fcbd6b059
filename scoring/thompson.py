"""Numba kernels for Thompson-sample ranking (exploration for cold ads).

Each ad's weights have a diagonal Gaussian posterior N(theta[a], diag(sigma[a]**2)), so
for a user x the logit is Gaussian with mean ``theta[a] . x`` and standard deviation
``s_a = sqrt(sum_f sigma[a, f]**2 * x[f]**2)``. Ranking draws ONE standard normal ``z_a``
per ad per request and ranks by the sampled logit

    sample_a = float32(theta[a] . x + z_a * s_a)     (all in float64, rounded once)

with the same tie rule as the mean path (higher first, then lower ad index). The returned
``logit`` / ``prob`` are still the MEAN logit and its sigmoid; the sample only orders.

The normal draws come from a counter-based generator, so they depend only on
(seed, ad index) and never on threads, batch layout or call order. One splitmix64 output
per ad gives one uniform, turned into one normal by the inverse normal CDF (a rational
approximation, relative error < 1.2e-9 against the exact quantile; no trigonometry, and a
logarithm only in the outer 4.85% of the tails):

    h = splitmix64(splitmix64(seed) + a)             (uint64, wrapping)
    u = ((h >> 12) + 0.5) * 2**-52                   [2**-53, 1 - 2**-53], exact, symmetric about 1/2
    z = Phi^-1(u)                                    (z > 0 exactly when u > 1/2)

Cost: the mean dot is the mean path's own (bit for bit); the variance dot and the normal are
only computed for ads whose sample could still enter the top k. With the buffer full and the
mean not above its last key, the draw is bounded without computing it: u lies in bucket
j = h >> 54 of 1,024, so z < _ZU[j] (the quantile at the bucket's upper end plus room for the
approximation's error; negative for j < 511, so every negative draw is caught). Given per-ad
bounds ``bound[a] = ||sigma[a]||_2`` (:func:`sigma_row_norms`; a server computes them once per
version, :func:`scoring.topk_batch_thompson` once per call when not given; times 1 + 1e-9
against rounding), the sample is at most ``s + _ZU[j] * bound[a] * max_f |x_f|``, and an ad
where that stays at or below the k-th key is skipped (without a bound only the negative draws
are). Mean and draw test are branched on once: a branch on the coin flip alone mispredicts
half the time.

Batches (:func:`topk_batch_gemm`, used for B >= GEMM_MIN_ROWS): one float32 sgemm per block of
users gives every mean logit to within the proven bound of :mod:`scoring.batch`; an ad whose
upper mean bound and sample bound stay at or below the row's k-th key is skipped before its
exact float64 dot product. Every skip is exact: the ranking, logits and samples are those of
scoring every ad (and of the twins).

With ``sigma == 0`` the sample equals the mean logit exactly, so the ranking is the
greedy one. Content rules and the allow mask work as in :mod:`scoring.kernels`.
The NumPy twins are in :mod:`scoring.reference` (``normal_draws``, ``topk_*_thompson``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from .kernels import (
    _F32_1D,
    _F32_2D,
    _I32_1D,
    _OUT_F32_1D,
    _OUT_F32_2D,
    _OUT_I64_1D,
    _OUT_I64_2D,
    _THETA_BAD,
    _U8_1D,
    _dot64,
    _finite,
    _load_f64,
    _n_allowed,
    _sigmoid64,
)
from .rules import _clear_mask, _exclusion_mask

_KW = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
_U64_1D = types.Array(types.uint64, 1, "C", readonly=True)
_F64_1D = types.Array(types.float64, 1, "C", readonly=True)
_BOUND_SLACK = 1.0 + 1e-9  # covers float64 rounding of the variance, sqrt and norm
_NO_Z = np.zeros(0, np.float32)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S12 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(12)
_TWO_M52 = 2.0 ** -52  # 52 bits: (h >> 12) + 0.5 is exact in float64, so u never rounds to 1


@njit(**_KW)
def _splitmix64(x):  # pragma: no cover - compiled
    """One splitmix64 output for state x (uint64 arithmetic, wrapping)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


# Rational approximation of the standard normal quantile (P. J. Acklam's coefficients):
# a central branch for |u - 1/2| <= 1/2 - _P_LOW and a tail branch in sqrt(-2 ln p).
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_P_LOW = 0.02425
_A0, _A1, _A2, _A3, _A4, _A5 = _A
_B0, _B1, _B2, _B3, _B4 = _B
_C0, _C1, _C2, _C3, _C4, _C5 = _C
_D0, _D1, _D2, _D3 = _D


@njit(**_KW)
def _uniform(key, a):  # pragma: no cover - compiled
    """The uniform u in (0, 1) of ad a under key = splitmix64(seed) (module docstring)."""
    h = _splitmix64(key + np.uint64(a))
    return (np.float64(h >> _S12) + 0.5) * _TWO_M52


@njit(**_KW)
def _inv_normal(u):  # pragma: no cover - compiled
    """Phi^-1(u) for u in (0, 1), float64, relative error < 1.2e-9; sign(result) = sign(u - 1/2)."""
    if u < _P_LOW or u > 1.0 - _P_LOW:
        t = np.sqrt(-2.0 * np.log(u if u < 0.5 else 1.0 - u))
        z = ((((((_C0 * t + _C1) * t + _C2) * t + _C3) * t + _C4) * t + _C5)
             / ((((_D0 * t + _D1) * t + _D2) * t + _D3) * t + 1.0))
        return z if u < 0.5 else -z
    q = u - 0.5
    r = q * q
    return ((((((_A0 * r + _A1) * r + _A2) * r + _A3) * r + _A4) * r + _A5) * q
            / (((((_B0 * r + _B1) * r + _B2) * r + _B3) * r + _B4) * r + 1.0))


#: _ZU[j] > every draw whose uniform lies in bucket j = h >> 54 (u < (j + 1) / 1024): the
#: quantile at the bucket's upper end plus room for the approximation's error; the top bucket
#: holds the largest draw there is (u <= 1 - 2**-53 gives z < 8.3). Negative for j < 511.
_ZU = np.array([_inv_normal.py_func((j + 1) / 1024.0) for j in range(1023)] + [8.5])
_ZU += 1e-7 * (1.0 + np.abs(_ZU))
_ZU.flags.writeable = False
_S54 = np.uint64(54)


@njit(inline="always", **_KW)
def _cannot_lift(h, up, thr, bx):  # pragma: no cover - compiled
    """True when the sample of an ad cannot exceed thr: its mean is at most ``up``, its draw is
    below _ZU[h >> 54] (no quantile computed) and its std at most ``bx`` (inf: unknown, then
    only a negative draw decides). One table load and one multiply-add; NaN never skips."""
    return up + _ZU[h >> _S54] * bx <= thr


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _sqdot64(sigma, i, xd):  # pragma: no cover - compiled
    """sum_f (float64(sigma[i, f]) * xd[f])**2: the sampled logit's variance (reassociated like
    _dot64 so it vectorises; a variance needs no bit-exact summation order)."""
    v = 0.0
    for j in range(xd.shape[0]):
        t = np.float64(sigma[i, j]) * xd[j]
        v += t * t
    return v


@njit(**_KW)
def _sample_row(theta, sigma, xd, key, kk, allow, ex, bound, zr, tol, idx, lg, key_buf):
    """Top-kk eligible ads of one user by sampled logit, insertion buffer (any kk).

    xd: float64 [F] features; ex: the user's exclusion mask (uint8 [M] or length 0);
    bound: float64 [M] ``||sigma[a]||_2`` (length 0: no bound, every candidate's variance);
    zr: float32 [M] sgemm logits of this user with |zr[a] - exact| <= tol (length 0: none).
    With zr, an ad whose mean upper bound zr + tol and sample bound cannot reach the k-th
    key is skipped before its exact dot product (the batch path; same result).
    Fills idx[:n], lg[:n] (MEAN logits) and key_buf[:n]
    (the sampled logits the order is by); returns n, or -1 on a non-finite theta row.
    """  # pragma: no cover - compiled
    M = theta.shape[0]
    use_mask = allow.shape[0] != 0
    use_ex = ex.shape[0] != 0
    use_bound = bound.shape[0] != 0
    use_z = zr.shape[0] != 0
    xmax = 0.0
    for j in range(xd.shape[0]):
        xmax = max(xmax, abs(xd[j]))
    xmax *= _BOUND_SLACK
    n = 0
    for i in range(M):
        if use_mask and allow[i] == 0:
            continue
        if use_ex and ex[i] != 0:
            continue
        if use_z and n == kk:
            thr = np.float64(key_buf[kk - 1])
            up = np.float64(zr[i]) + tol  # >= the exact mean logit
            # one branch for mean and draw together: a branch on the coin flip alone
            # mispredicts half the time
            if up <= thr and _cannot_lift(_splitmix64(key + np.uint64(i)), up, thr,
                                          bound[i] * xmax if use_bound else np.inf):
                continue
        s = _dot64(theta, i, xd)
        if not _finite(s):
            return -1
        z = np.float32(s)
        h = _splitmix64(key + np.uint64(i))
        u = (np.float64(h >> _S12) + 0.5) * _TWO_M52
        # Exact shortcut: when the buffer is full and the mean cannot enter it, only a draw
        # z > 0 (u > 1/2) could lift the sample in; skip the variance and the normal of the
        # others (about half of the ads). The result is unchanged.
        if n == kk and not (z > key_buf[kk - 1]):
            if _cannot_lift(h, s, np.float64(key_buf[kk - 1]), bound[i] * xmax if use_bound else np.inf):
                continue  # a negative draw, or the widest spread the bound allows, cannot lift it in
            v = _sqdot64(sigma, i, xd)
            if v > 0.0:
                z = np.float32(s + _inv_normal(u) * np.sqrt(v))
        else:
            v = _sqdot64(sigma, i, xd)
            if v > 0.0:
                z = np.float32(s + _inv_normal(u) * np.sqrt(v))
        if n == kk:
            if not (z > key_buf[kk - 1]):
                continue
            pos = kk - 1
        else:
            pos = n
            n += 1
        while pos > 0 and key_buf[pos - 1] < z:
            key_buf[pos] = key_buf[pos - 1]
            lg[pos] = lg[pos - 1]
            idx[pos] = idx[pos - 1]
            pos -= 1
        key_buf[pos] = z
        lg[pos] = np.float32(s)
        idx[pos] = i
    return n


@njit(**_KW)
def _finish(idx, lg, pr, smp, n):  # pragma: no cover - compiled
    for t in range(n):
        pr[t] = np.float32(_sigmoid64(np.float64(lg[t])))
    for t in range(n, idx.shape[0]):
        idx[t] = -1
        lg[t] = -np.inf
        pr[t] = 0.0
        smp[t] = -np.inf


_ONE_SIG = types.Tuple((_OUT_I64_1D, _OUT_F32_1D, _OUT_F32_1D, _OUT_F32_1D))(
    _F32_2D, _F32_2D, _F32_1D, types.int64, types.uint64, _U8_1D, _I32_1D, _F32_1D, _I32_1D, _F64_1D)
_BATCH_SIG = types.Tuple((_OUT_I64_2D, _OUT_F32_2D, _OUT_F32_2D, _OUT_F32_2D))(
    _F32_2D, _F32_2D, _F32_2D, types.int64, _U64_1D, _U8_1D, _I32_1D, _F32_1D, _I32_1D, _F64_1D)


@njit(types.float64[:](_F32_2D), **_KW)
def sigma_row_norms(sigma):  # pragma: no cover - compiled
    """float64 [M]: ||sigma[a]||_2 per ad, the bound the Thompson kernels prune with."""
    M, F = sigma.shape
    out = np.empty(M, np.float64)
    for i in range(M):
        v = 0.0
        for j in range(F):
            t = np.float64(sigma[i, j])
            v += t * t
        out[i] = np.sqrt(v) * _BOUND_SLACK
    return out


@njit(_ONE_SIG, **_KW)
def topk_one_thompson(theta, sigma, x, k, seed, allow, fptr, fthr, fad, bound):  # pragma: no cover
    """Top-k for one user by Thompson sample: (idx i64[k'], mean logit f32[k'],
    mean prob f32[k'], sampled logit f32[k']), k' = min(k, #eligible), sample descending.
    bound: :func:`sigma_row_norms` of sigma, or length 0 (no pruning by the bound)."""
    F = x.shape[0]
    n_ok = _n_allowed(theta.shape[0], allow)
    kk = max(min(k, n_ok), 0)
    idx = np.empty(kk, np.int64)
    lg = np.empty(kk, np.float32)
    pr = np.empty(kk, np.float32)
    smp = np.empty(kk, np.float32)
    if kk == 0:
        return idx, lg, pr, smp
    xd = np.empty(F, np.float64)
    if not _load_f64(x.reshape((1, F)), 0, xd):
        raise ValueError("x contains NaN or inf")
    ex = np.zeros(theta.shape[0] if fptr.shape[0] != 0 else 0, np.uint8)
    if ex.shape[0] != 0:
        _exclusion_mask(fptr, fthr, fad, x.reshape((1, F)), 0, ex)
    n = _sample_row(theta, sigma, xd, _splitmix64(seed), kk, allow, ex, bound, _NO_Z, 0.0, idx, lg, smp)
    if n < 0:
        raise ValueError(_THETA_BAD)
    _finish(idx, lg, pr, smp, n)
    if n < kk:
        return idx[:n].copy(), lg[:n].copy(), pr[:n].copy(), smp[:n].copy()
    return idx, lg, pr, smp


@njit(_BATCH_SIG, **_KW)
def topk_batch_thompson(theta, sigma, X, k, seeds, allow, fptr, fthr, fad, bound):  # pragma: no cover
    """Thompson top-k for B users, row b drawn with seeds[b]: arrays [B, k'] as in
    :func:`topk_one_thompson`, k' = min(k, #allowed), short rows padded (idx -1, logit
    and sample -inf, prob 0). Row b equals topk_one_thompson(..., X[b], seeds[b]) padded.
    bound: :func:`sigma_row_norms` of sigma, or length 0 (no pruning by the bound)."""
    B, F = X.shape
    n_ok = _n_allowed(theta.shape[0], allow)
    kk = max(min(k, n_ok), 0)
    idx = np.empty((B, kk), np.int64)
    lg = np.empty((B, kk), np.float32)
    pr = np.empty((B, kk), np.float32)
    smp = np.empty((B, kk), np.float32)
    if kk == 0:
        return idx, lg, pr, smp
    X64 = np.empty((B, F), np.float64)
    for b in range(B):
        if not _load_f64(X, b, X64[b]):
            raise ValueError("X contains NaN or inf")
    has_rules = fptr.shape[0] != 0
    ex = np.zeros(theta.shape[0] if has_rules else 0, np.uint8)
    xd = np.empty(F, np.float64)  # a 1-D buffer of its own keeps the row loops vectorised
    for b in range(B):
        fired = _exclusion_mask(fptr, fthr, fad, X, b, ex) if has_rules else 0
        for j in range(F):
            xd[j] = X64[b, j]
        n = _sample_row(theta, sigma, xd, _splitmix64(seeds[b]), kk, allow, ex, bound, _NO_Z, 0.0,
                        idx[b], lg[b], smp[b])
        if fired:
            _clear_mask(fptr, fthr, fad, X, b, ex)
        if n < 0:
            raise ValueError(_THETA_BAD)
        _finish(idx[b], lg[b], pr[b], smp[b], n)
    return idx, lg, pr, smp


@njit(types.uint64[:](types.uint64, types.int64), **_KW)
def row_seeds(seed, B):  # pragma: no cover - compiled
    """Per-row seeds of a batch request with one seed: splitmix64(seed + b), b = 0..B-1."""
    out = np.empty(B, np.uint64)
    for b in range(B):
        out[b] = _splitmix64(seed + np.uint64(b))
    return out


_Z_2D = types.Array(types.float32, 2, "C")
_U8_OUT = types.Array(types.uint8, 1, "C")
_BLOCK_SIG = types.void(_F32_2D, _F32_2D, _Z_2D, _F32_2D, types.int64, types.int64, _U64_1D, _U8_1D, _I32_1D,
                        _F32_1D, _I32_1D, _F64_1D, _F64_1D, _OUT_I64_2D, _OUT_F32_2D, _OUT_F32_2D, _OUT_F32_2D,
                        _U8_OUT)


@njit(_BLOCK_SIG, **_KW)
def _sample_block(theta, sigma, Z, X, row0, kk, seeds, allow, fptr, fthr, fad, cmax, bound,
                  idx, lg, pr, smp, status):  # pragma: no cover - compiled
    """Thompson top kk of users row0 .. row0 + nb - 1 given their sgemm logits Z [nb, M].

    The sgemm error bound of :mod:`scoring.batch` (tol = (F + 1) 2**-23 c . |x|, c = column
    maxima of |theta|) pre-filters each ad; rows whose bound is not small (non-finite theta,
    huge logits) score every ad exactly. status[r] = 2: a non-finite allowed theta row.
    """
    nb, M = Z.shape
    F = theta.shape[1]
    has_rules = fptr.shape[0] != 0
    ex = np.zeros(M if has_rules else 0, np.uint8)
    xd = np.empty(F, np.float64)
    tscale = (F + 1) * 2.0**-23
    for r in range(nb):
        b = row0 + r
        a = 0.0
        for j in range(F):
            v = np.float64(X[b, j])
            xd[j] = v
            a += cmax[j] * abs(v)
        tol = tscale * a
        fired = _exclusion_mask(fptr, fthr, fad, X, b, ex) if has_rules else 0
        zr = Z[r] if tol < 1e30 else _NO_Z
        n = _sample_row(theta, sigma, xd, _splitmix64(seeds[b]), kk, allow, ex, bound, zr, tol,
                        idx[b], lg[b], smp[b])
        if fired:
            _clear_mask(fptr, fthr, fad, X, b, ex)
        if n < 0:
            status[r] = 2
            n = 0
        _finish(idx[b], lg[b], pr[b], smp[b], n)


#: Below this many users the fused per-row kernel is used (an sgemm does not pay off).
GEMM_MIN_ROWS = 8


def topk_batch_gemm(theta, sigma, X, k, seeds, allow, fptr, fthr, fad, bound):
    """Thompson top-k for B users at sgemm speed; the same answers as :func:`topk_batch_thompson`
    (arguments alike; ``bound`` = :func:`sigma_row_norms` of sigma, required). One float32
    sgemm per block of users gives every mean logit to within a proven bound; only ads whose
    mean or sample could still reach a row's top k are scored exactly (float64) and sampled."""
    from .batch import _block, block_rows, colmax

    B, F = X.shape
    M = theta.shape[0]
    if B < GEMM_MIN_ROWS or bound.shape[0] != M:
        return topk_batch_thompson(theta, sigma, X, k, seeds, allow, fptr, fthr, fad, bound)
    n_ok = M if allow.shape[0] == 0 else int(np.count_nonzero(allow))
    kk = max(min(k, n_ok), 0)
    idx = np.empty((B, kk), np.int64)
    lg = np.empty((B, kk), np.float32)
    pr = np.empty((B, kk), np.float32)
    smp = np.empty((B, kk), np.float32)
    if kk == 0:
        return idx, lg, pr, smp
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf")
    cmax = colmax(theta)
    nb = min(block_rows(M), B)
    Z = _block(nb, M)
    status = np.zeros(nb, np.uint8)
    thetaT = theta.T
    with np.errstate(all="ignore"):  # NaN/overflow in the sgemm is caught by the bound
        for r0 in range(0, B, nb):
            r1 = min(B, r0 + nb)
            Zb = Z[: r1 - r0]
            np.matmul(X[r0:r1], thetaT, out=Zb)
            _sample_block(theta, sigma, Zb, X, r0, kk, seeds, allow, fptr, fthr, fad, cmax, bound,
                          idx, lg, pr, smp, status[: r1 - r0])
            if status.any():
                raise ValueError(_THETA_BAD)
    return idx, lg, pr, smp
