"""A killed ``llmhyper score`` restarted with the same arguments writes identical bytes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llmhyper.cli.main import main
from tests.helpers import REPO, World, cli_env


def test_kill_at_random_part_and_restart_gives_identical_bytes(tmp_path: Path, bstore: Path, bworld: World) -> None:
    inp = tmp_path / "users.parquet"
    ids = [bworld.user_ids[i % len(bworld.user_ids)] for i in range(1200)]
    pq.write_table(pa.table({"user_id": ids}), inp, row_group_size=100)
    args = ["--store", str(bstore), "--top-k", "5", "--chunk-size", "20", "--no-progress"]  # 60 parts
    ref = tmp_path / "ref.parquet"
    assert main(["score", str(inp), "--out", str(ref), *args]) == 0
    rng = random.Random(20261202)
    for trial in range(5):
        out = tmp_path / f"run{trial}.parquet"
        parts = out.with_name(out.name + ".parts")
        after = rng.randint(1, 50)  # SIGKILL once this many parts are on disk
        proc = subprocess.Popen([sys.executable, "-m", "llmhyper", "score", str(inp), "--out", str(out), *args],
                                cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None:
            n = sum(1 for f in os.listdir(parts) if f.endswith(".parquet")) if parts.is_dir() else 0
            if n >= after:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        proc.wait(60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        assert not out.exists()  # nothing under the final name yet
        assert main(["score", str(inp), "--out", str(out), *args]) == 0
        assert out.read_bytes() == ref.read_bytes()
