"""Reading and checking a dataset directory (the layout is described in :mod:`offline.data.dataset`).

Each ``X.csv`` may be given as ``X.parquet`` instead; Parquet cells are turned into the text the
CSV reader would have seen, so one set of checks applies to both, and every problem raises
:class:`~offline.data.dataset.DatasetError` naming the file, line and value.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offline.data.dataset import (
    ADS_COLUMNS,
    FEATURE_COLUMNS,
    INTERACTION_COLUMNS,
    Ad,
    Dataset,
    DatasetError,
    parse_time,
)
from offline.data.features import BIAS_NAME, validate_features


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
