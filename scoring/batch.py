"""Batched top-k at matrix-product speed: float32 sgemm prunes, float64 decides.

For B users the logits are computed block by block with one BLAS sgemm per block
(``X_block @ theta.T`` into a reusable float32 scratch block), and a compiled per-row
selection then picks each user's top k. The sgemm logits are only used to *prune*:

1. ``T`` = the k-th largest sgemm logit of the row's candidates;
2. every candidate whose sgemm logit is within a proven error margin of ``T`` is kept
   (usually k plus a handful);
3. those are re-scored exactly as :func:`scoring.topk_one` scores them (float64 dot
   product rounded once to float32, the same ``_dot64``), and ranked by that logit
   descending with ties to the lower ad index.

So results are those of the fused kernels (same ids, logits and probabilities), at the
cost of one sgemm plus O(M) comparisons per user.

Why the margin is safe: an sgemm dot product of F float32 terms (any summation order,
with or without FMA) is within ``gamma_F * sum_j |theta_ij x_j|`` of the exact value,
``gamma_F = F u / (1 - F u)``, ``u = 2**-24``. We bound the sum by ``c . |x|`` with
``c_j = max_i |theta_ij|`` and use ``tol = (F + 1) * 2**-23 * (c . |x|)`` (> 2 gamma_F).
If an ad is in the exact top k, its sgemm logit is >= ``T - 2 tol`` minus one float32
ulp of slack for equal-after-rounding ties; the margin below adds more than that.
Rows where the bound is not finite or not small (theta holds NaN/inf, or |logits| near
the float32 range) skip pruning and score every candidate exactly (then a non-finite
allowed row raises as in :func:`scoring.topk_one`).

Exclusion hook (per user, e.g. content rules): after the sgemm of a block and before its
selection, ``topk_batch(..., exclude=fn)`` calls ``fn(Z, row0)`` with the writable float32
logits block ``Z [nb, M]`` of users ``row0 .. row0 + nb - 1``; setting ``Z[r, i] = -inf``
removes ad i for that user. Rows that end up with fewer than k' candidates are padded
with ``idx = -1``, ``logit = -inf``, ``prob = 0``. (Caveat: in a row that skips pruning
because of |logits| ~ 1e38, an sgemm overflow to -inf also counts as excluded.)

One kernel body serves the serial and the parallel variants: :func:`_select_block` is
written with ``prange`` over the block's rows and compiled twice (here without
``parallel``, where ``prange`` is ``range``; in :mod:`scoring.parallel` with it).
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
from numba import njit, prange, types

from .kernels import (
    _F32_2D,
    _OUT_F32_2D,
    _OUT_I64_2D,
    _THETA_BAD,
    _U8_1D,
    INSERTION_MAX_K,
    _finite,
    _sigmoid64,
)

__all__ = ["topk_batch", "colmax", "select_block", "block_rows", "ExcludeHook"]

#: ``fn(Z, row0)``: set ``Z[r, i] = -inf`` to exclude ad i for user ``row0 + r``.
ExcludeHook = Callable[[np.ndarray, int], None]

_KW = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
_Z_2D = types.Array(types.float32, 2, "C")  # writable: the scratch block (readonly typing made the scans ~2x slower)
_F64_1D = types.Array(types.float64, 1, "C", readonly=True)
_U8_OUT = types.Array(types.uint8, 1, "C")
_EPS = 2.0**-23
_NEG_INF = np.float32(-np.inf)
#: Rows whose error bound exceeds this skip pruning (sgemm could overflow float32).
_TOL_MAX = 1e30


@njit(types.float64[::1](_F32_2D), **_KW)
def colmax(theta):  # pragma: no cover - compiled
    """c_j = max_i |theta[i, j]| as float64 [F]; NaN/inf anywhere in column j makes c_j non-finite."""
    M, F = theta.shape
    c = np.zeros(F, np.float64)
    for i in range(M):
        for j in range(F):
            v = abs(np.float64(theta[i, j]))
            if v > c[j] or v != v:  # NaN sticks: nothing compares greater than NaN
                c[j] = v
    return c


@njit(**_KW)
def _kth_largest(v, n, kk, buf):  # pragma: no cover - compiled
    """The kk-th largest of v[:n] (finite or -inf values, n >= kk >= 1).

    kk <= INSERTION_MAX_K: one pass with a sorted buffer ``buf`` [>= kk] (the hot loop is
    one compare against its minimum; an insertion is a fixed run of min/max, no branches
    to mispredict); larger kk: a partition of a copy.
    """
    if kk > INSERTION_MAX_K:
        return np.partition(v[:n].copy(), n - kk)[n - kk]
    for p in range(kk):
        buf[p] = _NEG_INF
    low = _NEG_INF
    for i in range(n):
        z = v[i]
        if z > low:
            # branch-free insertion into the descending buffer: new[p] = max(old[p], min(old[p-1], z))
            for p in range(kk - 1, 0, -1):
                a = buf[p - 1]
                m = z if z < a else a
                b = buf[p]
                buf[p] = m if m > b else b
            b = buf[0]
            buf[0] = z if z > b else b
            low = buf[kk - 1]
    return low


@njit(inline="always", **_KW)
def _threshold32(t, a):  # pragma: no cover - compiled
    """float32 pruning threshold below a k-th largest sgemm logit ``t`` (``a = 2 tol``).

    ``t - (a + 3 float32 ulps + tiny)`` rounded to float32: at least the 2 tol of the
    error bound plus 2 ulps for ties after rounding, and one more ulp for the rounding of
    the threshold itself. Non-decreasing in ``t``, so a lower bound of the k-th largest
    gives a threshold that keeps a superset of the candidates.
    """
    t = np.float64(t)
    return np.float32(t - (a + 3.0 * _EPS * (abs(t) + a) + 1e-37))


#: Ads per chunk when M >= 32 kk (else 4): the selection first takes each chunk's
#: maximum (a loop LLVM unrolls into vector selects), then looks inside only the chunks
#: whose maximum can reach the top k.
_CHUNK = 8


@njit(inline="always", **_KW)
def _maxima_fixed(Zr, C, out):  # pragma: no cover - compiled
    """out[c] = max(Zr[c*C : (c+1)*C]) for the full chunks (C a literal at each call site,
    so the inner loop is unrolled and vectorised); returns the number of full chunks."""
    nfull = Zr.shape[0] // C
    for c in range(nfull):
        m = _NEG_INF
        for j in range(C):
            z = Zr[c * C + j]
            m = z if z > m else m
        out[c] = m
    return nfull


@njit(inline="always", **_KW)
def _chunk_maxima(Zr, C, use_mask, allow, out):  # pragma: no cover - compiled
    """out[c] = max of the candidates (allowed ads) in chunk c = Zr[c*C : (c+1)*C]; -inf
    when it has none. Returns the number of chunks. (NaN needs a non-finite theta, whose
    rows are never pruned, so it is not handled.)"""
    M = Zr.shape[0]
    nch = (M + C - 1) // C
    if use_mask:
        nfull = 0
    elif C == _CHUNK:
        nfull = _maxima_fixed(Zr, _CHUNK, out)
    else:
        nfull = _maxima_fixed(Zr, 4, out)
    for c in range(nfull, nch):
        m = _NEG_INF
        for j in range(c * C, min(M, c * C + C)):
            z = Zr[j] if not use_mask or allow[j] != 0 else _NEG_INF
            m = z if z > m else m
        out[c] = m
    return nch


@njit(inline="always", **_KW)
def _lower_bound(cmx, nch, kk, buf, lv):  # pragma: no cover - compiled
    """A lower bound of the row's kk-th largest candidate from its chunk maxima cmx[:nch]
    (nch >= kk): the kk-th largest chunk maximum, found without data-dependent branches
    on most values. Split the chunks into kk groups; the smallest group maximum lb0 is a
    bound already (kk distinct ads reach it), so only maxima >= lb0 (usually ~3 kk of
    them, compacted branch-free into lv) go through the insertion selection."""
    if nch < 4 * kk:  # too few maxima for the grouping to pay off
        return _kth_largest(cmx, nch, kk, buf)
    g = nch // kk
    lb0 = np.float32(np.inf)
    for q in range(kk):
        j1 = nch if q == kk - 1 else (q + 1) * g
        m = _NEG_INF
        for c in range(q * g, j1):
            v = cmx[c]
            m = v if v > m else m
        lb0 = m if m < lb0 else lb0
    nl = 0
    for c in range(nch):  # branch-free compaction: always write, advance when kept
        v = cmx[c]
        lv[nl] = v
        nl += v >= lb0
    return _kth_largest(lv, nl, kk, buf)


@njit(inline="always", **_KW)
def _collect(Zr, C, nch, cmx, t32, use_mask, allow, ci, kc):  # pragma: no cover - compiled
    """Indices of the candidates with sgemm logit >= t32 (allowed, not -inf), in index
    order, into ci as far as it holds them; returns their total count. Only chunks whose
    maximum reaches t32 are looked into (their ids compacted branch-free into kc)."""
    M = Zr.shape[0]
    cap = ci.shape[0]
    nk = 0
    for c in range(nch):
        kc[nk] = c
        nk += cmx[c] >= t32
    nc = 0
    for q in range(nk):
        c = kc[q]
        j0 = c * C
        j1 = min(M, j0 + C)
        if nc + (j1 - j0) <= cap:
            for j in range(j0, j1):  # branch-free: write, then advance when kept
                z = Zr[j]
                ci[nc] = j
                nc += (z >= t32) & (z != _NEG_INF) & (not use_mask or allow[j] != 0)
        else:
            for j in range(j0, j1):
                z = Zr[j]
                if z >= t32 and z != _NEG_INF and not (use_mask and allow[j] == 0):
                    if nc < cap:
                        ci[nc] = j
                    nc += 1
    return nc


@njit(**_KW)
def _all_candidates(Zr, use_mask, allow, ci):  # pragma: no cover - compiled
    """Every allowed ad that is not -inf (NaN included, so its exact re-score raises)."""
    nc = 0
    cap = ci.shape[0]
    for j in range(Zr.shape[0]):
        if (use_mask and allow[j] == 0) or Zr[j] == _NEG_INF:
            continue
        if nc < cap:
            ci[nc] = j
        nc += 1
    return nc


#: Up to this many exact candidates are ranked by counting, above by insertion.
_RANK_MAX = 32

@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _dots64(theta, ci, nc, xd, sv):  # pragma: no cover - compiled
    """sv[c] = float64 dot product of theta[ci[c], :] with xd, for c < nc: the loop of
    :func:`scoring.kernels._dot64` (same flags, same inner loop, so the same sums), run
    for all of a user's candidates in one call instead of one call per candidate."""
    F = xd.shape[0]
    for c in range(nc):
        i = ci[c]
        s = 0.0
        for j in range(F):
            s += np.float64(theta[i, j]) * xd[j]
        sv[c] = s


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _load_bound(X, b, cmax, xd):  # pragma: no cover - compiled
    """xd[:] = float64(X[b, :]); returns sum_j cmax[j] |xd[j]|, the scale of the row's error
    bound. Summed in any order: the bound's factor (F + 1) 2**-23 exceeds what it must
    cover (F 2**-23) by far more than the ~F 2**-53 this order can change the sum."""
    s = 0.0
    for j in range(xd.shape[0]):
        v = np.float64(X[b, j])
        xd[j] = v
        s += cmax[j] * abs(v)
    return s


@njit(inline="always", **_KW)
def _kth_by_count(v, n, kk):  # pragma: no cover - compiled
    """The kk-th largest of v[:n] (n >= kk >= 1): the smallest value that fewer than kk
    values beat. O(n^2) comparisons with no data-dependent branch (they vectorise), which
    beats an insertion selection, whose inserts mispredict, for n up to a few dozen."""
    t = np.float32(np.inf)
    for c in range(n):
        z = v[c]
        beat = 0
        for d in range(n):
            beat += v[d] > z
        t = z if (beat < kk) & (z < t) else t
    return t


@njit(inline="always", **_KW)
def _finish_row(theta, xd, kk, nc, ci, cv, sv, oi, ol, ob):  # pragma: no cover - compiled
    """Re-score a user's nc candidates ci[:nc] (ad index order) exactly and write its top
    min(kk, nc) into row ``ob`` of oi/ol [B, kk], by logit descending, ties to the lower
    index; returns how many, or -1 if a candidate's row of theta is non-finite.
    cv float32 / sv float64: scratch of >= nc (sv is replaced when smaller)."""
    if sv.shape[0] < nc:
        sv = np.empty(nc, np.float64)
    _dots64(theta, ci, nc, xd, sv)
    for c in range(nc):
        s = sv[c]
        if not _finite(s):
            return -1
        cv[c] = np.float32(s)
    kr = min(kk, nc)
    if nc <= _RANK_MAX:
        # rank by counting (no data-dependent branch): candidate c goes to the place of the
        # candidates ranked before it, by logit descending, ties to the lower index (c's
        # index order is the ad index order)
        for c in range(nc):
            z = cv[c]
            before = 0
            for d in range(nc):
                w = cv[d]
                before += (w > z) | ((w == z) & (d < c))
            if before < kr:
                ol[ob, before] = z
                oi[ob, before] = ci[c]
        return kr
    if kr <= INSERTION_MAX_K:
        n = 0  # sorted insertion; candidates arrive in index order, so ties keep the lower index
        for c in range(nc):
            z = cv[c]
            if n == kr:
                if not (z > ol[ob, kr - 1]):
                    continue
                pos = kr - 1
            else:
                pos = n
                n += 1
            while pos > 0 and ol[ob, pos - 1] < z:
                ol[ob, pos] = ol[ob, pos - 1]
                oi[ob, pos] = oi[ob, pos - 1]
                pos -= 1
            ol[ob, pos] = z
            oi[ob, pos] = ci[c]
        return kr
    order = np.argsort(-cv[:nc], kind="mergesort")  # stable: equal logits keep index order
    for t in range(kr):
        oi[ob, t] = ci[order[t]]
        ol[ob, t] = cv[order[t]]
    return kr


@njit(inline="always", **_KW)
def _close_row(n, kk, idx, lg, pr, b):  # pragma: no cover - compiled
    """Row b of the outputs after its top n are written: their probabilities, then the
    padding of a short row (idx -1, logit -inf, prob 0) up to kk."""
    for t in range(n):
        pr[b, t] = np.float32(_sigmoid64(np.float64(lg[b, t])))
    for t in range(n, kk):
        idx[b, t] = -1
        lg[b, t] = _NEG_INF
        pr[b, t] = 0.0


@njit(inline="always", **_KW)
def _select_row(theta, Zr, xd, kk, use_mask, allow, tol, oi, ol, ob, buf, ci, cv, sv, cmx, lv, kc):  # pragma: no cover
    """Top kk of one user into row ``ob`` of oi/ol [B, kk] (whole arrays: no per-row views);
    returns how many were filled (<= kk), -1 if a re-scored allowed row of theta is non-finite.

    buf [min(kk, 64)], ci/cv [cap], sv float64 [cap], cmx/lv float32 and kc int64 [ceil(M / 4)]:
    per-row scratch (ci/cv are replaced by larger arrays when more candidates survive than they hold).
    """
    M = Zr.shape[0]
    a = 2.0 * tol
    if tol < _TOL_MAX:  # prune (False for NaN / inf bounds)
        C = _CHUNK if M >= 32 * kk else 4
        nch = _chunk_maxima(Zr, C, use_mask, allow, cmx)
        t32 = _NEG_INF
        if nch >= kk:  # the kk-th largest chunk maximum bounds the kk-th largest logit below
            lb = _lower_bound(cmx, nch, kk, buf, lv)
            if lb != _NEG_INF:
                t32 = _threshold32(lb, a)
        nc = _collect(Zr, C, nch, cmx, t32, use_mask, allow, ci, kc)
        if nc > ci.shape[0]:
            ci = np.empty(nc, np.int64)
            cv = np.empty(nc, np.float32)
            _collect(Zr, C, nch, cmx, t32, use_mask, allow, ci, kc)
        if nc > kk + 4:  # tighten with the exact kk-th largest sgemm logit of the candidates
            for c in range(nc):
                cv[c] = Zr[ci[c]]
            t2 = _threshold32(_kth_largest(cv, nc, kk, buf), a)
            m = 0
            for c in range(nc):
                if cv[c] >= t2:
                    ci[m] = ci[c]
                    m += 1
            nc = m
    else:
        nc = _all_candidates(Zr, use_mask, allow, ci)
        if nc > ci.shape[0]:
            ci = np.empty(nc, np.int64)
            cv = np.empty(nc, np.float32)
            _all_candidates(Zr, use_mask, allow, ci)
    return _finish_row(theta, xd, kk, nc, ci, cv, sv, oi, ol, ob)


#: Users per prange task: each task allocates its scratch once and reuses it row by row
#: (per-row views of shared scratch cost more in reference counting than the selection).
_ROWS_PER_TASK = 64


def _select_block(theta, Z, X, row0, kk, allow, cmax, idx, lg, pr, status):  # pragma: no cover
    """Top kk for users row0 .. row0 + nb - 1 from their sgemm logits Z [nb, M].

    Writes rows of idx/lg/pr [B, kk]; status[r] = 2 when user row0 + r hit a non-finite
    allowed row of theta (exceptions cannot leave a prange body; the caller raises).
    The prange runs over tasks of _ROWS_PER_TASK users; each task owns its scratch.
    """
    nb, M = Z.shape
    F = theta.shape[1]
    use_mask = allow.shape[0] != 0
    tscale = (F + 1) * _EPS
    cap = 2 * kk + 32
    ntask = (nb + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for q in prange(ntask):
        xd = np.empty(F, np.float64)
        buf = np.empty(min(kk, INSERTION_MAX_K), np.float32)
        ci = np.empty(cap, np.int64)
        cv = np.empty(cap, np.float32)
        sv = np.empty(cap, np.float64)
        cmx = np.empty((M + 3) // 4, np.float32)
        lv = np.empty((M + 3) // 4, np.float32)
        kc = np.empty((M + 3) // 4, np.int64)
        for r in range(q * _ROWS_PER_TASK, min(nb, (q + 1) * _ROWS_PER_TASK)):
            b = row0 + r
            s = _load_bound(X, b, cmax, xd)
            n = _select_row(theta, Z[r], xd, kk, use_mask, allow, tscale * s, idx, lg, b,
                            buf, ci, cv, sv, cmx, lv, kc)
            if n < 0:
                status[r] = 2
                n = 0
            _close_row(n, kk, idx, lg, pr, b)


SELECT_SIG = types.void(_F32_2D, _Z_2D, _F32_2D, types.int64, types.int64, _U8_1D, _F64_1D,
                        _OUT_I64_2D, _OUT_F32_2D, _OUT_F32_2D, _U8_OUT)
#: The serial compilation of the one block body (the parallel one is in scoring.parallel).
select_block = njit(SELECT_SIG, **_KW)(_select_block)

_scratch = threading.local()


def block_rows(M: int) -> int:
    """Users per sgemm block for M ads: a logits block of at most 16 MiB, 64..1024 rows
    (sgemm loses a third of its speed below ~256 rows on 10,000 x 128)."""
    return int(min(1024, max(64, (1 << 22) // max(M, 1))))


def _block(rows: int, M: int) -> np.ndarray:
    """This thread's reusable float32 scratch of at least rows*M entries, as [rows, M]."""
    buf = getattr(_scratch, "buf", None)
    need = rows * M
    if buf is None or buf.shape[0] < need:
        buf = np.empty(max(need, 1), np.float32)
        _scratch.buf = buf
    return buf[:need].reshape(rows, M)


def outputs(X: np.ndarray, M: int, k: int, allow: np.ndarray
            ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(k', idx int64 [B, k'], logit float32 [B, k'], prob float32 [B, k']), k' = min(k, #allowed)
    of M ads, the outputs uninitialised; raises ValueError for NaN/inf in X [B, F] when there
    is anything to rank."""
    B = X.shape[0]
    kk = max(min(k, M if allow.shape[0] == 0 else int(np.count_nonzero(allow))), 0)
    if kk and B and not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf")
    return kk, np.empty((B, kk), np.int64), np.empty((B, kk), np.float32), np.empty((B, kk), np.float32)


def topk_batch(theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray,
               exclude: ExcludeHook | None = None,
               select: Callable[..., None] = select_block,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k ads for each of B users (unchecked inputs, as :func:`scoring.topk_batch_unchecked`).

    theta: float32 C [M, F]; X: float32 C [B, F]; k >= 1; allow: uint8 [M] or length 0
    (all ads). Returns (idx int64 [B, k'], logit float32 [B, k'], prob float32 [B, k']),
    k' = min(k, #allowed), each row exactly as :func:`scoring.topk_one` ranks it.
    ``exclude``: the per-user exclusion hook (module docstring). ``select``: the compiled
    block selection (serial :data:`select_block` or :data:`scoring.parallel.select_block`).
    Raises ValueError for NaN/inf in X or in an allowed row of theta.
    """
    B = X.shape[0]
    M = theta.shape[0]
    kk, idx, lg, pr = outputs(X, M, k, allow)
    if kk == 0 or B == 0:
        return idx, lg, pr
    cmax = colmax(theta)
    nb = min(block_rows(M), B)
    Z = _block(nb, M)
    status = np.zeros(nb, np.uint8)
    thetaT = theta.T
    with np.errstate(all="ignore"):  # NaN/overflow in the sgemm is handled by the bound
        for r0 in range(0, B, nb):
            r1 = min(B, r0 + nb)
            Zb = Z[: r1 - r0]
            np.matmul(X[r0:r1], thetaT, out=Zb)
            if exclude is not None:
                exclude(Zb, r0)
            select(theta, Zb, X, r0, kk, allow, cmax, idx, lg, pr, status[: r1 - r0])
            if status.any():
                raise ValueError(_THETA_BAD)
    return idx, lg, pr
