"""Ranker RPCs against a real server on loopback and a real LMDB store, checked
against the plain-NumPy reference (scoring.reference)."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from llmhyper._proto import ranker_pb2 as pb
from llmhyper._proto import ranker_pb2_grpc as pb_grpc
from llmhyper.client import RankerError
from scoring import reference as ref


def expected_topk(world, x: np.ndarray, k: int, allow: np.ndarray | None = None):
    idx, logit, prob = ref.topk_one(world.theta, np.ascontiguousarray(x, dtype=np.float32), k, allow)
    return [world.ad_ids[i] for i in idx], logit, prob


def test_health_serving_after_warmup(client, server):
    assert server.servicer.ready
    assert client.health() == "SERVING"
    assert client.health("llmhyper.v1.Ranker") == "SERVING"


def test_rank_by_user_id_matches_reference(client, world):
    for uid in ("u000", "u007", "u029"):
        res = client.rank(uid, top_k=5)
        ids, logit, prob = expected_topk(world, world.x(uid), 5)
        assert res.version == "v000001"
        assert res.ad_ids == ids
        np.testing.assert_allclose([a.logit for a in res.ads], logit, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose([a.ctr for a in res.ads], prob, rtol=1e-6, atol=1e-7)
        assert [a.ad_index for a in res.ads] == [world.ad_ids.index(i) for i in ids]
        assert all(a.contributions is None for a in res.ads)


def test_rank_by_dense_features(client, world):
    rng = np.random.default_rng(3)
    x = rng.random(world.F, dtype=np.float32)
    x[0] = 1.0
    res = client.rank(features=x, top_k=world.M)
    ids, logit, _ = expected_topk(world, x, world.M)
    assert res.ad_ids == ids  # full ranking of every ad
    np.testing.assert_allclose([a.logit for a in res.ads], logit, rtol=1e-6, atol=1e-6)


def test_rank_by_feature_map_defaults_bias_one_rest_zero(client, world):
    res = client.rank(features={"f2": 0.5, "f5": 2.0}, top_k=4)
    x = np.zeros(world.F, dtype=np.float32)
    x[0], x[2], x[5] = 1.0, 0.5, 2.0
    assert res.ad_ids == expected_topk(world, x, 4)[0]
    res_bias = client.rank(features={"bias": 0.0, "f1": 1.0}, top_k=3)
    x2 = np.zeros(world.F, dtype=np.float32)
    x2[1] = 1.0
    assert res_bias.ad_ids == expected_topk(world, x2, 3)[0]


def test_allow_and_deny_lists(client, world):
    allow = ["ad003", "ad010", "ad020", "ad021", "ad039"]
    deny = ["ad010"]
    res = client.rank("u004", top_k=10, allow=allow, deny=deny)
    mask = np.zeros(world.M, dtype=np.uint8)
    mask[[world.ad_ids.index(a) for a in allow]] = 1
    mask[world.ad_ids.index("ad010")] = 0
    ids, _, _ = expected_topk(world, world.x("u004"), 10, mask)
    assert res.ad_ids == ids and len(ids) == 4 and "ad010" not in res.ad_ids
    # deny only
    full = client.rank("u004", top_k=3).ad_ids
    res2 = client.rank("u004", top_k=3, deny=[full[0]])
    assert res2.ad_ids[:2] == full[1:3] and full[0] not in res2.ad_ids
    # everything filtered out: a valid, empty answer
    assert client.rank("u004", top_k=3, allow=["ad001"], deny=["ad001"]).ads == []


def test_contributions_equal_theta_times_x(client, world):
    x = world.x("u011")
    res = client.rank("u011", top_k=6, with_contributions=True)
    assert res.feature_names == tuple(n for n, _ in world.features)
    for a in res.ads:
        i = world.ad_ids.index(a.ad_id)
        expected = ref.contributions(world.theta[i], x)
        np.testing.assert_array_equal(a.contributions, expected)
        assert abs(float(a.contributions.sum(dtype=np.float64)) - a.logit) < 1e-5


def test_explain(client, world):
    uid, ad = "u002", "ad005"
    ex = client.explain(ad, uid)
    i = world.ad_ids.index(ad)
    x = world.x(uid)
    contrib = ref.contributions(world.theta[i], x)
    assert ex.version == "v000001" and ex.ad_id == ad
    assert [c.name for c in ex.contributions] == [world.features[j][0] for j in np.argsort(-np.abs(contrib), kind="stable")]
    by_name = {c.name: c for c in ex.contributions}
    for j, (name, desc) in enumerate(world.features):
        c = by_name[name]
        assert c.description == desc
        assert c.value == pytest.approx(float(x[j]), abs=0)
        assert c.weight == pytest.approx(float(world.theta[i, j]), abs=0)
        assert c.contribution == pytest.approx(float(contrib[j]), abs=0)
    assert ex.logit == pytest.approx(float(ref.score_all(world.theta, x)[i]), abs=1e-6)
    assert ex.ctr == pytest.approx(1.0 / (1.0 + np.exp(-ex.logit)), abs=1e-6)
    assert ex.rationale == world.ad_records[ad]["rationale"]
    assert by_name["f1"].rationale == world.ad_records[ad]["rationale"]["f1"]
    assert ex.provenance == {k: v for k, v in world.ad_records[ad].items() if k != "rationale"}
    # an ad with no stored record: no rationale, no provenance
    ex2 = client.explain("ad039", features={"f1": 1.0})
    assert ex2.rationale is None and ex2.provenance is None and all(c.rationale == "" for c in ex2.contributions)


def test_model_info(client, world):
    info = client.model_info()
    assert info.version == "v000001"
    assert info.ad_ids == tuple(world.ad_ids) and info.n_ads == world.M
    assert info.features == tuple(world.features)
    assert info.manifest["generator"] == "test-synthetic" and info.manifest["seed"] == 7
    assert info.n_users == len(world.user_ids)
    assert [v.version for v in info.versions] == ["v000001"]
    assert info.versions[0].current and info.versions[0].n_ads == world.M and info.versions[0].n_features == world.F


def test_rank_batch_decodes_to_per_user_rank(client, world):
    rng = np.random.default_rng(11)
    Xf = rng.random((5, world.F), dtype=np.float32)
    Xf[:, 0] = 1.0
    uids = ["u001", "u017", "u028"]
    b = client.rank_batch(Xf, user_ids=uids, top_k=7)
    assert b.version == "v000001"
    assert b.ad_index.shape == (8, 7) and b.ad_index.dtype == np.int32
    assert b.ctr.dtype == np.float32 and b.logit.dtype == np.float32
    assert b.ad_ids == tuple(world.ad_ids)
    ids = b.ad_ids_matrix()
    for r in range(5):
        single = client.rank(features=Xf[r], top_k=7)
        assert list(ids[r]) == single.ad_ids
        np.testing.assert_array_equal(b.ctr[r], np.array([a.ctr for a in single.ads], dtype=np.float32))
    for r, uid in enumerate(uids, start=5):
        single = client.rank(uid, top_k=7)
        assert list(ids[r]) == single.ad_ids
        np.testing.assert_array_equal(b.logit[r], np.array([a.logit for a in single.ads], dtype=np.float32))
    # the client caches the ad id list: a second call asks the server to skip it and still decodes
    b2 = client.rank_batch(Xf[:2], top_k=3, allow=["ad001", "ad002", "ad003", "ad004"], deny=["ad002"])
    assert b2.ad_index.shape == (2, 3)
    assert set(b2.ad_ids_matrix().ravel()) <= {"ad001", "ad003", "ad004"}


def test_rank_batch_skip_ad_ids_on_the_wire(server, world):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.RankerStub(ch)
        X = np.ascontiguousarray(world.X[:3])
        r = stub.RankBatch(pb.RankBatchRequest(features=X.astype("<f4").tobytes(), top_k=2, skip_ad_ids=True))
        assert len(r.ad_ids) == 0 and r.num_users == 3 and r.k == 2
        assert len(r.ad_indices) == 3 * 2 * 4 and len(r.ctr) == 24 and len(r.logit) == 24


BAD_RANK = [
    # (request kwargs, expected code, substrings of the message)
    (dict(top_k=3), "INVALID_ARGUMENT", ["no user given"]),
    (dict(user_id="u001", features=[1.0] * 8, top_k=3), "INVALID_ARGUMENT", ["exactly one of"]),
    (dict(user_id="nobody", top_k=3), "NOT_FOUND", ["unknown user_id 'nobody'"]),
    (dict(features=[1.0] * 5, top_k=3), "INVALID_ARGUMENT", ["features has 5 values", "expected F=8"]),
    (dict(features=[1.0, float("nan")] + [0.0] * 6, top_k=3), "INVALID_ARGUMENT", ["'f1'", "nan", "finite"]),
    (dict(features=[1.0] * 7 + [float("inf")], top_k=3), "INVALID_ARGUMENT", ["'f7'", "inf"]),
    (dict(feature_map={"f1": 1.0, "colour": 2.0}, top_k=3), "INVALID_ARGUMENT", ["unknown feature name", "'colour'"]),
    (dict(feature_map={"f1": float("-inf")}, top_k=3), "INVALID_ARGUMENT", ["'f1'", "finite"]),
    (dict(user_id="u001", top_k=0), "INVALID_ARGUMENT", ["top_k must be in [1, 1000], got 0"]),
    (dict(user_id="u001", top_k=-4), "INVALID_ARGUMENT", ["top_k must be in [1, 1000], got -4"]),
    (dict(user_id="u001", top_k=1001), "INVALID_ARGUMENT", ["top_k must be in [1, 1000], got 1001"]),
    (dict(user_id="u001", top_k=3, allow_ad_ids=["ad001", "ad999"]), "NOT_FOUND", ["unknown ad id", "'ad999'"]),
    (dict(user_id="u001", top_k=3, deny_ad_ids=["zzz"]), "NOT_FOUND", ["unknown ad id", "'zzz'"]),
    (dict(user_id="u001", top_k=3, version="v000042"), "NOT_FOUND", ["unknown version 'v000042'", "v000001"]),
]


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.RankerStub(ch)
    ch.close()


@pytest.mark.parametrize("kwargs,code,fragments", BAD_RANK, ids=[f"rank{i}" for i in range(len(BAD_RANK))])
def test_bad_rank_requests(stub, server, kwargs, code, fragments):
    before = server.servicer.counters()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Rank(pb.RankRequest(**kwargs), timeout=5)
    assert ei.value.code().name == code
    for frag in fragments:
        assert frag in ei.value.details(), ei.value.details()
    after = server.servicer.counters()
    assert after["kernel_calls"] == before["kernel_calls"]
    assert after["errors"].get(code, 0) == before["errors"].get(code, 0) + 1
    assert stub.Ping(pb.PingRequest(), timeout=5) == pb.PingResponse()  # still serving


def _packed(rows: int, F: int = 8) -> bytes:
    X = np.ones((rows, F), dtype="<f4")
    return X.tobytes()


BAD_BATCH = [
    (dict(top_k=3), "INVALID_ARGUMENT", ["no users given"]),
    (dict(features=b"\x00" * 33, top_k=3), "INVALID_ARGUMENT", ["33 bytes", "multiple of 4*F = 32"]),
    (dict(features=_packed(2), num_features=9, top_k=3), "INVALID_ARGUMENT", ["num_features is 9", "F=8"]),
    (dict(features=np.full((2, 8), np.nan, "<f4").tobytes(), top_k=3), "INVALID_ARGUMENT", ["row 0", "'bias'", "finite"]),
    (dict(features=_packed(2), top_k=0), "INVALID_ARGUMENT", ["top_k must be in [1, 1000]"]),
    (dict(user_ids=["u001", "ghost"], top_k=3), "NOT_FOUND", ["'ghost'"]),
    (dict(features=_packed(1), top_k=3, allow_ad_ids=["nope"]), "NOT_FOUND", ["'nope'"]),
    (dict(features=_packed(1), top_k=3, version="v9"), "NOT_FOUND", ["unknown version 'v9'"]),
]


@pytest.mark.parametrize("kwargs,code,fragments", BAD_BATCH, ids=[f"batch{i}" for i in range(len(BAD_BATCH))])
def test_bad_rank_batch_requests(stub, kwargs, code, fragments):
    with pytest.raises(grpc.RpcError) as ei:
        stub.RankBatch(pb.RankBatchRequest(**kwargs), timeout=5)
    assert ei.value.code().name == code
    for frag in fragments:
        assert frag in ei.value.details(), ei.value.details()


BAD_OTHER = [
    ("Explain", pb.ExplainRequest(user_id="u001"), "INVALID_ARGUMENT", ["ad_id is required"]),
    ("Explain", pb.ExplainRequest(user_id="u001", ad_id="ad777"), "NOT_FOUND", ["unknown ad_id 'ad777'"]),
    ("Explain", pb.ExplainRequest(ad_id="ad001"), "INVALID_ARGUMENT", ["no user given"]),
    ("Explain", pb.ExplainRequest(ad_id="ad001", features=[0.0] * 9), "INVALID_ARGUMENT", ["features has 9 values"]),
    ("GetModelInfo", pb.GetModelInfoRequest(version="v000777"), "NOT_FOUND", ["unknown version 'v000777'"]),
]


@pytest.mark.parametrize("method,req,code,fragments", BAD_OTHER, ids=[f"{m}{i}" for i, (m, *_r) in enumerate(BAD_OTHER)])
def test_bad_explain_and_info_requests(stub, method, req, code, fragments):
    with pytest.raises(grpc.RpcError) as ei:
        getattr(stub, method)(req, timeout=5)
    assert ei.value.code().name == code
    for frag in fragments:
        assert frag in ei.value.details(), ei.value.details()


def test_garbage_bytes_are_never_unknown(server):
    """Undecodable request bytes: INVALID_ARGUMENT from the guard (not grpc's INTERNAL), never UNKNOWN; server survives."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        raw = ch.unary_unary("/llmhyper.v1.Ranker/Rank", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as ei:
            raw(b"\xff\xff\xff\xff garbage", timeout=5)
        assert ei.value.code() != grpc.StatusCode.UNKNOWN
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid Rank request" in ei.value.details()
        assert pb_grpc.RankerStub(ch).Ping(pb.PingRequest(), timeout=5) == pb.PingResponse()


def test_client_raises_typed_error(client):
    with pytest.raises(RankerError) as ei:
        client.rank("nobody", top_k=1)
    assert ei.value.code == grpc.StatusCode.NOT_FOUND and "nobody" in ei.value.details
    with pytest.raises(ValueError, match="exactly one"):
        client.rank(top_k=1)


def test_manifest_json_round_trip(stub, world):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert json.loads(info.manifest_json)["prompt_version"] == world.manifest["prompt_version"]


@pytest.mark.parametrize("field", ["user_id", "version", "feature_map", "batch_user"])
def test_huge_echoed_ids_still_get_their_own_code(stub, field):
    """A 200 KB id echoed whole in the status details exceeds the client's metadata limit,
    which turns the answer into RESOURCE_EXHAUSTED 'Stream removed'; the message is capped."""
    big = "x" * 200_000
    if field == "batch_user":
        call, req, code = stub.RankBatch, pb.RankBatchRequest(user_ids=[big], top_k=1), grpc.StatusCode.NOT_FOUND
    elif field == "feature_map":
        call, req, code = stub.Rank, pb.RankRequest(feature_map={big: 1.0}, top_k=1), grpc.StatusCode.INVALID_ARGUMENT
    else:
        req = pb.RankRequest(top_k=1, **({"user_id": big} if field == "user_id" else {"user_id": "u001", "version": big}))
        call, code = stub.Rank, grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as ei:
        call(req, timeout=5)
    assert ei.value.code() == code, ei.value.details()
    assert "xxxx" in ei.value.details() and len(ei.value.details()) <= 2100
