"""Strict parsing of LLM answers: every poisoned form is a ParseError naming the reason."""

import math

import pytest

from offline.llm.parse import ParseError, loads_strict, parse_weights

KEYS = ["a", "b", "c"]


def test_valid_plain_and_fenced():
    p = parse_weights('{"a": 0.5, "b": -1, "c": 2.25e-1}', KEYS)
    assert p.weights == {"a": 0.5, "b": -1.0, "c": 0.225}
    assert list(p.weights) == KEYS
    q = parse_weights('```json\n{"c": 0, "b": 1.5, "a": -0.25}\n```', KEYS)
    assert q.weights == {"a": -0.25, "b": 1.5, "c": 0.0}
    assert parse_weights('  ```\n{"a": 1, "b": 2, "c": 3}\n```  ', KEYS).weights["c"] == 3.0


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ('Here you go: {"a": 1, "b": 2, "c": 3}', "prose"),
        ('{"a": 1, "b": 2, "c": 3} Hope this helps!', "prose"),
        ('Sure!\n```json\n{"a": 1, "b": 2, "c": 3}\n```', "prose"),
        ('```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```', "prose"),
        ('{"a": 1, "b": 2, "c": 0.', "truncated"),
        ('{"a": 1, "b": 2, "c"', "truncated"),
        ('{"a": 1, "b": 2 "c": 3}', "json_syntax"),
        ("{'a': 1, 'b': 2, 'c': 3}", "json_syntax"),
        ('{"a": NaN, "b": 2, "c": 3}', "non_finite"),
        ('{"a": Infinity, "b": 2, "c": 3}', "non_finite"),
        ('{"a": -Infinity, "b": 2, "c": 3}', "non_finite"),
        ('{"a": 1e400, "b": 2, "c": 3}', "overflow"),
        ('{"a": -1e400, "b": 2, "c": 3}', "overflow"),
        ('{"a": ' + "9" * 5000 + ', "b": 2, "c": 3}', "overflow"),
        ('{"a": 1e308, "b": 2, "c": 3}', "out_of_bounds"),
        ('{"a": 10.5, "b": 2, "c": 3}', "out_of_bounds"),
        ('{"a": 1, "b": 2}', "missing_keys"),
        ('{"a": 1, "b": 2, "c": 3, "d": 4}', "extra_keys"),
        ('{"a": "0.5", "b": 2, "c": 3}', "not_number"),
        ('{"a": true, "b": 2, "c": 3}', "not_number"),
        ('{"a": null, "b": 2, "c": 3}', "not_number"),
        ('{"a": [1], "b": 2, "c": 3}', "not_number"),
        ('{"a": 1, "a": 2, "b": 2, "c": 3}', "duplicate_key"),
        ('[1, 2, 3]', "not_object"),
        ("0.5", "prose"),
    ],
)
def test_poison_rejected_with_reason(text, reason):
    with pytest.raises(ParseError) as ei:
        parse_weights(text, KEYS)
    assert ei.value.reason == reason, str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_error_messages_name_the_keys():
    with pytest.raises(ParseError, match=r"missing feature\(s\) \['b', 'c'\]"):
        parse_weights('{"a": 1}', KEYS)
    with pytest.raises(ParseError, match=r"unexpected key\(s\) \['zz'\]"):
        parse_weights('{"a": 1, "b": 1, "c": 1, "zz": 1}', KEYS)
    with pytest.raises(ParseError, match=r"'b' = 11 exceeds the bound"):
        parse_weights('{"a": 1, "b": 11, "c": 1}', KEYS)


def test_bound_is_configurable_and_inclusive():
    assert parse_weights('{"a": 2, "b": -2, "c": 0}', KEYS, bound=2.0).weights["b"] == -2.0
    with pytest.raises(ParseError) as ei:
        parse_weights('{"a": 2.0001, "b": 0, "c": 0}', KEYS, bound=2.0)
    assert ei.value.reason == "out_of_bounds"
    with pytest.raises(ValueError):
        parse_weights('{"a": 0, "b": 0, "c": 0}', KEYS, bound=math.inf)


def test_reasoning_form():
    text = (
        '{"ad_analysis": "Kids toys.", "rationale": {"a": "strong match", "c": "' + "x" * 1000 + '"},'
        ' "weights": {"a": 0.9, "b": -0.3, "c": 0.0}}'
    )
    p = parse_weights(text, KEYS, reasoning=True, rationale_cap=50)
    assert p.weights == {"a": 0.9, "b": -0.3, "c": 0.0}
    assert p.rationale["a"] == "strong match"
    assert len(p.rationale["c"]) == 50 and p.rationale["c"].endswith("\u2026")
    assert p.analysis == "Kids toys."
    bad = [
        ('{"rationale": {}, "weights": {"a": 1, "b": 1}}', "missing_keys"),
        ('{"weights": {"a": 1, "b": 1, "c": 1}}', "missing_keys"),
        ('{"rationale": {"q": "x"}, "weights": {"a": 1, "b": 1, "c": 1}}', "extra_keys"),
        ('{"rationale": {"a": 3}, "weights": {"a": 1, "b": 1, "c": 1}}', "bad_rationale"),
        ('{"rationale": {}, "weights": {"a": 1, "b": 1, "c": 1}, "note": "x"}', "extra_keys"),
        ('{"rationale": {}, "weights": {"a": NaN, "b": 1, "c": 1}}', "non_finite"),
        ('{"a": 1, "b": 1, "c": 1}', "missing_keys"),
    ]
    for t, reason in bad:
        with pytest.raises(ParseError) as ei:
            parse_weights(t, KEYS, reasoning=True)
        assert ei.value.reason == reason, t


def test_loads_strict_nesting_and_fence_only():
    assert loads_strict('```JSON\n{"x": [1, 2]}\n```') == {"x": [1, 2]}
    with pytest.raises(ParseError):
        loads_strict("[" * 100000 + "]" * 100000)
