"""The values every weight generator shares: a retrieved neighbour, a generated result, the
generator protocol, and the input checks all generators apply (features, neighbours)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from offline.data.dataset import Ad

__all__ = ["Neighbour", "Generated", "WeightGenerator", "check_features", "check_neighbours"]


@dataclass
class Neighbour:
    """A retrieved warm ad: its record, trained weights f32[F], similarity to the target
    (cosine, higher = closer) and its mean predicted CTR on the user sample (NaN if unknown)."""

    ad: "Ad"
    theta: np.ndarray
    similarity: float
    mean_ctr: float = float("nan")


@dataclass
class Generated:
    """Generated weights of one ad.

    theta: f32[F] (NaN-filled when the ad failed and ``on_failure="exclude"``).
    rationale: {feature: text} (reasoning mode; first accepted sample). samples: f32[n, F]
    per-sample weights (NaN where a sample was rejected). spread: f32[F] std across samples.
    cost: counters -- calls, retries, invalid, cache_hits, input_tokens, output_tokens,
    llm_seconds, backoff_seconds, errors {reason: count}. failed: reason or None.
    flags: prompt-injection flags of the ad text. fallback: the config name of the generator whose weights stand in for a failed ad's (e.g. "knn-raw"), else None.
    analysis: the model's short ad analysis (reasoning mode). judge: verdicts of the LLM judge
    (offline/generators/judging.py), None when the judge is off.
    """

    theta: np.ndarray
    rationale: dict[str, str]
    samples: np.ndarray
    spread: np.ndarray
    cost: dict
    failed: str | None = None
    flags: list[str] = field(default_factory=list)
    fallback: str | None = None
    analysis: str = ""
    judge: dict | None = None  # the LLM judge's final verdicts, rounds and content rules (judge on)

    @property
    def usable(self) -> bool:
        """True if theta is finite and may be published (ok, or failed with a fallback)."""
        return bool(np.all(np.isfinite(self.theta)))

    def record(self) -> dict:
        """JSON-serialisable per-ad record for the artifact (rationale, spread, cost, flags...)."""
        spread = [None if not math.isfinite(float(v)) else float(v) for v in self.spread]
        return {
            "rationale": dict(self.rationale),
            "analysis": self.analysis,
            "n_samples": int(self.samples.shape[0]),
            "spread": spread,
            "cost": self.cost,
            "failed": self.failed,
            "fallback": self.fallback,
            "flags": list(self.flags),
            **({"judge": self.judge} if self.judge is not None else {}),
        }


class WeightGenerator(Protocol):
    """Anything that turns (ad, neighbours, features) into weights."""

    name: str

    def generate(self, ad: "Ad", neighbours: list[Neighbour], features: list[tuple[str, str]]) -> Generated:
        """Weights f32[F] for ``ad``, aligned with ``features`` (index 0 = ``bias``)."""
        ...


_FEATURE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def check_features(features: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (name, description) pairs as strings; ValueError unless non-empty, unique identifiers."""
    feats = [(str(n), str(d)) for n, d in features]
    if not feats:
        raise ValueError("features is empty")
    seen: set[str] = set()
    for n, _ in feats:
        if not n or len(n) > 128:
            raise ValueError(f"feature name {n[:40]!r} must be 1..128 characters")
        # names appear outside the data blocks (the Output section lists them), so they must be
        # plain identifiers, as features.csv requires: no words, spaces or markup can ride along
        if not _FEATURE_NAME_RE.fullmatch(n):
            raise ValueError(f"feature name {n[:40]!r} must be an identifier (letters, digits, _ . -): "
                             "no spaces, control, invisible or markup characters")
        if n in seen:
            raise ValueError(f"duplicate feature name {n!r}")
        seen.add(n)
    return feats


def check_neighbours(ad: "Ad", neighbours: Sequence[Neighbour], F: int, allow_empty: bool = False) -> None:
    """Raise ValueError unless there is at least one neighbour (unless ``allow_empty``) and each
    has a finite theta f[F] and a finite similarity (shared by every generator that reads them)."""
    if not neighbours and not allow_empty:
        raise ValueError(f"ad {getattr(ad, 'ad_id', '?')}: needs at least one neighbour")
    for nb in neighbours:
        th = np.asarray(nb.theta)
        if th.shape != (F,):
            raise ValueError(f"neighbour {getattr(nb.ad, 'ad_id', '?')} theta has shape {th.shape}, expected ({F},)")
        if not np.all(np.isfinite(th)):
            raise ValueError(f"neighbour {getattr(nb.ad, 'ad_id', '?')} theta has non-finite values")
        if not math.isfinite(float(nb.similarity)):
            raise ValueError(f"neighbour {getattr(nb.ad, 'ad_id', '?')} similarity is not finite")


# ----------------------------------------------------------------------------------- KNN

