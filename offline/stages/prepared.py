"""``Prepared``: the output of stages 0-3 (data, warm weights, embeddings, neighbours), the input of
every cold-start method. Its own module so generators can name it without importing the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offline.data.dataset import Ad, Dataset, Split

__all__ = ["Prepared"]


@dataclass
class Prepared:
    """What every cold-start method starts from.

    warm_theta: float32 [W, F] trained weights of split.warm (same order);
    warm_ctr: float64 [W] observed CTR of each warm ad;
    emb: float32 [n_ads, d] L2-normalised content embeddings of every ad;
    nbr: int64 [C, k] positions into split.warm of each cold ad's neighbours (best first);
    sim: float32 [C, k] their cosine similarities.
    """

    dataset: Dataset
    split: Split
    warm_theta: np.ndarray
    warm_ctr: np.ndarray
    l2: float
    emb: np.ndarray
    nbr: np.ndarray
    sim: np.ndarray
    timings: dict[str, float]
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def cold_ads(self) -> list[Ad]:
        """The cold (active) ads' records, in split.cold order."""
        return [self.dataset.ads[i] for i in self.split.cold]
