"""Choosing the global prior scale on retired ads only, by replaying their early days.

Each retired ad plays a cold ad once more: its prior is the similarity-weighted mix
(softmax(similarity / temperature)) of the trained weights of the k most similar retired ads
launched BEFORE it (content embeddings), i.e. what a kNN generator would have written at its
launch. For every candidate scale s (prior std, logits) and every horizon h (days after
launch), the prior-updated MAP fit on the ad's logs of [launch, launch + h) scores the users
active in the following ``eval_days``, who had not clicked it yet; the pooled AUC over ads is
averaged over horizons, and the best scale wins. No log of a cold (active) ad is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.evaluation import metrics as M
from offline.warm.logs import Logs, counts_between
from offline.warm.posterior import fit_map

DAY = 86400.0
DEFAULT_GRID = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_HORIZONS = (1.0, 7.0, 28.0)


@dataclass
class ScaleChoice:
    """scale: the chosen prior std; table: {scale: {horizon: pooled AUC, "mean": ...}};
    n_ads: retired ads replayed; note: how their priors were made."""

    scale: float
    table: dict
    n_ads: int
    note: str


def knn_priors(emb: np.ndarray, launched: np.ndarray, theta: np.ndarray, targets: np.ndarray, k: int = 20,
               temperature: float = 0.1) -> np.ndarray:
    """float32 [len(targets), F]: each target's prior from the k most similar ads launched before it.

    emb: [W, d] L2-normalised embeddings of the retired ads; launched: [W]; theta: [W, F] their
    trained weights; targets: positions into those arrays (each needs >= 1 earlier ad).
    """
    out = np.empty((targets.size, theta.shape[1]), dtype=np.float32)
    for i, r in enumerate(targets):
        earlier = np.flatnonzero(launched < launched[r])
        sim = emb[earlier] @ emb[r]
        top = earlier[np.argsort(-sim, kind="stable")[:k]]
        s = emb[top] @ emb[r]
        w = np.exp((s - s.max()) / temperature)
        out[i] = (w[:, None] * theta[top]).sum(axis=0) / w.sum()
    return out


def choose_prior_scale(X: np.ndarray, logs: Logs, launched: np.ndarray, prior: np.ndarray, implicit: bool,
                       grid: tuple[float, ...] = DEFAULT_GRID, horizons: tuple[float, ...] = DEFAULT_HORIZONS,
                       eval_days: float = 7.0, cdf=None) -> ScaleChoice:
    """Pick the prior std from ``grid`` by replaying the early days of retired ads (module doc).

    X: [N, F] users; logs: retired-ad logs with ``ad`` indexing the T target ads (-1 for other
    retired ads, activity only); launched: [T]; prior: [T, F] pseudo-cold priors.
    """
    N = X.shape[0]
    table: dict = {}
    for s in grid:
        row = {}
        for h in horizons:
            cut = launched + h * DAY
            tr, cl = counts_between(logs, N, launched, cut, implicit, cdf)
            fit = fit_map(X, tr, cl, prior, np.full(prior.shape, 1.0 / s ** 2))
            et, ec = counts_between(logs, N, cut, cut + eval_days * DAY, implicit, other=False)
            S = np.asarray(X, np.float64) @ fit.theta.astype(np.float64).T
            if implicit:
                keep = (et > 0) & (counts_between(logs, N, launched, cut, True, other=False)[1] == 0)
                y, sc = (ec[keep] > 0).astype(np.uint8), S[keep]
            else:
                keep = et > 0
                y = np.repeat((ec[keep] > 0).astype(np.uint8), 1)
                sc = S[keep]
            row[h] = M.auc(y, sc) if 0 < y.sum() < y.size else float("nan")
        vals = [v for v in row.values() if np.isfinite(v)]
        row["mean"] = float(np.mean(vals)) if vals else float("nan")
        table[s] = row
    finite = {s: r["mean"] for s, r in table.items() if np.isfinite(r["mean"])}
    if not finite:
        raise ValueError("no retired ad had clicks in its replayed early days; cannot choose a prior scale")
    best = max(finite, key=lambda s: (finite[s], -s))
    return ScaleChoice(float(best), table, int(prior.shape[0]),
                       "priors: softmax(sim/0.1) mix of the 20 most similar earlier-launched retired ads")
