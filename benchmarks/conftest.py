"""Shared benchmark plumbing: a budget table that is printed and added to the JSON.

A benchmark module appends rows to the session-wide table via the ``budget_rows``
fixture; at the end of the run the table is printed in the terminal summary and, with
``--benchmark-json=FILE``, stored in that file under the key ``"budgets"``.

Row keys: ``suite``, ``case``, ``measured`` (what the ratio compares), ``ratio``
(measured time / baseline time, or as documented by the row), ``budget`` (the limit,
or None when only reported), ``statistic`` (min/median), ``source`` (where the timings
came from), ``ok``.
"""
from __future__ import annotations

import pytest

_ROWS = pytest.StashKey[list]()


def _rows(config: pytest.Config) -> list:
    return config.stash.setdefault(_ROWS, [])


@pytest.fixture(scope="session")
def budget_rows(request: pytest.FixtureRequest) -> list:
    """Session-wide list of budget rows (dicts, see module docstring)."""
    return _rows(request.config)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    rows = _rows(config)
    if not rows:
        return
    tr = terminalreporter
    tr.section("budgets (ratios measured in this run)")
    w = max(len(r["case"]) for r in rows)
    tr.write_line(f"{'suite':<8} {'case':<{w}}  {'ratio':>8}  {'budget':>8}  {'stat':<6} {'':4} measured")
    for r in rows:
        budget = "-" if r["budget"] is None else f"{r['budget']:.2f}"
        flag = "ok" if r["ok"] else "FAIL"
        tr.write_line(
            f"{r['suite']:<8} {r['case']:<{w}}  {r['ratio']:>8.3f}  {budget:>8}  "
            f"{r['statistic']:<6} {flag:4} {r['measured']} [{r['source']}]"
        )


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:  # noqa: ARG001
    output_json["budgets"] = list(_rows(config))
