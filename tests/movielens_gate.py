"""A pytest plugin for the tests that need the MovieLens 100K copy (issue 9, item 6).

Mark such a test (or module, via ``pytestmark``) with ``@pytest.mark.movielens``. Before it
runs, the plugin looks for ``u.data`` where the code reads MovieLens from
(``offline.pipeline.movielens_path()``: ``$LLMHYPER_MOVIELENS``, else the shared checkout's
``../shared/data/movielens-100k``):

* with ``CI`` set to a true value (``true``, ``1``, ``yes``; CI services set ``CI=true``), a
  missing copy FAILS the test, so a CI run without the data cannot pass;
* elsewhere the test is skipped, and the terminal summary says how many tests were skipped,
  where the data was looked for and how to point at it.

tests/conftest.py loads it (``pytest_plugins``); a pytest run outside tests/ can load it with
``-p tests.movielens_gate``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MARK = "movielens"
_SKIPPED_KEY = pytest.StashKey[list]()


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def movielens_root() -> Path:
    """The directory the project reads MovieLens 100K from (resolved now, env included)."""
    from offline.pipeline import movielens_path

    return Path(movielens_path())


def missing_reason() -> str | None:
    """None when MovieLens 100K is present, else a sentence saying where it was looked for."""
    root = movielens_root()
    if (root / "u.data").is_file():
        return None
    return f"MovieLens 100K not found at {root} (set LLMHYPER_MOVIELENS)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARK}: needs the MovieLens 100K copy; fails when absent "
                                       "with CI=true, is skipped (and reported) otherwise")
    config.stash[_SKIPPED_KEY] = []


@pytest.hookimpl(tryfirst=True)  # before fixtures are set up: they would load the data
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(MARK) is None:
        return
    reason = missing_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing data copy fails the run", pytrace=False)
    item.config.stash[_SKIPPED_KEY].append(item.nodeid)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ARG001
    skipped = config.stash.get(_SKIPPED_KEY, [])
    if not skipped:
        return
    terminalreporter.write_sep("=", "MovieLens 100K missing", yellow=True)
    terminalreporter.write_line(f"{len(skipped)} test(s) skipped: {missing_reason()}. "
                                "With CI=true they fail instead.")
    for nodeid in skipped:
        terminalreporter.write_line(f"  SKIPPED {nodeid}")
