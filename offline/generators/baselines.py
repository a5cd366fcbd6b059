"""The evaluation's cold-start baselines (paper section 3.2) that are not kNN or LLM:
LRcold (the median retired weights), popularity only, and the EmbT5-style embedding scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from offline.generators.common import deterministic, logit_ctr
from offline.types import Generated, Neighbour, check_neighbours

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad
    from offline.stages.prepared import Prepared

__all__ = ["lr_cold_theta", "LRColdGenerator", "PopularityGenerator", "user_profiles", "embedding_scores"]


def lr_cold_theta(warm_theta: np.ndarray) -> np.ndarray:
    """LRcold (paper 3.2): element-wise median of the retired weights, f32[F]."""
    W = np.asarray(warm_theta, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] == 0:
        raise ValueError(f"warm_theta must be [W>=1, F], got {W.shape}")
    return np.median(W, axis=0).astype(np.float32)


class LRColdGenerator:
    """Every cold ad gets the element-wise median of all retired weights (needs ``fit``)."""

    name = "lr-cold"

    def __init__(self) -> None:
        self.theta: np.ndarray | None = None

    def fit(self, prep: "Prepared", users: np.ndarray | None = None) -> "LRColdGenerator":
        self.theta = lr_cold_theta(prep.warm_theta)
        return self

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        if self.theta is None:
            raise ValueError("LRColdGenerator.fit(prepared) must run before generate")
        if self.theta.shape[0] != len(features):
            raise ValueError(f"fitted on {self.theta.shape[0]} features, got {len(features)}")
        return deterministic(self.theta.copy())


class PopularityGenerator:
    """Popularity-only cold start: zero user weights, intercept = logit(mean CTR of neighbours).

    Ranks every user's ads the same way (by the neighbours' popularity), so its per-ad AUC is
    0.5 by construction: the reference for how much of a metric popularity alone explains.
    """

    name = "popularity"

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        F = len(features)
        check_neighbours(ad, neighbours, F)
        ctr = np.array([nb.mean_ctr for nb in neighbours], dtype=np.float64)
        ctr = ctr[np.isfinite(ctr)]
        if ctr.size == 0:
            raise ValueError(f"ad {ad.ad_id}: no neighbour has a known mean CTR")
        theta = np.zeros(F, dtype=np.float32)
        theta[0] = float(logit_ctr(np.array([ctr.mean()]))[0])
        return deterministic(theta)


def user_profiles(emb_warm: np.ndarray, Y_warm: np.ndarray) -> np.ndarray:
    """EmbT5-style user text profiles: L2-normalised mean embedding of the retired ads each
    user clicked. emb_warm f32[W, d] (unit rows); Y_warm 0/1 [N, W] -> f32[N, d] (zero rows for
    users without history)."""
    P = np.asarray(Y_warm, dtype=np.float32) @ np.asarray(emb_warm, dtype=np.float32)
    n = np.linalg.norm(P, axis=1, keepdims=True)
    return np.divide(P, n, out=np.zeros_like(P), where=n > 0).astype(np.float32)


def embedding_scores(prep: "Prepared", users: np.ndarray) -> np.ndarray:
    """EmbT5-style baseline scores float32 [len(users), C]: cosine between each user's profile
    (from retired clicks only, :func:`user_profiles`) and each cold ad's content embedding.
    The scores are similarities, not CTRs (no log-loss / calibration for this baseline)."""
    ds, sp = prep.dataset, prep.split
    Yw = ds.labels(sp.warm)[np.asarray(users)]
    P = user_profiles(prep.emb[sp.warm], Yw)
    return np.ascontiguousarray(P @ prep.emb[sp.cold].T, dtype=np.float32)
