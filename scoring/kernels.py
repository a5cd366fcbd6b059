"""Numba kernels for linear CTR scoring: logits, fused top-k, per-feature contributions.

These are the *unchecked* kernels. Callers normally go through :mod:`scoring`, which
validates dtypes, contiguity and shapes in Python first; the kernels themselves only
accept exactly the types in their signatures (a mismatch is a numba ``TypeError``).

Numerics (shared with the NumPy twins in :mod:`scoring.reference`):

* Every product ``theta[i, j] * x[j]`` of two float32 values is exact in float64; the
  dot product is accumulated in float64 (vectorised, order chosen by LLVM) and rounded
  once to float32. So a logit equals the correctly rounded float32 of the exact dot
  product except when that lies within ~F * 2**-53 * sum|products| of a float32
  rounding boundary (then it may be the neighbouring float32: 1 ulp). The NumPy twin
  has the same property, hence kernels and twins agree to 1 ulp of the logit (plus a
  tiny absolute term under heavy cancellation) and are almost always bit-identical.
  The float32 logit is the value that is returned *and* the value that is ranked, so
  ties are ties of the returned numbers.
* Entry points are compiled with ``fastmath=False``; only the float64 accumulation
  helper ``_dot64`` allows ``reassoc``/``contract`` (see the note there): that is what
  lets LLVM vectorise it (about 3x faster) without changing the float32 results.
* Probabilities are ``sigmoid(float64(logit))`` computed in the overflow-free form
  (``1/(1+e^-z)`` for ``z >= 0``, ``e^z/(1+e^z)`` otherwise), rounded to float32.
* Ranking is by logit descending, ties broken by the lower ad index.
* ``allow`` is a uint8 mask of length M (nonzero = candidate); a length-0 array means
  "every ad is a candidate" (the public API maps ``allow=None`` to that).
* Content rules (``fptr``, ``fthr``, ``fad``: the by-feature index of
  :class:`scoring.rules.ContentRules`) drop, per user, the ads whose rule fires
  (``x[f] > t``) before selection; a length-0 ``fptr`` means none.
  ``k'`` is still ``min(k, #allowed)``: a batch row with fewer eligible ads is padded with
  idx -1, logit -inf, prob 0, and ``topk_one`` returns the shorter answer.
* Non-finite input raises ``ValueError``: ``x`` is checked up front, and a row of
  ``theta`` is detected as non-finite when its float64 dot product is not finite
  (finite float32 inputs can never overflow a float64 sum, so this is exact).

All kernels here run on one thread, release the GIL (``nogil=True``) and are cached on
disk (``cache=True``). Opt-in multi-threaded batch variants live in :mod:`scoring.parallel`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from .rules import _clear_mask, _exclusion_mask, _mask_block

# Inputs are declared read-only: a writable array converts safely to a read-only
# parameter, and the weight store hands out read-only zero-copy views of LMDB pages.
_F32_1D = types.Array(types.float32, 1, "C", readonly=True)
_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_U8_1D = types.Array(types.uint8, 1, "C", readonly=True)
_I32_1D = types.Array(types.int32, 1, "C", readonly=True)
_OUT_F32_1D = types.Array(types.float32, 1, "C")
_OUT_F32_2D = types.Array(types.float32, 2, "C")
_OUT_I64_1D = types.Array(types.int64, 1, "C")
_OUT_I64_2D = types.Array(types.int64, 2, "C")

#: Up to this many results the fused kernels keep a sorted insertion buffer while
#: scanning the ads; above it they collect all candidate logits and merge-sort them.
INSERTION_MAX_K = 64

_KW = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


# Only the float64 accumulation may be reassociated (so LLVM can vectorise it) and fused
# (FMA): each float32*float32 product is exact in float64, so FMA changes nothing, and the
# reassociated float64 sum differs from any other order by ~F * 2**-53 * sum|products|,
# far below the float32 rounding of the result. No nnan/ninf: the finiteness test below
# and in the callers must not be folded away.
@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _dot64(theta, i, xd):  # pragma: no cover - compiled
    """float64 dot product of theta[i, :] (float32) with xd (float64)."""
    s = 0.0
    for j in range(xd.shape[0]):
        s += np.float64(theta[i, j]) * xd[j]
    return s


@njit(**_KW)
def _finite(v):  # pragma: no cover - compiled
    """True unless v is inf or nan (kept out of the fastmath helper on purpose)."""
    return v - v == 0.0


@njit(**_KW)
def _load_f64(X, b, xd):  # pragma: no cover - compiled
    """xd[:] = float64(X[b, :]); returns False if any entry is NaN or inf."""
    ok = True
    for j in range(xd.shape[0]):
        v = np.float64(X[b, j])
        ok &= _finite(v)
        xd[j] = v
    return ok


@njit(**_KW)
def _sigmoid64(z):  # pragma: no cover - compiled
    """Overflow-free logistic function of a float64."""
    if z >= 0.0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@njit(**_KW)
def _n_allowed(M, allow):  # pragma: no cover - compiled
    if allow.shape[0] == 0:
        return M
    n = 0
    for i in range(M):
        if allow[i] != 0:
            n += 1
    return n


@njit(**_KW)
def _insert_range(theta, i0, i1, xd, kk, allow, ex, idx, lg, n):  # pragma: no cover
    """Scan ads i0 <= i < i1 into a sorted top-kk buffer (idx, lg) that holds n entries.

    Skips ads the allow mask drops and ads the user's exclusion mask ``ex`` (uint8 [M] from
    :func:`scoring.rules._exclusion_mask`, length 0 = none) marks; those are never scored.
    Buffer order: logit descending, then ad index ascending (ads arrive in index order,
    so an equal logit never displaces a buffered one). Returns the new fill count, or -1
    if a scanned row gives a non-finite logit (never raises, so it can run in prange).
    """
    use_mask = allow.shape[0] != 0
    use_ex = ex.shape[0] != 0
    for i in range(i0, i1):
        if use_mask and allow[i] == 0:
            continue
        if use_ex and ex[i] != 0:
            continue
        s = _dot64(theta, i, xd)
        if not _finite(s):
            return -1
        z = np.float32(s)
        if n == kk:
            if not (z > lg[kk - 1]):
                continue
            pos = kk - 1
        else:
            pos = n
            n += 1
        while pos > 0 and lg[pos - 1] < z:
            lg[pos] = lg[pos - 1]
            idx[pos] = idx[pos - 1]
            pos -= 1
        lg[pos] = z
        idx[pos] = i
    return n


@njit(**_KW)
def _topk_into(theta, xd, kk, allow, ex, idx, lg, scratch_i, scratch_v):  # pragma: no cover
    """Fill idx[:n], lg[:n] with the top n <= kk eligible ads for one user (float64 xd).

    Eligible: allowed by ``allow`` and not marked in the exclusion mask ``ex``. Returns n (less
    than kk only when fewer ads are eligible; entries n..kk-1 are left untouched), or -1
    (results undefined) if a scored row of theta gives a non-finite logit, i.e. holds NaN
    or inf. scratch_i / scratch_v (length >= number of allowed ads) are only used when
    kk > INSERTION_MAX_K. Never raises, so it can run in prange.
    """
    M = theta.shape[0]
    use_mask = allow.shape[0] != 0
    use_ex = ex.shape[0] != 0
    if kk <= INSERTION_MAX_K:
        return _insert_range(theta, 0, M, xd, kk, allow, ex, idx, lg, 0)
    n = 0
    for i in range(M):
        if use_mask and allow[i] == 0:
            continue
        if use_ex and ex[i] != 0:
            continue
        s = _dot64(theta, i, xd)
        if not _finite(s):
            return -1
        scratch_i[n] = i
        # negated so an ascending stable sort gives descending logits, lower index first
        scratch_v[n] = -np.float32(s)
        n += 1
    order = np.argsort(scratch_v[:n], kind="mergesort")
    n_out = min(kk, n)
    for t in range(n_out):
        o = order[t]
        idx[t] = scratch_i[o]
        lg[t] = -scratch_v[o]
    return n_out


@njit(**_KW)
def _finish_row(idx, lg, pr, n):  # pragma: no cover - compiled
    """prob = sigmoid(logit) for the n filled entries; pad the rest idx -1, logit -inf, prob 0."""
    for t in range(n):
        pr[t] = np.float32(_sigmoid64(np.float64(lg[t])))
    for t in range(n, idx.shape[0]):
        idx[t] = -1
        lg[t] = -np.inf
        pr[t] = 0.0


@njit(**_KW)
def _scores_into(theta, xd, out):  # pragma: no cover - compiled
    """out[i] = float32 logit of ad i; returns False if any is non-finite (never raises)."""
    ok = True
    for i in range(theta.shape[0]):
        s = _dot64(theta, i, xd)
        ok &= _finite(s)
        out[i] = np.float32(s)
    return ok


_THETA_BAD = "theta contains NaN or inf"

@njit(_OUT_F32_1D(_F32_2D, _F32_1D), **_KW)
def score_all(theta, x):  # pragma: no cover - compiled
    """Logits of every ad for one user: f32[M] = theta f32[M,F] @ x f32[F]."""
    xd = np.empty(x.shape[0], np.float64)
    if not _load_f64(x.reshape((1, x.shape[0])), 0, xd):
        raise ValueError("x contains NaN or inf")
    out = np.empty(theta.shape[0], np.float32)
    if not _scores_into(theta, xd, out):
        raise ValueError(_THETA_BAD)
    return out


@njit(_OUT_F32_2D(_F32_2D, _F32_2D), **_KW)
def score_matrix(theta, X):  # pragma: no cover - compiled
    """Logits of every ad for every user: f32[B,M] with out[b, i] = theta[i] . X[b]."""
    B, F = X.shape
    M = theta.shape[0]
    out = np.empty((B, M), np.float32)
    X64 = np.empty((B, F), np.float64)
    for b in range(B):
        if not _load_f64(X, b, X64[b]):
            raise ValueError("X contains NaN or inf")
    for b in range(B):
        if not _scores_into(theta, X64[b], out[b]):
            raise ValueError(_THETA_BAD)
    return out


_TOPK_ONE_SIG = types.Tuple((_OUT_I64_1D, _OUT_F32_1D, _OUT_F32_1D))(
    _F32_2D, _F32_1D, types.int64, _U8_1D, _I32_1D, _F32_1D, _I32_1D)
_TOPK_BATCH_SIG = types.Tuple((_OUT_I64_2D, _OUT_F32_2D, _OUT_F32_2D))(
    _F32_2D, _F32_2D, types.int64, _U8_1D, _I32_1D, _F32_1D, _I32_1D)


@njit(_TOPK_ONE_SIG, **_KW)
def topk_one(theta, x, k, allow, fptr, fthr, fad):  # pragma: no cover - compiled
    """Fused dot + sigmoid + top-k for one user.

    Returns (idx int64[k'], logit f32[k'], prob f32[k']) with k' = min(k, #eligible),
    sorted by logit descending, ties by lower ad index. ``allow`` of length 0 = all ads;
    (fptr, fthr, fad) are content rules (``ContentRules.by_feature``), fptr of length 0 = none.
    """
    n_ok = _n_allowed(theta.shape[0], allow)
    kk = max(min(k, n_ok), 0)
    idx = np.empty(kk, np.int64)
    lg = np.empty(kk, np.float32)
    pr = np.empty(kk, np.float32)
    if kk == 0:
        return idx, lg, pr
    xd = np.empty(x.shape[0], np.float64)
    if not _load_f64(x.reshape((1, x.shape[0])), 0, xd):
        raise ValueError("x contains NaN or inf")
    ns = n_ok if kk > INSERTION_MAX_K else 0
    ex = np.zeros(theta.shape[0] if fptr.shape[0] != 0 else 0, np.uint8)
    if ex.shape[0] != 0:
        _exclusion_mask(fptr, fthr, fad, x.reshape((1, x.shape[0])), 0, ex)
    n = _topk_into(theta, xd, kk, allow, ex, idx, lg, np.empty(ns, np.int64), np.empty(ns, np.float32))
    if n < 0:
        raise ValueError(_THETA_BAD)
    _finish_row(idx, lg, pr, n)
    if n < kk:  # content rules left fewer eligible ads than k: a shorter answer
        return idx[:n].copy(), lg[:n].copy(), pr[:n].copy()
    return idx, lg, pr


@njit(_TOPK_BATCH_SIG, **_KW)
def topk_batch(theta, X, k, allow, fptr, fthr, fad):  # pragma: no cover - compiled
    """Fused top-k for B users: arrays [B, k'] as in :func:`topk_one`, one row per user.

    k' = min(k, #allowed). A row whose user has fewer eligible ads (content rules) is
    padded at the end with idx -1, logit -inf, prob 0.
    """
    B, F = X.shape
    n_ok = _n_allowed(theta.shape[0], allow)
    kk = max(min(k, n_ok), 0)
    idx = np.empty((B, kk), np.int64)
    lg = np.empty((B, kk), np.float32)
    pr = np.empty((B, kk), np.float32)
    if kk == 0:
        return idx, lg, pr
    X64 = np.empty((B, F), np.float64)
    for b in range(B):
        if not _load_f64(X, b, X64[b]):
            raise ValueError("X contains NaN or inf")
    ns = n_ok if kk > INSERTION_MAX_K else 0
    si = np.empty(ns, np.int64)
    sv = np.empty(ns, np.float32)
    has_rules = fptr.shape[0] != 0
    ex = np.zeros(theta.shape[0] if has_rules else 0, np.uint8)
    for b in range(B):
        fired = _exclusion_mask(fptr, fthr, fad, X, b, ex) if has_rules else 0
        n = _topk_into(theta, X64[b], kk, allow, ex, idx[b], lg[b], si, sv)
        if fired:
            _clear_mask(fptr, fthr, fad, X, b, ex)
        if n < 0:
            raise ValueError(_THETA_BAD)
        _finish_row(idx[b], lg[b], pr[b], n)
    return idx, lg, pr


@njit(types.int64(_OUT_F32_2D, _F32_2D, _I32_1D, _F32_1D, _I32_1D), **_KW)
def mask_excluded(Z, X, fptr, fthr, fad):  # pragma: no cover - compiled
    """Z f32[B, M] logits: set Z[b, a] = -inf where a content rule of ad a fires for X[b];
    returns how many entries were masked (see :func:`scoring.rules._mask_block`)."""
    return _mask_block(Z, X, 0, 0, fptr, fthr, fad, np.zeros(Z.shape[1], np.uint8))


@njit(_OUT_F32_1D(_F32_1D, _F32_1D), **_KW)
def contributions(theta_row, x):  # pragma: no cover - compiled
    """Per-feature contributions f32[F]: theta_row[j] * x[j], each rounded to float32."""
    F = x.shape[0]
    out = np.empty(F, np.float32)
    for j in range(F):
        out[j] = theta_row[j] * x[j]
    return out


@njit(_OUT_F32_1D(_F32_1D), **_KW)
def sigmoid(z):  # pragma: no cover - compiled
    """Overflow-free logistic of float32 logits, computed in float64, returned as float32."""
    n = z.shape[0]
    out = np.empty(n, np.float32)
    for t in range(n):
        out[t] = np.float32(_sigmoid64(np.float64(z[t])))
    return out


#: Every compiled entry point, for warm-up and tests.
KERNELS = ("score_all", "score_matrix", "topk_one", "topk_batch", "mask_excluded", "contributions", "sigmoid")
