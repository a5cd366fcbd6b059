"""The synthetic batch-scoring job shared by the ``llmhyper score`` benchmarks.

A store with ``M`` ads x ``F`` features (bias first) and a Parquet list of ``n_users`` users
by feature columns (float32 in [0, 1), labelled ``u0000000``...), in row groups of 100,000.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

M, F = 1000, 32


def make_score_job(d: Path, n_users: int, seed: int = 0) -> tuple[Path, Path]:
    """(store path, input path) of a job of ``n_users`` x ``M`` ads written under ``d``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmhyper.store.weight_store import WeightStore

    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 0.3, size=(M, F)).astype(np.float32)
    theta[:, 0] = rng.normal(-3, 0.5, size=M)
    feats = [("bias", "intercept")] + [(f"f{j}", f"feature {j}") for j in range(1, F)]
    with WeightStore(d / "store") as s:
        s.publish([f"ad{i:05d}" for i in range(M)], theta, feats, manifest={"generator": "bench"})
    inp = d / "users.parquet"
    schema = pa.schema([("user_id", pa.string())] + [(n, pa.float32()) for n, _ in feats[1:]])
    with pq.ParquetWriter(inp, schema) as w:
        for a in range(0, n_users, 100_000):
            n = min(100_000, n_users - a)
            X = rng.random((n, F - 1), dtype=np.float32)
            w.write_table(pa.table([pa.array([f"u{i:07d}" for i in range(a, a + n)])] +
                                   [pa.array(X[:, j]) for j in range(F - 1)], schema=schema))
    return d / "store", inp
