"""The job's parts scored on a Dask cluster (``--scheduler tcp://HOST:PORT`` or ``--workers N``).

Two ways, chosen by whether the workers see the job's files:

* **Shared filesystem** (always for ``--workers N``, a LocalCluster on this machine; with
  ``--scheduler`` only when ``--shared-fs`` says the workers see the same paths) and a
  Parquet list: the driver only plans partitions (chunk ``i`` is rows ``i x chunk_size``
  on, located from the file's footer) and broadcasts one small :class:`WorkerJob` (paths,
  pinned version, top-k, mask) once. Each task reads its own row groups, validates them,
  resolves by-id rows from the store's user table, scores, and writes its part through a
  temporary name + ``os.replace``; it returns only the manifest record (bytes, SHA-256,
  counts), which the driver writes into the manifest. Input errors found on a worker come
  back as values (not retried) and the job stops with the same message as a single process.
* **No shared filesystem** (or a CSV / JSON Lines list): the driver reads the input in
  chunks as usual. The pinned version's weights (theta, ad ids) are scattered once to every
  worker (``broadcast=True``), so workers need neither the store nor the input; by-id chunks
  are resolved to their user-table rows on the driver and those rows travel with the task.
  Each task returns its part's Parquet bytes and the driver writes and records them. At most
  ``2 x workers`` tasks are in flight, so the driver's memory stays bounded.

Either way a part is written whole or not at all and recorded only once written, so a worker
killed mid-task only means Dask runs that task again: the bytes are the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from llmhyper.batch import BatchInputError, BatchRuntimeError
from llmhyper.batch.inputs import Chunk, InputSpec
from llmhyper.batch.job import PartResult

__all__ = ["score_on_dask", "score_task", "WorkerJob", "partition_task", "score_partitions_on_dask",
           "local_cluster", "WORKER_ENV"]

#: One numeric thread per worker process (the workers are the parallelism).
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def score_task(theta: np.ndarray, ad_ids: tuple[str, ...], version: str, index: int, rows_in: int,
               ids: list[str], X: np.ndarray, k: int, mask: np.ndarray | None, wide: bool,
               rejects: list[tuple[int, str]]) -> PartResult:
    """Run on a worker: score one partition, return its Parquet part."""
    from llmhyper.batch.parts import build_part
    from llmhyper.batch.scorers import score_rows

    idx, ctr, lg = score_rows(theta, X, k, mask)
    return build_part(index, rows_in, ids, idx, ctr, lg, ad_ids, version, wide, rejects)


#: Times a task is submitted again after Dask cancelled it (an input it needed was lost
#: with a killed worker, which ``retries`` does not cover).
RESUBMITS = 3


def result_or_resubmit(fut: Any, resubmit: Callable[[int], Any]) -> Any:
    """``fut.result()``; when Dask cancelled the task instead (seen under load when a worker
    holding a scattered input was SIGKILLed: "cancelled for reason: already forgotten"),
    ``resubmit(attempt)`` a fresh task and wait for that, up to :data:`RESUBMITS` times.
    Raises BatchRuntimeError after that. The answer is the same bytes whichever try gives it."""
    from concurrent.futures import CancelledError

    for attempt in range(1, RESUBMITS + 2):
        try:
            return fut.result()
        except CancelledError as e:
            if attempt > RESUBMITS:
                raise BatchRuntimeError(f"Dask task {fut.key} cancelled {attempt} times: {e}") from e
            fut = resubmit(attempt)
    raise AssertionError("unreachable")


def score_on_dask(client: Any, scorer: Any, todo: Iterator[Chunk], k: int, mask: np.ndarray | None,
                  wide: bool, on_unknown: str, done: Callable[[PartResult], None]) -> None:
    """Score the chunks of ``todo`` on the client's workers; ``done(part)`` for each result
    (in completion order; parts are independent)."""
    from distributed import as_completed

    w = scorer.weights

    def scatter() -> tuple[Any, Any, Any]:
        return (client.scatter(np.ascontiguousarray(w.theta), broadcast=True, hash=False),
                client.scatter(w.ad_ids, broadcast=True, hash=False),
                client.scatter(mask, broadcast=True, hash=False) if mask is not None else None)

    inputs = [scatter()]
    limit = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    pending = as_completed()
    args: dict[str, tuple] = {}

    def submit(task: tuple, attempt: int = 0) -> Any:
        if attempt:  # the scattered inputs may be what was lost: scatter them afresh
            inputs[0] = scatter()
        theta_f, ids_f, mask_f = inputs[0]
        index, rows_in, ids, X, rej = task
        fut = client.submit(score_task, theta_f, ids_f, w.version, index, rows_in, ids, X, k,
                            mask_f, wide, rej, key=f"llmhyper-score-{w.version}-{index}-{id(pending)}-{attempt}",
                            retries=3, pure=False)
        args[fut.key] = task
        return fut

    def finish(f: Any) -> None:
        task = args.pop(f.key)
        done(result_or_resubmit(f, lambda attempt: submit(task, attempt)))

    for ch in todo:
        ids, X, rej = scorer.rows(ch, on_unknown)
        pending.add(submit((ch.index, len(ch.ids), ids, X, rej)))
        while pending.count() >= limit:
            finish(next(pending))
    for f in pending:
        finish(f)


@dataclass(frozen=True)
class WorkerJob:
    """What every partition task of a shared-filesystem job needs (broadcast once).

    ``mask``: uint8 [M] candidate mask or None; ``work_dir``: the job's ``OUT.parts/``.
    """

    store: str
    version: str
    spec: InputSpec
    n_features: int
    chunk_size: int
    k: int
    mask: np.ndarray | None
    wide: bool
    on_unknown: str
    work_dir: str
    input_path: str  # the list's real path (spec.path as the caller wrote it names it in messages)


@dataclass(frozen=True)
class InputProblem:
    """A BatchInputError found on a worker, returned as a value so Dask does not retry it."""

    index: int
    message: str


_SCORERS: dict[tuple[str, str], Any] = {}  # per worker process: (store, version) -> LocalScorer


def _worker_scorer(store: str, version: str) -> Any:
    from llmhyper.batch.scorers import LocalScorer

    sc = _SCORERS.get((store, version))
    if sc is None:
        sc = _SCORERS[(store, version)] = LocalScorer(store, version)
    return sc


def partition_task(job: WorkerJob, index: int) -> dict | InputProblem:
    """Run on a worker: read, score and write part ``index``; its manifest record
    (see :func:`llmhyper.batch.job.write_part`), or the input problem found."""
    from llmhyper.batch.inputs import read_chunk
    from llmhyper.batch.job import write_part
    from llmhyper.batch.parts import build_part
    from llmhyper.batch.scorers import score_rows

    try:
        sc = _worker_scorer(job.store, job.version)
        w = sc.weights
        spec = job.spec
        if not (os.path.isfile(spec.path) and os.path.samefile(spec.path, job.input_path)):
            spec = replace(spec, path=job.input_path)  # another working directory than the driver's
        ch = read_chunk(spec, job.n_features, job.chunk_size, index)
        ids, X, rej = sc.rows(ch, job.on_unknown)
        idx, ctr, lg = score_rows(w.theta, X, job.k, job.mask)
        part = build_part(index, len(ch.ids), ids, idx, ctr, lg, w.ad_ids, w.version, job.wide, rej)
    except BatchInputError as e:
        return InputProblem(index, str(e))
    return write_part(Path(job.work_dir), part)


def score_partitions_on_dask(client: Any, job: WorkerJob, indices: list[int],
                             done: Callable[[dict], None]) -> None:
    """Score partitions ``indices`` on the client's workers (each reads and writes its own
    files); ``done(record)`` for each in completion order. Raises BatchInputError with the
    message of the first input problem a worker reports (the other tasks are cancelled)."""
    from distributed import as_completed

    if not indices:
        return
    job_f = client.scatter(job, broadcast=True, hash=False)
    tag = f"{job.version}-{id(job_f)}"
    futs = [client.submit(partition_task, job_f, i, key=f"llmhyper-part-{tag}-{i}", retries=3, pure=False)
            for i in indices]
    index_of = {f.key: i for f, i in zip(futs, indices)}

    def resubmit(i: int, attempt: int) -> Any:
        fresh = client.scatter(job, broadcast=True, hash=False)  # the lost input may be the job
        f = client.submit(partition_task, fresh, i, key=f"llmhyper-part-{tag}-{i}-{attempt}", retries=3,
                          pure=False)
        futs.append(f)
        return f

    try:
        for f in as_completed(list(futs)):
            i = index_of[f.key]
            r = result_or_resubmit(f, lambda attempt, i=i: resubmit(i, attempt))
            if isinstance(r, InputProblem):
                raise BatchInputError(r.message)
            done(r)
    finally:
        client.cancel([f for f in futs if not f.done()])


def local_cluster(n_workers: int):
    """A LocalCluster of ``n_workers`` processes, one thread each (one numeric thread: WORKER_ENV),
    and its client."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40, env=dict(WORKER_ENV))
    return cluster, Client(cluster)
