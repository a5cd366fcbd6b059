"""User lists in Parquet, CSV or JSON Lines, read in chunks of exactly ``chunk_size`` rows.

A list holds either a ``user_id`` column only (users are looked up in the store's user
table) or feature columns named as in the weight version's schema (``bias`` may be left
out: it is 1; features left out are 0, as in ``feature_map``); with feature columns an
optional ``user_id`` column labels the rows (else the label is the 1-based row number).
Any other column is an error naming it. Rows are numbered from 1 (data rows, header not
counted) in every message. Memory is bounded by the chunk: files are streamed.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from llmhyper.batch import BatchInputError

__all__ = ["Chunk", "InputSpec", "open_input", "chunks", "read_chunk", "parquet_rows", "FORMATS"]

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_READ_ROWS = 65536  # rows per record batch pulled from the file


@dataclass(frozen=True)
class InputSpec:
    """What a user list holds: its path and format, and the columns that matter.

    ``by_id``: True when users are looked up by ``user_id``; else ``feature_cols`` maps each
    feature column to its index in the version's schema and ``has_ids`` says whether a
    ``user_id`` column labels the rows.
    """

    path: str
    fmt: str
    columns: tuple[str, ...]
    by_id: bool
    has_ids: bool
    feature_cols: tuple[tuple[str, int], ...]

    def identity(self) -> dict:
        """Path, size and mtime of the file: a changed file is a different job."""
        st = os.stat(self.path)
        return {"path": os.path.realpath(self.path), "format": self.fmt, "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns}


@dataclass
class Chunk:
    """Rows ``row0 .. row0 + n - 1`` (0-based) of a user list.

    ``ids``: the user ids / labels (list of n str); ``X``: float32 [n, F] for feature
    input, None for by-id input.
    """

    index: int
    row0: int
    ids: list[str]
    X: np.ndarray | None


def _fmt(path: str) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BatchInputError(f"{path}: unknown input format (use .parquet, .csv or .jsonl)")
    return fmt


def _batches(path: str, fmt: str, string_cols: Sequence[str] = ()) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, record batches) of a file, streamed; malformed files raise BatchInputError."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            return pf.schema_arrow, pf.iter_batches(batch_size=_READ_ROWS)
        if fmt == "csv":
            import pyarrow.csv as pcsv

            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), None)
            if not header:
                raise BatchInputError(f"{path}: empty file (no header row)")
            # every column as text: numbers are converted (and bad cells located) by us
            r = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 22),
                              convert_options=pcsv.ConvertOptions(
                                  column_types={c: pa.string() for c in header},
                                  strings_can_be_null=True, null_values=[""]))
            return r.schema, iter(r)
        import pyarrow.json as pjson

        if os.path.getsize(path) == 0:
            raise BatchInputError(f"{path}: empty file")
        r = pjson.open_json(path, read_options=pjson.ReadOptions(block_size=1 << 22))
        return r.schema, iter(r)
    except BatchInputError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, StopIteration) as e:
        raise BatchInputError(f"{path}: cannot read {fmt} file: {e}") from None


def open_input(path: str, schema_names: Sequence[str]) -> InputSpec:
    """Check a user list's file and columns against a version's feature names (bias first).

    Raises BatchInputError for a missing/unreadable file, an empty one, an unknown column,
    or a list with neither ``user_id`` nor feature columns.
    """
    if not os.path.isfile(path):
        raise BatchInputError(f"input file not found: {path}")
    fmt = _fmt(path)
    if os.path.getsize(path) == 0:
        raise BatchInputError(f"{path}: empty file")
    schema, _ = _batches(path, fmt)
    cols = tuple(schema.names)
    index = {n: j for j, n in enumerate(schema_names)}
    unknown = [c for c in cols if c != "user_id" and c not in index]
    if unknown:
        raise BatchInputError(
            f"{path}: unknown column(s) {unknown[:5]}; expected 'user_id' and/or feature columns of "
            f"the version's schema ({', '.join(list(schema_names)[:6])}{', ...' if len(schema_names) > 6 else ''})")
    feats = tuple((c, index[c]) for c in cols if c != "user_id")
    has_ids = "user_id" in cols
    if not feats and not has_ids:
        raise BatchInputError(f"{path}: no columns (need 'user_id' or feature columns)")
    return InputSpec(path=path, fmt=fmt, columns=cols, by_id=not feats, has_ids=has_ids, feature_cols=feats)


def _column_floats(spec: InputSpec, name: str, col: pa.ChunkedArray | pa.Array, row0: int) -> np.ndarray:
    """float32 values of one feature column of a batch; NaN, inf, empty or non-numeric
    cells raise BatchInputError naming file, row and column."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            col = col.cast(pa.float64())
        except pa.ArrowInvalid:
            for i, v in enumerate(col.to_pylist()):
                try:
                    if v is not None:
                        float(v)
                except ValueError:
                    raise BatchInputError(f"{spec.path}: row {row0 + i + 1}, column {name!r}: "
                                          f"not a number: {v!r}") from None
            raise BatchInputError(f"{spec.path}: column {name!r} is not numeric") from None
    elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        raise BatchInputError(f"{spec.path}: column {name!r} has type {col.type}, expected numbers")
    if col.null_count:
        i = int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise BatchInputError(f"{spec.path}: row {row0 + i + 1}, column {name!r}: missing value")
    v = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BatchInputError(f"{spec.path}: row {row0 + i + 1}, column {name!r}: value {v[i]} is not finite")
    return v.astype(np.float32)


def _ids(spec: InputSpec, tbl: pa.Table, row0: int) -> list[str]:
    if not spec.has_ids:
        return [str(row0 + i + 1) for i in range(tbl.num_rows)]
    col = tbl.column("user_id")
    if col.null_count:
        i = int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise BatchInputError(f"{spec.path}: row {row0 + i + 1}, column 'user_id': missing value")
    ids = [str(v) for v in col.to_pylist()]
    for i, u in enumerate(ids):
        if not u:
            raise BatchInputError(f"{spec.path}: row {row0 + i + 1}, column 'user_id': empty id")
    return ids


def _chunk(spec: InputSpec, tbl: pa.Table, index: int, row0: int, n_features: int) -> Chunk:
    """Chunk ``index`` from the rows ``tbl`` that start at 0-based row ``row0`` (validated)."""
    ids = _ids(spec, tbl, row0)
    X = None
    if not spec.by_id:
        X = np.zeros((tbl.num_rows, n_features), dtype=np.float32)
        if n_features:
            X[:, 0] = 1.0
        for name, j in spec.feature_cols:
            X[:, j] = _column_floats(spec, name, tbl.column(name), row0)
    return Chunk(index=index, row0=row0, ids=ids, X=X)


def parquet_rows(spec: InputSpec) -> int:
    """Number of data rows of a Parquet list (from its footer; nothing else is read)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(spec.path).metadata.num_rows)
    except (pa.ArrowException, OSError) as e:
        raise BatchInputError(f"{spec.path}: cannot read parquet file: {e}") from None


def read_chunk(spec: InputSpec, n_features: int, chunk_size: int, index: int) -> Chunk:
    """Chunk ``index`` of a Parquet list read on its own (rows ``index * chunk_size`` on):
    the same rows, values and errors as the ``index``-th chunk of :func:`chunks`, reading
    only the row groups that hold them (a Dask worker reads its own partition this way)."""
    import pyarrow.parquet as pq

    if spec.fmt != "parquet":
        raise ValueError(f"read_chunk needs a Parquet list, got {spec.fmt}")
    row0 = index * chunk_size
    try:
        pf = pq.ParquetFile(spec.path)
        md = pf.metadata
        stop = min(row0 + chunk_size, md.num_rows)
        if row0 >= stop:
            raise BatchInputError(f"{spec.path}: chunk {index} starts at row {row0 + 1}, past the "
                                  f"file's {md.num_rows} rows")
        groups, first, start = [], None, 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if start < stop and start + n > row0:
                groups.append(g)
                first = start if first is None else first
            start += n
        tbl = pf.read_row_groups(groups, columns=list(spec.columns), use_threads=False)
    except pa.ArrowException as e:
        raise BatchInputError(f"{spec.path}: malformed parquet file in rows {row0 + 1}.."
                              f"{row0 + chunk_size}: {e}") from None
    assert first is not None
    return _chunk(spec, tbl.slice(row0 - first, stop - row0), index, row0, n_features)


def chunks(spec: InputSpec, n_features: int, chunk_size: int) -> Iterator[Chunk]:
    """The list's rows as consecutive chunks of ``chunk_size`` (the last may be shorter).

    Feature chunks carry X float32 [n, F] (bias = 1, absent features 0). A file with no
    data rows raises BatchInputError, as does a file that turns out malformed midway.
    """
    _, it = _batches(spec.path, spec.fmt)
    pending: list[pa.RecordBatch] = []
    have = 0
    row0 = 0
    index = 0

    def emit(tbl: pa.Table) -> Chunk:
        nonlocal row0, index
        c = _chunk(spec, tbl, index, row0, n_features)
        row0 += tbl.num_rows
        index += 1
        return c

    try:
        for rb in it:
            if rb.num_rows == 0:
                continue
            pending.append(rb)
            have += rb.num_rows
            while have >= chunk_size:
                tbl = pa.Table.from_batches(pending)
                yield emit(tbl.slice(0, chunk_size))
                rest = tbl.slice(chunk_size)
                pending = rest.to_batches() if rest.num_rows else []
                have = rest.num_rows
    except pa.ArrowException as e:
        raise BatchInputError(f"{spec.path}: malformed {spec.fmt} file after row {row0 + have}: {e}") from None
    if have:
        yield emit(pa.Table.from_batches(pending))
    elif row0 == 0:
        raise BatchInputError(f"{spec.path}: no data rows (the file holds no users)")
