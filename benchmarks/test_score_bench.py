"""``llmhyper score`` end to end on 1,000,000 users x 1,000 ads (opt-in: slow).

Run:  LLMHYPER_BENCH_SCORE=1 .venv/bin/python -m pytest benchmarks/test_score_bench.py \
          -p no:cacheprovider -s --benchmark-json=benchmarks/score.json
      (LLMHYPER_BENCH_USERS=N for another list size)

* Parquet -> Parquet, feature columns (F = 32), top 10, one process: users/s and the peak RSS
  of the scoring process (its own rusage, from wait4). Budget: peak RSS < 1 GiB.
* The Dask 2-workers-vs-1 ratio is in ``benchmarks/test_dask_bench.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.score_data import M, F, make_score_job

REPO = Path(__file__).resolve().parents[1]
N_USERS = int(os.environ.get("LLMHYPER_BENCH_USERS", "1000000"))
K = 10

pytestmark = pytest.mark.skipif(os.environ.get("LLMHYPER_BENCH_SCORE") != "1",
                                reason="opt-in: set LLMHYPER_BENCH_SCORE=1 (takes minutes)")


@pytest.fixture(scope="module")
def job_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store with M ads x F features and a Parquet list of N_USERS users by features."""
    return make_score_job(tmp_path_factory.mktemp("scorebench"), N_USERS)


def _run(*args: str) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one ``llmhyper score`` process."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "llmhyper", "score", *args, "--no-progress"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, err[-3000:]
    print(out.strip())
    return wall, int(usage.ru_maxrss) * 1024


def test_score_one_process(job_files, tmp_path: Path, budget_rows: list, benchmark) -> None:
    store, inp = job_files
    out = tmp_path / "top10.parquet"
    wall, rss = _run(str(inp), "--out", str(out), "--store", str(store), "--top-k", str(K))
    import pyarrow.parquet as pq

    assert pq.ParquetFile(out).metadata.num_rows == N_USERS * K
    ups = N_USERS / wall
    benchmark.extra_info.update(users=N_USERS, ads=M, features=F, k=K, wall_s=wall, users_per_s=ups, peak_rss_bytes=rss)
    benchmark.pedantic(lambda: None, rounds=1)
    ok = rss < 1 << 30
    budget_rows.append(dict(suite="score", case=f"score {N_USERS} users x {M} ads peak RSS (GiB)",
                            ratio=rss / (1 << 30), budget=1.0, statistic="max", source="wait4 rusage", ok=ok,
                            measured=f"{wall:.1f} s, {ups:,.0f} users/s, peak RSS {rss / 2**20:.0f} MiB"))
    assert ok, f"peak RSS {rss / 2**20:.0f} MiB >= 1 GiB"
