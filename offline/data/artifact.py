"""Hand-off files between the offline pipeline and ``llmhyper publish``.

Both files are a single ``.npz`` (no pickles): numeric arrays plus JSON strings stored as 0-d
unicode arrays. Writes are atomic (temporary file in the same directory, then rename), so a
reader sees either the old file or the complete new one. ``load`` validates everything and
raises ``ValueError`` naming the problem; ``save`` runs the same checks first, so an invalid
object is never written.

Layout of a weights file (``format = "llmhyper.weights/1"``)::

    format    str   "llmhyper.weights/1"
    theta     float32 [M, F]   one weight row per ad, column 0 is the intercept
    meta      JSON  {"ad_ids": [...M str], "features": [[name, description], ...F],
                     "manifest": {...}, "ad_records": {ad_id: {...}}}

Layout of a user table (``format = "llmhyper.users/1"``)::

    format    str   "llmhyper.users/1"
    X         float32 [N, F]   column 0 is the bias, all ones
    meta      JSON  {"user_ids": [...N str], "features": [[name, description], ...F]}
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offline.data.cache import atomic_write_bytes
from offline.data.features import check_user_matrix, validate_features

WEIGHTS_FORMAT = "llmhyper.weights/1"
USERS_FORMAT = "llmhyper.users/1"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _dumps(obj: Any, what: str) -> str:
    try:
        # allow_nan=False: a NaN in a record is a bug upstream, refuse to write it.
        return json.dumps(obj, default=_json_default, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable with finite numbers: {e}") from None


def _check_ids(ids: Any, what: str) -> list[str]:
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"{what} must be a list of str, got {type(ids).__name__}")
    out = list(ids)
    for i, x in enumerate(out):
        if not isinstance(x, str) or not x:
            raise ValueError(f"{what}[{i}] must be a non-empty str, got {x!r}")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dup = next(x for x in out if x in seen or seen.add(x))  # type: ignore[func-returns-value]
        raise ValueError(f"{what}: duplicate id {dup!r}")
    return out


def _write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _read_npz(path: str | os.PathLike, fmt: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    if "format" not in data:
        raise ValueError(f"{path}: missing 'format' entry (not an llmhyper file)")
    got = str(data["format"])
    if got != fmt:
        raise ValueError(f"{path}: format is {got!r}, expected {fmt!r}")
    for k in keys:
        if k not in data:
            raise ValueError(f"{path}: missing entry {k!r}")
    return data


def _parse_meta(path: str | os.PathLike, raw: np.ndarray) -> dict:
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ValueError(f"{path}: 'meta' must be a JSON string")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: 'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: 'meta' must be a JSON object")
    return meta


def _meta_with_features(path: str | os.PathLike, raw: np.ndarray,
                        keys: tuple[str, ...]) -> tuple[dict, list]:
    """The metadata dict of a file, checked to hold ``keys`` and a [name, description] feature list."""
    meta = _parse_meta(path, raw)
    for k in (*keys[:1], "features", *keys[1:]):
        if k not in meta:
            raise ValueError(f"{path}: metadata lacks {k!r}")
    feats = meta["features"]
    if not isinstance(feats, list) or not all(isinstance(p, list) and len(p) == 2 for p in feats):
        raise ValueError(f"{path}: 'features' must be a list of [name, description]")
    return meta, feats


@dataclass
class WeightArtifact:
    """Per-ad weight rows ready to publish.

    ad_ids: M unique ad ids; theta: float32 [M, F] (row i belongs to ad_ids[i]);
    features: F (name, description) pairs, ``bias`` first; manifest: provenance (generator,
    model, prompt_version, dataset, created_at, config, ...); ad_records: optional per-ad JSON
    (neighbours [(ad_id, sim)], alpha, delta, rationale, spread, cost, failed reason, ...).
    """

    ad_ids: list[str]
    theta: np.ndarray
    features: list[tuple[str, str]]
    manifest: dict = field(default_factory=dict)
    ad_records: dict[str, dict] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first problem found."""
        ids = _check_ids(self.ad_ids, "ad_ids")
        feats = validate_features(self.features)
        th = self.theta
        if not isinstance(th, np.ndarray):
            raise ValueError(f"theta: expected a numpy array, got {type(th).__name__}")
        if th.dtype != np.float32:
            raise ValueError(f"theta: dtype must be float32, got {th.dtype}")
        if th.ndim != 2 or th.shape != (len(ids), len(feats)):
            raise ValueError(f"theta: shape {th.shape} does not match [{len(ids)} ads, {len(feats)} features]")
        if not np.all(np.isfinite(th)):
            r, c = np.argwhere(~np.isfinite(th))[0]
            raise ValueError(f"theta: non-finite weight for ad {ids[r]!r}, feature {feats[c][0]!r}")
        if not isinstance(self.manifest, dict):
            raise ValueError("manifest must be a dict")
        if not isinstance(self.ad_records, dict):
            raise ValueError("ad_records must be a dict keyed by ad id")
        known = set(ids)
        for k, v in self.ad_records.items():
            if k not in known:
                raise ValueError(f"ad_records: record for unknown ad id {k!r}")
            if not isinstance(v, dict):
                raise ValueError(f"ad_records[{k!r}] must be a dict")

    def save(self, path: str | os.PathLike) -> None:
        """Validate, then write one .npz atomically."""
        self.validate()
        meta = {
            "ad_ids": list(self.ad_ids),
            "features": [list(p) for p in validate_features(self.features)],
            "manifest": self.manifest,
            "ad_records": self.ad_records,
        }
        _write_npz(path, {
            "format": np.array(WEIGHTS_FORMAT),
            "theta": np.ascontiguousarray(self.theta, dtype=np.float32),
            "meta": np.array(_dumps(meta, "weight artifact metadata")),
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WeightArtifact":
        """Read and validate a weights file; ValueError naming what is wrong."""
        data = _read_npz(path, WEIGHTS_FORMAT, ("theta", "meta"))
        meta, feats = _meta_with_features(path, data["meta"], ("ad_ids", "manifest", "ad_records"))
        art = cls(
            ad_ids=meta["ad_ids"],
            theta=np.ascontiguousarray(data["theta"]),
            features=[(str(a), str(b)) for a, b in feats],
            manifest=meta["manifest"],
            ad_records=meta["ad_records"],
        )
        try:
            art.validate()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return art


@dataclass
class UserTable:
    """User feature vectors to load into the store.

    user_ids: N unique ids; X: float32 [N, F] with column 0 all ones; features: F pairs, bias first.
    """

    user_ids: list[str]
    X: np.ndarray
    features: list[tuple[str, str]]

    def validate(self) -> None:
        """Raise ValueError naming the first problem found."""
        ids = _check_ids(self.user_ids, "user_ids")
        feats = validate_features(self.features)
        check_user_matrix(self.X, len(feats), "X")
        if self.X.shape[0] != len(ids):
            raise ValueError(f"X: has {self.X.shape[0]} rows but there are {len(ids)} user ids")

    def save(self, path: str | os.PathLike) -> None:
        """Validate, then write one .npz atomically."""
        self.validate()
        meta = {"user_ids": list(self.user_ids), "features": [list(p) for p in self.features]}
        _write_npz(path, {
            "format": np.array(USERS_FORMAT),
            "X": np.ascontiguousarray(self.X, dtype=np.float32),
            "meta": np.array(_dumps(meta, "user table metadata")),
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UserTable":
        """Read and validate a user table; ValueError naming what is wrong."""
        data = _read_npz(path, USERS_FORMAT, ("X", "meta"))
        meta, feats = _meta_with_features(path, data["meta"], ("user_ids",))
        tab = cls(user_ids=meta["user_ids"], X=np.ascontiguousarray(data["X"]),
                  features=[(str(a), str(b)) for a, b in feats])
        try:
            tab.validate()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return tab

