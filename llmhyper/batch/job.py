"""The resumable batch job: parts, a manifest, and the final file assembled from them.

Layout for ``--out OUT``: a work directory ``OUT.parts/`` holds ``manifest.json`` and one
Parquet part per chunk (``part-00000.parquet``, plus ``part-00000.rejects.csv`` when ids
were skipped). Every file is written to a temporary name and moved into place with
``os.replace``, so a killed job leaves whole files or none. The manifest records the job's
arguments (input identity, version, top-k, filters, format, chunk size, ...) and each
finished part with its size and SHA-256. A restart with the same arguments skips those
parts; different arguments are refused. When every part exists, OUT is assembled from
the parts in order (again through a temporary name; Parquet parts are copied row group by
row group without decoding), the rejects file likewise, the
part files are removed and the manifest marks the job done.

A part's bytes depend only on its rows (fixed Parquet writer options), so the output of
a resumed job, of ``--workers N`` and of an uninterrupted single-process run are identical.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from llmhyper.batch import BatchInputError

__all__ = ["JobArgs", "Manifest", "PartResult", "write_atomic", "write_part", "part_name", "assemble"]

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class JobArgs:
    """Everything that determines a job's output (recorded in and checked against the manifest)."""

    input: dict
    source: str
    version_requested: str | None
    top_k: int
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    fmt: str
    wide: bool
    chunk_size: int
    on_unknown: str

    def signature(self) -> dict:
        return {"input": self.input, "source": self.source, "version_requested": self.version_requested,
                "top_k": self.top_k, "allow": list(self.allow), "deny": list(self.deny), "format": self.fmt,
                "wide": self.wide, "chunk_size": self.chunk_size, "on_unknown": self.on_unknown}


@dataclass(frozen=True)
class PartResult:
    """One scored chunk: its Parquet bytes, rows in / users out, and the rejected (row, id)s."""

    index: int
    data: bytes
    rows_in: int
    users_out: int
    rejects: list[tuple[int, str]]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + os.replace."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _rejects_csv(rejects: list[tuple[int, str]]) -> bytes:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row, uid in rejects:
        w.writerow([row, uid])
    return buf.getvalue().encode()


def part_name(index: int) -> str:
    """File name of part ``index`` in the work directory."""
    return f"part-{index:05d}.parquet"


def write_part(work_dir: Path, part: PartResult) -> dict:
    """Write a part's Parquet bytes (and its rejects) into ``work_dir`` atomically; returns
    the manifest record (index, file, bytes, sha256, rows_in, users_out, rejects)."""
    if part.rejects:
        write_atomic(work_dir / f"part-{part.index:05d}.rejects.csv", _rejects_csv(part.rejects))
    write_atomic(work_dir / part_name(part.index), part.data)
    return {"index": part.index, "file": part_name(part.index), "bytes": len(part.data),
            "sha256": hashlib.sha256(part.data).hexdigest(), "rows_in": part.rows_in,
            "users_out": part.users_out, "rejects": len(part.rejects)}


class Manifest:
    """``OUT.parts/manifest.json``: the job's arguments, pinned version and finished parts."""

    def __init__(self, out: Path, args: JobArgs) -> None:
        self.out = out
        self.dir = out.with_name(out.name + ".parts")
        self.path = self.dir / "manifest.json"
        self.args = args
        self.data: dict = {}

    def load(self) -> str | None:
        """The recorded version when this job was started before (same arguments), else None.

        Raises BatchInputError when the work directory holds a job with other arguments, or
        when OUT exists without a manifest (it was not written by this job)."""
        sig = self.args.signature()
        if not self.path.exists():
            if self.out.exists():
                raise BatchInputError(f"{self.out} exists and is not the output of a resumable job here; "
                                      "remove it or choose another --out")
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise BatchInputError(f"{self.path}: unreadable job manifest ({e}); remove {self.dir} to start over") from None
        old = data.get("args", {}) if isinstance(data, dict) else {}
        if data.get("format") != MANIFEST_FORMAT or old != sig:
            diff = sorted(k for k in set(sig) | set(old) if sig.get(k) != old.get(k))
            raise BatchInputError(
                f"{self.out}: a job with different arguments ({', '.join(diff) or 'format'}) already "
                f"wrote to {self.dir}; rerun it with its own arguments to resume, or choose another "
                f"--out (or remove {self.dir})")
        self.data = data
        return str(data["version"])

    def create(self, version: str) -> None:
        """Start a new job pinned to ``version`` (written before the first part)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = {"format": MANIFEST_FORMAT, "args": self.args.signature(), "version": version,
                     "started_at": time.time(), "parts": {}, "done": False}
        self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())

    @property
    def done(self) -> bool:
        return bool(self.data.get("done")) and self.out.exists()

    def part_path(self, index: int) -> Path:
        return self.dir / part_name(index)

    def has_part(self, index: int) -> bool:
        """True when part ``index`` is recorded and its file is whole (size and SHA-256 match)."""
        rec = self.data["parts"].get(str(index))
        if rec is None:
            return False
        p = self.part_path(index)
        try:
            return p.stat().st_size == rec["bytes"] and hashlib.sha256(p.read_bytes()).hexdigest() == rec["sha256"]
        except OSError:
            return False

    def record(self, part: PartResult) -> None:
        """Write a part (and its rejects) atomically, then record it in the manifest."""
        self.record_written(write_part(self.dir, part))

    def record_written(self, rec: dict) -> None:
        """Record a part that :func:`write_part` already wrote (e.g. on a Dask worker)."""
        self.data["parts"][str(rec["index"])] = {k: v for k, v in rec.items() if k != "index"}
        self._save()

    def finish(self, n_parts: int, rejects_path: Path | None) -> dict:
        """Assemble OUT (and the rejects file) from parts 0..n_parts-1, remove the parts, mark done."""
        parts = [self.part_path(i) for i in range(n_parts)]
        assemble(parts, self.out, self.args.fmt)
        n_rej = sum(self.data["parts"][str(i)]["rejects"] for i in range(n_parts))
        if rejects_path is not None and (n_rej or self.args.on_unknown == "skip"):
            chunks = [b"row,user_id\n"]
            for i in range(n_parts):
                rp = self.dir / f"part-{i:05d}.rejects.csv"
                if rp.exists():
                    chunks.append(rp.read_bytes())
            write_atomic(rejects_path, b"".join(chunks))
        for i in range(n_parts):
            for p in (self.part_path(i), self.dir / f"part-{i:05d}.rejects.csv"):
                p.unlink(missing_ok=True)
        for p in self.dir.glob(".part-*.tmp-*"):  # left by a process killed mid-write
            p.unlink(missing_ok=True)
        self.data.update(done=True, n_parts=n_parts, finished_at=time.time(),
                         users_out=sum(self.data["parts"][str(i)]["users_out"] for i in range(n_parts)),
                         rejects=n_rej)
        self._save()
        return self.data


def _part_tables(parts: Iterable[Path]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    for p in parts:
        yield pq.read_table(p)


def assemble(parts: list[Path], out: Path, fmt: str) -> None:
    """Concatenate Parquet parts (in order) into ``out`` as Parquet or CSV, through a
    temporary file + os.replace. Parquet: the parts' row groups are copied without decoding
    (:mod:`llmhyper.batch.pqconcat`); CSV: decoded one part in memory at a time."""
    import pyarrow.parquet as pq

    from llmhyper.batch.output import PARQUET_OPTIONS, ROW_GROUP

    from llmhyper.batch.pqconcat import ParquetConcatError, concat_parquet

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    schema = pq.read_schema(parts[0])
    try:
        if fmt == "parquet":
            try:  # the parts' column chunks copied as they are, one new footer
                with open(tmp, "wb") as fh:
                    concat_parquet(parts, fh)
            except ParquetConcatError:  # not expected for parts of one job; decode + re-encode
                with pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS) as w:
                    for t in _part_tables(parts):
                        w.write_table(t, row_group_size=ROW_GROUP)
        else:
            import pyarrow.csv as pcsv

            plain = pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                               for f in schema])
            with pcsv.CSVWriter(tmp, plain) as w:
                for t in _part_tables(parts):
                    w.write_table(t.cast(plain))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
