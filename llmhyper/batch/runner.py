"""Run a batch-scoring job end to end: pin the version, validate the input, score the parts
that are not done yet (in process, through a server fleet, or on a Dask cluster), assemble.

:func:`run_job` is what ``llmhyper score`` calls; tests call it directly too (e.g. with a
Dask client of their own and an ``on_part`` hook).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from llmhyper.batch import BatchInputError
from llmhyper.batch.inputs import Chunk, InputSpec, chunks, open_input, parquet_rows
from llmhyper.batch.job import JobArgs, Manifest, PartResult
from llmhyper.batch.parts import build_part
from llmhyper.batch.scorers import LocalScorer, RemoteScorer, candidate_mask, score_rows

__all__ = ["Job", "run_job", "build_part"]


@dataclass
class Job:
    """A job's options (see ``llmhyper score --help``). Exactly one of ``store`` / ``target``."""

    input: str
    out: str
    store: str | None = None
    target: Any = None  # a RankerClient factory: () -> RankerClient
    target_name: str | None = None
    top_k: int = 10
    allow: Sequence[str] = ()
    deny: Sequence[str] = ()
    version: str | None = None
    fmt: str = "parquet"
    wide: bool = False
    chunk_size: int = 100_000
    on_unknown: str = "error"
    rejects: str | None = None
    progress: bool = True
    concurrency: int = 4
    batch_size: int = 1024
    dask_client: Any = None  # a dask.distributed.Client: score parts on its workers
    dask_shared_fs: bool = False  # its workers see the input, the store and OUT at the same paths


def _total_rows(spec: InputSpec) -> int | None:
    if spec.fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(spec.path).metadata.num_rows)


def run_job(job: Job, on_part: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) a job; returns the finished manifest (version, parts, counts).

    ``on_part(index)`` is called after each part is recorded (a test hook).
    Raises BatchInputError for bad input or arguments, BatchRuntimeError for failures.
    """
    if not os.path.isfile(job.input):
        raise BatchInputError(f"input file not found: {job.input}")
    if job.top_k < 1:
        raise BatchInputError(f"--top-k must be >= 1, got {job.top_k}")
    if job.chunk_size < 1:
        raise BatchInputError(f"--chunk-size must be >= 1, got {job.chunk_size}")
    if job.on_unknown not in ("error", "skip"):
        raise BatchInputError(f"--on-unknown must be error or skip, got {job.on_unknown!r}")
    st = os.stat(job.input)
    out = Path(job.out)
    args = JobArgs(
        input={"path": os.path.realpath(job.input), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
        source=f"store:{os.path.realpath(job.store)}" if job.store else f"target:{job.target_name}",
        version_requested=job.version, top_k=job.top_k, allow=tuple(job.allow), deny=tuple(job.deny),
        fmt=job.fmt, wide=job.wide, chunk_size=job.chunk_size, on_unknown=job.on_unknown)
    man = Manifest(out, args)
    recorded = man.load()
    if recorded is not None and man.done:
        return man.data
    version = recorded or job.version
    if job.store:
        scorer: Any = LocalScorer(job.store, version)
    else:
        scorer = RemoteScorer(job.target(), version, job.top_k, job.allow, job.deny,
                              concurrency=job.concurrency, batch_size=job.batch_size)
    try:
        w = scorer.weights
        spec = open_input(job.input, w.feature_names)
        if spec.by_id and job.store:
            scorer.check_users()
        mask = candidate_mask(w.ad_ids, job.allow, job.deny)
        if recorded is None:
            man.create(w.version)
        rejects = Path(job.rejects) if job.rejects else out.with_name(out.name + ".rejects.csv")
        n_parts = _score_parts(job, man, spec, scorer, mask, on_part)
        return man.finish(n_parts, rejects)
    finally:
        scorer.close()


def _pending(job: Job, man: Manifest, spec: InputSpec, F: int, bar, seen: list[int]) -> Iterator[Chunk]:
    """Chunks whose part is not done yet (done ones only advance the progress bar);
    seen[0] counts every chunk of the input."""
    for ch in chunks(spec, F, job.chunk_size):
        seen[0] = ch.index + 1
        if man.has_part(ch.index):
            bar.update(len(ch.ids))
            continue
        yield ch


def _score_parts(job: Job, man: Manifest, spec: InputSpec, scorer: Any, mask: np.ndarray | None,
                 on_part: Callable[[int], None] | None) -> int:
    """Score every missing part; returns the number of parts of the input."""
    from tqdm import tqdm

    w = scorer.weights
    F = len(w.feature_names)
    seen = [0]
    with tqdm(total=_total_rows(spec), unit="users", unit_scale=True, disable=not job.progress,
              file=sys.stderr, dynamic_ncols=True, desc=f"score {w.version}") as bar:
        def done(part: PartResult) -> None:
            man.record(part)
            bar.update(part.rows_in)
            if on_part is not None:
                on_part(part.index)

        if job.dask_client is not None and job.dask_shared_fs and spec.fmt == "parquet" and job.store:
            return _score_partitions(job, man, spec, w, F, mask, bar, on_part)
        todo = _pending(job, man, spec, F, bar, seen)
        if job.dask_client is not None:
            from llmhyper.batch.dask_run import score_on_dask

            score_on_dask(job.dask_client, scorer, todo, job.top_k, mask, job.wide, job.on_unknown, done)
        elif isinstance(scorer, RemoteScorer):
            for ch in todo:
                s = scorer.score(ch, job.on_unknown)
                done(build_part(ch.index, len(ch.ids), s.ids, s.idx, s.ctr, s.logit, w.ad_ids, w.version,
                                job.wide, s.rejects))
        else:
            for ch in todo:
                ids, X, rej = scorer.rows(ch, job.on_unknown)
                idx, ctr, lg = score_rows(w.theta, X, job.top_k, mask)
                done(build_part(ch.index, len(ch.ids), ids, idx, ctr, lg, w.ad_ids, w.version, job.wide, rej))
    return seen[0]


def _score_partitions(job: Job, man: Manifest, spec: InputSpec, w: Any, F: int, mask: np.ndarray | None,
                      bar: Any, on_part: Callable[[int], None] | None) -> int:
    """Shared-filesystem Dask path: plan the Parquet list's partitions from its footer and let
    the workers read, score and write them; returns the number of parts."""
    from llmhyper.batch.dask_run import WorkerJob, score_partitions_on_dask

    n_rows = parquet_rows(spec)
    if n_rows == 0:
        raise BatchInputError(f"{spec.path}: no data rows (the file holds no users)")
    n_parts = -(-n_rows // job.chunk_size)
    todo = []
    for i in range(n_parts):
        if man.has_part(i):
            bar.update(man.data["parts"][str(i)]["rows_in"])
        else:
            todo.append(i)
    wjob = WorkerJob(store=os.path.realpath(str(job.store)), version=w.version, spec=spec, n_features=F,
                     chunk_size=job.chunk_size, k=job.top_k, mask=mask, wide=job.wide,
                     on_unknown=job.on_unknown, work_dir=str(man.dir.resolve()),
                     input_path=os.path.realpath(spec.path))

    def recorded(rec: dict) -> None:
        man.record_written(rec)
        bar.update(rec["rows_in"])
        if on_part is not None:
            on_part(rec["index"])

    score_partitions_on_dask(job.dask_client, wjob, todo, recorded)
    return n_parts
