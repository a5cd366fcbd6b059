"""How sure a replay can be that one policy beat another: a paired, user-clustered bootstrap.

Two policies of a replay score the same (user, ad) pairs with the same labels, so their AUC
difference is measured far more precisely than either AUC alone. A user's pairs are not
independent (one user's activity decides many labels), so the bootstrap resamples held-out
users with replacement, and each resample weighs every pair by how often its user was drawn.
Both policies see the same resample, which is what makes it paired.

Only users are resampled, not ads, so the interval leaves out ad-to-ad variation. A percentile
bootstrap over few users runs narrow: with no true difference, 10-30 users, 95% intervals
missed 0 in 8-9% of simulated replays (100 users: 6%). An interval is therefore given only when
at least ``MIN_CLUSTERS`` users hold a positive and nearly every resample holds both classes.
"""

from __future__ import annotations

import numpy as np

BLOCK = 250  # resamples per vectorised block: [BLOCK, n_pairs] float64 weights at a time
MIN_CLUSTERS = 10  # fewer users with a positive than this: no interval
MIN_KEPT = 0.95  # share of resamples that must hold both classes for an interval


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of ``scores`` for ``labels`` under each row of pair weights (ties count one half).

    labels: 0/1 [n]; scores: float [n]; weights: non-negative [B, n] (or [n]). Returns float64
    [B] (or a 0-d array): sum over positive i and negative j of w_i w_j [s_i > s_j] (+1/2 on a
    tie) over (sum of positive weight) x (sum of negative weight); NaN where either sum is 0.
    With unit weights it is the Mann-Whitney AUC (offline.metrics.auc). 1-D weights give a
    NumPy float64 scalar.
    """
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    W = np.asarray(weights, dtype=np.float64)
    one = W.ndim == 1
    W = np.atleast_2d(W)
    if y.size != s.size or W.shape[1] != s.size:
        raise ValueError(f"labels {y.size}, scores {s.size} and weights {W.shape[1]} must have one length")
    if y.size == 0:
        out = np.full(W.shape[0], np.nan)
        return out[0] if one else out
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])  # one group per distinct score
    Wo = W[:, order]
    P = np.add.reduceat(Wo * yy, starts, axis=1)
    N = np.add.reduceat(Wo * ~yy, starts, axis=1)
    below = np.cumsum(N, axis=1) - N  # negative weight strictly below each score group
    num = (P * (below + 0.5 * N)).sum(axis=1)
    den = P.sum(axis=1) * N.sum(axis=1)
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out[0] if one else out


def paired_auc_diff(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, cluster: np.ndarray,
                    resamples: int = 1000, seed: int | list[int] = 0, level: float = 0.95,
                    min_clusters: int = MIN_CLUSTERS) -> dict:
    """AUC(a) - AUC(b) on the same pairs, with a percentile interval from a cluster bootstrap.

    labels: 0/1 [n]; scores_a, scores_b: the two policies' scores (logits) of the same n pairs;
    cluster: [n] the unit resampled (the pair's user); resamples: bootstrap draws; seed: its
    NumPy seed (the same seed, the same interval); level: two-sided coverage; min_clusters:
    with fewer clusters holding a positive, or with under ``MIN_KEPT`` of the resamples holding
    both classes, "lo" and "hi" are NaN (the data cannot be judged).
    Returns {"diff", "lo", "hi" (all NaN when the pairs hold one class), "n_pairs", "n_pos",
    "n_clusters", "n_pos_clusters" (clusters with a positive), "kept" (resamples with both
    classes), "resamples"}.
    """
    y = np.asarray(labels).ravel().astype(np.uint8)
    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    c = np.asarray(cluster).ravel()
    if not (y.size == a.size == b.size == c.size):
        raise ValueError(f"labels {y.size}, scores {a.size} / {b.size} and clusters {c.size} must have one length")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1), got {resamples}, {level}")
    out = {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_pairs": int(y.size),
           "n_pos": int(y.sum()), "n_clusters": 0, "n_pos_clusters": 0, "kept": 0, "resamples": int(resamples)}
    if y.size == 0 or y.min() == y.max():
        return out
    _, inv = np.unique(c, return_inverse=True)
    U = int(inv.max()) + 1
    out["n_clusters"] = U
    out["n_pos_clusters"] = int(np.unique(inv[y == 1]).size)
    ones = np.ones(y.size)
    out["diff"] = float(weighted_auc(y, a, ones) - weighted_auc(y, b, ones))
    if out["n_pos_clusters"] < min_clusters:
        return out
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, BLOCK):
        counts = rng.multinomial(U, np.full(U, 1.0 / U), size=min(BLOCK, resamples - start)).astype(np.float64)
        W = counts[:, inv]
        diffs.append(weighted_auc(y, a, W) - weighted_auc(y, b, W))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    out["kept"] = int(d.size)
    if d.size >= MIN_KEPT * resamples:
        tail = (1.0 - level) / 2.0
        out["lo"], out["hi"] = (float(v) for v in np.quantile(d, [tail, 1.0 - tail]))
    return out
