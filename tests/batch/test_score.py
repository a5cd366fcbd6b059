"""``llmhyper score`` end to end: real store, real server, real files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from llmhyper.cli.main import main
from tests.batch.conftest import feature_table
from tests.helpers import World


def _score(*args: str) -> int:
    return main(["score", *args, "--no-progress"])


def test_by_id_output_equals_rank_batch(tmp_path: Path, bstore: Path, ids_parquet: Path, bworld: World,
                                        make_server) -> None:
    from llmhyper.client import RankerClient

    out = tmp_path / "out.parquet"
    assert _score(str(ids_parquet), "--out", str(out), "--store", str(bstore), "--top-k", "7",
                  "--chunk-size", "128") == 0
    t = pq.read_table(out)
    assert t.column_names == ["user_id", "rank", "ad_id", "ctr", "logit", "version"]
    assert t.num_rows == 500 * 7
    assert not (tmp_path / "out.parquet.parts" / "part-00000.parquet").exists()  # parts cleaned up
    srv, port = make_server(str(bstore))
    sample = bworld.user_ids[::37]
    with RankerClient(f"127.0.0.1:{port}", timeout=10) as c:
        ref = c.rank_batch(user_ids=sample, top_k=7)
    rows = t.to_pydict()
    by_user: dict[str, list] = {}
    for u, r, a, ctr in zip(rows["user_id"], rows["rank"], rows["ad_id"], rows["ctr"]):
        by_user.setdefault(u, []).append((r, a, ctr))
    for b, u in enumerate(sample):
        got = by_user[u]
        assert [r for r, _, _ in got] == list(range(1, 8))
        assert [a for _, a, _ in got] == list(ref.ad_ids_matrix()[b])
        np.testing.assert_allclose([c for _, _, c in got], ref.ctr[b], atol=1e-6, rtol=0)
    assert set(rows["version"]) == {ref.version}

    # the same job through the server fleet (--target) gives the same table
    out2 = tmp_path / "remote.parquet"
    assert _score(str(ids_parquet), "--out", str(out2), "--target", f"127.0.0.1:{port}", "--top-k", "7",
                  "--chunk-size", "128", "--batch-size", "50", "--concurrency", "3") == 0
    assert pq.read_table(out2).equals(t)


def test_feature_columns_csv_jsonl_wide_and_filters(tmp_path: Path, bstore: Path, ids_parquet: Path,
                                                    bworld: World) -> None:
    ft = feature_table(bworld, bworld.user_ids)
    csv_in, jsonl_in = tmp_path / "f.csv", tmp_path / "f.jsonl"
    pcsv.write_csv(ft, csv_in)
    with open(jsonl_in, "w") as fh:
        for row in ft.to_pylist():
            fh.write(json.dumps(row) + "\n")
    by_id = tmp_path / "by_id.parquet"
    allow = ",".join(bworld.ad_ids[:30])
    (tmp_path / "deny.txt").write_text("\n".join(bworld.ad_ids[:5]) + "\n")
    common = ["--store", str(bstore), "--top-k", "4", "--chunk-size", "97", "--allow", allow, "--deny", f"@{tmp_path / 'deny.txt'}"]
    assert _score(str(ids_parquet), "--out", str(by_id), *common) == 0
    want = pq.read_table(by_id)
    assert not set(want.column("ad_id").to_pylist()) & set(bworld.ad_ids[:5])
    assert set(want.column("ad_id").to_pylist()) <= set(bworld.ad_ids[5:30])
    for src in (csv_in, jsonl_in):
        out = tmp_path / f"{src.suffix[1:]}.parquet"
        assert _score(str(src), "--out", str(out), *common) == 0
        assert pq.read_table(out).equals(want)
    wide = tmp_path / "wide.csv"
    assert _score(str(csv_in), "--out", str(wide), "--wide", *common) == 0
    w = pcsv.read_csv(wide)
    assert w.num_rows == 500 and w.column_names[:5] == ["user_id", "version", "ad_id_1", "ctr_1", "logit_1"]
    long = want.to_pydict()
    assert w.column("ad_id_2").to_pylist()[:3] == [long["ad_id"][i * 4 + 1] for i in range(3)]


def test_skip_unknown_ids_writes_rejects(tmp_path: Path, bstore: Path, bworld: World) -> None:
    ids = bworld.user_ids[:50] + ["ghost1"] + bworld.user_ids[50:60] + ["ghost2"]
    inp = tmp_path / "ids.csv"
    pcsv.write_csv(pa.table({"user_id": ids}), inp)
    out = tmp_path / "o.parquet"
    assert _score(str(inp), "--out", str(out), "--store", str(bstore), "--on-unknown", "skip", "--chunk-size", "20") == 0
    assert (tmp_path / "o.parquet.rejects.csv").read_text() == "row,user_id\n51,ghost1\n62,ghost2\n"
    assert pq.read_table(out).num_rows == 60 * 10
    assert "ghost1" not in set(pq.read_table(out).column("user_id").to_pylist())


def _expect_2(capsys, *args: str, needle: str) -> str:
    rc = _score(*args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err, err
    return err


def test_bad_inputs_exit_2_with_clear_messages(tmp_path: Path, bstore: Path, bworld: World, ids_parquet: Path,
                                               capsys) -> None:
    st = ["--store", str(bstore)]
    _expect_2(capsys, str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "a.parquet"), *st,
              needle="input file not found")
    bad_col = tmp_path / "badcol.csv"
    bad_col.write_text("user_id,f1,colour\nu001,0.5,red\n")
    _expect_2(capsys, str(bad_col), "--out", str(tmp_path / "b.parquet"), *st, needle="unknown column(s) ['colour']")
    nan = tmp_path / "nan.csv"
    nan.write_text("f1,f2\n0.5,0.1\n0.25,nan\n")
    err = _expect_2(capsys, str(nan), "--out", str(tmp_path / "c.parquet"), *st, needle="row 2, column 'f2'")
    assert str(nan) in err and "not finite" in err
    text = tmp_path / "text.csv"
    text.write_text("f1\n0.5\nabc\n")
    _expect_2(capsys, str(text), "--out", str(tmp_path / "c2.parquet"), *st, needle="row 2, column 'f1': not a number")
    unk = tmp_path / "unk.csv"
    unk.write_text("user_id\nu001\nwho\n")
    _expect_2(capsys, str(unk), "--out", str(tmp_path / "d.parquet"), *st, needle="unknown user id(s): 'who' (row 2)")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect_2(capsys, str(empty), "--out", str(tmp_path / "e.parquet"), *st, needle="empty file")
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id\n")
    _expect_2(capsys, str(header_only), "--out", str(tmp_path / "e2.parquet"), *st, needle="no data rows")
    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(ids_parquet.read_bytes()[:-200])
    err = _expect_2(capsys, str(trunc), "--out", str(tmp_path / "f.parquet"), *st, needle="cannot read parquet file")
    assert str(trunc) in err
    out = tmp_path / "g.parquet"
    assert _score(str(ids_parquet), "--out", str(out), *st, "--top-k", "3") == 0
    capsys.readouterr()
    _expect_2(capsys, str(ids_parquet), "--out", str(out), *st, "--top-k", "4",
              needle="a job with different arguments (top_k)")
    for bad in (tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet", tmp_path / "f.parquet"):
        assert not bad.exists()  # nothing written under a final name on bad input


def test_target_retries_unavailable_until_a_version_is_served(tmp_path: Path, bworld: World, make_server) -> None:
    """A fleet with nothing published answers UNAVAILABLE; the scorer backs off and retries."""
    from llmhyper.batch.inputs import chunks, open_input
    from llmhyper.batch.scorers import RemoteScorer
    from llmhyper.client import RankerClient
    from llmhyper.store.weight_store import WeightStore
    from tests.helpers import publish_world

    store = WeightStore(tmp_path / "empty.lmdb")
    srv, port = make_server(store)
    seen: list[str] = []

    def publish_on_first_retry(e: Exception) -> None:
        seen.append(getattr(e, "code", None).name)
        if len(seen) == 1:
            publish_world(store, bworld)

    client = RankerClient(f"127.0.0.1:{port}", timeout=10)
    scorer = RemoteScorer(client, None, 3, None, None, attempts=12, on_retry=publish_on_first_retry)
    try:
        assert seen[0] == "UNAVAILABLE" and scorer.retries >= 1
        inp = tmp_path / "u.csv"
        inp.write_text("user_id\n" + "\n".join(bworld.user_ids[:9]) + "\n")
        spec = open_input(str(inp), scorer.weights.feature_names)
        got = scorer.score(next(chunks(spec, len(scorer.weights.feature_names), 100)), "error")
        ref = client.rank_batch(user_ids=bworld.user_ids[:9], top_k=3)
        assert np.array_equal(got.idx, ref.ad_index) and np.array_equal(got.ctr, ref.ctr)
    finally:
        scorer.close()
        srv.stop(0).wait(5)
        store.close()


def test_target_unknown_version_and_unreachable_server(tmp_path: Path, bstore: Path, ids_parquet: Path,
                                                       make_server, capsys) -> None:
    _, port = make_server(str(bstore))
    rc = _score(str(ids_parquet), "--out", str(tmp_path / "a.parquet"), "--target", f"127.0.0.1:{port}",
                "--version", "v999999")
    err = capsys.readouterr().err
    assert rc == 2 and "NOT_FOUND" in err and "v999999" in err, err
    rc = _score(str(ids_parquet), "--out", str(tmp_path / "b.parquet"), "--store", str(bstore), "--version", "v999999")
    err = capsys.readouterr().err
    assert rc == 2 and "v999999" in err, err
    rc = _score(str(ids_parquet), "--out", str(tmp_path / "c.parquet"), "--store", str(bstore), "--allow", "nope")
    err = capsys.readouterr().err
    assert rc == 2 and "unknown ad id(s) in --allow/--deny: ['nope']" in err, err
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    rc = _score(str(ids_parquet), "--out", str(tmp_path / "d.parquet"), "--target", f"127.0.0.1:{free}", "--timeout", "2")
    err = capsys.readouterr().err
    assert rc == 1 and "UNAVAILABLE" in err, err
