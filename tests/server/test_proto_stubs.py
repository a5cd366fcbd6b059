"""The checked-in gRPC stubs must equal what `python -m llmhyper.genproto` generates from protos/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.helpers import REPO, cli_env

from llmhyper import genproto
from llmhyper._proto import ranker_pb2 as pb


def test_checked_in_stubs_are_fresh():
    stale = genproto.stale_files()
    assert stale == [], f"stale stubs {stale}: run `python -m llmhyper.genproto`"


def test_check_detects_a_changed_proto(tmp_path):
    root = tmp_path / "protos"
    shutil.copytree(REPO / "protos", root)
    proto = root / "llmhyper" / "v1" / "ranker.proto"
    text = proto.read_text()
    proto.write_text(text.replace("message PingRequest {}", "message PingRequest {\n  string note = 1;\n}"))
    assert set(genproto.stale_files(proto_root=root)) == {"ranker_pb2.py", "ranker_pb2.pyi"}


def test_check_command_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "llmhyper.genproto", "--check"], cwd=REPO, env=cli_env(),
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    out = tmp_path / "stubs"
    out.mkdir()
    bad = subprocess.run([sys.executable, "-m", "llmhyper.genproto", "--check", "--out", str(out)], cwd=REPO,
                         env=cli_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "stale gRPC stubs" in bad.stderr


def test_generated_package_is_importable_and_relative(tmp_path):
    written = {p.name for p in genproto.generate(tmp_path)}
    assert written == {"__init__.py", "ranker_pb2.py", "ranker_pb2.pyi", "ranker_pb2_grpc.py"}
    grpc_src = (tmp_path / "ranker_pb2_grpc.py").read_text()
    assert re.search(r"^from \. import ranker_pb2 as", grpc_src, re.M)
    assert pb.DESCRIPTOR.name == "llmhyper/v1/ranker.proto" and pb.DESCRIPTOR.package == "llmhyper.v1"
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Ranker"].methods}
    assert methods == {"Rank", "RankBatch", "Explain", "GetModelInfo", "Ping"}


def test_every_proto_field_is_commented():
    """Each field line in the proto is preceded by a comment line (units, shapes, empty meaning)."""
    lines = (REPO / "protos" / "llmhyper" / "v1" / "ranker.proto").read_text().splitlines()
    field = re.compile(r"^\s+(repeated\s+|map<[^>]+>\s+)?[A-Za-z_.0-9]+\s+\w+\s*=\s*\d+;")
    missing = [ln.strip() for i, ln in enumerate(lines) if field.match(ln) and not lines[i - 1].strip().startswith("//")]
    assert missing == []
