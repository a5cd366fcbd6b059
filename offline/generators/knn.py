"""``RawKNNGenerator`` (config name ``knn-raw``): the similarity-weighted average of the retrieved
neighbours' trained weights (softmax with a temperature, a power of the similarity, or
uniform). Deterministic, no LLM; the LLM generator's fallback and the simplest baseline."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from offline.types import Generated, Neighbour, check_features, check_neighbours
from offline.llm.prompts import scan_ad_text

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad

__all__ = ["RawKNNGenerator"]


class RawKNNGenerator:
    """Similarity-weighted average of neighbour weights (deterministic, no LLM).

    weighting: "softmax" (w ∝ exp(sim / temperature)), "power" (w ∝ max(sim, 0) ** power) or
    "uniform". k: use only the k most similar neighbours (None = all given).
    """

    name = "knn-raw"

    def __init__(self, weighting: str = "softmax", temperature: float = 0.05, power: float = 1.0, k: int | None = None):
        if weighting not in ("softmax", "power", "uniform"):
            raise ValueError(f"weighting must be 'softmax', 'power' or 'uniform', got {weighting!r}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not (power >= 0 and math.isfinite(power)):
            raise ValueError(f"power must be >= 0, got {power}")
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.weighting, self.temperature, self.power, self.k = weighting, float(temperature), float(power), k

    def fit_arrays(self, *args: Any, **kwargs: Any) -> "RawKNNGenerator":
        """Nothing to fit (the weights come from the neighbours given to :meth:`generate`); present
        so that model selection can score raw kNN on validation folds like any fitted generator."""
        return self

    def config(self) -> dict:
        """The settings, for the manifest."""
        return {"weighting": self.weighting, "temperature": self.temperature, "power": self.power, "k": self.k}

    def mix_weights(self, sims: np.ndarray) -> np.ndarray:
        """Mixing weights f64[k] (sum 1) for similarities f[k]."""
        s = np.asarray(sims, dtype=np.float64)
        if self.weighting == "uniform":
            return np.full(s.shape[0], 1.0 / s.shape[0])
        if self.weighting == "softmax":
            e = np.exp((s - s.max()) / self.temperature)
            return e / e.sum()
        p = np.clip(s, 0.0, None) ** self.power
        tot = p.sum()
        return p / tot if tot > 0 else np.full(s.shape[0], 1.0 / s.shape[0])

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """theta = sum_i w_i theta_i over the (k most similar) neighbours; spread = weighted std."""
        feats = check_features(features)
        F = len(feats)
        check_neighbours(ad, neighbours, F)
        order = sorted(range(len(neighbours)), key=lambda i: (-float(neighbours[i].similarity), i))
        if self.k is not None:
            order = order[: self.k]
        T = np.stack([np.asarray(neighbours[i].theta, dtype=np.float64) for i in order])
        w = self.mix_weights(np.array([neighbours[i].similarity for i in order]))
        theta = w @ T
        spread = np.sqrt(np.clip(w @ (T - theta) ** 2, 0.0, None))
        return Generated(
            theta=theta.astype(np.float32),
            rationale={},
            samples=T.astype(np.float32),
            spread=spread.astype(np.float32),
            cost={},
            failed=None,
            flags=scan_ad_text(ad),
        )

