"""Batched top-k for small catalogs: the pruning vectorised across users.

On a catalog of a hundred ads a user's sgemm costs about as much as a few of the
per-user steps of :mod:`scoring.batch` (chunk maxima, the k-th largest of them, the
scan for candidates), so those steps dominate. Here the sgemm writes the logits block
transposed, ``Zt [M, nb] = theta @ X_block.T`` (one column per user), and the steps that
look at every ad run across users, where each is an elementwise max or compare over a
contiguous row of ``nb`` users that LLVM vectorises:

1. the ads are cut into G groups of C consecutive ads (G about 3 kk) and each group's
   maximum logit is taken for all users at once (``gm [G, nb]``);
2. the kk-th largest group maximum of every user is found by counting, for each group,
   the groups that beat it (``G^2`` vector compares); kk distinct ads reach it, so it
   bounds the user's kk-th largest logit T below.

Per user, only the groups whose maximum reaches the threshold of that bound (the error
margin of :mod:`scoring.batch` below it) are scanned for candidates, the candidates are
tightened to the exact kk-th largest when there are many, and the exact re-score and
ranking are those of :mod:`scoring.batch` (:func:`scoring.batch._finish_row`), so the
answers are identical to :func:`scoring.batch.topk_batch` and :func:`scoring.topk_one`.

The path is serial, and takes content rules as their by-feature arrays (masked into each
transposed block) but no other exclusion hook (hooks edit row-major blocks). The public
:func:`scoring.topk_batch` sends a call here when it has no hook, runs single-threaded,
and the catalog is one where this was measured faster (:func:`use_small`).
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit, types

from .batch import (
    _EPS,
    _F64_1D,
    _NEG_INF,
    _TOL_MAX,
    _U8_OUT,
    _close_row,
    _finish_row,
    _load_bound,
    _kth_by_count,
    _kth_largest,
    _threshold32,
    colmax,
    outputs,
)
from .kernels import _F32_2D, _OUT_F32_2D, _OUT_I64_2D, _THETA_BAD, _U8_1D, INSERTION_MAX_K
from .rules import _clear_mask, _exclusion_mask, lowest_thresholds, may_fire

__all__ = ["use_small", "topk_batch", "select_block_t", "BLOCK_USERS"]

_KW = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
_ZT_2D = types.Array(types.float32, 2, "C")

#: Users per transposed block: a [M, 256] float32 block of a small catalog stays in L2.
BLOCK_USERS = 256
#: The path is taken below this many ads per result (M < 32 kk), where the per-user
#: pruning of :mod:`scoring.batch` costs more than the sgemm.
SMALL_PER_K = 32


def use_small(M: int, kk: int) -> bool:
    """True when a catalog of M ads with kk results per user takes this path."""
    return 4 * kk <= M < SMALL_PER_K * kk and kk <= INSERTION_MAX_K


def group_size(M: int, kk: int) -> int:
    """Ads per group: about 3 kk groups (enough for a tight bound, few enough that the
    G^2 count stays cheap)."""
    return max(1, -(-M // (3 * kk)))


@njit(types.void(_F32_2D, _ZT_2D, _F32_2D, types.int64, types.int64, _U8_1D, _F64_1D,
                 _OUT_I64_2D, _OUT_F32_2D, _OUT_F32_2D, _U8_OUT), **_KW)
def select_block_t(theta, Zt, X, row0, kk, allow, cmax, idx, lg, pr, status):  # pragma: no cover
    """Top kk for users row0 .. row0 + nb - 1 from their transposed sgemm logits Zt [M, nb].

    Writes rows of idx/lg/pr [B, kk] as :func:`scoring.batch.select_block` does (rows with
    fewer candidates padded with -1 / -inf / 0); status[r] = 2 when user row0 + r hit a
    non-finite allowed row of theta (the caller raises).
    """
    M, nb = Zt.shape
    F = theta.shape[1]
    use_mask = allow.shape[0] != 0
    C = max(1, -(-M // (3 * kk)))  # group_size, inlined
    G = -(-M // C)
    # 1. group maxima for every user at once (the inner loops run over users)
    gm = np.empty((G, nb), np.float32)
    for q in range(G):
        for r in range(nb):
            gm[q, r] = _NEG_INF
        for j in range(q * C, min(M, q * C + C)):
            if use_mask and allow[j] == 0:
                continue
            for r in range(nb):
                z = Zt[j, r]
                b = gm[q, r]
                gm[q, r] = z if z > b else b
    # 2. the kk-th largest group maximum of every user: the smallest maximum that fewer
    #    than kk others beat (G >= kk, since M >= kk)
    lb = np.empty(nb, np.float32)
    beat = np.empty(nb, np.int32)  # 8 lanes per vector
    for r in range(nb):
        lb[r] = np.float32(np.inf)
    for c in range(G):
        for r in range(nb):
            beat[r] = 0
        for d in range(G):
            for r in range(nb):
                beat[r] += gm[d, r] > gm[c, r]
        for r in range(nb):
            z = gm[c, r]
            lb[r] = z if (beat[r] < kk) & (z < lb[r]) else lb[r]
    # 3. per user: candidates from the groups that reach the threshold, exact finish
    tscale = (F + 1) * _EPS
    xd = np.empty(F, np.float64)
    buf = np.empty(kk, np.float32)
    ci = np.empty(M, np.int64)
    kc = np.empty(G, np.int64)
    cv = np.empty(M, np.float32)
    sv = np.empty(M, np.float64)
    for r in range(nb):
        b = row0 + r
        tol = tscale * _load_bound(X, b, cmax, xd)
        nc = 0
        if tol < _TOL_MAX:
            a = 2.0 * tol
            t32 = _threshold32(lb[r], a) if lb[r] != _NEG_INF else _NEG_INF
            nk = 0
            for q in range(G):  # branch-free: the groups whose maximum reaches t32
                kc[nk] = q
                nk += gm[q, r] >= t32
            for p in range(nk):
                q = kc[p]
                for j in range(q * C, min(M, q * C + C)):
                    z = Zt[j, r]
                    ci[nc] = j
                    nc += (z >= t32) & (z != _NEG_INF) & (not use_mask or allow[j] != 0)
            if nc > kk + 4:  # near-equal logits: tighten with the exact kk-th largest
                for c in range(nc):
                    cv[c] = Zt[ci[c], r]
                kth = _kth_by_count(cv, nc, kk) if nc <= 48 else _kth_largest(cv, nc, kk, buf)
                t2 = _threshold32(kth, a)
                m = 0
                for c in range(nc):
                    ci[m] = ci[c]
                    m += cv[c] >= t2
                nc = m
        else:  # NaN/inf bound: every allowed ad that is not -inf (NaN too, so it raises)
            for j in range(M):
                if (use_mask and allow[j] == 0) or Zt[j, r] == _NEG_INF:
                    continue
                ci[nc] = j
                nc += 1
        n = _finish_row(theta, xd, kk, nc, ci, cv, sv, idx, lg, b)
        if n < 0:
            status[r] = 2
            n = 0
        _close_row(n, kk, idx, lg, pr, b)


_scratch = threading.local()


def _block_t(M: int, nb: int) -> np.ndarray:
    """This thread's reusable float32 [M, nb] transposed logits block."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[0] < M * nb:
        buf = np.empty(max(M * nb, 1), np.float32)
        _scratch.buf = buf
    return buf[: M * nb].reshape(M, nb)


@njit(**_KW)
def _mask_t(Zt, X, row0, fptr, fthr, fad, ex):  # pragma: no cover - compiled
    """Content rules on a transposed block: Zt[a, r] = -inf where a rule of ad a fires for
    user row0 + r (rules as :func:`scoring.rules._mask_block`; ex: uint8 [M] of 0s, left 0s)."""
    M, nb = Zt.shape
    lowest = lowest_thresholds(fptr, fthr, X.shape[1])
    for r in range(nb):
        b = row0 + r
        if not may_fire(X, b, lowest) or _exclusion_mask(fptr, fthr, fad, X, b, ex) == 0:
            continue
        for a in range(M):
            if ex[a] != 0:
                Zt[a, r] = _NEG_INF
        _clear_mask(fptr, fthr, fad, X, b, ex)


def topk_batch(theta: np.ndarray, X: np.ndarray, k: int, allow: np.ndarray,
               rules: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`scoring.batch.topk_batch` (same arguments, checks and answers) on a small
    catalog (:func:`use_small` of M and k' true), with content rules as their by-feature
    arrays (``rules[0]`` of length 0: none) instead of an exclusion hook.

    theta: float32 C [M, F]; X: float32 C [B, F]; allow: uint8 [M] or length 0. Returns
    (idx int64 [B, k'], logit float32 [B, k'], prob float32 [B, k']). Raises ValueError for
    NaN/inf in X or in an allowed row of theta.
    """
    B = X.shape[0]
    M = theta.shape[0]
    kk, idx, lg, pr = outputs(X, M, k, allow)
    if kk == 0 or B == 0:
        return idx, lg, pr
    cmax = colmax(theta)
    fptr, fthr, fad = rules
    ex = np.zeros(M, np.uint8)
    status = np.zeros(BLOCK_USERS, np.uint8)
    with np.errstate(all="ignore"):  # NaN/overflow in the sgemm is handled by the bound
        for r0 in range(0, B, BLOCK_USERS):
            r1 = min(B, r0 + BLOCK_USERS)
            Zt = _block_t(M, r1 - r0)
            np.matmul(theta, X[r0:r1].T, out=Zt)
            if fptr.shape[0] != 0:
                _mask_t(Zt, X, r0, fptr, fthr, fad, ex)
            select_block_t(theta, Zt, X, r0, kk, allow, cmax, idx, lg, pr, status[: r1 - r0])
            if status.any():
                raise ValueError(_THETA_BAD)
    return idx, lg, pr
