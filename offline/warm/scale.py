"""Choosing the global prior scale on retired ads only, by replaying their early days.

Each of the latest-launched retired ads plays a cold ad once more: its prior is what the
default generator (knn-content) writes for it when fitted on the retired ads launched before
the earliest of them (:func:`generator_priors`); where too few earlier ads exist, the
similarity-weighted mix of the k most similar earlier ads' weights (:func:`knn_priors`). For every candidate scale s (prior std, logits) and every horizon h (days after
launch), the prior-updated MAP fit on the ad's logs of [launch, launch + h) scores the users
active in the following ``eval_days``, who had not clicked it yet; the pooled AUC over ads is
averaged over horizons, and the best scale wins. No log of a cold (active) ad is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from offline import metrics as M
from offline.warm.logs import Logs, counts_between
from offline.warm.posterior import fit_map

DAY = 86400.0
DEFAULT_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
INTERCEPT_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_HORIZONS = (1.0, 7.0, 28.0)


@dataclass
class ScaleChoice:
    """scale: the chosen prior std of the user weights; intercept_scale: that of the intercept;
    table: {"intercept=..,weights=..": {horizon: pooled AUC, "mean": ...}}; n_ads: retired ads
    replayed; note: how their priors were made."""

    scale: float
    intercept_scale: float
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


def build_components(prep: Any) -> dict | None:
    """The knn-content configuration the build uses on ``prep``: its component selection on the
    retired ads' folds (``ContentKNNGenerator.fit``, which reads retired ads only) run once and
    frozen (``auto_select`` off); None when that selection falls back to raw kNN."""
    from offline.generators.content_knn import ContentKNNGenerator

    chosen = ContentKNNGenerator().fit(prep)
    if chosen.raw is not None:
        return None
    return {**chosen.cfg.model_dump(), "auto_select": False}


def generator_priors(prep: Any, targets: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(theta, spread) float32 [len(targets), F]: the default generator (knn-content) written for
    retired ads as if they were cold: fitted on the retired ads launched before the earliest target (its
    pseudo-cutoff), neighbours among those by content embedding. ``targets``: positions into
    ``prep.split.warm``. Raises ValueError when too few earlier ads exist to fit it.

    It is the generator the build runs: with the components (launch-time drift, intercept model,
    or the raw-kNN fallback) that its selection on the retired ads keeps
    (:func:`build_components`), not the unselected configuration, whose priors can be far worse
    than the ones the cold ads get (synthetic:0: logit error 1.55 against 0.34 with the chosen
    components, on the same 42 retired ads)."""
    from offline.generators.content_knn import ContentKNNGenerator
    from offline.types import Neighbour

    ds, sp = prep.dataset, prep.split
    lw = ds.launched_at[sp.warm]
    cut = float(lw[targets].min())
    pool = np.flatnonzero(lw < cut)
    if pool.size < 20:
        raise ValueError(f"only {pool.size} retired ads launched before the pseudo-cutoff")
    emb_w = prep.emb[sp.warm]
    ids = ds.ad_ids
    components = build_components(prep)
    gen: Any
    if components is None:  # the build's selection fell back to raw kNN
        from offline.generators.content_knn import RAW_REFERENCE_K
        from offline.generators.knn import RawKNNGenerator

        gen = RawKNNGenerator(k=RAW_REFERENCE_K)
    else:
        gen = ContentKNNGenerator(**components).fit_arrays(
            prep.warm_theta[pool], prep.warm_ctr[pool], lw[pool], emb_w[pool], cut, ds.X,
            {ids[i]: prep.emb[i] for i in range(len(ids))}, warm_ads=[ds.ads[sp.warm[j]] for j in pool])
    out = np.empty((targets.size, prep.warm_theta.shape[1]), dtype=np.float32)
    spread = np.empty_like(out)
    feats = list(ds.features)
    for i, r in enumerate(targets):
        sim = emb_w[pool] @ emb_w[r]
        top = np.argsort(-sim, kind="stable")[:k]
        nbrs = [Neighbour(ad=ds.ads[sp.warm[pool[j]]], theta=prep.warm_theta[pool[j]], similarity=float(sim[j]),
                          mean_ctr=float(prep.warm_ctr[pool[j]])) for j in top]
        g = gen.generate(ds.ads[sp.warm[r]], nbrs, feats)
        out[i], spread[i] = g.theta, g.spread
    return out, spread


def choose_prior_scale(X: np.ndarray, logs: Logs, launched: np.ndarray, prior: np.ndarray, implicit: bool,
                       base: np.ndarray | None = None,
                       grid: tuple[float, ...] = DEFAULT_GRID, intercept_grid: tuple[float, ...] = INTERCEPT_GRID,
                       horizons: tuple[float, ...] = DEFAULT_HORIZONS, eval_days: float = 7.0,
                       cdf=None) -> ScaleChoice:
    """Pick the prior std of the user weights (``grid``) and of the intercept (``intercept_grid``)
    by replaying the early days of retired ads (module doc).

    X: [N, F] users; logs: retired-ad logs with ``ad`` indexing the T target ads (-1 for other
    retired ads, activity only); launched: [T]; prior: [T, F] pseudo-cold priors; base: [T, F]
    the std unit of each prior weight (the floored generator spread, as
    offline.warm.policies.prior_from_records; None: 1, so the scales are stds); cdf:
    click-delay distribution weighing implicit non-clicks (offline.warm.logs.delay_cdf).
    """
    N = X.shape[0]
    Xd = np.asarray(X, np.float64)
    data = []
    for h in horizons:
        cut = launched + h * DAY
        tr, cl = counts_between(logs, N, launched, cut, implicit, cdf)
        et, ec = counts_between(logs, N, cut, cut + eval_days * DAY, implicit, other=False)
        if implicit:
            keep = (et > 0) & (counts_between(logs, N, launched, cut, True, other=False)[1] == 0)
        else:
            keep = et > 0
        data.append((h, tr, cl, keep, (ec[keep] > 0).astype(np.uint8)))
    table: dict = {}
    for s0 in intercept_grid:
        for s in grid:
            unit = np.ones(prior.shape) if base is None else np.asarray(base, dtype=np.float64)
            mult = np.full(prior.shape[1], s)
            mult[0] = s0
            lam = 1.0 / (unit * mult[None, :]) ** 2
            row: dict = {}
            theta0 = None
            for h, tr, cl, keep, y in data:
                fit = fit_map(X, tr, cl, prior, lam, theta0=theta0)
                theta0 = fit.theta  # the next horizon has more data of the same ads: a good start
                sc = (Xd @ fit.theta.astype(np.float64).T)[keep]
                row[h] = M.auc(y, sc) if 0 < y.sum() < y.size else float("nan")
            vals = [v for v in row.values() if np.isfinite(v)]
            row["mean"] = float(np.mean(vals)) if vals else float("nan")
            table[(s0, s)] = row
    finite = {k: r["mean"] for k, r in table.items() if np.isfinite(r["mean"])}
    if not finite:
        raise ValueError("no retired ad had clicks in its replayed early days; cannot choose a prior scale")
    best = max(finite, key=lambda k: (finite[k], -k[1], -k[0]))
    return ScaleChoice(float(best[1]), float(best[0]), {f"intercept={k[0]:g},weights={k[1]:g}": r
                                                         for k, r in table.items()}, int(prior.shape[0]),
                       "priors: softmax(sim/0.1) mix of the 20 most similar earlier-launched retired ads")
