"""A scored chunk as an Arrow table, long or wide, and the bytes of a Parquet part.

Long format: one row per (user, rank): ``user_id`` (string), ``rank`` (int32, 1 = best),
``ad_id`` (string, dictionary-encoded), ``ctr`` (float32, calibrated click probability),
``logit`` (float32, log-odds), ``version`` (string, dictionary-encoded).
Wide format (``--wide``): one row per user: ``user_id``, ``version``, then for r = 1..k'
``ad_id_r``, ``ctr_r``, ``logit_r``. Rows with fewer ranked ads than k' (possible only with
per-user exclusions) leave the missing ranks out (long) or null (wide).
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


__all__ = ["long_table", "wide_table", "parquet_bytes", "long_schema", "PARQUET_OPTIONS", "ROW_GROUP"]

#: Fixed writer options, so a part's bytes depend only on its rows (resume is byte-identical).
PARQUET_OPTIONS = dict(compression="zstd", use_dictionary=True, write_statistics=True, store_schema=True)
ROW_GROUP = 1 << 20


def long_schema() -> pa.Schema:
    """Schema of the long format."""
    return pa.schema([
        ("user_id", pa.string()), ("rank", pa.int32()),
        ("ad_id", pa.dictionary(pa.int32(), pa.string())),
        ("ctr", pa.float32()), ("logit", pa.float32()),
        ("version", pa.dictionary(pa.int32(), pa.string())),
    ])


def long_table(user_ids: Sequence[str], idx: np.ndarray, ctr: np.ndarray, logit: np.ndarray,
               ad_ids: pa.Array, version: str) -> pa.Table:
    """Long table of B users: idx int [B, k'] rows into ``ad_ids`` (-1 = no ad), ctr/logit float32 [B, k']."""
    B, k = idx.shape
    keep = (idx >= 0).ravel()
    users = np.repeat(np.arange(B, dtype=np.int64), k)[keep]
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), B)[keep]
    flat = idx.ravel()[keep].astype(np.int32)
    n = len(flat)
    return pa.Table.from_arrays([
        pa.array(list(user_ids), pa.string()).take(pa.array(users)),
        pa.array(ranks, pa.int32()),
        pa.DictionaryArray.from_arrays(pa.array(flat, pa.int32()), ad_ids),
        pa.array(np.ascontiguousarray(ctr, dtype=np.float32).ravel()[keep]),
        pa.array(np.ascontiguousarray(logit, dtype=np.float32).ravel()[keep]),
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([version])),
    ], schema=long_schema())


def wide_table(user_ids: Sequence[str], idx: np.ndarray, ctr: np.ndarray, logit: np.ndarray,
               ad_ids: pa.Array, version: str) -> pa.Table:
    """Wide table: one row per user, columns ad_id_r / ctr_r / logit_r for r = 1..k'."""
    B, k = idx.shape
    cols: list[pa.Array] = [pa.array(list(user_ids), pa.string()),
                            pa.DictionaryArray.from_arrays(pa.array(np.zeros(B, np.int32)), pa.array([version]))]
    names = ["user_id", "version"]
    for r in range(k):
        miss = idx[:, r] < 0
        ids = pa.array(np.where(miss, 0, idx[:, r]).astype(np.int32), mask=miss)
        cols += [pa.DictionaryArray.from_arrays(ids, ad_ids),
                 pa.array(ctr[:, r].astype(np.float32), mask=miss),
                 pa.array(logit[:, r].astype(np.float32), mask=miss)]
        names += [f"ad_id_{r + 1}", f"ctr_{r + 1}", f"logit_{r + 1}"]
    return pa.Table.from_arrays(cols, names=names)


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as one Parquet file in memory (fixed options: same rows, same bytes)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROW_GROUP, **PARQUET_OPTIONS)
    return buf.getvalue()
