"""Row 11 -- authentication on ``llmhyper serve``: TLS, mutual TLS and bearer tokens are
configured by flags; reflection is off unless ``--reflection``. Certificates are generated
with ``cryptography`` (tests/conftest.py ``tls_files``).

Pass: no (or a foreign) client certificate -> the handshake fails; wrong token ->
UNAUTHENTICATED; right certificate and token -> OK.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmhyper.client import ClientTLS, RankerClient, RankerError


def _list_services(channel: grpc.Channel, metadata=None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=5, metadata=metadata)))
    return sorted(s.name for s in resp.list_services_response.service)


def _code(fn) -> str:
    try:
        fn()
        return "OK"
    except RankerError as e:
        return e.code.name


def test_row11_mtls_and_token_via_cli(store_path, serve, tls_files, record):
    sp = serve(store_path, "--tls-cert", str(tls_files.server_cert), "--tls-key", str(tls_files.server_key),
               "--tls-client-ca", str(tls_files.ca), "--token", "s3cret-token",
               token="s3cret-token", tls=ClientTLS(ca_file=str(tls_files.ca), cert_file=str(tls_files.client_cert),
                                                   key_file=str(tls_files.client_key)))
    target = f"localhost:{sp.port}"
    good = ClientTLS(ca_file=str(tls_files.ca), cert_file=str(tls_files.client_cert), key_file=str(tls_files.client_key))
    results = {}
    with RankerClient(target, tls=good, token="s3cret-token", timeout=5) as c:
        results["right cert + right token"] = _code(lambda: c.rank("u001", top_k=2))
    with RankerClient(target, tls=good, token="wrong-token", timeout=5) as c:
        results["right cert + wrong token"] = _code(lambda: c.rank("u001", top_k=2))
    with RankerClient(target, tls=good, timeout=5) as c:
        results["right cert + no token"] = _code(lambda: c.model_info())
    for name, tls in {
        "no client cert": ClientTLS(ca_file=str(tls_files.ca)),
        "client cert from a foreign CA": ClientTLS(ca_file=str(tls_files.ca), cert_file=str(tls_files.rogue_client_cert),
                                                   key_file=str(tls_files.rogue_client_key)),
        "client distrusts server CA": ClientTLS(ca_file=str(tls_files.other_ca), cert_file=str(tls_files.client_cert),
                                                key_file=str(tls_files.client_key)),
    }.items():
        with RankerClient(target, tls=tls, token="s3cret-token", timeout=2, retries=False) as c:
            results[name] = _code(lambda: c.ping())
    with RankerClient(f"127.0.0.1:{sp.port}", token="s3cret-token", timeout=2, retries=False) as c:
        results["plaintext client"] = _code(lambda: c.ping())
    # reflection is off by default: even an authenticated mTLS caller finds no reflection service
    with grpc.secure_channel(target, good.credentials()) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            _list_services(ch, metadata=(("authorization", "Bearer s3cret-token"),))
        results["reflection (default)"] = ei.value.code().name
    record("row11_mtls_token", **results)
    assert results == {
        "right cert + right token": "OK",
        "right cert + wrong token": "UNAUTHENTICATED",
        "right cert + no token": "UNAUTHENTICATED",
        "no client cert": "UNAVAILABLE",
        "client cert from a foreign CA": "UNAVAILABLE",
        "client distrusts server CA": "UNAVAILABLE",
        "plaintext client": "UNAVAILABLE",
        "reflection (default)": "UNIMPLEMENTED",
    }


def test_row11_tls_only_and_reflection_flag(store_path, serve, tls_files, record):
    sp = serve(store_path, "--tls-cert", str(tls_files.server_cert), "--tls-key", str(tls_files.server_key),
               "--reflection", tls=ClientTLS(ca_file=str(tls_files.ca)))
    target = f"localhost:{sp.port}"
    tls = ClientTLS(ca_file=str(tls_files.ca))
    with RankerClient(target, tls=tls, timeout=5) as c:
        ok = _code(lambda: c.rank("u001", top_k=2))
    with RankerClient(f"127.0.0.1:{sp.port}", timeout=2, retries=False) as c:
        plain = _code(lambda: c.ping())
    with grpc.secure_channel(target, tls.credentials()) as ch:
        services = _list_services(ch)
    record("row11_tls_reflection", tls_client=ok, plaintext_client=plain, reflection_services=services)
    assert ok == "OK" and plain == "UNAVAILABLE"
    assert {"llmhyper.v1.Ranker", "grpc.health.v1.Health"} <= set(services)
