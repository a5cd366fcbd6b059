"""Shared fixtures: a seeded synthetic world, a real LMDB store in tmp, a real server on a
free loopback port, a typed client, and self-signed TLS material.

Nothing here mocks project code: stores are real ``WeightStore`` environments written with
``publish``/``put_users``, servers are real ``create_server`` instances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.helpers import TLSFiles, World, make_tls_files, make_world, publish_world  # noqa: F401

# @pytest.mark.movielens: fail without the data under CI=true, skip and report it elsewhere
pytest_plugins = ["tests.movielens_gate"]


@pytest.fixture(scope="session")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory, world: World) -> Path:
    """A store directory holding one published version of ``world`` and its user table (closed)."""
    from llmhyper.store.weight_store import WeightStore

    path = tmp_path_factory.mktemp("store") / "weights.lmdb"
    store = WeightStore(path)
    publish_world(store, world)
    store.close()
    return path


@pytest.fixture
def make_server() -> Iterator[Callable]:
    """Factory: ``make_server(store_or_path, **options) -> (server, port)``; every server is stopped after the test."""
    from llmhyper.server import create_server

    servers = []

    def factory(store, **options):
        server, port = create_server("127.0.0.1:0", store, **options)
        servers.append(server)
        return server, port

    yield factory
    for s in servers:
        s.stop(0).wait(5)


@pytest.fixture(scope="module")
def server(store_path: Path):
    """A running server (default options) on the module's store; yields the RankerServer."""
    from llmhyper.server import create_server

    srv, _ = create_server("127.0.0.1:0", str(store_path))
    yield srv
    srv.stop(0).wait(5)


@pytest.fixture(scope="module")
def client(server):
    from llmhyper.client import RankerClient

    with RankerClient(f"127.0.0.1:{server.port}", timeout=10.0) as c:
        yield c


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """Self-signed CA, a server cert for localhost/127.0.0.1, a client cert, and a rogue client cert."""
    pytest.importorskip("cryptography", reason="cryptography is needed to generate test certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
