"""Input validation for the weight store: everything is checked before any LMDB write.

Each check raises :class:`InvalidWeights` (a ``PublishError`` and a ``ValueError``) whose
message names the argument and what is wrong with it, so a bad publish never touches the
store and the CLI / server can report it as invalid input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# LMDB's default maximum key size is 511 bytes; ids are embedded in keys with a short prefix.
MAX_ID_BYTES = 400


class StoreError(Exception):
    """Base class of every weight-store error; the message says what is wrong."""


class VersionNotFound(StoreError, LookupError):
    """The requested weight version does not exist (never published, or pruned)."""


class UserNotFound(StoreError, LookupError):
    """A user id is not in the store's user table (``user_id``: the first unknown one)."""

    def __init__(self, message: str, user_id: object = None) -> None:
        super().__init__(message)
        self.user_id = user_id


class PublishError(StoreError):
    """A publish (or user-table write) failed; the previously current version is unchanged."""


class InvalidWeights(PublishError, ValueError):
    """The data handed to publish()/put_users() is malformed; nothing was written."""


def check_ids(ids: Sequence[str], what: str) -> list[str]:
    """Validate a sequence of unique, non-empty ``str`` ids that fit in an LMDB key."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InvalidWeights(f"{what} must be a list of str, got {type(ids).__name__}")
    out = list(ids)
    if not out:
        raise InvalidWeights(f"{what} is empty")
    seen: set[str] = set()
    for i, a in enumerate(out):
        if not isinstance(a, str):
            raise InvalidWeights(f"{what}[{i}] must be str, got {type(a).__name__} {a!r}")
        if not a:
            raise InvalidWeights(f"{what}[{i}] is an empty string")
        if len(a.encode("utf-8")) > MAX_ID_BYTES:
            raise InvalidWeights(f"{what}[{i}] is longer than {MAX_ID_BYTES} UTF-8 bytes")
        if a in seen:
            raise InvalidWeights(f"{what} contains duplicate id {a!r} (at index {i})")
        seen.add(a)
    return out


def check_features(features: Sequence[Any], what: str = "features") -> list[tuple[str, str]]:
    """Validate a feature schema: ``(name, description)`` pairs, unique names, index 0 ``bias``."""
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise InvalidWeights(f"{what} must be a list of (name, description) pairs")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, f in enumerate(features):
        if isinstance(f, (str, bytes)) or not isinstance(f, Sequence) or len(f) != 2:
            raise InvalidWeights(f"{what}[{i}] must be a (name, description) pair, got {f!r}")
        name, desc = f[0], f[1]
        if not isinstance(name, str) or not name:
            raise InvalidWeights(f"{what}[{i}] name must be a non-empty str, got {name!r}")
        if not isinstance(desc, str):
            raise InvalidWeights(f"{what}[{i}] ({name!r}) description must be str, got {type(desc).__name__}")
        if name in seen:
            raise InvalidWeights(f"{what} has duplicate feature name {name!r} (at index {i})")
        seen.add(name)
        out.append((name, desc))
    if not out:
        raise InvalidWeights(f"{what} is empty (need at least the 'bias' feature)")
    if out[0][0] != "bias":
        raise InvalidWeights(f"{what}[0] must be the intercept named 'bias', got {out[0][0]!r}")
    return out


def check_matrix(a: Any, what: str, n_rows: int, n_cols: int) -> np.ndarray:
    """Return ``a`` as a C-contiguous little-endian float32 [n_rows, n_cols] copy-if-needed array.

    Rejects non-numeric dtypes, wrong rank or shape, and any value that is not finite once
    cast to float32 (so 1e39 in float64, which overflows to inf, is rejected too).
    """
    try:
        arr = np.asarray(a)
    except Exception as e:  # ragged lists etc.
        raise InvalidWeights(f"{what} is not an array: {e}") from None
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise InvalidWeights(f"{what} must be numeric (castable to float32), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InvalidWeights(f"{what} must be 2-D [rows, features], got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise InvalidWeights(f"{what} has {arr.shape[0]} rows but there are {n_rows} ids")
    if arr.shape[1] != n_cols:
        raise InvalidWeights(f"{what} has {arr.shape[1]} columns but the schema has {n_cols} features")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype="<f4")
    finite = np.isfinite(out)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise InvalidWeights(
            f"{what} has {int((~finite).sum())} non-finite value(s) as float32, first at "
            f"[{r}, {c}] (original value {arr[r, c]!r})"
        )
    return out


def to_json(obj: Any, what: str) -> bytes:
    """Serialise ``obj`` as strict JSON (no NaN/inf), raising InvalidWeights naming ``what``."""
    try:
        return json.dumps(obj, allow_nan=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidWeights(f"{what} is not JSON-serialisable: {e}") from None


def check_manifest(manifest: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """Validate the manifest; fill ``created_at`` (unix seconds) when missing."""
    if manifest is None:
        manifest = {}
    if not isinstance(manifest, Mapping):
        raise InvalidWeights(f"manifest must be a dict, got {type(manifest).__name__}")
    out = dict(manifest)
    for k in out:
        if not isinstance(k, str):
            raise InvalidWeights(f"manifest keys must be str, got {k!r}")
    ts = out.setdefault("created_at", now)
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise InvalidWeights(f"manifest['created_at'] must be finite unix seconds, got {ts!r}")
    to_json(out, "manifest")
    return out


def check_records(records: Mapping[str, Any] | None, ad_ids: Sequence[str]) -> dict[str, bytes]:
    """Validate per-ad records: keys are known ad ids, values JSON objects. Returns encoded JSON."""
    if records is None:
        return {}
    if not isinstance(records, Mapping):
        raise InvalidWeights(f"ad_records must be a mapping ad_id -> dict, got {type(records).__name__}")
    known = set(ad_ids)
    out: dict[str, bytes] = {}
    for ad, rec in records.items():
        if ad not in known:
            raise InvalidWeights(f"ad_records has a record for unknown ad id {ad!r}")
        if not isinstance(rec, Mapping):
            raise InvalidWeights(f"ad_records[{ad!r}] must be a dict, got {type(rec).__name__}")
        out[ad] = to_json(dict(rec), f"ad_records[{ad!r}]")
    return out
