"""The request of each call: measured call ``m`` asks for user ``m % N`` (RankBatch: users
``m*B .. m*B+B-1`` modulo N). Requests are built once per user (or batch start) and reused."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from llmhyper._proto import ranker_pb2 as pb
from llmhyper.loadtest.spec import LoadSpec
from llmhyper.loadtest.users import Users

__all__ = ["RequestFactory"]


class RequestFactory:
    """``factory(m)`` -> the protobuf request of call number ``m`` (cached per distinct request)."""

    def __init__(self, spec: LoadSpec, users: Users) -> None:
        self.spec = spec
        self.users = users
        self.n = users.count
        self._cache: dict[int, Any] = {}
        build: dict[str, Callable[[int], Any]] = {
            "Rank": self._rank, "RankBatch": self._batch, "Explain": self._explain,
        }
        self._build = build[spec.method]

    def __call__(self, m: int) -> Any:
        key = (m * self.spec.batch) % self.n
        req = self._cache.get(key)
        if req is None:
            req = self._cache[key] = self._build(key)
        return req

    def _fill_one(self, req: Any, i: int) -> Any:
        u = self.users
        if u.feature_map is not None:
            for name, value in u.feature_map.items():
                req.feature_map[name] = float(value)
        elif u.X is not None:
            req.features.extend(u.X[i].tolist())
        else:
            req.user_id = u.ids[i]
        return req

    def _rank(self, i: int) -> Any:
        return self._fill_one(pb.RankRequest(top_k=self.spec.top_k), i)

    def _explain(self, i: int) -> Any:
        return self._fill_one(pb.ExplainRequest(ad_id=self.spec.ad or ""), i)

    def _batch(self, start: int) -> Any:
        rows = [(start + j) % self.n for j in range(self.spec.batch)]
        req = pb.RankBatchRequest(top_k=self.spec.top_k, skip_ad_ids=True)
        u = self.users
        if u.feature_map is not None:
            raise ValueError("RankBatch takes dense feature rows, not a name -> value map")
        if u.X is not None:
            X = np.ascontiguousarray(u.X[rows], dtype="<f4")
            req.features = X.tobytes()
            req.num_features = X.shape[1]
        else:
            req.user_ids.extend(u.ids[r] for r in rows)
        return req
