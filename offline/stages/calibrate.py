"""Weight normalisation and intercept calibration (paper section 2.3, eq. 2).

Step 1 (``normalize``): theta / ||theta|| -- the paper divides the whole vector
(``norm_scope="all"``); ``norm_scope="features"`` divides only the non-intercept part and leaves
the intercept alone. Step 2 (``shift``): find delta with mean_u sigmoid(x_u . theta + delta) = alpha
over a user sample, by Brent's method on a bracket that provably contains the root, and add delta
to the intercept (column 0, whose feature value is 1 for every user). The steps are separately
switchable because which of them helps depends on the generator (decided by evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logit


@dataclass(frozen=True)
class CalibrationResult:
    """theta: f32[F] calibrated weights; delta: intercept shift added (logit units, 0.0 if
    ``shift`` was off); alpha: target mean CTR as given; achieved: mean predicted CTR of the
    returned float32 theta on the sample (with ``shift`` off it is simply that mean, not a
    target); scale: the factor theta was multiplied by (1.0 if not normalised)."""

    theta: np.ndarray
    delta: float
    alpha: float
    achieved: float
    scale: float = 1.0


def _check_x(X_sample: np.ndarray, F: int) -> np.ndarray:
    X = np.asarray(X_sample)
    if X.ndim != 2:
        raise ValueError(f"X_sample must be 2-D [S, F], got shape {X.shape}")
    if X.shape[1] != F:
        raise ValueError(f"X_sample has {X.shape[1]} features, theta has {F}")
    if X.shape[0] == 0:
        raise ValueError("X_sample has no rows")
    X = X.astype(np.float64, copy=False)
    if not np.all(np.isfinite(X)):
        raise ValueError("X_sample contains non-finite values")
    return X


def _check_theta(theta: np.ndarray) -> np.ndarray:
    t = np.asarray(theta)
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(f"theta must be 1-D [F] with F >= 1, got shape {t.shape}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        raise ValueError("theta contains non-finite values")
    return t


def mean_ctr(theta: np.ndarray, X_sample: np.ndarray) -> float:
    """Mean predicted CTR mean_u sigmoid(X_sample[u] . theta), computed in float64."""
    t = _check_theta(theta)
    X = _check_x(X_sample, t.shape[0])
    return float(np.mean(expit(X @ t)))


def solve_shift(z: np.ndarray, alpha: float) -> float:
    """delta such that mean(sigmoid(z + delta)) == alpha, for logits z f64[S].

    Since sigmoid(min z + d) <= mean <= sigmoid(max z + d), the root lies in
    [logit(alpha) - max z, logit(alpha) - min z]; the bracket is widened slightly for rounding.
    """
    if not (0.0 < alpha < 1.0) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    la = float(logit(alpha))
    lo, hi = la - float(z.max()), la - float(z.min())
    pad = 1e-6 * (1.0 + abs(lo) + abs(hi))
    lo, hi = lo - pad, hi + pad

    def f(d: float) -> float:
        return float(np.mean(expit(z + d))) - alpha

    flo, fhi = f(lo), f(hi)
    step = 1.0
    while flo > 0:  # rounding at extreme alphas: widen until the sign changes
        lo -= step
        step *= 2
        flo = f(lo)
        if step > 1e6:
            raise ValueError(f"could not bracket the intercept shift for alpha={alpha}")
    step = 1.0
    while fhi < 0:
        hi += step
        step *= 2
        fhi = f(hi)
        if step > 1e6:
            raise ValueError(f"could not bracket the intercept shift for alpha={alpha}")
    if flo == 0:
        return lo
    if fhi == 0:
        return hi
    return float(brentq(f, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500))


def calibrate(
    theta: np.ndarray,
    X_sample: np.ndarray,
    alpha: float,
    normalize: bool = True,
    shift: bool = True,
    *,
    norm_scope: str = "all",
    intercept_index: int = 0,
) -> CalibrationResult:
    """Normalise ``theta`` (f32[F]) and shift its intercept so the mean predicted CTR over
    ``X_sample`` (f32[S, F], column ``intercept_index`` all ones) equals ``alpha`` in (0, 1).

    norm_scope: "all" (paper: divide the whole vector) or "features" (divide all but the
    intercept). A zero vector (or zero feature part) is left unscaled.
    Returns a :class:`CalibrationResult` with float32 theta.
    """
    if norm_scope not in ("all", "features"):
        raise ValueError(f"norm_scope must be 'all' or 'features', got {norm_scope!r}")
    t = _check_theta(theta)
    F = t.shape[0]
    if not (0 <= intercept_index < F):
        raise ValueError(f"intercept_index {intercept_index} out of range for F={F}")
    X = _check_x(X_sample, F)
    if shift:
        if not isinstance(alpha, (int, float, np.floating)) or not (0.0 < float(alpha) < 1.0):
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not np.all(X[:, intercept_index] == 1.0):
            raise ValueError(f"X_sample column {intercept_index} (intercept) must be all ones")

    scale = 1.0
    if normalize:
        if norm_scope == "all":
            n = float(np.linalg.norm(t))
            if n > 0:
                scale = 1.0 / n
                t = t * scale
        else:
            mask = np.ones(F, dtype=bool)
            mask[intercept_index] = False
            n = float(np.linalg.norm(t[mask]))
            if n > 0:
                scale = 1.0 / n
                t[mask] = t[mask] * scale

    delta = 0.0
    if shift:
        z = X @ t
        delta = solve_shift(z, float(alpha))
        t[intercept_index] += delta
    out = t.astype(np.float32)
    achieved = float(np.mean(expit(X @ out.astype(np.float64))))
    return CalibrationResult(
        theta=out, delta=float(delta), alpha=float("nan") if alpha is None else float(alpha),
        achieved=achieved, scale=scale,
    )


def neighbour_alpha(
    neighbour_thetas: np.ndarray, X_sample: np.ndarray, sims: np.ndarray | None = None
) -> float:
    """alpha for eq. 2: the neighbours' mean predicted CTR on the same users.

    neighbour_thetas: f32[k, F]; X_sample: f32[S, F]; sims: optional f32[k] similarities used as
    weights (negative ones clipped to 0; all zero -> plain mean). Result clipped to
    [1e-9, 1 - 1e-9] so it is always a valid calibration target.
    """
    T = np.asarray(neighbour_thetas)
    if T.ndim != 2 or T.shape[0] == 0:
        raise ValueError(f"neighbour_thetas must be 2-D [k, F] with k >= 1, got shape {T.shape}")
    T = T.astype(np.float64)
    if not np.all(np.isfinite(T)):
        raise ValueError("neighbour_thetas contains non-finite values")
    X = _check_x(X_sample, T.shape[1])
    per = np.mean(expit(X @ T.T), axis=0)  # [k]
    if sims is None:
        w = np.full(T.shape[0], 1.0 / T.shape[0])
    else:
        s = np.asarray(sims, dtype=np.float64).ravel()
        if s.shape[0] != T.shape[0]:
            raise ValueError(f"sims has {s.shape[0]} entries, neighbour_thetas has {T.shape[0]} rows")
        if not np.all(np.isfinite(s)):
            raise ValueError("sims contains non-finite values")
        s = np.clip(s, 0.0, None)
        w = s / s.sum() if s.sum() > 0 else np.full(T.shape[0], 1.0 / T.shape[0])
    a = float(np.dot(w, per))
    return float(min(max(a, 1e-9), 1.0 - 1e-9))
