"""Per-ad logistic regression as a MAP estimate under a Gaussian prior, with a Laplace posterior.

For ad a with prior mean mu_a [F] (its generated weights) and diagonal prior precision
lam_a [F], and binomial data over users n (``trials[n, a]`` impressions of which
``clicks[n, a]`` were clicked; user features x_n [F], column 0 the intercept), we minimise

    L(theta) = sum_n [ trials_na * log(1 + exp(x_n . theta)) - clicks_na * x_n . theta ]
               + 1/2 * sum_j lam_aj * (theta_j - mu_aj)^2

With mu = 0 and lam = l2 (intercept lam ~ 0) this is exactly L2-regularised logistic regression
(``offline.stages.train``; scikit-learn's ``LogisticRegression(C=1/l2)``).

Solver: damped Newton (IRLS) for all ads at once. The Hessians of the unconverged ads come from
one matrix product over the upper triangle of x x^T, are solved as a batch [A, F, F], and a
backtracking line search keeps each step a descent step. The Laplace posterior at the MAP has
precision H = X^T diag(trials p (1 - p)) X + diag(lam): ``laplace="full"`` reports the marginal
std sqrt(diag(H^-1)) (and the covariance), ``"diag"`` the mean-field std 1 / sqrt(diag(H)).

Ads with no data at all (every trial count 0) are not touched: their theta is the prior mean,
bit for bit, and their std is the prior's 1 / sqrt(lam).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LAPLACE = ("diag", "full")


@dataclass
class MapFit:
    """Result of :func:`fit_map` for A ads and F features.

    theta: float32 [A, F] MAP weights (the prior mean, bit for bit, where ``has_data`` is False);
    sigma: float32 [A, F] Laplace posterior std; prior_share: float64 [A, F] lam / diag(H), the
    share of each weight's posterior precision that comes from the prior (1 without data);
    has_data: bool [A]; n_iter: Newton iterations run; converged: bool [A];
    cov: float64 [A, F, F] posterior covariances (``laplace="full"`` only, else None).
    """

    theta: np.ndarray
    sigma: np.ndarray
    prior_share: np.ndarray
    has_data: np.ndarray
    n_iter: int
    converged: np.ndarray
    cov: np.ndarray | None = field(default=None, repr=False)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


def _as_prior(a: np.ndarray, what: str, A: int, F: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape == (F,):
        a = np.broadcast_to(a, (A, F))
    if a.shape != (A, F):
        raise ValueError(f"{what} must be [A={A}, F={F}] (or [F]), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} has non-finite values")
    return a


def fit_map(X: np.ndarray, trials: np.ndarray, clicks: np.ndarray, mu: np.ndarray, lam: np.ndarray,
            theta0: np.ndarray | None = None, laplace: str = "diag", max_iter: int = 50,
            tol: float = 1e-6) -> MapFit:
    """MAP logistic regression per ad with a Gaussian prior N(mu, diag(1/lam)); see module doc.

    X: [N, F] user features (finite, column 0 = 1); trials, clicks: [N, A] counts (clicks <=
    trials; 0/1 for implicit negatives); mu: [A, F] or [F] prior mean; lam: [A, F] or [F] prior
    precision (> 0; 1/logit^2); theta0: optional [A, F] start (e.g. the last refresh's MAP),
    default mu; laplace: "diag" or "full". Stops an ad when its largest step is below ``tol``.
    """
    if laplace not in LAPLACE:
        raise ValueError(f"laplace must be one of {LAPLACE}, got {laplace!r}")
    Xd = np.asarray(X, dtype=np.float64)
    if Xd.ndim != 2 or not np.all(np.isfinite(Xd)):
        raise ValueError(f"X must be a finite 2-D array [N, F], got shape {Xd.shape}")
    N, F = Xd.shape
    T = np.asarray(trials, dtype=np.float64)
    C = np.asarray(clicks, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != N or C.shape != T.shape:
        raise ValueError(f"trials and clicks must both be [N={N}, A], got {T.shape} and {C.shape}")
    if np.any(T < 0) or np.any(C < 0) or np.any(C > T):
        raise ValueError("need 0 <= clicks <= trials")
    A = T.shape[1]
    mu_f32 = np.asarray(mu, dtype=np.float32)
    mu_d = _as_prior(mu, "mu", A, F)
    lam_d = _as_prior(lam, "lam", A, F)
    if np.any(lam_d <= 0):
        raise ValueError("lam (prior precision) must be > 0")
    theta = mu_d.copy() if theta0 is None else _as_prior(theta0, "theta0", A, F).copy()
    has_data = T.sum(axis=0) > 0
    iu, ju = np.triu_indices(F)
    diag = np.arange(F)

    def objective(th: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        eta = Xd[rows] @ th.T
        d = th - mu_d[cols]
        return ((T[np.ix_(rows, cols)] * _softplus(eta) - C[np.ix_(rows, cols)] * eta).sum(axis=0)
                + 0.5 * (lam_d[cols] * d * d).sum(axis=1))

    def hessians(th: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        Xr = Xd[rows]
        P = _sigmoid(Xr @ th.T)
        W = T[np.ix_(rows, cols)] * P * (1.0 - P)
        Hu = W.T @ (Xr[:, iu] * Xr[:, ju])
        H = np.zeros((cols.size, F, F))
        H[:, iu, ju] = Hu
        H[:, ju, iu] = Hu
        H[:, diag, diag] += lam_d[cols]
        return H

    act = np.flatnonzero(has_data)
    converged = ~has_data
    it = 0
    for it in range(1, max_iter + 1):
        if act.size == 0:
            it -= 1
            break
        rows = np.flatnonzero(T[:, act].sum(axis=1) > 0)  # users with any trial for these ads
        th = theta[act]
        eta = Xd[rows] @ th.T
        Ta, Ca = T[np.ix_(rows, act)], C[np.ix_(rows, act)]
        d = th - mu_d[act]
        f0 = (Ta * _softplus(eta) - Ca * eta).sum(axis=0) + 0.5 * (lam_d[act] * d * d).sum(axis=1)
        g = (Xd[rows].T @ (Ta * _sigmoid(eta) - Ca)).T + lam_d[act] * d
        H = hessians(th, act, rows)
        step = np.linalg.solve(H, g[:, :, None])[:, :, 0]
        dec = np.einsum("af,af->a", g, step)
        t = np.ones(act.size)
        todo = np.arange(act.size)
        new = th - step
        for _ in range(40):  # Armijo backtracking on the ads whose full step did not descend
            f1 = objective(new[todo], act[todo], rows)
            bad = f1 > f0[todo] - 1e-4 * t[todo] * dec[todo]
            if not bad.any():
                break
            todo = todo[bad]
            t[todo] *= 0.5
            new[todo] = th[todo] - t[todo, None] * step[todo]
        theta[act] = new
        moved = np.abs(t[:, None] * step).max(axis=1)
        done = moved <= tol
        converged[act[done]] = True
        act = act[~done]

    out = np.array(mu_f32 if mu_f32.shape == (A, F) else np.broadcast_to(mu_f32, (A, F)), dtype=np.float32)
    sigma = np.asarray(1.0 / np.sqrt(lam_d), dtype=np.float32).copy()
    share = np.ones((A, F))
    cov = None
    idx = np.flatnonzero(has_data)
    if idx.size:
        out[idx] = theta[idx].astype(np.float32)
        rows = np.flatnonzero(T[:, idx].sum(axis=1) > 0)
        H = hessians(theta[idx], idx, rows)
        hd = H[:, diag, diag]
        share[idx] = lam_d[idx] / hd
        if laplace == "full":
            S = np.linalg.inv(H)
            sigma[idx] = np.sqrt(np.maximum(S[:, diag, diag], 0.0)).astype(np.float32)
            cov = np.zeros((A, F, F))
            nd = np.flatnonzero(~has_data)
            cov[nd[:, None], diag[None, :], diag[None, :]] = 1.0 / lam_d[nd]
            cov[idx] = S
        else:
            sigma[idx] = (1.0 / np.sqrt(hd)).astype(np.float32)
    return MapFit(theta=out, sigma=sigma, prior_share=share, has_data=has_data, n_iter=it,
                  converged=converged, cov=cov)


def l2_lambda(F: int, l2: float, intercept: float = 1e-6) -> np.ndarray:
    """float64 [F] precision vector of plain L2 logistic regression: ``l2`` on every weight but
    the intercept, which gets the numerical floor ``intercept`` (as offline.stages.train)."""
    lam = np.full(F, float(l2))
    lam[0] = intercept
    return lam
