"""Warm training: one L2-regularised logistic regression per ad, all ads at once.

Per ad a, with user features X [N, F] (column 0 the intercept) and labels y_a [N], we minimise

    L(theta_a) = sum_n [ log(1 + exp(x_n . theta_a)) - y_an * x_n . theta_a ]
                 + (l2 / 2) * sum_{j >= 1} theta_aj^2 + (eps / 2) * theta_a0^2

i.e. the summed log-loss plus an L2 penalty on every weight except the intercept; eps = 1e-6 is a
numerical floor that keeps the intercept finite for an ad with no clicks at all. The solver is
damped Newton (IRLS): the Hessians of all still-unconverged ads are built with one matrix
product over the upper triangle of x x^T and solved as a batch [A, F, F]; a backtracking line
search keeps every step a descent step, so it also behaves on (nearly) separable data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

INTERCEPT_EPS = 1e-6
DEFAULT_L2_GRID: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _penalty(F: int, l2: float) -> np.ndarray:
    r = np.full(F, float(l2))
    r[0] = INTERCEPT_EPS
    return r


def _check_inputs(X: np.ndarray, l2: float) -> np.ndarray:
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError(f"X must be a 2-D array [N, F], got {getattr(X, 'shape', type(X))}")
    if X.shape[1] < 1:
        raise ValueError("X needs at least the bias column")
    if not np.all(np.isfinite(X)):
        raise ValueError("X has non-finite values")
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a finite number > 0, got {l2}")
    return np.asarray(X, dtype=np.float64)


def _init_theta(F: int, rate: np.ndarray) -> np.ndarray:
    theta = np.zeros((rate.size, F))
    r = np.clip(rate, 1e-4, 1 - 1e-4)
    theta[:, 0] = np.log(r / (1 - r))
    return theta


def train_logreg(X: np.ndarray, Y: np.ndarray, l2: float = 1.0, max_iter: int = 50, tol: float = 1e-6,
                 info: dict | None = None) -> np.ndarray:
    """Fit one logistic regression per column of Y; returns theta float32 [A, F].

    X: [N, F] user features (column 0 = 1); Y: [N, A] 0/1 labels (uint8/bool/float); l2 > 0:
    penalty on the non-intercept weights (summed-loss scale, see module doc). Stops an ad when
    its largest Newton step is below ``tol``. If ``info`` is a dict it receives ``n_iter`` and
    ``n_unconverged``.
    """
    Xd = _check_inputs(X, l2)
    if not isinstance(Y, np.ndarray) or Y.ndim != 2 or Y.shape[0] != Xd.shape[0]:
        raise ValueError(f"Y must be [N={Xd.shape[0]}, A], got {getattr(Y, 'shape', type(Y))}")
    Yd = np.asarray(Y, dtype=np.float64)
    if not np.all((Yd == 0) | (Yd == 1)):
        raise ValueError("Y must contain only 0 and 1")
    N, F = Xd.shape
    A = Yd.shape[1]
    r = _penalty(F, l2)
    theta = _init_theta(F, Yd.mean(axis=0) if N else np.full(A, 0.5))
    iu, ju = np.triu_indices(F)
    Z = Xd[:, iu] * Xd[:, ju]  # [N, F(F+1)/2], the upper triangle of every x x^T
    diag = np.arange(F)

    def objective(th: np.ndarray, Ya: np.ndarray) -> np.ndarray:
        eta = Xd @ th.T
        return (_softplus(eta) - Ya * eta).sum(axis=0) + 0.5 * (th * th) @ r

    act = np.arange(A)
    it = 0
    for it in range(1, max_iter + 1):
        th = theta[act]
        Ya = Yd[:, act]
        eta = Xd @ th.T
        P = _sigmoid(eta)
        f0 = (_softplus(eta) - Ya * eta).sum(axis=0) + 0.5 * (th * th) @ r
        g = (Xd.T @ (P - Ya)).T + th * r  # [a, F]
        W = P * (1.0 - P)
        Hu = W.T @ Z  # [a, T]
        H = np.zeros((act.size, F, F))
        H[:, iu, ju] = Hu
        H[:, ju, iu] = Hu
        H[:, diag, diag] += r
        step = np.linalg.solve(H, g[:, :, None])[:, :, 0]
        dec = np.einsum("af,af->a", g, step)  # Newton decrement^2, >= 0
        t = np.ones(act.size)
        todo = np.arange(act.size)
        new = th - step
        for _ in range(40):  # backtracking (Armijo) on the ads whose full step did not descend
            f1 = objective(new[todo], Ya[:, todo])
            bad = f1 > f0[todo] - 1e-4 * t[todo] * dec[todo]
            if not bad.any():
                break
            todo = todo[bad]
            t[todo] *= 0.5
            new[todo] = th[todo] - t[todo, None] * step[todo]
        theta[act] = new
        moved = np.abs(t[:, None] * step).max(axis=1)
        act = act[moved > tol]
        if act.size == 0:
            break
    if info is not None:
        info["n_iter"] = it
        info["n_unconverged"] = int(act.size)
    return np.ascontiguousarray(theta, dtype=np.float32)


def newton_logreg(Xa: np.ndarray, ya: np.ndarray, r: np.ndarray, max_iter: int = 50,
                  tol: float = 1e-6) -> tuple[np.ndarray, bool]:
    """One logistic regression by damped Newton (Armijo backtracking): minimises
    sum(softplus(X v) - y * X v) + 0.5 * sum(r * v**2). Xa f64[n, F] (column 0 = 1), ya 0/1 [n],
    r f64[F] per-weight penalties. Returns (v f64[F], converged: largest step <= tol)."""
    F = Xa.shape[1]
    th = _init_theta(F, np.array([ya.mean() if ya.size else 0.5]))[0]

    def obj(v: np.ndarray) -> float:
        eta = Xa @ v
        return float((_softplus(eta) - ya * eta).sum() + 0.5 * (v * v) @ r)

    for _ in range(max_iter):
        eta = Xa @ th
        p = _sigmoid(eta)
        g = Xa.T @ (p - ya) + th * r
        H = (Xa * (p * (1 - p))[:, None]).T @ Xa + np.diag(r)
        step = np.linalg.solve(H, g)
        dec = float(g @ step)
        f0, t = obj(th), 1.0
        for _ in range(40):
            if obj(th - t * step) <= f0 - 1e-4 * t * dec:
                break
            t *= 0.5
        th = th - t * step
        if np.abs(t * step).max() <= tol:
            return th, True
    return th, False


def train_logreg_pairs(X: np.ndarray, user: np.ndarray, col: np.ndarray, label: np.ndarray, n_ads: int,
                       l2: float = 1.0, max_iter: int = 50, tol: float = 1e-6,
                       info: dict | None = None) -> np.ndarray:
    """Per-ad logistic regression from logged impressions; returns theta float32 [n_ads, F].

    user: int [P] row of X; col: int [P] ad column in [0, n_ads); label: 0/1 [P]. Same objective
    as :func:`train_logreg` (sum over the ad's impressions). An ad without impressions has no
    data, so its row is all zeros (the penalty's minimum); don't publish such a row as trained.
    """
    Xd = _check_inputs(X, l2)
    user = np.asarray(user, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    y = np.asarray(label, dtype=np.float64)
    if not (user.shape == col.shape == y.shape and user.ndim == 1):
        raise ValueError("user, col and label must be 1-D arrays of equal length")
    if user.size and (user.min() < 0 or user.max() >= Xd.shape[0]):
        raise ValueError("user index out of range of X")
    if col.size and (col.min() < 0 or col.max() >= n_ads):
        raise ValueError(f"col index out of range [0, {n_ads})")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("label must contain only 0 and 1")
    F = Xd.shape[1]
    r = _penalty(F, l2)
    order = np.argsort(col, kind="stable")
    bounds = np.searchsorted(col[order], np.arange(n_ads + 1))
    theta = np.zeros((n_ads, F))
    unconverged = 0
    for a in range(n_ads):
        rows = order[bounds[a]:bounds[a + 1]]
        if rows.size == 0:
            continue
        theta[a], ok = newton_logreg(Xd[user[rows]], y[rows], r, max_iter, tol)
        unconverged += not ok
    if info is not None:
        info["n_unconverged"] = unconverged
    return np.ascontiguousarray(theta, dtype=np.float32)


def logloss(X: np.ndarray, theta: np.ndarray, Y: np.ndarray) -> float:
    """Mean log-loss (nats) of theta [A, F] on users X [N, F] with labels Y [N, A]."""
    eta = np.asarray(X, np.float64) @ np.asarray(theta, np.float64).T
    Yd = np.asarray(Y, np.float64)
    return float((_softplus(eta) - Yd * eta).mean())


def _user_holdout(N: int, holdout_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac}")
    perm = np.random.default_rng(seed).permutation(N)
    n_hold = max(1, int(round(N * holdout_frac)))
    if n_hold >= N:
        raise ValueError(f"need at least 2 users to hold some out, got {N}")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def holdout_scores(X: np.ndarray, Y: np.ndarray, grid: Sequence[float] = DEFAULT_L2_GRID,
                   holdout_frac: float = 0.2, seed: int = 0) -> dict[float, float]:
    """Held-out mean log-loss for each l2 in ``grid`` (users split at random by ``seed``)."""
    if len(grid) == 0:
        raise ValueError("grid must contain at least one l2 value")
    tr, ho = _user_holdout(X.shape[0], holdout_frac, seed)
    Xtr, Ytr = X[tr], Y[tr]
    return {float(l2): logloss(X[ho], train_logreg(Xtr, Ytr, l2), Y[ho]) for l2 in grid}


def choose_l2(X: np.ndarray, Y: np.ndarray, grid: Sequence[float] = DEFAULT_L2_GRID,
              holdout_frac: float = 0.2, seed: int = 0) -> float:
    """The l2 in ``grid`` with the lowest held-out log-loss (ties -> the larger l2)."""
    scores = holdout_scores(X, Y, grid, holdout_frac, seed)
    best = min(scores.values())
    return max(l2 for l2, s in scores.items() if s <= best)


def choose_l2_pairs(X: np.ndarray, user: np.ndarray, col: np.ndarray, label: np.ndarray, n_ads: int,
                    grid: Sequence[float] = DEFAULT_L2_GRID, holdout_frac: float = 0.2,
                    seed: int = 0) -> float:
    """Like :func:`choose_l2` for logged impressions; held-out log-loss over held-out users' impressions."""
    if len(grid) == 0:
        raise ValueError("grid must contain at least one l2 value")
    user = np.asarray(user, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    y = np.asarray(label, dtype=np.float64)
    _, ho = _user_holdout(X.shape[0], holdout_frac, seed)
    is_ho = np.zeros(X.shape[0], dtype=bool)
    is_ho[ho] = True
    h = is_ho[user]
    if not h.any():
        raise ValueError("no impressions from held-out users")
    Xd = np.asarray(X, np.float64)
    scores: dict[float, float] = {}
    for l2 in grid:
        th = train_logreg_pairs(X, user[~h], col[~h], y[~h], n_ads, l2).astype(np.float64)
        eta = np.einsum("pf,pf->p", Xd[user[h]], th[col[h]])
        scores[float(l2)] = float((_softplus(eta) - y[h] * eta).mean())
    best = min(scores.values())
    return max(l2 for l2, s in scores.items() if s <= best)
