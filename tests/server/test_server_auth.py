"""Authentication: bearer tokens, TLS and mutual TLS with certificates generated in the test."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.client import ClientTLS, RankerClient, RankerError


def test_bearer_token(store_path, make_server):
    server, port = make_server(str(store_path), tokens=("s3cret", "other-token"))
    target = f"127.0.0.1:{port}"
    with RankerClient(target) as c:
        with pytest.raises(RankerError) as ei:
            c.rank("u001", top_k=1)
        assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in ei.value.details
        assert c.health() == "SERVING"  # health checks are exempt by default
    with RankerClient(target, token="wrong") as c:
        with pytest.raises(RankerError) as ei:
            c.model_info()
        assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED and "invalid bearer token" in ei.value.details
    for tok in ("s3cret", "other-token"):
        with RankerClient(target, token=tok) as c:
            assert len(c.rank("u001", top_k=2).ads) == 2
    with grpc.insecure_channel(target) as ch:  # wrong scheme
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.RankerStub(ch).Ping(pb.PingRequest(), metadata=(("authorization", "Basic s3cret"),), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.servicer.counters()["errors"]["UNAUTHENTICATED"] == 3


def test_bearer_token_can_cover_health(store_path, make_server):
    _, port = make_server(str(store_path), tokens=("tok",), auth_health=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        hs = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            hs.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = hs.Check(health_pb2.HealthCheckRequest(), metadata=(("authorization", "Bearer tok"),), timeout=5)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING


def test_tls(store_path, make_server, tls_files):
    _, port = make_server(str(store_path), tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key))
    target = f"localhost:{port}"
    with RankerClient(target, tls=ClientTLS(ca_file=str(tls_files.ca)), timeout=5) as c:
        assert len(c.rank("u001", top_k=2).ads) == 2
    # plaintext client against the TLS port: the handshake fails
    with RankerClient(target, timeout=2, retries=False) as c:
        with pytest.raises(RankerError) as ei:
            c.ping()
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    # a client that trusts another CA refuses the server certificate
    with RankerClient(target, tls=ClientTLS(ca_file=str(tls_files.other_ca)), timeout=2, retries=False) as c:
        with pytest.raises(RankerError) as ei:
            c.ping()
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_and_token(store_path, make_server, tls_files):
    _, port = make_server(str(store_path), tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                          tls_client_ca=str(tls_files.ca), tokens=("tok",))
    target = f"127.0.0.1:{port}"
    good = ClientTLS(ca_file=str(tls_files.ca), cert_file=str(tls_files.client_cert), key_file=str(tls_files.client_key))
    with RankerClient(target, tls=good, token="tok", timeout=5) as c:
        assert c.rank("u002", top_k=1).version == "v000001"
    with RankerClient(target, tls=good, token="bad", timeout=5) as c:
        with pytest.raises(RankerError) as ei:
            c.rank("u002", top_k=1)
        assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED
    no_cert = ClientTLS(ca_file=str(tls_files.ca))
    rogue = ClientTLS(ca_file=str(tls_files.ca), cert_file=str(tls_files.rogue_client_cert),
                      key_file=str(tls_files.rogue_client_key))
    for tls in (no_cert, rogue):
        with RankerClient(target, tls=tls, token="tok", timeout=2, retries=False) as c:
            with pytest.raises(RankerError) as ei:
                c.ping()
            assert ei.value.code == grpc.StatusCode.UNAVAILABLE


def test_client_tls_rejects_half_a_keypair(tls_files):
    with pytest.raises(ValueError, match="together"):
        RankerClient("127.0.0.1:1", tls=ClientTLS(ca_file=str(tls_files.ca), cert_file=str(tls_files.client_cert)))
