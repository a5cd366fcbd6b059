"""Score candidate generator settings on the folds and pick the best (retired labels only).

The generator under selection is injected (``make(options)``: anything with ``fit_arrays`` and
``generate``), so this package never imports a generator and generators may call it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from offline import metrics as M
from offline.selection.folds import ValidationFold
from offline.selection.weights import weighted_metrics
from offline.types import Generated, Neighbour

if TYPE_CHECKING:  # pragma: no cover
    from offline.stages.prepared import Prepared

__all__ = ["FoldGenerator", "SELECTION_OBJECTIVE", "guarded_choice", "score_fold", "select_config"]


class FoldGenerator(Protocol):
    """A generator that can be fitted on a fold's pool of retired ads (see ContentKNNGenerator)."""

    def fit_arrays(self, warm_theta: np.ndarray, warm_ctr: np.ndarray, warm_launched: np.ndarray,
                   warm_emb: np.ndarray, cutoff: float, X_users: np.ndarray, emb_by_id: dict[str, np.ndarray],
                   warm_ads: Sequence[Any] | None = None) -> "FoldGenerator": ...

    def generate(self, ad: Any, neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated: ...


def score_fold(prep: "Prepared", fold: ValidationFold, opts: dict, make: Callable[..., FoldGenerator],
               k_retrieve: int = 20, n_draws: int = 20) -> dict[str, float]:
    """Weighted validation metrics (:func:`weighted_metrics`, plus unweighted ``auc_u``,
    ``ndcg10_u``, ``per_ad_auc_u``) of the generator ``make(**opts)`` fitted on the fold's pool
    and run for its held ads."""
    ds, sp = prep.dataset, prep.split
    lt = ds.launched_at[sp.warm]
    pool, held = fold.pool, fold.held
    emb = prep.emb[sp.warm]
    sims = emb[held] @ emb[pool].T
    nbr = np.argsort(-sims, axis=1, kind="stable")[:, : min(k_retrieve, pool.size)]
    ctr = prep.warm_ctr
    feats = list(ds.features)
    pool_ads = [ds.ads[sp.warm[p]] for p in pool]
    emb_by_id = {ds.ad_ids[sp.warm[j]]: emb[j] for j in held}
    gen = make(**opts).fit_arrays(fold.pool_theta, ctr[pool], lt[pool], emb[pool], fold.cut,
                                  fold.X, emb_by_id, warm_ads=pool_ads)
    thetas = np.zeros((held.size, len(feats)))
    for r, j in enumerate(held):
        nbs = [Neighbour(ad=pool_ads[p], theta=fold.pool_theta[p], similarity=float(sims[r, p]),
                         mean_ctr=float(ctr[pool[p]])) for p in nbr[r]]
        thetas[r] = gen.generate(ds.ads[sp.warm[j]], nbs, feats).theta
    Y = ds.labels(sp.warm[held])
    S = np.asarray(fold.X, dtype=np.float64) @ thetas.T
    out = weighted_metrics(Y, S, fold.weights, n_draws=n_draws)
    out.update(auc_u=M.auc(Y, S), ndcg10_u=M.ndcg_at_k(Y, S, 10), per_ad_auc_u=M.mean_per_ad_auc(Y, S))
    return out


SELECTION_OBJECTIVE = ("auc", "ndcg10", "per_ad_auc")


def select_config(prep: "Prepared", candidates: dict[str, dict], folds: Sequence[ValidationFold],
                  make: Callable[..., FoldGenerator], objective: Sequence[str] = SELECTION_OBJECTIVE,
                  k_retrieve: int = 20, n_draws: int = 20) -> tuple[str, dict[str, dict[str, float]]]:
    """Score every candidate configuration (``make(**options)``) on every fold and pick the best by the objective:
    the sum of the importance-weighted metrics named in ``objective`` (default: AUC + NDCG@10 +
    per-ad AUC, the issue's three bars), averaged over folds. Only retired ads' labels are read.
    Returns (best name, name -> mean metrics over folds plus ``objective``)."""
    if not candidates:
        raise ValueError("select_config needs at least one candidate")
    if not folds:
        raise ValueError("select_config needs at least one validation fold")
    table: dict[str, dict[str, float]] = {}
    for name, opts in candidates.items():
        rows = [score_fold(prep, f, opts, make, k_retrieve, n_draws) for f in folds]
        m = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        m["objective"] = float(sum(m[key] for key in objective))
        table[name] = m
    best = max(table, key=lambda n: table[n]["objective"])
    return best, table


def guarded_choice(table: dict[str, dict[str, float]], reference: dict[str, float],
                   objective: Sequence[str] = SELECTION_OBJECTIVE) -> str | None:
    """The best candidate (highest sum of ``objective``) among those that beat ``reference`` on
    *every* part of the objective, or None when none does.

    table: name -> mean fold metrics (as :func:`select_config` returns); reference: the same
    metrics of the baseline a candidate must dominate (raw kNN for the default generator). A
    component that lifts the sum by trading one part away (e.g. pooled AUC up, NDCG@10 down) is
    not kept. Ties go to the earlier candidate in ``table``'s order.
    """
    best: str | None = None
    for name, m in table.items():
        if all(m[k] > reference[k] for k in objective):
            if best is None or m["objective"] > table[best]["objective"]:
                best = name
    return best
