"""``StoreServing``: the evaluation publishes every weight matrix into a real LMDB store and scores
the store's zero-copy view; Rank latency is measured through a real gRPC server on 127.0.0.1.

It implements ``offline.evaluation.serving.ServingPath`` (structurally: nothing is imported from
offline, so the layering ``offline <- llmhyper`` holds).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llmhyper.store import WeightStore

__all__ = ["StoreServing"]


class StoreServing:
    """Publishes into ``<work_dir>/eval-store`` (recreated per run; ``map_size`` bytes)."""

    def __init__(self, work_dir: str | Path, map_size: int = 64 << 20) -> None:
        self.path = Path(work_dir) / "eval-store"
        self.map_size = int(map_size)
        self.store: WeightStore | None = None
        self.features: list[str] = []

    @property
    def location(self) -> str | None:
        return str(self.path)

    def open(self, user_ids: Sequence[str], X: np.ndarray, features: Sequence[str]) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        self.store = WeightStore(self.path, map_size=self.map_size)
        self.features = list(features)
        self.store.put_users(list(user_ids), np.ascontiguousarray(X, dtype=np.float32), self.features)

    def publish(self, label: str, seed: int, ad_ids: Sequence[str], theta: np.ndarray) -> tuple[Any, np.ndarray]:
        assert self.store is not None, "open() first"
        v = self.store.publish(list(ad_ids), theta, self.features,
                               manifest={"generator": label, "seed": seed, "evaluation": True})
        return v, self.store.view(v).theta

    def latency(self, versions: dict[str, Any], user_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Per label: Rank-by-user-id latency (ms) of its version, top 10, after 5 warm-up calls."""
        from llmhyper.client import RankerClient
        from llmhyper.server import create_server

        assert self.store is not None, "open() first"
        out: dict[str, dict[str, float]] = {}
        server, port = create_server("127.0.0.1:0", self.store)
        try:
            with RankerClient(f"127.0.0.1:{port}", timeout=10.0) as cli:
                cli.wait_until_serving(timeout=30.0)
                for name, v in versions.items():
                    for u in user_ids[:5]:  # warm the connection and the pinned version
                        cli.rank(u, top_k=10, version=v)
                    ts = []
                    for u in user_ids:
                        t0 = time.perf_counter()
                        cli.rank(u, top_k=10, version=v)
                        ts.append((time.perf_counter() - t0) * 1e3)
                    a = np.array(ts)
                    out[name] = {"mean": float(a.mean()), "p50": float(np.median(a)),
                                 "p99": float(np.percentile(a, 99)), "n": int(a.size)}
        finally:
            server.stop(0).wait(5)
        return out

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
