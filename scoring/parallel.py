"""Opt-in multi-threaded variants of the batched kernels (prange over users).

Imported only by :func:`scoring.set_threads` with n > 1, so a default process never
compiles these or starts a thread pool. Results are identical to the single-threaded
kernels (each user's row is computed by the same code; only the user order differs).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .rules import _exclusion_mask
from .kernels import (
    _F32_2D,
    _OUT_F32_2D,
    _THETA_BAD,
    _TOPK_BATCH_SIG,
    INSERTION_MAX_K,
    _finish_row,
    _load_f64,
    _n_allowed,
    _scores_into,
    _topk_into,
)

_KW = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", parallel=True)

# Exceptions cannot leave a prange body, so each user records a status
# (0 ok, 1 bad X row, 2 bad theta row) and the kernel raises after the loop.


@njit(cache=True, nogil=True)
def _raise_for(status):  # pragma: no cover - compiled
    for b in range(status.shape[0]):
        if status[b] == 1:
            raise ValueError("X contains NaN or inf")
        if status[b] == 2:
            raise ValueError(_THETA_BAD)


@njit(_OUT_F32_2D(_F32_2D, _F32_2D), **_KW)
def score_matrix(theta, X):  # pragma: no cover - compiled
    """Parallel twin of :func:`scoring.kernels.score_matrix` (f32[B, M] logits)."""
    B, F = X.shape
    out = np.empty((B, theta.shape[0]), np.float32)
    status = np.zeros(B, np.uint8)
    for b in prange(B):
        xd = np.empty(F, np.float64)
        if not _load_f64(X, b, xd):
            status[b] = 1
        elif not _scores_into(theta, xd, out[b]):
            status[b] = 2
    _raise_for(status)
    return out


@njit(_TOPK_BATCH_SIG, **_KW)
def topk_batch(theta, X, k, allow, fptr, fthr, fad):  # pragma: no cover - compiled
    """Parallel twin of :func:`scoring.kernels.topk_batch` (arrays [B, k'], padded rows)."""
    B, F = X.shape
    n_ok = _n_allowed(theta.shape[0], allow)
    kk = max(min(k, n_ok), 0)
    idx = np.empty((B, kk), np.int64)
    lg = np.empty((B, kk), np.float32)
    pr = np.empty((B, kk), np.float32)
    if kk == 0:
        return idx, lg, pr
    ns = n_ok if kk > INSERTION_MAX_K else 0
    status = np.zeros(B, np.uint8)
    M_ex = theta.shape[0] if fptr.shape[0] != 0 else 0
    for b in prange(B):
        xd = np.empty(F, np.float64)
        if not _load_f64(X, b, xd):
            status[b] = 1
        else:
            ex = np.zeros(M_ex, np.uint8)
            if M_ex:
                _exclusion_mask(fptr, fthr, fad, X, b, ex)
            n = _topk_into(theta, xd, kk, allow, ex, idx[b], lg[b],
                           np.empty(ns, np.int64), np.empty(ns, np.float32))
            if n < 0:
                status[b] = 2
            else:
                _finish_row(idx[b], lg[b], pr[b], n)
    _raise_for(status)
    return idx, lg, pr
