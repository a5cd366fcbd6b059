"""Parquet parts concatenated without decoding (llmhyper.batch.pqconcat)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmhyper.batch.output import PARQUET_OPTIONS, long_table, wide_table
from llmhyper.batch.pqconcat import ParquetConcatError, concat_parquet, encode_struct, read_footer

ADS = pa.array([f"ad{i}" for i in range(30)], pa.string())


def _part(path: Path, seed: int, n: int, k: int = 4, wide: bool = False, row_group: int = 1 << 20) -> pa.Table:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.permutation(30)[:k] for _ in range(n)]) if n else np.empty((0, k), np.int64)
    if n:
        idx[0, -1] = -1  # a rank left out (long) / null (wide)
    ctr = rng.random((n, k), dtype=np.float32)
    table = (wide_table if wide else long_table)([f"u{seed}-{i}" for i in range(n)], idx, ctr,
                                                 np.log(ctr), ADS, "v000001")
    pq.write_table(table, path, row_group_size=row_group, **PARQUET_OPTIONS)
    return table


@pytest.mark.parametrize("wide", [False, True])
def test_concat_reads_back_as_the_parts_in_order(tmp_path: Path, wide: bool) -> None:
    sizes = [50, 0, 7, 33]
    parts = [tmp_path / f"p{i}.parquet" for i in range(len(sizes))]
    tables = [_part(p, i, n, wide=wide, row_group=20) for i, (p, n) in enumerate(zip(parts, sizes))]
    out = tmp_path / "all.parquet"
    with open(out, "wb") as fh:
        concat_parquet(parts, fh)
    pf = pq.ParquetFile(out)
    expect = pa.concat_tables(tables)
    assert pf.metadata.num_rows == expect.num_rows
    assert pf.metadata.num_row_groups == sum(pq.ParquetFile(p).metadata.num_row_groups for p in parts)
    assert pf.read().equals(expect)
    # every row group is addressable on its own: its offsets point into the new file
    last = pf.metadata.num_row_groups - 1
    assert pf.read_row_group(last).equals(expect.slice(expect.num_rows - pf.metadata.row_group(last).num_rows))


def test_footer_round_trips_byte_for_byte(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    _part(p, 3, 40, row_group=16)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        fmd, end = read_footer(fh, size, str(p))
        fh.seek(end)
        raw = fh.read(size - 8 - end)
    assert encode_struct(fmd) == raw


def test_one_part_copies_to_the_same_bytes(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    _part(p, 5, 25)
    buf = io.BytesIO()
    concat_parquet([p], buf)
    assert buf.getvalue() == p.read_bytes()


def test_parts_of_other_schemas_or_not_parquet_are_refused(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    _part(a, 1, 10)
    _part(b, 2, 10, wide=True)
    with pytest.raises(ParquetConcatError, match="differ"):
        concat_parquet([a, b], io.BytesIO())
    c.write_bytes(b"user_id\n" + b"u1\n" * 10)
    with pytest.raises(ParquetConcatError, match="not a Parquet file"):
        concat_parquet([a, c], io.BytesIO())
