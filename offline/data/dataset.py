"""The dataset layout: an ads catalog, interaction logs, user features and their definitions.

A dataset is a directory with five files (UTF-8 CSV with a header row, comma-separated,
standard quoting; column order within a file does not matter, extra columns are ignored
except in ``users.csv``). Each ``X.csv`` may be given as ``X.parquet`` instead (same columns;
values are checked exactly as the CSV text would be, a row N is reported as line N + 1)::

    my-dataset/
      dataset.json       what the logs mean
      ads.csv            the catalog (warm and cold ads together)
      interactions.csv   the logs
      users.csv          one feature vector per user
      features.csv       the feature definitions, in column order

``dataset.json``::

    {"name": "my-dataset",
     "implicit_negatives": false,
     "description": "free text: where the data comes from, what was derived",
     "time_split": {"cutoff": 893286638, "quantile": 0.7, "min_interactions": 5}}   # optional

``implicit_negatives``: ``false`` means ``interactions.csv`` lists impressions with their outcome
(``clicked`` 0 or 1; unlisted pairs are unknown, not negatives). ``true`` means the logs list
positives only (every row has ``clicked = 1``) and every (user, ad) pair that is not listed
counts as a non-click, e.g. MovieLens where "rated" is the click. The optional ``time_split``
declares the default warm/cold split (see :meth:`Dataset.time_split`); without it the
default is the 0.7 quantile of ``launched_at`` with at least 5 logged interactions.

``ads.csv`` columns:

    ad_id          str, unique, non-empty
    title          str, the ad's headline
    description    str, body text (may be empty)
    image_path     path to the creative image, absolute or relative to the dataset
                   directory; empty when there is none
    image_caption  str, a text description of the image (may be empty; say in
                   dataset.json if it was generated rather than written by a person)
    category       str, a coarse product category (may be empty)
    launched_at    when the ad first went live: unix seconds (int or float) or ISO-8601
                   (e.g. 2024-05-01T12:00:00Z; a time without offset is UTC)

``interactions.csv`` columns:

    user_id    str, must appear in users.csv
    ad_id      str, must appear in ads.csv
    clicked    0 or 1 (always 1 when implicit_negatives is true)
    timestamp  unix seconds or ISO-8601

``users.csv`` columns: ``user_id`` (unique), then exactly one column per feature of
``features.csv`` *except* ``bias``, in the same order as ``features.csv``. Values are finite
numbers. The intercept column of ones is added on load.

``features.csv`` columns: ``name`` (identifier: letters, digits, ``_ . -``), ``definition``
(one line in plain words: what the number measures and its range). The first row must be
``bias`` (the intercept; it has no column in users.csv). Names are unique.

Every file is checked on load; a problem raises :class:`DatasetError` (a ``ValueError``) that
names the file, line and value, e.g. ``interactions.csv line 17: unknown ad_id 'a9'``.

This module holds the types; :func:`offline.data.reader.load_dataset` reads and checks a
directory, and :func:`offline.data.writer.save_dataset` writes one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from offline.data.features import validate_features
from offline.errors import InputError

ADS_COLUMNS = ("ad_id", "title", "description", "image_path", "image_caption", "category", "launched_at")
INTERACTION_COLUMNS = ("user_id", "ad_id", "clicked", "timestamp")
FEATURE_COLUMNS = ("name", "definition")
FILES = ("dataset.json", "ads.csv", "interactions.csv", "users.csv", "features.csv")


class DatasetError(InputError):
    """A dataset violates the layout; the message names the file, line and value."""


@dataclass
class Ad:
    """One ad of the catalog. ``launched_at`` is unix seconds (float)."""

    ad_id: str
    title: str
    description: str = ""
    image_path: str | None = None
    image_caption: str = ""
    category: str = ""
    launched_at: float = 0.0


@dataclass
class Split:
    """Warm (retired, with trained weights) and cold (active) ad indices and the cutoff time.

    warm, cold: int64 ad indices into ``Dataset.ads`` (sorted); cutoff: unix seconds.
    """

    warm: np.ndarray
    cold: np.ndarray
    cutoff: float


def parse_time(value: str) -> float:
    """Parse unix seconds or ISO-8601 into unix seconds (float). Raises ValueError."""
    s = value.strip()
    if not s:
        raise ValueError("empty time")
    try:
        t = float(s)
    except ValueError:
        iso = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
        dt = datetime.fromisoformat(iso)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise ValueError(f"non-finite time {value!r}")
    return t


@dataclass
class Dataset:
    """An in-memory dataset; row i of ``ads`` is ad index i, row n of ``X`` is user index n.

    X: float32 [N, F], column 0 all ones; features: F (name, definition) pairs, bias first;
    inter_user / inter_ad: int32 [E] indices; inter_clicked: int8 [E] 0/1; inter_ts: float64 [E]
    unix seconds; implicit: True when only positives are logged and every unlisted pair is a
    non-click. Construction validates everything (DatasetError).
    """

    name: str
    ads: list[Ad]
    user_ids: list[str]
    X: np.ndarray
    features: list[tuple[str, str]]
    inter_user: np.ndarray
    inter_ad: np.ndarray
    inter_clicked: np.ndarray
    inter_ts: np.ndarray
    implicit: bool
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.X = np.ascontiguousarray(self.X, dtype=np.float32)
        self.inter_user = np.ascontiguousarray(self.inter_user, dtype=np.int32)
        self.inter_ad = np.ascontiguousarray(self.inter_ad, dtype=np.int32)
        self.inter_clicked = np.ascontiguousarray(self.inter_clicked, dtype=np.int8)
        self.inter_ts = np.ascontiguousarray(self.inter_ts, dtype=np.float64)
        self._validate()
        self.ad_index: dict[str, int] = {a.ad_id: i for i, a in enumerate(self.ads)}
        self.user_index: dict[str, int] = {u: i for i, u in enumerate(self.user_ids)}

    # -- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        try:
            self.features = validate_features(self.features)
        except ValueError as e:
            raise DatasetError(str(e)) from None
        seen: set[str] = set()
        for i, a in enumerate(self.ads):
            if not a.ad_id:
                raise DatasetError(f"ads[{i}]: empty ad_id")
            if a.ad_id in seen:
                raise DatasetError(f"duplicate ad_id {a.ad_id!r}")
            seen.add(a.ad_id)
            if not math.isfinite(a.launched_at):
                raise DatasetError(f"ad {a.ad_id!r}: non-finite launched_at")
        seen = set()
        for u in self.user_ids:
            if not u:
                raise DatasetError("empty user_id")
            if u in seen:
                raise DatasetError(f"duplicate user_id {u!r}")
            seen.add(u)
        N, F = len(self.user_ids), len(self.features)
        if self.X.shape != (N, F):
            raise DatasetError(f"X has shape {self.X.shape}, expected [{N} users, {F} features]")
        if not np.all(np.isfinite(self.X)):
            r, c = np.argwhere(~np.isfinite(self.X))[0]
            raise DatasetError(f"user {self.user_ids[r]!r}: non-finite value for feature {self.features[c][0]!r}")
        if N and not np.all(self.X[:, 0] == 1.0):
            raise DatasetError("X column 0 (bias) must be 1.0 for every user")
        E = self.inter_user.shape[0]
        for nm in ("inter_ad", "inter_clicked", "inter_ts"):
            if getattr(self, nm).shape != (E,):
                raise DatasetError(f"{nm} has shape {getattr(self, nm).shape}, expected ({E},)")
        if E:
            if self.inter_user.min() < 0 or self.inter_user.max() >= N:
                raise DatasetError("inter_user has an index outside [0, N)")
            if self.inter_ad.min() < 0 or self.inter_ad.max() >= len(self.ads):
                raise DatasetError("inter_ad has an index outside [0, A)")
            if not np.all((self.inter_clicked == 0) | (self.inter_clicked == 1)):
                raise DatasetError("inter_clicked must be 0 or 1")
            if self.implicit and not np.all(self.inter_clicked == 1):
                raise DatasetError("implicit-negative data must log positives only (clicked = 1)")
            if not np.all(np.isfinite(self.inter_ts)):
                raise DatasetError("inter_ts has a non-finite timestamp")

    # -- accessors ----------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_ads(self) -> int:
        return len(self.ads)

    @property
    def ad_ids(self) -> list[str]:
        return [a.ad_id for a in self.ads]

    @property
    def launched_at(self) -> np.ndarray:
        """float64 [A] unix seconds."""
        return np.array([a.launched_at for a in self.ads], dtype=np.float64)

    def interaction_counts(self) -> np.ndarray:
        """int64 [A]: logged rows per ad (positives for implicit data, impressions otherwise)."""
        return np.bincount(self.inter_ad, minlength=self.n_ads).astype(np.int64)

    def click_counts(self) -> np.ndarray:
        """int64 [A]: clicks per ad (a user counted once per ad for implicit data)."""
        if self.implicit:
            pairs = np.unique(self.inter_ad.astype(np.int64) * self.n_users + self.inter_user)
            return np.bincount(pairs // self.n_users, minlength=self.n_ads).astype(np.int64)
        return np.bincount(self.inter_ad, weights=self.inter_clicked, minlength=self.n_ads).astype(np.int64)

    def mean_ctr(self, ad_idx: np.ndarray | None = None) -> np.ndarray:
        """float64 [len(ad_idx)] observed click rate per ad.

        Implicit: distinct clicking users / all users. Explicit: clicks / impressions (0.0 for an
        ad without impressions).
        """
        idx = np.arange(self.n_ads) if ad_idx is None else np.asarray(ad_idx, dtype=np.int64)
        clicks = self.click_counts()[idx].astype(np.float64)
        if self.implicit:
            return clicks / max(self.n_users, 1)
        imps = self.interaction_counts()[idx].astype(np.float64)
        return np.divide(clicks, imps, out=np.zeros_like(clicks), where=imps > 0)

    def time_split(self, quantile: float | None = None, min_interactions: int | None = None,
                   cutoff: float | None = None) -> Split:
        """Split ads by launch time into warm (retired) and cold (active).

        cutoff T (unix seconds) = ``cutoff`` if given, else the ``quantile`` of all ads'
        ``launched_at`` if a quantile is given, else the dataset's declared
        ``meta["time_split"]["cutoff"]`` if present, else its declared ``quantile`` if present,
        else the 0.7 quantile. Warm = launched
        strictly before T with >= ``min_interactions`` logged rows; cold = launched at or after T
        with >= ``min_interactions`` (default: declared value, else 5). Ads below the minimum are
        in neither set.
        """
        declared = self.meta.get("time_split") or {}
        if min_interactions is None:
            min_interactions = int(declared.get("min_interactions", 5))
        if min_interactions < 0:
            raise ValueError(f"min_interactions must be >= 0, got {min_interactions}")
        lt = self.launched_at
        if cutoff is None:
            if quantile is None and "cutoff" in declared:
                cutoff = float(declared["cutoff"])
            else:
                if quantile is None:
                    quantile = declared.get("quantile", 0.7)
                q = float(quantile)
                if not 0.0 <= q <= 1.0:
                    raise ValueError(f"quantile must be in [0, 1], got {q}")
                if lt.size == 0:
                    raise ValueError("cannot split a dataset without ads")
                cutoff = float(np.quantile(lt, q))
        if not math.isfinite(cutoff):
            raise ValueError(f"cutoff must be finite, got {cutoff}")
        enough = self.interaction_counts() >= min_interactions
        warm = np.flatnonzero((lt < cutoff) & enough).astype(np.int64)
        cold = np.flatnonzero((lt >= cutoff) & enough).astype(np.int64)
        return Split(warm=warm, cold=cold, cutoff=float(cutoff))

    def labels(self, ad_idx: np.ndarray) -> np.ndarray:
        """Dense labels uint8 [N, len(ad_idx)] for implicit data (1 = the user clicked the ad).

        Explicit-impression data has no dense labels (unlisted pairs are unknown): use pairs().
        """
        if not self.implicit:
            raise DatasetError("labels() needs implicit-negative data; use pairs() for logged impressions")
        idx = np.asarray(ad_idx, dtype=np.int64)
        col_of = np.full(self.n_ads, -1, dtype=np.int64)
        col_of[idx] = np.arange(idx.size)
        Y = np.zeros((self.n_users, idx.size), dtype=np.uint8)
        cols = col_of[self.inter_ad]
        keep = cols >= 0
        Y[self.inter_user[keep], cols[keep]] = 1
        return Y

    def pairs(self, ad_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labelled (user, ad) pairs for the given ads: (user int32[P], col int32[P], label uint8[P]).

        ``col`` indexes into ``ad_idx``. Explicit data: one row per logged impression. Implicit
        data: every user x every listed ad (the dense labels, flattened row-major by user).
        """
        idx = np.asarray(ad_idx, dtype=np.int64)
        if self.implicit:
            Y = self.labels(idx)
            u, c = np.indices(Y.shape)
            return u.ravel().astype(np.int32), c.ravel().astype(np.int32), Y.ravel()
        col_of = np.full(self.n_ads, -1, dtype=np.int64)
        col_of[idx] = np.arange(idx.size)
        cols = col_of[self.inter_ad]
        keep = cols >= 0
        return (self.inter_user[keep].astype(np.int32), cols[keep].astype(np.int32),
                self.inter_clicked[keep].astype(np.uint8))
