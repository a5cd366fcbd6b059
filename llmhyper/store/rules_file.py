"""The content-rules file that ``llmhyper publish --rules`` and ``llmhyper build --rules`` read.

One rule per entry: ``ad_id`` (an ad of the published version), ``feature`` (a feature
name of its schema) and ``threshold`` (a finite number): the ad is never shown to users
whose value of that feature is strictly greater than the threshold. Two forms:

* CSV (any name not ending in ``.json``): a header row with at least the columns
  ``ad_id,feature,threshold`` (extra columns such as ``reason`` are kept out of serving
  and ignored), then one rule per line::

      ad_id,feature,threshold,reason
      ad0042,vegetarian,0.8,meat dish

* JSON (``*.json``): a list of objects with those keys, or ``{"rules": [...]}``::

      {"rules": [{"ad_id": "ad0042", "feature": "vegetarian", "threshold": 0.8}]}

:func:`read_rules_file` checks the form and names the file, line/entry and column;
:func:`load_rules_file` also checks every rule against a version's ads and features
(unknown ad, unknown feature, non-finite threshold), naming the rule's line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from llmhyper.store.extras import check_rules_input
from llmhyper.store.validate import InvalidWeights
from scoring.rules import ContentRules

__all__ = ["RulesFileError", "load_rules_file", "read_rules_file", "write_rules_file"]

COLUMNS = ("ad_id", "feature", "threshold")


class RulesFileError(ValueError):
    """The rules file is unreadable or malformed, or a rule does not fit the version."""


def _number(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise RulesFileError(f"{where}: threshold must be a number, got {v!r}")
    try:
        return float(v)  # 'nan' / 'inf' parse here and are refused by the rule check, naming the rule
    except ValueError:
        raise RulesFileError(f"{where}: threshold is not a number: {v!r}") from None


def read_rules_file(path: str | os.PathLike[str]) -> tuple[list[tuple[str, str, float]], list[str]]:
    """Parse a rules file. Returns (rules as (ad_id, feature, threshold), one label per rule
    such as ``"rules.csv line 3"``). Raises RulesFileError naming the file, line and column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RulesFileError(f"cannot read rules file {p}: {e}") from None
    rules: list[tuple[str, str, float]] = []
    labels: list[str] = []
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise RulesFileError(f"rules file {p} is not valid JSON: {e}") from None
        entries = obj.get("rules") if isinstance(obj, dict) else obj
        if not isinstance(entries, list):
            raise RulesFileError(f"rules file {p}: expected a list of rules or {{\"rules\": [...]}}")
        for i, ent in enumerate(entries):
            where = f"{p.name} rule {i}"
            if not isinstance(ent, dict):
                raise RulesFileError(f"{where}: expected an object with {', '.join(COLUMNS)}, got {ent!r}")
            missing = [c for c in COLUMNS if c not in ent]
            if missing:
                raise RulesFileError(f"{where}: missing key(s) {', '.join(missing)}")
            for c in ("ad_id", "feature"):
                if not isinstance(ent[c], str) or not ent[c]:
                    raise RulesFileError(f"{where}: {c} must be a non-empty string, got {ent[c]!r}")
            rules.append((ent["ad_id"], ent["feature"], _number(ent["threshold"], where)))
            labels.append(where)
        return rules, labels
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise RulesFileError(f"rules file {p} line 1: missing column(s) {', '.join(missing)} "
                             f"(header must name {', '.join(COLUMNS)}; got {', '.join(header) or 'nothing'})")
    for row in reader:
        where = f"{p.name} line {reader.line_num}"
        if None in row or any(row.get(c) is None for c in COLUMNS):
            raise RulesFileError(f"{where}: expected {len(header)} columns")
        for c in ("ad_id", "feature"):
            if not row[c].strip():
                raise RulesFileError(f"{where}: column {c} is empty")
        rules.append((row["ad_id"].strip(), row["feature"].strip(), _number(row["threshold"].strip(), where)))
        labels.append(where)
    return rules, labels


def load_rules_file(path: str | os.PathLike[str], ad_ids: Sequence[str],
                    feature_names: Sequence[str]) -> ContentRules:
    """Read a rules file and check it against a version's ``ad_ids`` and ``feature_names``.

    Returns the validated :class:`ContentRules` (ready for ``WeightStore.publish(rules=)``).
    Raises RulesFileError naming the file and line of the first bad rule."""
    rules, labels = read_rules_file(path)
    try:
        return check_rules_input(rules, list(ad_ids), list(feature_names), labels)
    except InvalidWeights as e:
        raise RulesFileError(str(e)) from None


def write_rules_file(path: str | os.PathLike[str], rules: Sequence[tuple[str, str, float]]) -> None:
    """Write (ad_id, feature, threshold) rules as the CSV (or, for ``*.json``, JSON) form above."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        p.write_text(json.dumps({"rules": [dict(zip(COLUMNS, r)) for r in rules]}, indent=1), encoding="utf-8")
        return
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows([a, feat, repr(float(t))] for a, feat, t in rules)
