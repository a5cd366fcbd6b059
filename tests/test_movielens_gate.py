"""The MovieLens gate (tests/movielens_gate.py): with CI=true a missing data copy fails the
run; elsewhere the skip is reported in the summary with where the data was looked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

BODY = '''
import pytest

pytestmark = pytest.mark.movielens

@pytest.fixture
def data():
    raise AssertionError("the gate must act before fixtures load the data")

def test_needs_data(data):
    pass

def test_also_needs_data():
    pass
'''


def _run(tmp_path: Path, ml_dir: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_tiny.py").write_text(BODY)
    env = dict(os.environ, LLMHYPER_MOVIELENS=str(ml_dir), PYTHONPATH=str(REPO))
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    # -c /dev/null: no ini file, so the repository's addopts and testpaths do not apply
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                           "-p", "tests.movielens_gate", str(tmp_path / "test_tiny.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_movielens_fails_under_ci(tmp_path):
    missing = tmp_path / "no-such-movielens"
    r = _run(tmp_path, missing, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 errors" in r.stdout and "skipped" not in r.stdout, r.stdout  # failed in setup
    assert f"MovieLens 100K not found at {missing}" in r.stdout and "CI=true" in r.stdout


def test_missing_movielens_skips_and_says_so_elsewhere(tmp_path):
    missing = tmp_path / "no-such-movielens"
    for ci in (None, "false"):
        r = _run(tmp_path, missing, ci)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 skipped" in r.stdout, r.stdout
        assert "MovieLens 100K missing" in r.stdout  # the summary section
        assert f"2 test(s) skipped: MovieLens 100K not found at {missing} (set LLMHYPER_MOVIELENS)" in r.stdout
        assert "SKIPPED test_tiny.py::test_needs_data" in r.stdout


def test_present_movielens_runs_the_tests(tmp_path):
    present = tmp_path / "ml"
    present.mkdir()
    (present / "u.data").write_text("1\t1\t5\t0\n")
    r = _run(tmp_path, present, "true")
    # the fixture's AssertionError proves the test ran past the gate
    assert r.returncode == 1 and "1 passed" in r.stdout and "1 error" in r.stdout, r.stdout
    assert "MovieLens 100K missing" not in r.stdout
