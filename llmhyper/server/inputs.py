"""A request's inline inputs checked against one served version: feature vectors, packed
feature rows, allow/deny lists. Every problem is an INVALID_ARGUMENT (NOT_FOUND for unknown ad
ids) naming what is wrong."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from llmhyper.server.errors import _invalid, _not_found, _preview
from llmhyper.server.state import _F32, ServingState

_LE_F32 = np.dtype("<f4")


def inline_vector(st: ServingState, dense: Sequence[float], fmap: Mapping[str, float],
                  packed: np.ndarray | None = None, check_finite: bool = True) -> np.ndarray:
    """The user's feature vector float32 [F] from ``dense`` (F values in schema order) when it is
    non-empty, else from ``fmap`` (name -> value over ``st.map_default``).

    ``packed``: ``dense`` already as a float32 array (``wire.packed_features``), used instead of
    converting it. ``check_finite``: INVALID_ARGUMENT for a non-finite value; a caller whose
    kernel rejects non-finite input anyway passes False and, when the kernel raises, reports the
    value with :func:`check_finite_vector`."""
    n_dense = len(dense)
    if n_dense:
        if n_dense != st.F:
            raise _invalid(f"features has {n_dense} values, expected F={st.F} for version {st.version} "
                           f"(schema order: {_preview(list(st.feature_names), 4)})")
        x = packed if packed is not None else np.fromiter(dense, dtype=_F32, count=n_dense)
    else:
        x = st.map_default.copy()
        index = st.feature_index
        unknown = []
        for name, value in fmap.items():
            j = index.get(name)
            if j is None:
                unknown.append(name)
            else:
                x[j] = value
        if unknown:
            raise _invalid(f"unknown feature name(s) in feature_map: {_preview(sorted(unknown))}; "
                           f"version {st.version} has {st.F} features: {_preview(list(st.feature_names), 6)}")
    if check_finite:
        check_finite_vector(st, x)
    return x


def check_finite_vector(st: ServingState, x: np.ndarray) -> None:
    """INVALID_ARGUMENT naming the first non-finite value of the feature vector ``x`` (float32 [F])."""
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise _invalid(f"feature {st.feature_names[bad]!r} (index {bad}) is {float(x[bad])}; values must be finite")


def inline_rows(st: ServingState, raw: bytes, n_inline: int) -> np.ndarray | None:
    """``raw`` (packed float32 little-endian [n_inline, F]) as a native float32 array, None when
    ``n_inline`` is 0; INVALID_ARGUMENT naming the first non-finite value."""
    F = st.F
    X_inline = np.frombuffer(raw, dtype=_LE_F32).reshape(n_inline, F) if n_inline else None
    if X_inline is not None and X_inline.dtype != _F32:  # big-endian host
        X_inline = X_inline.astype(_F32)
    if X_inline is not None and not np.isfinite(X_inline).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(X_inline))[0])
        raise _invalid(f"features row {r}, feature {st.feature_names[c]!r} (index {c}) is "
                       f"{float(X_inline[r, c])}; values must be finite")
    return X_inline


def allow_mask(st: ServingState, allow_ids: Sequence[str], deny_ids: Sequence[str]) -> np.ndarray | None:
    """uint8 [M] candidate mask, or None when every ad is a candidate."""
    if not allow_ids and not deny_ids:
        return None
    index = st.ad_index
    unknown = [a for a in allow_ids if a not in index] + [a for a in deny_ids if a not in index]
    if unknown:
        raise _not_found(f"unknown ad id(s) in allow/deny list for version {st.version}: {_preview(unknown)}")
    if allow_ids:
        mask = np.zeros(st.M, dtype=np.uint8)
        mask[[index[a] for a in allow_ids]] = 1
    else:
        mask = np.ones(st.M, dtype=np.uint8)
    if deny_ids:
        mask[[index[a] for a in deny_ids]] = 0
    return mask
