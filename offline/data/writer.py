"""Writing a :class:`~offline.data.dataset.Dataset` back into the dataset layout (CSV files)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from offline.data.dataset import ADS_COLUMNS, FEATURE_COLUMNS, INTERACTION_COLUMNS, Dataset


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
