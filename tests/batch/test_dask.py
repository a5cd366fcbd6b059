"""The score job on a real Dask LocalCluster (2 worker processes, 1 thread each)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from llmhyper.batch.runner import Job, run_job
from llmhyper.cli.main import main

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_client():
    from llmhyper.batch.dask_run import local_cluster

    cluster, client = local_cluster(2)
    yield client
    client.close()
    cluster.close()


def _job(inp: Path, out: Path, store: Path, **kw) -> Job:
    return Job(input=str(inp), out=str(out), store=str(store), top_k=6, chunk_size=40, progress=False, **kw)


def test_two_workers_match_single_process(tmp_path: Path, bstore: Path, ids_parquet: Path, dask_client) -> None:
    ref = tmp_path / "ref.parquet"
    assert main(["score", str(ids_parquet), "--out", str(ref), "--store", str(bstore), "--top-k", "6",
                 "--chunk-size", "40", "--no-progress"]) == 0
    out = tmp_path / "dask.parquet"
    summary = run_job(_job(ids_parquet, out, bstore, dask_client=dask_client))
    assert summary["n_parts"] == 13 and summary["users_out"] == 500
    assert out.read_bytes() == ref.read_bytes()


def test_killed_worker_still_gives_identical_output(tmp_path: Path, bstore: Path, ids_parquet: Path,
                                                     dask_client) -> None:
    ref = tmp_path / "ref.parquet"
    run_job(_job(ids_parquet, ref, bstore))
    pids = dask_client.run(os.getpid)
    killed: list[int] = []

    def kill_one_worker(index: int) -> None:
        if not killed:  # after the first recorded part, SIGKILL a worker process (its nanny restarts it)
            pid = sorted(pids.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "dask.parquet"
    run_job(_job(ids_parquet, out, bstore, dask_client=dask_client), on_part=kill_one_worker)
    assert killed
    assert out.read_bytes() == ref.read_bytes()
    dask_client.wait_for_workers(2, timeout=60)
    assert killed[0] not in dask_client.run(os.getpid).values()
