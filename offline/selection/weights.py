"""Importance weights toward the cold ads (covariate shift) and the weighted metrics that use them."""

from __future__ import annotations

import numpy as np

from offline import metrics as M
from offline.stages.train import newton_logreg

__all__ = ["shift_weights", "effective_size", "weighted_auc", "weighted_metrics"]


def shift_weights(A_src: np.ndarray, A_tgt: np.ndarray, l2: float = 1.0, cap: float = 10.0) -> np.ndarray:
    """Importance weights that make source rows resemble target rows (covariate shift).

    A_src f[n_s, p] (e.g. content features of retired pseudo-cold ads), A_tgt f[n_t, p] (the
    cold ads' content, known at launch; no label is read). An L2 logistic classifier
    (standardised columns, penalty ``l2``) separates target from source;
    w(x) = p(tgt|x) / p(src|x), normalised to mean 1 over the source, capped at ``cap`` and
    renormalised. Returns f64[n_s] > 0."""
    A_src = np.asarray(A_src, dtype=np.float64)
    A_tgt = np.asarray(A_tgt, dtype=np.float64)
    if A_src.ndim != 2 or A_tgt.ndim != 2 or A_src.shape[1] != A_tgt.shape[1]:
        raise ValueError(f"A_src / A_tgt must be [n, p] with equal p, got {A_src.shape} / {A_tgt.shape}")
    if A_src.shape[0] == 0 or A_tgt.shape[0] == 0:
        raise ValueError("shift_weights needs at least one source and one target row")
    if not cap >= 1.0:
        raise ValueError(f"cap must be >= 1, got {cap}")
    A = np.concatenate([A_src, A_tgt])
    mu, sd = A.mean(axis=0), A.std(axis=0)
    keep = sd > 1e-12
    Z = (A[:, keep] - mu[keep]) / sd[keep]
    y = np.r_[np.zeros(A_src.shape[0]), np.ones(A_tgt.shape[0])]
    D = np.concatenate([np.ones((Z.shape[0], 1)), Z], axis=1)
    pen = np.full(D.shape[1], float(l2))
    pen[0] = 0.0  # the intercept is not penalised
    b, _ = newton_logreg(D, y, pen, max_iter=50, tol=1e-8)
    w = np.exp(b[0] + Z[: A_src.shape[0]] @ b[1:])  # odds p(tgt|x) / p(src|x)
    for _ in range(200):  # renormalise and cap until the cap holds at mean 1
        w = w / w.mean()
        if w.max() <= cap * (1 + 1e-9):
            break
        w = np.minimum(w, cap)
    return w


def effective_size(w: np.ndarray) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2 of importance weights."""
    w = np.asarray(w, dtype=np.float64)
    return float(w.sum() ** 2 / (w ** 2).sum())


def weighted_auc(Y: np.ndarray, S: np.ndarray, w_ad: np.ndarray) -> float:
    """AUC over all (user, ad) pairs, each pair weighted by its ad's weight (ties count half).
    Y 0/1 [N, A], S [N, A], w_ad [A] >= 0. Equals :func:`offline.metrics.auc` for equal weights."""
    Y = np.asarray(Y, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    w = np.broadcast_to(np.asarray(w_ad, dtype=np.float64)[None, :], Y.shape).ravel()
    y = Y.ravel()
    _, inv = np.unique(S.ravel(), return_inverse=True)
    wp = np.bincount(inv, weights=w * y)
    wn = np.bincount(inv, weights=w * (1.0 - y))
    den = wp.sum() * wn.sum()
    if den <= 0:
        return float("nan")
    below = np.cumsum(wn) - wn
    return float((wp * (below + 0.5 * wn)).sum() / den)


def weighted_metrics(Y: np.ndarray, S: np.ndarray, w_ad: np.ndarray, n_draws: int = 20,
                     seed: int = 0) -> dict[str, float]:
    """Importance-weighted validation metrics of scores S [N, A] against labels Y [N, A]:
    ``auc`` (:func:`weighted_auc`), ``per_ad_auc`` (w-weighted mean of the per-ad AUCs) and
    ``ndcg10`` (mean NDCG@10 over ``n_draws`` subsets of A // 2 ads drawn without replacement
    with probability ~ w: ranking needs a set of ads, so the set is resampled; the same draws for
    every call with the same seed, so configurations are compared on common random numbers)."""
    w = np.asarray(w_ad, dtype=np.float64)
    pa = M.per_ad_auc(Y, S)
    ok = np.isfinite(pa)
    rng = np.random.default_rng(seed)
    m = max(10, Y.shape[1] // 2)
    nd = []
    for _ in range(n_draws):
        keys = np.log(np.maximum(w, 1e-300)) + rng.gumbel(size=w.size)
        sub = np.sort(np.argsort(-keys)[:m])
        nd.append(M.ndcg_at_k(Y[:, sub], S[:, sub], 10))
    return {"auc": weighted_auc(Y, S, w), "per_ad_auc": float((w[ok] * pa[ok]).sum() / w[ok].sum()),
            "ndcg10": float(np.mean(nd))}
