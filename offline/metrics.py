"""Ranking, calibration and explainability metrics for the cold-start evaluation.

Conventions: ``scores`` are logits or any monotone score (higher = more likely to click);
``probs`` are probabilities in [0, 1]; labels are 0/1. Matrices are [users, ads]. Every
function is plain NumPy and deterministic; ties in scores are handled by average ranks (AUC)
or by the order the caller gives (NDCG from a ranked index list).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _rankdata_avg(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties get the average of their ranks (float64)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    diff = np.empty(xs.size, dtype=bool)
    if xs.size:
        diff[0] = True
        diff[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(diff)
    ends = np.append(starts[1:], xs.size)  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(xs.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)); ties count one half.

    labels, scores: same number of elements (any shape, flattened). NaN if only one class.
    """
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels has {y.size} elements, scores has {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain non-finite values")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _rankdata_avg(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def per_ad_auc(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """AUC across users for each ad (column): float64 [A], NaN where a column has one class.

    Y: 0/1 [N, A]; S: scores [N, A].
    """
    Y = np.asarray(Y)
    S = np.asarray(S)
    if Y.shape != S.shape or Y.ndim != 2:
        raise ValueError(f"Y {Y.shape} and S {S.shape} must be the same 2-D shape")
    return np.array([auc(Y[:, a], S[:, a]) for a in range(Y.shape[1])], dtype=np.float64)


def mean_per_ad_auc(Y: np.ndarray, S: np.ndarray) -> float:
    """Mean of :func:`per_ad_auc` over ads with both classes among the users (NaN if none)."""
    v = per_ad_auc(Y, S)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def ad_rank_corr(Y: np.ndarray, ad_scores: np.ndarray) -> float:
    """Spearman correlation across ads between a per-ad score (e.g. mean predicted CTR over the
    users, float [C]) and each ad's observed CTR over the same users (Y 0/1 [N, C]); ties get
    average ranks. How well a method knows which ads will be popular, the part of pooled AUC
    that per-ad AUC leaves out. NaN when either side is constant or there are < 3 ads."""
    Y = np.asarray(Y)
    a = np.asarray(ad_scores, dtype=np.float64).ravel()
    if Y.ndim != 2 or a.size != Y.shape[1]:
        raise ValueError(f"ad_scores must have one value per column of Y {Y.shape}, got {a.shape}")
    if a.size < 3:
        return float("nan")
    r1 = _rankdata_avg(a)
    r2 = _rankdata_avg(Y.mean(axis=0))
    r1 -= r1.mean()
    r2 -= r2.mean()
    den = float(np.sqrt((r1 * r1).sum() * (r2 * r2).sum()))
    return float((r1 * r2).sum() / den) if den > 0 else float("nan")


def ndcg_from_ranking(Y: np.ndarray, ranked: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per user from ranked ad indices: float64 [N], NaN for users without positives.

    Y: 0/1 [N, A] relevance; ranked: int [N, >= min(k, A)] ad indices best first (e.g. the
    ``idx`` output of ``scoring.topk_batch``). Gain 1 per relevant ad, discount 1/log2(pos + 2).
    """
    Y = np.asarray(Y)
    ranked = np.asarray(ranked)
    if Y.ndim != 2 or ranked.ndim != 2 or ranked.shape[0] != Y.shape[0]:
        raise ValueError(f"Y {Y.shape} and ranked {ranked.shape} must be 2-D with the same rows")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kk = min(k, Y.shape[1])
    if ranked.shape[1] < kk:
        raise ValueError(f"ranked has {ranked.shape[1]} columns, need at least {kk} for NDCG@{k}")
    disc = 1.0 / np.log2(np.arange(kk) + 2.0)
    rel = np.take_along_axis(Y, ranked[:, :kk].astype(np.int64), axis=1).astype(np.float64)
    dcg = rel @ disc
    n_pos = Y.sum(axis=1)
    ideal_disc = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_disc[np.minimum(n_pos, kk).astype(np.int64)]
    out = np.full(Y.shape[0], np.nan)
    has = n_pos > 0
    out[has] = dcg[has] / idcg[has]
    return out


def ndcg_at_k(Y: np.ndarray, S: np.ndarray, k: int) -> float:
    """Mean NDCG@k over users with at least one positive, ranking each row of scores S [N, A]
    (stable: ties go to the lower ad index, as in the scoring kernels). NaN if no user has one."""
    S = np.asarray(S, dtype=np.float64)
    ranked = np.argsort(-S, axis=1, kind="stable")[:, : min(k, S.shape[1])]
    v = ndcg_from_ranking(Y, ranked, k)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels has {y.size} elements, probs has {p.size}")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def log_loss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy in nats computed stably from logits (no clipping)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width reliability table over [0, 1]: per bin count, mean predicted, observed rate.

    Bin b holds p in [b/n, (b+1)/n) (the last bin includes 1.0). Empty bins have NaN means.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels has {y.size} elements, probs has {p.size}")
    b = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        rate = np.where(count > 0, sum_y / count, np.nan)
    return {"count": count, "mean_pred": mean_p, "observed": rate,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def ece(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins: sum_b (n_b / n) |mean p_b - rate_b|."""
    t = reliability(labels, probs, n_bins)
    c = t["count"]
    m = c > 0
    if not m.any():
        return float("nan")
    return float(np.sum(c[m] / c.sum() * np.abs(t["mean_pred"][m] - t["observed"][m])))


def top_features(theta: np.ndarray, k: int = 5, skip: Iterable[int] = (0,)) -> list[int]:
    """Indices of the k largest weights of theta f[F] (descending, ties -> lower index),
    leaving out ``skip`` (the intercept by default)."""
    t = np.asarray(theta, dtype=np.float64).ravel()
    skip = set(int(i) for i in skip)
    cand = [i for i in range(t.size) if i not in skip]
    cand.sort(key=lambda i: (-t[i], i))
    return cand[:k]


def hit_rate_at_k(thetas: np.ndarray, targets: Sequence[int | None], k: int = 5) -> float:
    """Paper eq. 3: share of ads whose target feature index is among their top-k weights.

    thetas: [M, F]; targets: one feature index per ad, None = no label (ad skipped).
    NaN if no ad has a label.
    """
    hits = [t in top_features(th, k) for th, t in zip(np.asarray(thetas), targets) if t is not None]
    return float(np.mean(hits)) if hits else float("nan")


def coverage_at_k(thetas: np.ndarray, target_sets: Sequence[Iterable[int]], k: int = 5) -> float:
    """Paper eq. 4: mean Jaccard |top-k ∩ G| / |top-k ∪ G| over ads with a non-empty label set G."""
    vals = []
    for th, g in zip(np.asarray(thetas), target_sets):
        g = set(int(i) for i in g)
        if not g:
            continue
        top = set(top_features(th, k))
        vals.append(len(top & g) / len(top | g))
    return float(np.mean(vals)) if vals else float("nan")


def direction_accuracy(theta_before: np.ndarray, theta_after: np.ndarray, feature_idx: Sequence[int],
                       expected_sign: Sequence[int], tol: float = 0.0) -> float:
    """Robustness helper: share of cases whose weight moved in the expected direction.

    theta_before / theta_after: [M, F] weights of the original and the modified ads; case m
    looks at feature ``feature_idx[m]`` and expects sign ``expected_sign[m]`` in {-1, +1}
    for ``after - before`` (a change with |change| <= tol counts as a miss). NaN if no cases.
    """
    b = np.asarray(theta_before, dtype=np.float64)
    a = np.asarray(theta_after, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 2:
        raise ValueError(f"theta_before {b.shape} and theta_after {a.shape} must be the same [M, F]")
    fi = np.asarray(feature_idx, dtype=np.int64)
    sg = np.asarray(expected_sign, dtype=np.int64)
    if fi.shape != (b.shape[0],) or sg.shape != (b.shape[0],):
        raise ValueError("feature_idx and expected_sign need one entry per row")
    if not np.all(np.isin(sg, (-1, 1))):
        raise ValueError("expected_sign entries must be -1 or +1")
    if b.shape[0] == 0:
        return float("nan")
    d = a[np.arange(b.shape[0]), fi] - b[np.arange(b.shape[0]), fi]
    return float(np.mean((d * sg) > tol))
