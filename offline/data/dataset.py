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
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offline.data.features import BIAS_NAME, validate_features
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


# -- reading ----------------------------------------------------------------------------------
def _parquet_cell(v: Any) -> str:
    """A Parquet value as the text the CSV reader would have seen (floats round-trip exactly)."""
    if v is None:
        return ""
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(v, bool):
        return "1" if v else "0"
    return repr(v) if isinstance(v, float) else str(v)


def _read_parquet(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows (as text) of a Parquet table, so the CSV checks apply unchanged."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for truncated or foreign files
        raise DatasetError(f"{path.name}: cannot read Parquet file ({e})") from None
    header = [str(n).strip() for n in table.column_names]
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return header, [[_parquet_cell(c[r]) for c in cols] for r in range(table.num_rows)]


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``path`` (a .csv name); ``X.parquet`` is read instead of a missing
    ``X.csv``. Both present is refused (which one is meant?)."""
    pq_path = path.with_suffix(".parquet")
    if pq_path.is_file() and path.is_file():
        raise DatasetError(f"both {path.name} and {pq_path.name} exist; keep one")
    if pq_path.is_file():
        header, rows = _read_parquet(pq_path)
        path = pq_path
    elif not path.is_file():
        raise DatasetError(f"missing file {path.name} or {pq_path.name} (expected at {path})")
    else:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DatasetError(f"{path.name}: empty file (no header row)") from None
            rows = list(reader)
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{path.name}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    dup = {h for h in header if header.count(h) > 1}
    if dup:
        raise DatasetError(f"{path.name}: duplicate column(s) {', '.join(sorted(dup))}")
    width = len(header)
    for i, r in enumerate(rows):
        if len(r) != width and not (len(r) == 0):
            raise DatasetError(f"{path.name} line {i + 2}: {len(r)} fields, header has {width}")
    return header, [r for r in rows if r]


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate a dataset directory (see the module docstring for the layout)."""
    try:
        return _load_dataset(Path(path))
    except DatasetError as e:
        # the checks name the CSV files; say the Parquet name where that file was read
        msg = str(e)
        root = Path(path)
        for name in ("ads", "interactions", "users", "features"):
            if (root / f"{name}.parquet").is_file() and not (root / f"{name}.csv").is_file():
                msg = msg.replace(f"{name}.csv", f"{name}.parquet")
        if msg == str(e):
            raise
        raise DatasetError(msg) from None


def _load_dataset(root: Path) -> Dataset:
    if not root.is_dir():
        raise DatasetError(f"dataset directory not found: {root}")
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"missing file dataset.json (expected at {meta_path})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"dataset.json: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError("dataset.json: must be a JSON object")
    if "implicit_negatives" not in meta or not isinstance(meta["implicit_negatives"], bool):
        raise DatasetError("dataset.json: 'implicit_negatives' must be present and true or false")
    implicit = meta["implicit_negatives"]
    name = str(meta.get("name") or root.name)
    ts = meta.get("time_split")
    if ts is not None:
        if not isinstance(ts, dict):
            raise DatasetError("dataset.json: 'time_split' must be an object")
        for k in ("cutoff", "quantile", "min_interactions"):
            if k in ts and not (isinstance(ts[k], (int, float)) and not isinstance(ts[k], bool)
                                and math.isfinite(ts[k])):
                raise DatasetError(f"dataset.json: time_split.{k} must be a finite number")

    # features.csv
    fh, frows = _read_csv(root / "features.csv", FEATURE_COLUMNS)
    ni, di = fh.index("name"), fh.index("definition")
    features = [(r[ni].strip(), r[di].strip()) for r in frows]
    if not features:
        raise DatasetError("features.csv: no rows (the first row must be 'bias')")
    if features[0][0] != BIAS_NAME:
        raise DatasetError(f"features.csv line 2: first feature must be '{BIAS_NAME}', got {features[0][0]!r}")
    try:
        features = validate_features(features, "features.csv")
    except ValueError as e:
        raise DatasetError(str(e)) from None

    # users.csv
    uh, urows = _read_csv(root / "users.csv", ("user_id",))
    expected_cols = [n for n, _ in features[1:]]
    got_cols = [h for h in uh if h != "user_id"]
    if got_cols != expected_cols:
        missing = [c for c in expected_cols if c not in got_cols]
        extra = [c for c in got_cols if c not in expected_cols]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"not in features.csv: {', '.join(extra)}")
        if not detail:
            detail.append("same names in a different order")
        raise DatasetError("users.csv: feature columns must match features.csv (without bias) in order; "
                           + "; ".join(detail))
    uid_i = uh.index("user_id")
    col_i = [uh.index(c) for c in expected_cols]
    user_ids: list[str] = []
    user_index: dict[str, int] = {}
    X = np.ones((len(urows), len(features)), dtype=np.float32)
    for n, r in enumerate(urows):
        uid = r[uid_i].strip()
        if not uid:
            raise DatasetError(f"users.csv line {n + 2}: empty user_id")
        if uid in user_index:
            raise DatasetError(f"users.csv line {n + 2}: duplicate user_id {uid!r}")
        user_index[uid] = n
        user_ids.append(uid)
        for j, ci in enumerate(col_i):
            raw = r[ci].strip()
            try:
                v = float(raw)
            except ValueError:
                raise DatasetError(f"users.csv line {n + 2}: feature {expected_cols[j]!r} is not a number: {raw!r}") from None
            if not math.isfinite(v) or abs(v) > np.finfo(np.float32).max:
                raise DatasetError(f"users.csv line {n + 2}: feature {expected_cols[j]!r} is not finite: {raw!r}")
            X[n, j + 1] = v

    # ads.csv
    ah, arows = _read_csv(root / "ads.csv", ADS_COLUMNS)
    ai = {c: ah.index(c) for c in ADS_COLUMNS}
    ads: list[Ad] = []
    ad_index: dict[str, int] = {}
    for i, r in enumerate(arows):
        aid = r[ai["ad_id"]].strip()
        if not aid:
            raise DatasetError(f"ads.csv line {i + 2}: empty ad_id")
        if aid in ad_index:
            raise DatasetError(f"ads.csv line {i + 2}: duplicate ad_id {aid!r}")
        raw_t = r[ai["launched_at"]]
        try:
            t = parse_time(raw_t)
        except ValueError:
            raise DatasetError(f"ads.csv line {i + 2}: unparseable launched_at {raw_t!r} "
                               "(use unix seconds or ISO-8601)") from None
        img = r[ai["image_path"]].strip()
        if img and not os.path.isabs(img):
            img = str(root / img)
        ad_index[aid] = i
        ads.append(Ad(ad_id=aid, title=r[ai["title"]], description=r[ai["description"]],
                      image_path=img or None, image_caption=r[ai["image_caption"]],
                      category=r[ai["category"]].strip(), launched_at=t))

    # interactions.csv
    ih, irows = _read_csv(root / "interactions.csv", INTERACTION_COLUMNS)
    ii = {c: ih.index(c) for c in INTERACTION_COLUMNS}
    E = len(irows)
    iu = np.empty(E, dtype=np.int32)
    ia = np.empty(E, dtype=np.int32)
    ic = np.empty(E, dtype=np.int8)
    its = np.empty(E, dtype=np.float64)
    for e, r in enumerate(irows):
        line = e + 2
        u = r[ii["user_id"]].strip()
        a = r[ii["ad_id"]].strip()
        if u not in user_index:
            raise DatasetError(f"interactions.csv line {line}: unknown user_id {u!r} (not in users.csv)")
        if a not in ad_index:
            raise DatasetError(f"interactions.csv line {line}: unknown ad_id {a!r} (not in ads.csv)")
        c = r[ii["clicked"]].strip()
        if c not in ("0", "1"):
            raise DatasetError(f"interactions.csv line {line}: clicked must be 0 or 1, got {c!r}")
        if implicit and c == "0":
            raise DatasetError(f"interactions.csv line {line}: clicked = 0 in implicit-negative data "
                               "(list positives only, or set implicit_negatives to false)")
        try:
            t = parse_time(r[ii["timestamp"]])
        except ValueError:
            raise DatasetError(f"interactions.csv line {line}: unparseable timestamp {r[ii['timestamp']]!r}") from None
        iu[e], ia[e], ic[e], its[e] = user_index[u], ad_index[a], int(c), t

    extra_meta = {k: v for k, v in meta.items() if k not in ("name", "implicit_negatives", "description")}
    return Dataset(name=name, ads=ads, user_ids=user_ids, X=X, features=features,
                   inter_user=iu, inter_ad=ia, inter_clicked=ic, inter_ts=its,
                   implicit=implicit, description=str(meta.get("description", "")), meta=extra_meta)


# -- writing ----------------------------------------------------------------------------------
def _fmt_float(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def save_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` in the layout above into directory ``path`` (created; files overwritten).

    Feature values are written as the shortest decimal that reads back to the same float32.
    Returns the directory path.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"name": ds.name, "implicit_negatives": bool(ds.implicit), "description": ds.description}
    meta.update(ds.meta)
    (root / "dataset.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    with open(root / "features.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FEATURE_COLUMNS)
        w.writerows(ds.features)

    with open(root / "users.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id"] + [n for n, _ in ds.features[1:]])
        for uid, row in zip(ds.user_ids, ds.X):
            w.writerow([uid] + [np.format_float_positional(v, unique=True, trim="-") for v in row[1:]])

    with open(root / "ads.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(ADS_COLUMNS)
        for a in ds.ads:
            w.writerow([a.ad_id, a.title, a.description, a.image_path or "", a.image_caption,
                        a.category, _fmt_float(a.launched_at)])

    with open(root / "interactions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(INTERACTION_COLUMNS)
        uids, aids = ds.user_ids, ds.ad_ids
        for u, a, c, t in zip(ds.inter_user.tolist(), ds.inter_ad.tolist(),
                              ds.inter_clicked.tolist(), ds.inter_ts.tolist()):
            w.writerow((uids[u], aids[a], c, _fmt_float(t)))
    return root
