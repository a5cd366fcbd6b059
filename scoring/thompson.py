"""Numba kernels for Thompson-sample ranking (exploration for cold ads).

Each ad's weights have a diagonal Gaussian posterior N(theta[a], diag(sigma[a]**2)), so
for a user x the logit is Gaussian with mean ``theta[a] . x`` and standard deviation
``s_a = sqrt(sum_f sigma[a, f]**2 * x[f]**2)``. Ranking draws ONE standard normal ``z_a``
per ad per request and ranks by the sampled logit

    sample_a = float32(theta[a] . x + z_a * s_a)     (all in float64, rounded once)

with the same tie rule as the mean path (higher first, then lower ad index). The returned
``logit`` / ``prob`` are still the MEAN logit and its sigmoid; the sample only orders.

The normal draws come from a counter-based generator, so they depend only on
(seed, ad index) and never on threads, batch layout or call order:

    h  = splitmix64(splitmix64(seed) + a)            (uint64, wrapping)
    u1 = ((h >> 11) + 1) * 2**-53                    (0, 1]
    u2 = (splitmix64(h) >> 11) * 2**-53              [0, 1)
    z  = sqrt(-2 ln u1) * cos(2 pi u2)               (Box-Muller, one of the pair)

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

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 2.0 ** -53
_TWO_PI = 2.0 * np.pi


@njit(**_KW)
def _splitmix64(x):  # pragma: no cover - compiled
    """One splitmix64 output for state x (uint64 arithmetic, wrapping)."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(**_KW)
def _normal(key, a):  # pragma: no cover - compiled
    """Standard normal draw for ad a under key = splitmix64(seed) (see the module docstring)."""
    h = _splitmix64(key + np.uint64(a))
    u1 = np.float64((h >> _S11) + np.uint64(1)) * _TWO_M53
    u2 = np.float64(_splitmix64(h) >> _S11) * _TWO_M53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


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
def _sample_row(theta, sigma, xd, key, kk, allow, ex, idx, lg, key_buf):
    """Top-kk eligible ads of one user by sampled logit, insertion buffer (any kk).

    xd: float64 [F] features; ex: the user's exclusion mask (uint8 [M] or length 0).
    Fills idx[:n], lg[:n] (MEAN logits) and key_buf[:n]
    (the sampled logits the order is by); returns n, or -1 on a non-finite theta row.
    """  # pragma: no cover - compiled
    M = theta.shape[0]
    use_mask = allow.shape[0] != 0
    use_ex = ex.shape[0] != 0
    n = 0
    for i in range(M):
        if use_mask and allow[i] == 0:
            continue
        if use_ex and ex[i] != 0:
            continue
        s = _dot64(theta, i, xd)
        if not _finite(s):
            return -1
        z = np.float32(s)
        h = _splitmix64(key + np.uint64(i))
        u2 = np.float64(_splitmix64(h) >> _S11) * _TWO_M53
        # Exact shortcut: when the buffer is full and the mean cannot enter it, only z > 0 could
        # lift the sample in; cos(2 pi u2) < 0 for 1/4 < u2 < 3/4, so skip the variance and
        # the log/cos of those ads (about half of them). The result is unchanged.
        if n == kk and not (z > key_buf[kk - 1]) and 0.25 < u2 < 0.75:
            continue
        v = _sqdot64(sigma, i, xd)
        if v > 0.0:
            u1 = np.float64((h >> _S11) + np.uint64(1)) * _TWO_M53
            g = np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)
            z = np.float32(s + g * np.sqrt(v))
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
    _F32_2D, _F32_2D, _F32_1D, types.int64, types.uint64, _U8_1D, _I32_1D, _F32_1D, _I32_1D)
_BATCH_SIG = types.Tuple((_OUT_I64_2D, _OUT_F32_2D, _OUT_F32_2D, _OUT_F32_2D))(
    _F32_2D, _F32_2D, _F32_2D, types.int64, _U64_1D, _U8_1D, _I32_1D, _F32_1D, _I32_1D)


@njit(_ONE_SIG, **_KW)
def topk_one_thompson(theta, sigma, x, k, seed, allow, fptr, fthr, fad):  # pragma: no cover
    """Top-k for one user by Thompson sample: (idx i64[k'], mean logit f32[k'],
    mean prob f32[k'], sampled logit f32[k']), k' = min(k, #eligible), sample descending."""
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
    n = _sample_row(theta, sigma, xd, _splitmix64(seed), kk, allow, ex, idx, lg, smp)
    if n < 0:
        raise ValueError(_THETA_BAD)
    _finish(idx, lg, pr, smp, n)
    if n < kk:
        return idx[:n].copy(), lg[:n].copy(), pr[:n].copy(), smp[:n].copy()
    return idx, lg, pr, smp


@njit(_BATCH_SIG, **_KW)
def topk_batch_thompson(theta, sigma, X, k, seeds, allow, fptr, fthr, fad):  # pragma: no cover
    """Thompson top-k for B users, row b drawn with seeds[b]: arrays [B, k'] as in
    :func:`topk_one_thompson`, k' = min(k, #allowed), short rows padded (idx -1, logit
    and sample -inf, prob 0). Row b equals topk_one_thompson(..., X[b], seeds[b]) padded."""
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
        n = _sample_row(theta, sigma, xd, _splitmix64(seeds[b]), kk, allow, ex,
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
