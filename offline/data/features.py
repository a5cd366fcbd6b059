"""User-feature schema: named features with one-line definitions.

A feature schema is an ordered list of ``(name, description)`` pairs. Index 0 is always the
intercept ``bias`` (value 1.0 for every user). The descriptions are what an LLM reads when it
reasons about a weight, so each one says in plain words what the number measures and its range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

BIAS_NAME = "bias"
BIAS_DESCRIPTION = "Intercept: always 1.0 for every user; its weight sets the ad's base click rate."

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Feature:
    """One user feature: a short identifier and a one-line definition."""

    name: str
    description: str

    def as_pair(self) -> tuple[str, str]:
        return (self.name, self.description)


def bias_feature() -> Feature:
    """The intercept feature that must come first in every schema."""
    return Feature(BIAS_NAME, BIAS_DESCRIPTION)


def as_pairs(features: Iterable[Feature | tuple[str, str] | Sequence[str]]) -> list[tuple[str, str]]:
    """Normalise Feature objects or 2-sequences into ``list[tuple[str, str]]``."""
    out: list[tuple[str, str]] = []
    for i, f in enumerate(features):
        if isinstance(f, Feature):
            out.append(f.as_pair())
            continue
        try:
            name, desc = f  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(f"feature {i}: expected (name, description), got {f!r}") from None
        out.append((str(name), str(desc)))
    return out


def feature_names(features: Sequence[tuple[str, str]]) -> list[str]:
    """Names only, in schema order."""
    return [n for n, _ in features]


def validate_features(features: Sequence[tuple[str, str]], where: str = "features") -> list[tuple[str, str]]:
    """Check a schema and return it as a list of pairs.

    Rules: non-empty, first name is ``bias``, names unique and identifier-like (letters, digits,
    ``_ . -``; not starting with a digit), every description a non-empty single line.
    Raises ValueError naming the offending entry.
    """
    pairs = as_pairs(features)
    if not pairs:
        raise ValueError(f"{where}: empty feature schema (need at least 'bias')")
    if pairs[0][0] != BIAS_NAME:
        raise ValueError(f"{where}: first feature must be '{BIAS_NAME}', got '{pairs[0][0]}'")
    seen: set[str] = set()
    for i, (name, desc) in enumerate(pairs):
        if not _NAME_RE.match(name):
            raise ValueError(f"{where}: feature {i} has an invalid name {name!r}")
        if name in seen:
            raise ValueError(f"{where}: duplicate feature name {name!r} (index {i})")
        seen.add(name)
        if not desc.strip():
            raise ValueError(f"{where}: feature {name!r} has an empty definition")
        if "\n" in desc or "\r" in desc:
            raise ValueError(f"{where}: definition of feature {name!r} must be one line")
    return pairs


def check_user_matrix(X: np.ndarray, n_features: int, where: str = "X") -> None:
    """Validate a user feature matrix: float32 [N, F], C-contiguous, finite, column 0 all ones."""
    if not isinstance(X, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array, got {type(X).__name__}")
    if X.dtype != np.float32:
        raise ValueError(f"{where}: dtype must be float32, got {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{where}: must be 2-D [N, F], got shape {X.shape}")
    if X.shape[1] != n_features:
        raise ValueError(f"{where}: has {X.shape[1]} columns but the schema has {n_features} features")
    if not X.flags.c_contiguous:
        raise ValueError(f"{where}: must be C-contiguous")
    if not np.all(np.isfinite(X)):
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"{where}: non-finite value at row {bad[0]}, column {bad[1]}")
    if X.shape[0] and not np.all(X[:, 0] == 1.0):
        row = int(np.argmax(X[:, 0] != 1.0))
        raise ValueError(f"{where}: bias column must be 1.0 for every row (row {row} has {X[row, 0]})")
