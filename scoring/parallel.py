"""Opt-in multi-threaded variants of the batched kernels (prange over users).

Imported only by :func:`scoring.set_threads` with n > 1, so a default process never
compiles these or starts a thread pool. Results are identical to the single-threaded
kernels (each user's row is computed by the same code; only the user order differs).
The batch top-k selection is not rewritten here: it is the same Python body as the
serial one (:func:`scoring.batch._select_block`), compiled with ``parallel=True``.
"""
from __future__ import annotations

import types as types_

import numpy as np
from numba import njit, prange

from . import batch as _batch
from .kernels import (
    _F32_2D,
    _OUT_F32_2D,
    _THETA_BAD,
    _load_f64,
    _scores_into,
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


def _clone(fn, suffix: str):
    """A copy of ``fn`` under another qualified name, so Numba's on-disk cache (keyed by
    qualified name and line) keeps the parallel compilation apart from the serial one."""
    g = types_.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    g.__qualname__ = fn.__qualname__ + suffix
    g.__module__ = fn.__module__
    return g


#: The parallel compilation of :func:`scoring.batch._select_block` (the same body as the
#: serial :data:`scoring.batch.select_block`; prange over the block's users).
select_block = njit(_batch.SELECT_SIG, **_KW)(_clone(_batch._select_block, "_parallel"))
