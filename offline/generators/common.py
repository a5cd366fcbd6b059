"""Small helpers every deterministic generator shares: the clipped log-odds of a CTR and the
:class:`~offline.types.Generated` of a fixed weight vector."""

from __future__ import annotations

import numpy as np
from scipy.special import logit

from offline.types import Generated

__all__ = ["CTR_FLOOR", "logit_ctr", "deterministic"]

CTR_FLOOR = 1e-4


def logit_ctr(ctr: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of CTRs clipped to [CTR_FLOOR, 1 - CTR_FLOOR], f64, same shape."""
    return logit(np.clip(np.asarray(ctr, dtype=np.float64), CTR_FLOOR, 1.0 - CTR_FLOOR))


def deterministic(theta: np.ndarray, samples: np.ndarray | None = None) -> Generated:
    """A Generated for weights theta f[F]; samples f[n, F] (default theta itself) give the spread."""
    theta = np.asarray(theta, dtype=np.float32)
    S = theta[None, :] if samples is None else np.asarray(samples, dtype=np.float32)
    return Generated(theta=theta, rationale={}, samples=S, spread=S.std(axis=0).astype(np.float32),
                     cost={}, failed=None)
