"""The unary Rank fast path: wire bytes written by ``encode.RankEncoder``, dense features read
from the request's bytes (``wire.py``), one-array top-k (``scoring.topk_one_rows``) and the
user table snapshot's row cache. Each piece is checked against the plain protobuf / NumPy
way of doing the same, and end to end through a real server."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

import scoring
from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.server.encode import RankEncoder, serialize_rank_response
from llmhyper.server.wire import keeping_wire, packed_features, take_wire
from scoring import reference as ref


def _message(version: str, ad_ids: list[str], rows, applied: bool) -> pb.RankResponse:
    resp = pb.RankResponse(version=version, content_rules_applied=applied)
    for i, lg, p in rows:
        resp.ads.add(ad_id=ad_ids[int(i)], ctr=p, logit=lg, ad_index=int(i))
    return resp


# ---------------------------------------------------------------- encoder
@pytest.mark.parametrize("seed", range(6))
def test_encoder_bytes_equal_protobuf_serialization(seed):
    rng = np.random.default_rng(seed)
    M = int(rng.integers(1, 20000))
    # ids of varied lengths, including ones whose length needs a two-byte varint
    ad_ids = [("a" * int(rng.integers(1, 200))) + str(i) for i in range(M)]
    enc = RankEncoder(f"v{seed:06d}", ad_ids)
    k = int(rng.integers(1, min(M, 50) + 1))
    idx = rng.choice(M, size=k, replace=False)
    idx[0] = 0 if seed % 2 else idx[0]  # ad index 0: protobuf leaves the field out
    logit = rng.normal(0, 20, size=k).astype(np.float32)
    prob = (1 / (1 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
    prob[prob == 0] = np.float32(1e-30)
    rows = [[float(i), float(lg), float(p)] for i, lg, p in zip(idx, logit, prob)]
    for applied in (True, False):
        want = _message(f"v{seed:06d}", ad_ids, rows, applied).SerializeToString()
        assert enc.encode(rows, applied) == want


def test_encoder_handles_extreme_floats_and_unicode_ids():
    ad_ids = ["é-ad", "日本", "x" * 300]
    enc = RankEncoder("v000009", ad_ids)
    rows = [[2.0, float(np.finfo(np.float32).max), 1.0], [1.0, float("-inf"), 1e-45], [0.0, -3.5, 0.0293]]
    assert enc.encode(rows, True) == _message("v000009", ad_ids, rows, True).SerializeToString()


@pytest.mark.parametrize("row", [[1.0, 0.0, 0.5], [1.0, -0.0, 0.5], [1.0, -200.0, 0.0]])
def test_encoder_declines_values_protobuf_leaves_out(row):
    assert RankEncoder("v1", ["a", "b"]).encode([row], True) is None


def test_rank_serializer_passes_bytes_and_serializes_messages():
    msg = pb.RankResponse(version="v1")
    assert serialize_rank_response(b"\x0a\x02v1") == b"\x0a\x02v1"
    assert serialize_rank_response(msg) == msg.SerializeToString()


# ---------------------------------------------------------------- wire bytes
def _kept(data: bytes):
    msg = keeping_wire(pb.RankRequest.FromString)(data)
    return msg, take_wire(msg)


def test_packed_features_view_is_the_parsed_values():
    x = np.random.default_rng(1).random(64, dtype=np.float32)
    msg, data = _kept(pb.RankRequest(features=x.tolist(), top_k=3).SerializeToString())
    assert data is not None
    view = packed_features(data, len(msg.features))
    assert view is not None and view.dtype == np.float32 and not view.flags.writeable
    np.testing.assert_array_equal(view, np.asarray(list(msg.features), dtype=np.float32))
    assert take_wire(msg) is None  # taken out once


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + bytes([len(payload)]) + payload


def test_other_encodings_of_the_same_features_are_not_read_from_the_wire():
    vals = [1.0, 2.5, -3.0, 4.0]
    packed = struct.pack("<4f", *vals)
    top_k = b"\x20\x03"
    encodings = {
        "two packed chunks": _field(0x12, packed[:8]) + _field(0x12, packed[8:]) + top_k,
        "unpacked values": b"".join(b"\x15" + struct.pack("<f", v) for v in vals) + top_k,
        "packed then one unpacked": _field(0x12, packed[:12]) + b"\x15" + packed[12:] + top_k,
        "top_k first": top_k + _field(0x12, packed),
    }
    for name, data in encodings.items():
        msg = pb.RankRequest.FromString(data)
        assert list(msg.features) == vals, name  # protobuf reads the same values ...
        kept = _kept(data)[1]
        assert kept is None or packed_features(kept, len(msg.features)) is None, name  # ... the fast path declines
    assert packed_features(_field(0x12, packed) + top_k, 4) is not None  # the canonical one is read


def test_wire_bytes_belong_to_their_own_message_only():
    deserialize = keeping_wire(pb.RankRequest.FromString)
    a = deserialize(pb.RankRequest(features=[1.0, 2.0]).SerializeToString())
    other = pb.RankRequest(features=[1.0, 2.0])  # equal content, a different object
    assert take_wire(other) is None
    assert take_wire(a) is not None


# ---------------------------------------------------------------- one-array top-k
@pytest.mark.parametrize("seed", range(4))
def test_topk_one_rows_equals_topk_one(seed):
    rng = np.random.default_rng(seed)
    M, F = int(rng.integers(1, 300)), int(rng.integers(1, 40))
    theta = rng.normal(0, 1, (M, F)).astype(np.float32)
    x = rng.random(F, dtype=np.float32)
    allow = (rng.random(M) < 0.7).astype(np.uint8)
    rules = scoring.make_rules(M, F, [(int(rng.integers(M)), int(rng.integers(F)), 0.3) for _ in range(5)])
    for k in (1, 7, M + 5):
        for a, r in ((None, None), (allow, None), (None, rules), (allow, rules)):
            idx, lg, pr = scoring.topk_one(theta, x, k, a, r)
            rows = scoring.topk_one_rows(theta, x, k, a, r)
            assert rows.shape == (len(idx), 3) and rows.dtype == np.float64
            assert rows[:, 0].astype(np.int64).tolist() == idx.tolist()
            assert rows[:, 1].tolist() == lg.astype(np.float64).tolist()
            assert rows[:, 2].tolist() == pr.astype(np.float64).tolist()
    ridx, _, _ = ref.topk_one(theta, x, 5)
    assert scoring.topk_one_rows(theta, x, 5)[:, 0].astype(int).tolist() == list(ridx)


def test_topk_one_rows_refuses_bad_input():
    theta = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        scoring.topk_one_rows(theta, np.array([1.0, np.nan], np.float32), 2)
    with pytest.raises(ValueError, match="x has 3 features"):
        scoring.topk_one_rows(theta, np.ones(3, np.float32), 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        scoring.topk_one_rows(theta, np.ones(2, np.float32), 0)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield pb_grpc.RankerStub(ch), ch


def test_fast_answers_equal_the_message_answers(stub, world):
    """Encoded answers parse to exactly the message the contributions path builds, minus the
    contributions and feature names."""
    s, _ = stub
    x = np.random.default_rng(4).random(world.F, dtype=np.float32)
    x[0] = 1.0
    for req in (pb.RankRequest(user_id="u005", top_k=7), pb.RankRequest(features=x.tolist(), top_k=world.M),
                pb.RankRequest(feature_map={"f3": 2.0}, top_k=4)):
        fast = s.Rank(req)
        slow_req = pb.RankRequest()
        slow_req.CopyFrom(req)
        slow_req.with_contributions = True
        slow = s.Rank(slow_req)
        del slow.feature_names[:]
        for ad in slow.ads:
            del ad.contributions[:]
        assert fast == slow and fast.SerializeToString() == slow.SerializeToString()
        assert fast.content_rules_applied and len(fast.ads) == req.top_k


def test_dense_features_in_any_encoding_rank_the_same(stub, world):
    """A raw client sending the same features packed, in two chunks or unpacked gets the same answer."""
    _, ch = stub
    rank = ch.unary_unary("/llmhyper.v1.Ranker/Rank", request_serializer=None,
                          response_deserializer=pb.RankResponse.FromString)
    x = np.random.default_rng(8).random(world.F, dtype=np.float32)
    x[0] = 1.0
    packed = x.astype("<f4").tobytes()
    top_k = b"\x20\x05"
    half = 4 * (world.F // 2)
    answers = [rank(_field(0x12, packed) + top_k),
               rank(_field(0x12, packed[:half]) + _field(0x12, packed[half:]) + top_k),
               rank(b"".join(b"\x15" + packed[i:i + 4] for i in range(0, len(packed), 4)) + top_k),
               rank(top_k + _field(0x12, packed))]
    want = [world.ad_ids[i] for i in ref.topk_one(world.theta, x, 5)[0]]
    for a in answers:
        assert [ad.ad_id for ad in a.ads] == want
        assert a == answers[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inline_value_is_named(stub, world, bad):
    s, _ = stub
    x = np.ones(world.F, dtype=np.float32)
    x[3] = bad
    for req in (pb.RankRequest(features=x.tolist(), top_k=3),
                pb.RankRequest(feature_map={"f3": float(bad)}, top_k=3),
                pb.RankRequest(features=x.tolist(), top_k=3, allow_ad_ids=["ad001"], deny_ad_ids=["ad001"])):
        with pytest.raises(grpc.RpcError) as e:
            s.Rank(req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "feature 'f3' (index 3)" in e.value.details() and "must be finite" in e.value.details()


def test_user_row_cache_follows_a_replaced_user_table(tmp_path, make_server, world):
    """A row served from the snapshot's cache is replaced by the new row on the next request
    after put_users (no new version, no poll in between), and cached rows are read-only."""
    from llmhyper.client import RankerClient
    from llmhyper.store.weight_store import WeightStore
    from tests.helpers import publish_world

    store = WeightStore(tmp_path / "rw.lmdb")  # this process's one environment for the path
    try:
        publish_world(store, world)
        server, port = make_server(store, poll_interval_s=3600.0)
        want = [world.ad_ids[i] for i in ref.topk_one(world.theta, world.x("u003"), world.M)[0]]
        with RankerClient(f"127.0.0.1:{port}", timeout=10.0) as c:
            assert [c.rank("u003", top_k=world.M).ad_ids for _ in range(3)] == [want] * 3  # cached after one
            users = server.servicer._users
            row = users.row("u003")
            assert row is not None and not row.flags.writeable and users.row("u003") is row
            np.testing.assert_array_equal(row, world.x("u003"))
            X2 = world.X.copy()
            X2[3, 1:] = 1.0 - X2[3, 1:]
            store.put_users(world.user_ids, X2, world.features)
            after = c.rank("u003", top_k=world.M).ad_ids
            assert after == [world.ad_ids[i] for i in ref.topk_one(world.theta, X2[3], world.M)[0]]
            assert after != want
        users.close()
        assert users.row("u003") is None  # a closed snapshot serves no cached rows
    finally:
        server.stop(0).wait(5)
        store.close()
