"""Single-user top-k returned as ONE array, for latency-bound callers (a unary RPC).

:func:`scoring.topk_one` returns three arrays; every array a compiled function hands back
to Python is a boxed object of its own, and every array argument is unboxed and type-checked
on the way in. With the CPU caches cold (a server that does other work between requests)
that bookkeeping costs more than the scoring itself for a few hundred ads. The kernels here
run :func:`scoring.kernels.topk_one` inside compiled code and copy its answer into one
float64 array ``[k', 3]`` of rows ``(ad index, logit, prob)``, so a call boxes one array;
``_plain`` also takes three arguments instead of seven (no mask, no content rules).

The values are exactly those of ``topk_one``: the float32 logits and probabilities and the
int64 ad indices (< 2**53) are all exactly representable in float64.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from .kernels import _F32_1D, _F32_2D, _I32_1D, _KW, _U8_1D, topk_one

_OUT_F64_2D = types.Array(types.float64, 2, "C")


@njit(**_KW)
def _rows_of(idx, lg, pr):  # pragma: no cover - compiled
    n = idx.shape[0]
    out = np.empty((n, 3), np.float64)
    for t in range(n):
        out[t, 0] = idx[t]
        out[t, 1] = lg[t]
        out[t, 2] = pr[t]
    return out


@njit(_OUT_F64_2D(_F32_2D, _F32_1D, types.int64), **_KW)
def plain(theta, x, k):  # pragma: no cover - compiled
    """Rows (ad index, logit, prob) float64 [k', 3] of the top k ads, every ad a candidate
    and no content rules; raises ValueError for non-finite x or theta rows, as topk_one."""
    idx, lg, pr = topk_one(theta, x, k, np.empty(0, np.uint8), np.empty(0, np.int32),
                           np.empty(0, np.float32), np.empty(0, np.int32))
    return _rows_of(idx, lg, pr)


@njit(_OUT_F64_2D(_F32_2D, _F32_1D, types.int64, _U8_1D, _I32_1D, _F32_1D, _I32_1D), **_KW)
def full(theta, x, k, allow, fptr, fthr, fad):  # pragma: no cover - compiled
    """:func:`plain` with an allow mask and content rules (arguments as topk_one's kernel)."""
    idx, lg, pr = topk_one(theta, x, k, allow, fptr, fthr, fad)
    return _rows_of(idx, lg, pr)
