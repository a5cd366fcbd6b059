"""The job's parts scored on a Dask cluster (``--scheduler tcp://HOST:PORT`` or ``--workers N``).

The driver reads the input in chunks as usual. The pinned version's weights (theta, ad ids)
are scattered once to every worker (``broadcast=True``), so workers need neither the store
nor a shared filesystem; by-id chunks are resolved to their user-table rows on the driver
and those rows travel with the task. Each task returns its part's Parquet bytes and the
driver writes and records them (whole files only, in the manifest), so a worker killed
mid-task only means Dask runs that task again: the bytes are the same.
At most ``2 x workers`` tasks are in flight, so the driver's memory stays bounded.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from llmhyper.batch.inputs import Chunk
from llmhyper.batch.job import PartResult

__all__ = ["score_on_dask", "score_task", "local_cluster"]


def score_task(theta: np.ndarray, ad_ids: tuple[str, ...], version: str, index: int, rows_in: int,
               ids: list[str], X: np.ndarray, k: int, mask: np.ndarray | None, wide: bool,
               rejects: list[tuple[int, str]]) -> PartResult:
    """Run on a worker: score one partition, return its Parquet part."""
    from llmhyper.batch.parts import build_part
    from llmhyper.batch.scorers import score_rows

    idx, ctr, lg = score_rows(theta, X, k, mask)
    return build_part(index, rows_in, ids, idx, ctr, lg, ad_ids, version, wide, rejects)


def score_on_dask(client: Any, scorer: Any, todo: Iterator[Chunk], k: int, mask: np.ndarray | None,
                  wide: bool, on_unknown: str, done: Callable[[PartResult], None]) -> None:
    """Score the chunks of ``todo`` on the client's workers; ``done(part)`` for each result
    (in completion order; parts are independent)."""
    from distributed import as_completed

    w = scorer.weights
    theta_f = client.scatter(np.ascontiguousarray(w.theta), broadcast=True, hash=False)
    ids_f = client.scatter(w.ad_ids, broadcast=True, hash=False)
    mask_f = client.scatter(mask, broadcast=True, hash=False) if mask is not None else None
    limit = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    pending = as_completed()
    n = 0
    for ch in todo:
        ids, X, rej = scorer.rows(ch, on_unknown)
        fut = client.submit(score_task, theta_f, ids_f, w.version, ch.index, len(ch.ids), ids, X, k,
                            mask_f, wide, rej, key=f"llmhyper-score-{w.version}-{ch.index}-{id(pending)}",
                            retries=3, pure=False)
        pending.add(fut)
        n += 1
        while pending.count() >= limit:
            f = next(pending)
            done(f.result())
    for f in pending:
        done(f.result())


def local_cluster(n_workers: int):
    """A LocalCluster of ``n_workers`` processes, one thread each, and its client."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    return cluster, Client(cluster)
