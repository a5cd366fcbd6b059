"""Rolling-origin pseudo-cold folds of retired ads, weighted toward the cold ads' content."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from offline.data.content import ContentEncoder
from offline.selection.weights import shift_weights

if TYPE_CHECKING:  # pragma: no cover
    from offline.stages.prepared import Prepared

__all__ = ["ValidationFold", "shift_features", "validation_folds"]


@dataclass
class ValidationFold:
    """One pseudo-cold fold of retired ads. held / pool: positions in ``prep.split.warm``
    (held ads launched in [cut, end), pool ads before ``cut``, unix s); X f[N, F]: user features
    (faithful: computed without the held ads' ratings); pool_theta f[P, F]: the pool's weights
    on those features; weights f64[H]: importance weights of the held ads toward the cold ads."""

    held: np.ndarray
    pool: np.ndarray
    cut: float
    X: np.ndarray
    pool_theta: np.ndarray
    weights: np.ndarray


def shift_features(prep: "Prepared", idx: np.ndarray, n_pcs: int = 5) -> np.ndarray:
    """Content features of ads ``idx`` (dataset indices) for the cold-vs-retired classifier:
    the metadata block of :class:`ContentEncoder` (category one-hot, stated-year age at launch;
    encoder fitted on retired ads) plus the top ``n_pcs`` principal components of the
    embeddings (fitted on retired and cold ads). No launch recency: it separates the sets by
    construction. Returns f64[len(idx), p]."""
    ds, sp = prep.dataset, prep.split
    enc = ContentEncoder().fit([ds.ads[i] for i in sp.warm])
    d = prep.emb.shape[1]
    meta = enc.transform([ds.ads[i] for i in idx], prep.emb[idx])[:, d:]
    if n_pcs <= 0:
        return meta
    E = np.asarray(prep.emb[np.concatenate([sp.warm, sp.cold])], dtype=np.float64)
    mu = E.mean(axis=0)
    _, _, Vt = np.linalg.svd(E - mu, full_matrices=False)
    return np.concatenate([meta, (np.asarray(prep.emb[idx], dtype=np.float64) - mu) @ Vt[:n_pcs].T], axis=1)


def validation_folds(prep: "Prepared", edges: Sequence[float] = (0.6, 0.8, 1.0),
                     features_at: Any = None, n_pcs: int = 5, cap: float = 10.0,
                     l2_shift: float = 1.0) -> list[ValidationFold]:
    """Rolling-origin pseudo-cold folds over the RETIRED ads, weighted toward the cold ads.

    ``edges`` are quantiles of the retired ads' launch times: fold i holds out the ads launched
    in [q(edges[i]), q(edges[i+1])) (the last fold includes the end) and uses the ads launched
    before q(edges[i]) as its pool (neighbours, weights, intercept model). ``features_at``:
    callable cutoff (unix s) -> user features f[N, F] computed without ratings of retired ads
    launched at or after the cutoff (MovieLens: ``load_movielens(path, feature_cutoff=cut).X``);
    the pool is then retrained on them with the build's l2 (faithful: the held ads' labels shape
    neither features nor weights). None = production features and weights (optimistic for the
    user part). Importance weights: :func:`shift_weights` of each fold's held ads toward the cold
    ads on :func:`shift_features` (content only; no cold label is read)."""
    from offline.stages import train

    ds, sp = prep.dataset, prep.split
    lt = ds.launched_at[sp.warm]
    e = list(edges)
    if len(e) < 2 or any(not 0.0 < a < b <= 1.0 for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be increasing quantiles in (0, 1], got {edges}")
    A_cold = shift_features(prep, sp.cold, n_pcs)
    folds = []
    for a, b in zip(e, e[1:]):
        cut, hi = float(np.quantile(lt, a)), float(np.quantile(lt, b))
        pool = np.flatnonzero(lt < cut)
        held = np.flatnonzero((lt >= cut) & ((lt < hi) if b < 1.0 else True))
        if pool.size < 10 or held.size < 10:
            raise ValueError(f"fold [{a}, {b}) has {pool.size} pool / {held.size} held ads; widen the edges")
        if features_at is None:
            X, Wp = np.asarray(ds.X), np.asarray(prep.warm_theta[pool])
        else:
            X = np.asarray(features_at(cut))
            Wp = train.train_logreg(np.ascontiguousarray(X), ds.labels(sp.warm[pool]), prep.l2)
        w = shift_weights(shift_features(prep, sp.warm[held], n_pcs), A_cold, l2_shift, cap)
        folds.append(ValidationFold(held=held, pool=pool, cut=cut, X=X, pool_theta=Wp, weights=w))
    return folds
