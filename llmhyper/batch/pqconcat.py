"""Concatenate Parquet files of one schema into one file without decoding them.

A Parquet file is ``PAR1``, the column chunks of its row groups, then the footer (a Thrift
``FileMetaData`` in the compact protocol), its length (4 bytes LE) and ``PAR1``. The parts
of a batch job share one schema and one set of writer options, so their column chunks can
be copied byte for byte into the final file; only the footer is new: the row groups of all
parts in order, every absolute file offset shifted by where its part's bytes landed, the row
count summed and the row-group ordinals renumbered. This makes assembling the final file an
I/O-bound copy (the parts were encoded once, on whichever process scored them) instead of
a decode + re-encode on the driver.

The Thrift codec here is generic (fields are kept in order with their wire types), so an
unmodified footer re-encodes to the same bytes; the fields patched are named below by
their ids in ``parquet.thrift``.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["decode_struct", "encode_struct", "read_footer", "concat_parquet", "ParquetConcatError"]

MAGIC = b"PAR1"

# compact-protocol wire types
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)

# field ids in parquet.thrift
_FMD_NUM_ROWS, _FMD_ROW_GROUPS = 3, 4
_RG_COLUMNS, _RG_FILE_OFFSET, _RG_ORDINAL = 1, 5, 7
_CC_FILE_OFFSET, _CC_META, _CC_OFFSET_INDEX, _CC_COLUMN_INDEX = 2, 3, 4, 6
_CMD_OFFSETS = (9, 10, 11, 14)  # data_page, index_page, dictionary_page, bloom_filter offsets

Struct = list  # [(field id, wire type, value)], in wire order


class ParquetConcatError(ValueError):
    """A file that is not Parquet as written by the batch job, or parts of different schemas."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _value(buf: bytes, pos: int, t: int) -> tuple[Any, int]:
    if t in (_TRUE, _FALSE):  # only inside lists: one byte
        return buf[pos], pos + 1
    if t == _BYTE:
        return buf[pos], pos + 1
    if t in (_I16, _I32, _I64):
        n, pos = _varint(buf, pos)
        return _unzigzag(n), pos
    if t == _DOUBLE:
        return buf[pos:pos + 8], pos + 8
    if t == _BINARY:
        n, pos = _varint(buf, pos)
        return bytes(buf[pos:pos + n]), pos + n
    if t in (_LIST, _SET):
        h = buf[pos]
        pos += 1
        size, et = h >> 4, h & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        items = []
        for _ in range(size):
            v, pos = _value(buf, pos, et)
            items.append(v)
        return (et, items), pos
    if t == _STRUCT:
        return _struct(buf, pos)
    raise ParquetConcatError(f"unsupported Thrift wire type {t}")


def _struct(buf: bytes, pos: int) -> tuple[Struct, int]:
    fields: Struct = []
    last = 0
    while True:
        h = buf[pos]
        pos += 1
        t = h & 0x0F
        if t == _STOP:
            return fields, pos
        delta = h >> 4
        if delta:
            fid = last + delta
        else:
            n, pos = _varint(buf, pos)
            fid = _unzigzag(n)
        if t in (_TRUE, _FALSE):
            v: Any = t == _TRUE
        else:
            v, pos = _value(buf, pos, t)
        fields.append((fid, t, v))
        last = fid


def decode_struct(buf: bytes) -> Struct:
    """A compact-protocol Thrift struct as [(field id, wire type, value)] (nested the same way)."""
    try:
        s, _ = _struct(buf, 0)
    except IndexError:
        raise ParquetConcatError("truncated Thrift struct") from None
    return s


def _put_varint(out: bytearray, n: int) -> None:
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _put_value(out: bytearray, t: int, v: Any) -> None:
    if t in (_TRUE, _FALSE, _BYTE):
        out.append(v & 0xFF)
    elif t in (_I16, _I32, _I64):
        _put_varint(out, _zigzag(v))
    elif t == _DOUBLE:
        out += v
    elif t == _BINARY:
        _put_varint(out, len(v))
        out += v
    elif t in (_LIST, _SET):
        et, items = v
        if len(items) < 15:
            out.append(len(items) << 4 | et)
        else:
            out.append(0xF0 | et)
            _put_varint(out, len(items))
        for item in items:
            _put_value(out, et, item)
    elif t == _STRUCT:
        _put_struct(out, v)
    else:
        raise ParquetConcatError(f"unsupported Thrift wire type {t}")


def _put_struct(out: bytearray, fields: Struct) -> None:
    last = 0
    for fid, t, v in fields:
        wt = (_TRUE if v else _FALSE) if t in (_TRUE, _FALSE) else t
        if 0 < fid - last <= 15:
            out.append((fid - last) << 4 | wt)
        else:
            out.append(wt)
            _put_varint(out, _zigzag(fid) & 0xFFFF)
        if t not in (_TRUE, _FALSE):
            _put_value(out, t, v)
        last = fid
    out.append(_STOP)


def encode_struct(fields: Struct) -> bytes:
    """Inverse of :func:`decode_struct`."""
    out = bytearray()
    _put_struct(out, fields)
    return bytes(out)


def read_footer(fh: BinaryIO, size: int, name: str) -> tuple[Struct, int]:
    """(decoded FileMetaData, end of the data region) of an open Parquet file of ``size`` bytes."""
    if size < 12:
        raise ParquetConcatError(f"{name}: {size} bytes is too short for Parquet")
    fh.seek(size - 8)
    tail = fh.read(8)
    if tail[4:] != MAGIC:
        raise ParquetConcatError(f"{name}: not a Parquet file (no trailing PAR1)")
    n = struct.unpack("<I", tail[:4])[0]
    if n + 12 > size:
        raise ParquetConcatError(f"{name}: footer length {n} exceeds the file")
    fh.seek(size - 8 - n)
    return decode_struct(fh.read(n)), size - 8 - n


def _get(fields: Struct, fid: int) -> tuple[int, Any] | None:
    for f, t, v in fields:
        if f == fid:
            return t, v
    return None


def _set(fields: Struct, fid: int, t: int, v: Any) -> None:
    for i, (f, _, _) in enumerate(fields):
        if f == fid:
            fields[i] = (f, t, v)
            return
    raise ParquetConcatError(f"footer field {fid} missing")


def _shift(fields: Struct, fids: tuple[int, ...], delta: int, keep_zero: bool = False) -> None:
    for i, (f, t, v) in enumerate(fields):
        if f in fids and not (keep_zero and v == 0):
            fields[i] = (f, t, v + delta)


def _shift_row_group(rg: Struct, delta: int, ordinal: int) -> Struct:
    rg = list(rg)
    _shift(rg, (_RG_FILE_OFFSET,), delta)
    got = _get(rg, _RG_COLUMNS)
    if got is None:
        raise ParquetConcatError("row group without columns")
    et, cols = got[1]
    new_cols = []
    for cc in cols:
        cc = list(cc)
        if _get(cc, 1) is not None or _get(cc, 8) is not None or _get(cc, 9) is not None:
            raise ParquetConcatError("external or encrypted column chunks are not supported")
        _shift(cc, (_CC_FILE_OFFSET,), delta, keep_zero=True)
        _shift(cc, (_CC_OFFSET_INDEX, _CC_COLUMN_INDEX), delta)
        meta = _get(cc, _CC_META)
        if meta is None:
            raise ParquetConcatError("column chunk without metadata")
        m = list(meta[1])
        _shift(m, _CMD_OFFSETS, delta)
        _set(cc, _CC_META, _STRUCT, m)
        new_cols.append(cc)
    _set(rg, _RG_COLUMNS, _LIST, (et, new_cols))
    if _get(rg, _RG_ORDINAL) is not None:
        _set(rg, _RG_ORDINAL, _I16, ordinal)
    return rg


def _shape(fmd: Struct) -> list:
    """Everything of a footer but its row groups and row count: must match across parts."""
    return [f for f in fmd if f[0] not in (_FMD_NUM_ROWS, _FMD_ROW_GROUPS)]


def concat_parquet(parts: list[Path], out: BinaryIO, copy_bytes: int = 1 << 22) -> None:
    """Write the Parquet files ``parts`` (same schema and footer fields) to ``out`` as one file.

    The column chunks are copied unchanged; the result holds the parts' row groups in order.
    Raises ParquetConcatError when a part is not a plain Parquet file or differs in schema.
    """
    if not parts:
        raise ParquetConcatError("no parts to concatenate")
    out.write(MAGIC)
    pos = len(MAGIC)
    first: Struct | None = None
    row_groups: list = []
    rg_type = _STRUCT
    num_rows = 0
    for p in parts:
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            fmd, end = read_footer(fh, size, str(p))
            if first is None:
                first = fmd
            elif _shape(fmd) != _shape(first):
                raise ParquetConcatError(f"{p}: schema or writer options differ from {parts[0]}")
            fh.seek(0)
            if fh.read(4) != MAGIC:
                raise ParquetConcatError(f"{p}: not a Parquet file (no leading PAR1)")
            delta = pos - len(MAGIC)
            left = end - len(MAGIC)
            while left > 0:
                b = fh.read(min(copy_bytes, left))
                if not b:
                    raise ParquetConcatError(f"{p}: shorter than its footer says")
                out.write(b)
                left -= len(b)
            pos += end - len(MAGIC)
        rows = _get(fmd, _FMD_NUM_ROWS)
        rgs = _get(fmd, _FMD_ROW_GROUPS)
        num_rows += rows[1] if rows else 0
        if rgs is not None:
            rg_type = rgs[1][0]
            for rg in rgs[1][1]:
                row_groups.append(_shift_row_group(rg, delta, len(row_groups)))
    assert first is not None
    fmd = list(first)
    _set(fmd, _FMD_NUM_ROWS, _I64, num_rows)
    if _get(fmd, _FMD_ROW_GROUPS) is None:
        raise ParquetConcatError(f"{parts[0]}: footer without row groups")
    _set(fmd, _FMD_ROW_GROUPS, _LIST, (rg_type, row_groups))
    footer = encode_struct(fmd)
    out.write(footer)
    out.write(struct.pack("<I", len(footer)))
    out.write(MAGIC)
