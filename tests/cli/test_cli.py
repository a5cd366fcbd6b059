"""The `llmhyper` CLI run as a subprocess: exit codes, messages, tables and JSON."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from tests.helpers import REPO, cli_env, make_world, publish_world, run_cli, wait_for

from llmhyper.client import RankerClient, RankerError
from llmhyper.store.weight_store import WeightStore


@pytest.fixture
def store3(tmp_path, world):
    """A closed store with three versions (v000003 current) and a user table."""
    path = tmp_path / "three.lmdb"
    s = WeightStore(path)
    publish_world(s, world)
    for seed in (1, 2):
        w = make_world(seed=seed)
        s.publish(w.ad_ids, w.theta, w.features, manifest={"generator": f"gen{seed}"})
    s.close()
    return path


def test_store_ls_table_and_json(store3):
    r = run_cli("store", "ls", "--store", str(store3))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["version", "created", "ads"] or "version" in lines[0]
    assert re.search(r"^\*\s+v000003\s", r.stdout, re.M) and "gen2" in r.stdout
    r = run_cli("store", "ls", "--store", str(store3), "--json")
    data = json.loads(r.stdout)
    assert [v["version"] for v in data] == ["v000001", "v000002", "v000003"]
    assert [v["current"] for v in data] == [False, False, True]


def test_store_show(store3, world):
    r = run_cli("store", "show", "v000001", "--store", str(store3), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["version"] == "v000001" and d["n_ads"] == world.M and d["current"] is False
    assert d["features"][0] == ["bias", "intercept, always 1.0"] and d["manifest"]["generator"] == "test-synthetic"
    r = run_cli("store", "show", "--store", str(store3))
    assert r.returncode == 0 and "version v000003" in r.stdout and "[current]" in r.stdout and "f7" in r.stdout
    r = run_cli("store", "show", "v000099", "--store", str(store3))
    assert r.returncode == 2 and "unknown version 'v000099'" in r.stderr


def test_store_rollback_and_prune(store3):
    r = run_cli("store", "rollback", "--store", str(store3))
    assert r.returncode == 0, r.stderr
    assert "v000003 -> v000002" in r.stdout
    r = run_cli("store", "rollback", "--to", "v000001", "--store", str(store3), "--json")
    assert json.loads(r.stdout) == {"previous": "v000002", "current": "v000001"}
    r = run_cli("store", "prune", "--keep", "0", "--store", str(store3))
    assert r.returncode == 2 and "--keep must be >= 1" in r.stderr
    r = run_cli("store", "prune", "--keep", "1", "--store", str(store3), "--json")
    assert r.returncode == 0, r.stderr
    removed = json.loads(r.stdout)["removed"]
    assert "v000001" not in removed  # never the current version
    with WeightStore(store3, readonly=True) as s:
        assert s.current_version() == "v000001"
        assert "v000001" in [v["version"] for v in s.list_versions()]


def test_missing_store_and_bad_args_exit_2(tmp_path):
    r = run_cli("store", "ls", "--store", str(tmp_path / "nope"))
    assert r.returncode == 2 and "store not found" in r.stderr
    r = run_cli("serve", "--store", str(tmp_path / "nope"), "--port", "0")
    assert r.returncode == 2 and "store not found" in r.stderr
    r = run_cli("rank", "--target", "127.0.0.1:1")  # neither --user nor --features
    assert r.returncode == 2 and "one of the arguments --user --features is required" in r.stderr
    r = run_cli("store")
    assert r.returncode == 2
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_publish_weights_and_users(tmp_path, world):
    from offline.data.artifact import UserTable, WeightArtifact

    w = make_world(seed=21)
    weights = tmp_path / "w.npz"
    users = tmp_path / "u.npz"
    WeightArtifact(ad_ids=w.ad_ids, theta=w.theta, features=w.features, manifest={"generator": "knn"},
                   ad_records={"ad001": {"rationale": {"f1": "because"}}}).save(weights)
    UserTable(user_ids=w.user_ids, X=w.X, features=w.features).save(users)
    store = tmp_path / "pub.lmdb"
    r = run_cli("publish", str(weights), "--store", str(store), "--users", str(users), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"version": "v000001", "n_ads": w.M, "n_features": w.F, "n_users": len(w.user_ids)}
    r = run_cli("publish", str(weights), "--store", str(store))
    assert r.returncode == 0 and "published v000002" in r.stdout
    with WeightStore(store, readonly=True) as s:
        assert s.current_version() == "v000002"
        assert s.n_users() == len(w.user_ids)
        assert s.ad_record("v000001", "ad001") == {"rationale": {"f1": "because"}}
    # a broken weights file: exit 2, store unchanged
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    r = run_cli("publish", str(bad), "--store", str(store))
    assert r.returncode == 2 and "invalid weights file" in r.stderr
    # users whose schema differs from the weights
    other = make_world(seed=3, F=5)
    UserTable(user_ids=other.user_ids, X=other.X, features=other.features).save(tmp_path / "u5.npz")
    r = run_cli("publish", str(weights), "--store", str(store), "--users", str(tmp_path / "u5.npz"))
    assert r.returncode == 2 and "do not match" in r.stderr
    r = run_cli("publish", str(tmp_path / "missing.npz"), "--store", str(store))
    assert r.returncode == 2 and "weights file not found" in r.stderr
    with WeightStore(store, readonly=True) as s:
        assert s.current_version() == "v000002"


def test_rank_info_explain_against_a_server(server, client, world):
    target = f"127.0.0.1:{server.port}"
    r = run_cli("rank", "--target", target, "--user", "u005", "--top-k", "4", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [a["ad_id"] for a in d["ads"]] == client.rank("u005", top_k=4).ad_ids and d["version"] == "v000001"
    r = run_cli("rank", "--target", target, "--features", "f1=1.0,f3=0.5", "--top-k", "3", "--contributions")
    assert r.returncode == 0, r.stderr
    expected = client.rank(features={"f1": 1.0, "f3": 0.5}, top_k=3).ad_ids
    assert [ln.split()[1] for ln in r.stdout.splitlines()[3:]] == expected
    dense = ",".join(str(float(v)) for v in world.x("u006"))
    r = run_cli("rank", "--target", target, "--features", dense, "--top-k", "2", "--json")
    assert [a["ad_id"] for a in json.loads(r.stdout)["ads"]] == client.rank("u006", top_k=2).ad_ids
    r = run_cli("info", "--target", target, "--json", "--health")
    d = json.loads(r.stdout)
    assert d["version"] == "v000001" and d["n_ads"] == world.M and d["health"] == "SERVING"
    r = run_cli("info", "--target", target)
    assert r.returncode == 0 and "version v000001" in r.stdout and "synthetic feature f3" in r.stdout
    r = run_cli("explain", "--target", target, "--ad", "ad002", "--user", "u001", "--json")
    d = json.loads(r.stdout)
    assert d["rationale"] == world.ad_records["ad002"]["rationale"] and len(d["contributions"]) == world.F
    r = run_cli("explain", "--target", target, "--ad", "ad002", "--user", "u001")
    assert r.returncode == 0 and "ad ad002" in r.stdout and "contribution" in r.stdout


def test_rank_errors_exit_codes(server):
    target = f"127.0.0.1:{server.port}"
    r = run_cli("rank", "--target", target, "--user", "ghost")
    assert r.returncode == 2 and "NOT_FOUND" in r.stderr and "ghost" in r.stderr
    r = run_cli("rank", "--target", target, "--features", "1,2,3")
    assert r.returncode == 2 and "features has 3 values" in r.stderr
    r = run_cli("rank", "--target", target, "--features", "1,x=2")
    assert r.returncode == 2 and "mixes" in r.stderr
    r = run_cli("rank", "--target", target, "--user", "u001", "--top-k", "0")
    assert r.returncode == 2 and "--top-k must be >= 1" in r.stderr
    r = run_cli("rank", "--target", "127.0.0.1:1", "--user", "u001", "--timeout", "1")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


def _start_serve(store, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "llmhyper", "serve", "--store", str(store), "--port", "0", *extra],
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"no listening line: {line!r} {proc.stderr.read()}")
    return proc, int(m.group(1))


def test_serve_sigterm_graceful(store_path):
    proc, port = _start_serve(store_path, "--debug-handler-delay", "0.6", "--drain", "1.0", "--grace", "5",
                              "--token", "tok")
    try:
        out: dict[str, object] = {}
        with RankerClient(f"127.0.0.1:{port}", token="tok", timeout=10) as c:
            c.wait_until_serving(timeout=60)

            def in_flight() -> None:
                try:
                    out["rank"] = c.rank("u001", top_k=2)
                except RankerError as e:
                    out["rank"] = e

            t = threading.Thread(target=in_flight)
            t.start()
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            # NOT_SERVING while the port still answers (a closed port makes health() fail, not flip)
            assert wait_for(lambda: c.health(timeout=1) == "NOT_SERVING", timeout=30, interval=0.01)
            t.join(10)
        assert not isinstance(out["rank"], Exception), out["rank"]
        assert len(out["rank"].ads) == 2
        assert proc.wait(timeout=10) == 0
        assert "NOT_SERVING, stopping" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serving_imports_stay_light():
    """`llmhyper serve` must not pull offline code, torch, faiss or LLM clients; the CLI pins threads."""
    code = ("import sys, os; import llmhyper.cli.main, llmhyper.server.servicer, llmhyper.client; "
            "heavy = ('offline', 'torch', 'faiss', 'google.genai', 'httpx', 'openai', 'open_clip'); "
            "bad = sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy))); "
            "print(bad); print(os.environ['NUMBA_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])")
    env = cli_env()
    env.pop("NUMBA_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "1 1"]


def test_store_rollback_and_prune_never_create_a_store(tmp_path):
    for args in (("rollback",), ("prune", "--keep", "1")):
        path = tmp_path / f"typo-{args[0]}"
        r = run_cli("store", *args, "--store", str(path))
        assert r.returncode == 2 and "store not found" in r.stderr, r.stderr
        assert not path.exists()


def test_store_rollback_with_nothing_older_names_the_reason(tmp_path, world):
    path = tmp_path / "one.lmdb"
    with WeightStore(path) as s:
        publish_world(s, world, with_users=False)
    r = run_cli("store", "rollback", "--store", str(path))
    assert r.returncode == 2 and "no version before v000001" in r.stderr, r.stderr


def test_evaluate_default_option_errors_exit_2_before_any_work(tmp_path):
    out = tmp_path / "report"
    r = run_cli("evaluate", "--dataset", "synthetic", "--default-option", "nope=1", "--out", str(out))
    assert r.returncode == 2 and "unknown ContentKNNGenerator option 'nope'" in r.stderr
    r = run_cli("evaluate", "--dataset", "synthetic", "--default-option", "intercept", "--out", str(out))
    assert r.returncode == 2 and "--default-option must be KEY=JSON" in r.stderr
    r = run_cli("evaluate", "--dataset", "synthetic", "--default-option", "intercept=genre", "--out", str(out))
    assert r.returncode == 2 and "intercept: Input should be" in r.stderr
    assert not out.exists()


def test_generator_help_lists_exactly_the_registry():
    """The CLI's --generator help is a copy (the parser may not import offline); it must not drift."""
    import re

    from llmhyper.cli.common import GENERATOR_HELP
    from offline.generators import registry

    named = set(re.findall(r"[a-z][a-z-]*", GENERATOR_HELP)) - {"default", "alias"}
    assert named == set(registry.choices())
