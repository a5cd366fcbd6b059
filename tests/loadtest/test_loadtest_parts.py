"""The load tester's pure parts: the schedule, the options model, user sources, histogram merging."""
from __future__ import annotations

import pytest

from llmhyper.loadtest import histogram as hist
from llmhyper.loadtest import schedule
from llmhyper.loadtest.spec import LoadSpec, option_error
from llmhyper.loadtest.users import UserSourceError, from_file, from_store


@pytest.mark.parametrize("total,procs", [(0, 1), (7, 3), (1000, 4), (5, 8)])
def test_open_loop_slots_cover_every_slot_once(total: int, procs: int) -> None:
    seen = sorted(k for p in range(procs) for k in schedule.open_loop_slots(0, total, p, procs))
    assert seen == list(range(total))


def test_open_loop_slots_after_warmup_split_evenly() -> None:
    # 50 warm-up slots then 150 measured over 2 processes: each measures 75
    measured = [sum(1 for k in schedule.open_loop_slots(0, 200, p, 2) if k >= 50) for p in range(2)]
    assert measured == [75, 75]
    assert schedule.open_loop_total(100, 1.5) == 150


def test_closed_loop_blocks_partition_the_calls() -> None:
    callers = schedule.callers(5, 3)
    assert callers == [2, 2, 1]
    blocks = [schedule.closed_loop_block(101, callers, p) for p in range(3)]
    assert [k for b in blocks for k in b] == list(range(101))
    assert len(blocks[2]) < len(blocks[0])  # a process with fewer callers gets fewer calls
    assert sum(schedule.split(10, 4)) == 10


@pytest.mark.parametrize("fields,option", [
    ({"rate": -5}, "--rate"),
    ({"rate": 10, "concurrency": 2}, "--concurrency"),
    ({}, "--rate"),
    ({"concurrency": 1, "procs": 2}, "--procs"),
    ({"rate": 10, "batch_size": 4}, "--batch-size"),
    ({"rate": 10, "calls": 5, "duration": 1}, "--duration"),
    ({"rate": 10, "target": "nohost"}, "--target"),
    ({"rate": 10, "tls_cert": "c.pem"}, "--tls-key"),
    ({"rate": 10, "calls": 0}, "--calls"),
])
def test_bad_options_name_the_option(fields: dict, option: str) -> None:
    from pydantic import ValidationError

    fields = {"target": "127.0.0.1:1", **fields}
    with pytest.raises(ValidationError) as err:
        LoadSpec(**fields)
    assert option in option_error(err.value)


def test_spec_defaults() -> None:
    s = LoadSpec(target="h:1", concurrency=2, method="RankBatch")
    assert (s.batch, s.seconds, s.open_loop) == (16, 10.0, False)
    assert LoadSpec(target="h:1", rate=5, calls=3).seconds is None


def test_user_sources(tmp_path, store_path, world) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("# users\nu001\n\nu002\nnope\n")
    assert from_file(str(f)).ids == ["u001", "u002", "nope"]
    c = tmp_path / "ids.csv"
    c.write_text("user_id,x\nu003,1\nu004,2\n")
    assert from_file(str(c), limit=1).ids == ["u003"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserSourceError, match="--users-file"):
        from_file(str(tmp_path / "empty.txt"))
    with pytest.raises(UserSourceError, match="--users-file"):
        from_file(str(tmp_path / "missing.txt"))
    u = from_store(str(store_path), with_features=True, limit=5)
    assert u.ids == sorted(world.user_ids)[:5]
    assert u.X.shape == (5, world.F) and (u.X == world.X[:5]).all()
    assert len(from_store(str(store_path), with_features=False).ids) == len(world.user_ids)


def test_histograms_merge_counts_and_extremes() -> None:
    a, b = hist.new(), hist.new()
    for v in (0.001, 0.002, 0.003):
        hist.record_s(a, v)
    hist.record_s(b, 0.5)
    m = hist.merge([hist.encode(a), hist.encode(b)])
    s = hist.summary_ms(m)
    assert s["count"] == 4
    assert s["min"] == pytest.approx(1.0, rel=1e-3) and s["max"] == pytest.approx(500.0, rel=1e-3)
    assert hist.summary_ms(hist.new())["p50"] is None
