"""The score job on a real Dask LocalCluster (2 worker processes, 1 thread each)."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

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


def _worker_killer(dask_client, which: int) -> tuple[list[int], Callable[[int], None]]:
    """(killed pids, an ``on_part`` hook that SIGKILLs worker ``which`` of the sorted pids after
    the first recorded part; its nanny restarts it)."""
    pids = dask_client.run(os.getpid)
    killed: list[int] = []

    def kill_one_worker(index: int) -> None:
        if not killed:
            pid = sorted(pids.values())[which]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    return killed, kill_one_worker


def test_killed_worker_still_gives_identical_output(tmp_path: Path, bstore: Path, ids_parquet: Path,
                                                     dask_client) -> None:
    ref = tmp_path / "ref.parquet"
    run_job(_job(ids_parquet, ref, bstore))
    killed, kill_one_worker = _worker_killer(dask_client, 0)
    out = tmp_path / "dask.parquet"
    run_job(_job(ids_parquet, out, bstore, dask_client=dask_client), on_part=kill_one_worker)
    assert killed
    assert out.read_bytes() == ref.read_bytes()
    dask_client.wait_for_workers(2, timeout=60)
    assert killed[0] not in dask_client.run(os.getpid).values()


# ---- shared filesystem: the workers read their own row groups and write their own parts ----

def _features_parquet(path: Path, world, nan_row: int | None = None, row_group: int = 37) -> Path:
    import numpy as np
    import pyarrow.parquet as pq

    from tests.batch.conftest import feature_table

    t = feature_table(world, [f"x{i}" for i in range(world.X.shape[0])])
    if nan_row is not None:
        col = t.column("f2").to_numpy().copy()
        col[nan_row - 1] = np.nan
        t = t.set_column(t.schema.get_field_index("f2"), "f2", [col])
    pq.write_table(t, path, row_group_size=row_group)  # row groups not aligned with the chunks
    return path


def _worker_scorers(client) -> list:
    from llmhyper.batch import dask_run

    return sorted(v for keys in client.run(lambda: sorted(map(str, dask_run._SCORERS))).values() for v in keys)


@pytest.mark.parametrize("kind", ["by_id", "features_wide_deny"])
def test_shared_fs_workers_write_identical_bytes(tmp_path: Path, bstore: Path, ids_parquet: Path, bworld,
                                                 dask_client, kind: str) -> None:
    if kind == "by_id":
        inp, kw = ids_parquet, {}
    else:
        inp = _features_parquet(tmp_path / "feats.parquet", bworld)
        kw = dict(wide=True, deny=tuple(bworld.ad_ids[:3]))
    ref = tmp_path / "ref.parquet"
    run_job(_job(inp, ref, bstore, **kw))
    out = tmp_path / "dask.parquet"
    seen: list[int] = []
    summary = run_job(_job(inp, out, bstore, dask_client=dask_client, dask_shared_fs=True, **kw), on_part=seen.append)
    assert summary["n_parts"] == 13 and sorted(seen) == list(range(13))
    assert out.read_bytes() == ref.read_bytes()
    assert [p.name for p in (tmp_path / "dask.parquet.parts").iterdir()] == ["manifest.json"]
    assert _worker_scorers(dask_client)  # the workers opened the store themselves


def test_shared_fs_killed_worker_and_resume_give_identical_bytes(tmp_path: Path, bstore: Path, ids_parquet: Path,
                                                                 dask_client) -> None:
    ref = tmp_path / "ref.parquet"
    run_job(_job(ids_parquet, ref, bstore))
    killed, kill_one_worker = _worker_killer(dask_client, -1)
    out = tmp_path / "dask.parquet"
    run_job(_job(ids_parquet, out, bstore, dask_client=dask_client, dask_shared_fs=True), on_part=kill_one_worker)
    assert killed and out.read_bytes() == ref.read_bytes()
    dask_client.wait_for_workers(2, timeout=60)

    class Stop(Exception):
        pass

    def stop_after_4(index: int) -> None:
        if index == 3:
            raise Stop
    resumed = tmp_path / "resumed.parquet"
    with pytest.raises(Stop):  # a single-process job killed after four parts ...
        run_job(_job(ids_parquet, resumed, bstore), on_part=stop_after_4)
    seen: list[int] = []  # ... finished on the cluster
    run_job(_job(ids_parquet, resumed, bstore, dask_client=dask_client, dask_shared_fs=True), on_part=seen.append)
    assert len(seen) == 13 - 4 and not set(seen) & {0, 1, 2, 3}
    assert resumed.read_bytes() == ref.read_bytes()


def test_shared_fs_input_errors_name_file_row_and_column(tmp_path: Path, bstore: Path, bworld,
                                                         dask_client) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmhyper.batch import BatchInputError

    nan = _features_parquet(tmp_path / "nan.parquet", bworld, nan_row=95)
    ids = list(bworld.user_ids)
    ids[300] = "ghost"
    unk = tmp_path / "unk.parquet"
    pq.write_table(pa.table({"user_id": ids}), unk, row_group_size=64)
    for inp, needle in ((nan, "row 95, column 'f2'"), (unk, "'ghost' (row 301)")):
        with pytest.raises(BatchInputError) as single:
            run_job(_job(inp, tmp_path / f"{inp.stem}-1.parquet", bstore))
        with pytest.raises(BatchInputError) as dask:
            run_job(_job(inp, tmp_path / f"{inp.stem}-d.parquet", bstore, dask_client=dask_client, dask_shared_fs=True))
        assert str(dask.value) == str(single.value)
        assert needle in str(dask.value)
        assert inp != nan or str(inp) in str(dask.value)  # (unknown-id messages name ids and rows)
        assert not (tmp_path / f"{inp.stem}-d.parquet").exists()


def test_cli_workers_exit_2_on_a_bad_partition(tmp_path: Path, bstore: Path, bworld, capsys) -> None:
    nan = _features_parquet(tmp_path / "nan.parquet", bworld, nan_row=7)
    rc = main(["score", str(nan), "--out", str(tmp_path / "o.parquet"), "--store", str(bstore), "--workers", "1",
               "--chunk-size", "40", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "row 7, column 'f2'" in err and str(nan) in err, err
    rc = main(["score", str(nan), "--out", str(tmp_path / "o.parquet"), "--store", str(bstore), "--shared-fs"])
    assert rc == 2 and "--shared-fs goes with --scheduler" in capsys.readouterr().err


def test_shared_fs_skip_writes_the_same_rejects(tmp_path: Path, bstore: Path, bworld, dask_client) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = list(bworld.user_ids)
    ids[5], ids[130], ids[499] = "ghost-a", "ghost-b", "ghost-c"
    inp = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"user_id": ids}), inp, row_group_size=50)
    ref, out = tmp_path / "ref.parquet", tmp_path / "dask.parquet"
    run_job(_job(inp, ref, bstore, on_unknown="skip"))
    run_job(_job(inp, out, bstore, on_unknown="skip", dask_client=dask_client, dask_shared_fs=True))
    assert out.read_bytes() == ref.read_bytes()
    rejects = (tmp_path / "dask.parquet.rejects.csv").read_text()
    assert rejects == (tmp_path / "ref.parquet.rejects.csv").read_text()
    assert rejects == "row,user_id\n6,ghost-a\n131,ghost-b\n500,ghost-c\n"


def test_a_cancelled_task_is_submitted_again_then_given_up(dask_client) -> None:
    # Under load a worker SIGKILLed while it held a scattered input made Dask cancel the
    # dependent task ("already forgotten"), which its retries do not cover.
    import pytest

    from llmhyper.batch import BatchRuntimeError
    from llmhyper.batch.dask_run import RESUBMITS, result_or_resubmit

    def cancelled(x: int):
        f = dask_client.submit(lambda v: v, x, pure=False)
        dask_client.cancel([f])
        return f

    tries: list[int] = []

    def resubmit(attempt: int):
        tries.append(attempt)
        return cancelled(1) if attempt < 2 else dask_client.submit(lambda v: v * 7, 6, pure=False)

    assert result_or_resubmit(cancelled(0), resubmit) == 42 and tries == [1, 2]
    tries.clear()
    with pytest.raises(BatchRuntimeError, match=rf"cancelled {RESUBMITS + 1} times"):
        result_or_resubmit(cancelled(0), lambda attempt: tries.append(attempt) or cancelled(attempt))
    assert tries == list(range(1, RESUBMITS + 1))
