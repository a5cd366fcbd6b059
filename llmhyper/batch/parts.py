"""One scored chunk turned into a Parquet part (the unit a job writes, resumes and ships from Dask)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from llmhyper.batch.job import PartResult
from llmhyper.batch.output import long_table, parquet_bytes, wide_table

__all__ = ["build_part"]


def build_part(index: int, rows_in: int, ids: list[str], idx: np.ndarray, ctr: np.ndarray,
               logit: np.ndarray, ad_ids: Sequence[str], version: str, wide: bool,
               rejects: list[tuple[int, str]]) -> PartResult:
    """A scored chunk as a Parquet part (bytes) with its counts."""
    dictionary = pa.array(list(ad_ids), pa.string())
    table = (wide_table if wide else long_table)(ids, idx, ctr, logit, dictionary, version)
    return PartResult(index=index, data=parquet_bytes(table), rows_in=rows_in, users_out=len(ids), rejects=rejects)
