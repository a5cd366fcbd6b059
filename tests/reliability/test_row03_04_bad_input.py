"""Rows 3 and 4 -- bad input and oversized messages.

Row 3: empty/unknown user, wrong length, NaN/inf, unknown feature or ad, huge top_k, garbage
bytes in the packed batch -> INVALID_ARGUMENT or NOT_FOUND with a message naming the problem,
never UNKNOWN; the server keeps serving.
Row 4: a request above the configured ``--max-message-bytes`` -> RESOURCE_EXHAUSTED; the
server process keeps serving.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.client import RankerClient, RankerError

INV, NF = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _cases(F: int) -> list[tuple[str, str, object, grpc.StatusCode, str]]:
    """(case, method, request, expected code, substring the message must contain)."""
    nan_row = np.full(F, np.nan, "<f4").tobytes()
    inf_row = np.full(F, np.inf, "<f4").tobytes()
    ok_row = np.ones(F, "<f4")
    dense = [1.0] + [0.5] * (F - 1)
    return [
        ("empty user", "Rank", pb.RankRequest(top_k=3), INV, "no user given"),
        ("empty user_id string", "Rank", pb.RankRequest(user_id="", top_k=3), INV, "no user given"),
        ("unknown user", "Rank", pb.RankRequest(user_id="nobody-42", top_k=3), NF, "unknown user_id 'nobody-42'"),
        ("two user inputs", "Rank", pb.RankRequest(user_id="u001", features=dense, top_k=3), INV, "exactly one"),
        ("wrong length (short)", "Rank", pb.RankRequest(features=dense[:-1], top_k=3), INV,
         f"features has {F - 1} values, expected F={F}"),
        ("wrong length (long)", "Rank", pb.RankRequest(features=dense + [1.0], top_k=3), INV,
         f"features has {F + 1} values"),
        ("NaN feature", "Rank", pb.RankRequest(features=[1.0, math.nan] + dense[2:], top_k=3), INV, "must be finite"),
        ("+inf feature", "Rank", pb.RankRequest(features=[1.0, math.inf] + dense[2:], top_k=3), INV, "must be finite"),
        ("-inf feature_map", "Rank", pb.RankRequest(feature_map={"f2": -math.inf}, top_k=3), INV, "'f2'"),
        ("unknown feature", "Rank", pb.RankRequest(feature_map={"f1": 0.3, "shoe_size": 44.0}, top_k=3), INV,
         "unknown feature name(s) in feature_map: 'shoe_size'"),
        ("unknown allow ad", "Rank", pb.RankRequest(user_id="u001", allow_ad_ids=["ad001", "no-such-ad"], top_k=3),
         NF, "'no-such-ad'"),
        ("unknown deny ad", "Rank", pb.RankRequest(user_id="u001", deny_ad_ids=["ghost"], top_k=3), NF, "'ghost'"),
        ("huge top_k", "Rank", pb.RankRequest(user_id="u001", top_k=2_000_000_000), INV, "top_k must be in [1, 1000]"),
        ("zero top_k", "Rank", pb.RankRequest(user_id="u001", top_k=0), INV, "top_k must be in"),
        ("negative top_k", "Rank", pb.RankRequest(user_id="u001", top_k=-7), INV, "got -7"),
        ("unknown version", "Rank", pb.RankRequest(user_id="u001", top_k=3, version="v999999"), NF, "v999999"),
        ("explain unknown ad", "Explain", pb.ExplainRequest(ad_id="ad-404", user_id="u001"), NF, "unknown ad_id 'ad-404'"),
        ("explain no ad", "Explain", pb.ExplainRequest(user_id="u001"), INV, "ad_id is required"),
        ("explain NaN", "Explain", pb.ExplainRequest(ad_id="ad001", features=[math.nan] * F), INV, "must be finite"),
        ("batch: garbage length", "RankBatch", pb.RankBatchRequest(features=b"\x13\x37garbage!", top_k=3), INV,
         f"not a multiple of 4*F = {4 * F}"),
        ("batch: NaN bytes", "RankBatch", pb.RankBatchRequest(features=ok_row.tobytes() + nan_row, top_k=3), INV,
         "features row 1"),
        ("batch: inf bytes", "RankBatch", pb.RankBatchRequest(features=inf_row, top_k=3), INV, "must be finite"),
        ("batch: 0xFF garbage", "RankBatch", pb.RankBatchRequest(features=b"\xff" * (4 * F * 3), top_k=3), INV,
         "must be finite"),
        ("batch: num_features lies", "RankBatch",
         pb.RankBatchRequest(features=ok_row.tobytes(), num_features=F + 3, top_k=3), INV, f"num_features is {F + 3}"),
        ("batch: empty", "RankBatch", pb.RankBatchRequest(top_k=3), INV, "no users given"),
        ("batch: unknown user", "RankBatch", pb.RankBatchRequest(user_ids=["u001", "zz"], top_k=3), NF, "'zz'"),
        ("batch: huge top_k", "RankBatch", pb.RankBatchRequest(features=ok_row.tobytes(), top_k=10**9), INV, "top_k"),
        ("batch: too many users", "RankBatch",
         pb.RankBatchRequest(user_ids=["u001"] * 70000, top_k=1), INV, "more than the limit of 65536"),
    ]


def test_row03_bad_input_gets_clear_codes_and_server_keeps_serving(store_path, make_server, world, record):
    server, port = make_server(str(store_path))
    seen: dict[str, str] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = pb_grpc.RankerStub(ch)
        for name, method, req, code, needle in _cases(world.F):
            with pytest.raises(grpc.RpcError) as ei:
                getattr(stub, method)(req, timeout=10)
            got, details = ei.value.code(), ei.value.details() or ""
            assert got != grpc.StatusCode.UNKNOWN, (name, details)
            assert got == code, (name, got, details)
            assert needle in details, (name, details)
            seen[name] = got.name
            # still serving after every refusal
            assert len(stub.Rank(pb.RankRequest(user_id="u001", top_k=2), timeout=10).ads) == 2

        # Bytes that are not a protobuf message at all (below the handler): never UNKNOWN either.
        raw = ch.unary_unary("/llmhyper.v1.Ranker/Rank", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as ei:
            raw(b"\xff\xfe\xfd not a protobuf \x00\x01", timeout=10)
        raw_code = ei.value.code()
        assert raw_code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK)
    counters = server.servicer.counters()
    assert "UNKNOWN" not in counters["errors"] and "INTERNAL" not in counters["errors"], counters
    with RankerClient(f"127.0.0.1:{port}") as c:
        assert c.health() == "SERVING" and len(c.rank("u003", top_k=5).ads) == 5
    codes = {}
    for v in seen.values():
        codes[v] = codes.get(v, 0) + 1
    record("row03", cases=len(seen), codes=codes, raw_protobuf_garbage=raw_code.name,
           server_error_counters=counters["errors"])


LIMIT = 64 * 1024


def test_row04_oversized_message_resource_exhausted(store_path, serve, world, record):
    sp = serve(store_path, "--max-message-bytes", str(LIMIT))
    F = world.F
    with RankerClient(sp.target, timeout=10) as c:
        big = np.ones((2 * LIMIT // (4 * F), F), np.float32)  # 2x the limit
        results = []
        for _ in range(20):
            with pytest.raises(RankerError) as ei:
                c.rank_batch(big, top_k=1)
            results.append(ei.value.code.name)
        with pytest.raises(RankerError) as ei:  # a different shape of oversized: a giant feature map
            c.rank(features={f"f{i}": 0.0 for i in range(20000)}, top_k=1)
        results.append(ei.value.code.name)
        assert set(results) == {"RESOURCE_EXHAUSTED"}, results
        just_under = np.ones(((LIMIT - 1024) // (4 * F), F), np.float32)
        assert c.rank_batch(just_under, top_k=1).ad_index.shape == (just_under.shape[0], 1)
        assert c.health() == "SERVING" and len(c.rank("u001", top_k=3).ads) == 3
    assert sp.proc.poll() is None
    record("row04", limit_bytes=LIMIT, oversized_bytes=big.nbytes, oversized_calls=len(results),
           codes={"RESOURCE_EXHAUSTED": len(results)}, under_limit_bytes=just_under.nbytes, still_serving=True)
