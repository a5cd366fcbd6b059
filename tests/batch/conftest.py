"""Fixtures for the batch-scoring tests: a store with a user table and input files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import World, make_world, publish_world


@pytest.fixture(scope="module")
def bworld() -> World:
    return make_world(seed=11, M=60, F=6, N=500)


@pytest.fixture(scope="module")
def bstore(tmp_path_factory: pytest.TempPathFactory, bworld: World) -> Path:
    from llmhyper.store.weight_store import WeightStore

    path = tmp_path_factory.mktemp("bstore") / "weights.lmdb"
    store = WeightStore(path)
    publish_world(store, bworld)
    store.close()
    return path


def feature_table(world: World, ids: list[str] | None = None) -> pa.Table:
    cols: dict = {}
    if ids is not None:
        cols["user_id"] = ids
    for j, (name, _) in enumerate(world.features[1:], start=1):
        cols[name] = world.X[:, j].astype(np.float64)
    return pa.table(cols)


@pytest.fixture(scope="module")
def ids_parquet(tmp_path_factory: pytest.TempPathFactory, bworld: World) -> Path:
    p = tmp_path_factory.mktemp("inputs") / "ids.parquet"
    pq.write_table(pa.table({"user_id": bworld.user_ids}), p, row_group_size=128)
    return p
