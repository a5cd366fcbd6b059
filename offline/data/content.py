"""Content features of an ad known at launch: a year stated in its text and the encoder of
[embedding | category one-hot | stated-year age at launch] rows used by the intercept model and
by the cold-vs-retired shift classifier."""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

__all__ = ["DAY", "YEAR_RE", "content_year", "ContentEncoder"]

DAY = 86400.0
YEAR_S = 365.25 * DAY
YEAR_RE = re.compile(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)")


def content_year(ad: Any) -> float:
    """A year (1800-2099) stated in the ad's content: the last one in the title (e.g. a film's
    release year, ``Titanic (1997)``), else the first in the description; NaN when none."""
    m = YEAR_RE.findall(getattr(ad, "title", "") or "")
    if m:
        return float(m[-1])
    m = YEAR_RE.findall(getattr(ad, "description", "") or "")
    return float(m[0]) if m else float("nan")


class ContentEncoder:
    """Content features of an ad for the intercept model, f64 rows:
    [embedding (d), one-hot category (categories with >= ``min_count`` retired ads),
    has_year, log1p(age), age < 1, age < 2] where age = years from the stated year
    (:func:`content_year`) to the ad's launch (catalog metadata), clipped to [0, 100]; the
    year block is 0 for an ad without a stated year. Works for any dataset: an ad without
    category or year simply gets zeros there."""

    def __init__(self, min_count: int = 3) -> None:
        self.min_count = min_count
        self.categories: list[str] = []

    def fit(self, ads: Sequence[Any]) -> "ContentEncoder":
        counts: dict[str, int] = {}
        for a in ads:
            c = getattr(a, "category", "") or ""
            if c:
                counts[c] = counts.get(c, 0) + 1
        self.categories = sorted(c for c, n in counts.items() if n >= self.min_count)
        return self

    def transform(self, ads: Sequence[Any], emb: np.ndarray) -> np.ndarray:
        """ads (n) with their embeddings f[n, d] -> f64[n, d + n_categories + 4]."""
        emb = np.asarray(emb, dtype=np.float64).reshape(len(ads), -1)
        cat = np.zeros((len(ads), len(self.categories)))
        pos = {c: j for j, c in enumerate(self.categories)}
        yr = np.zeros((len(ads), 4))
        for i, a in enumerate(ads):
            j = pos.get(getattr(a, "category", "") or "")
            if j is not None:
                cat[i, j] = 1.0
            y = content_year(a)
            if math.isfinite(y):
                age = float(np.clip(1970.0 + float(a.launched_at) / YEAR_S - y, 0.0, 100.0))
                yr[i] = (1.0, math.log1p(age), float(age < 1.0), float(age < 2.0))
        return np.concatenate([emb, cat, yr], axis=1)
