"""Consistency rate (paper eq. 5): the pure rate on a hand-made set, the polarity judge through
the real google-genai client and the fake server, and the column in ``evaluate``'s results."""

import json

import numpy as np
import pytest

from offline.generators.job import generate_all
from offline.generators.llm import LLMGenerator
from offline.llm.consistency import consistency_rate, measure_consistency, parse_polarity, weight_sign
from offline.llm.gemini import GeminiBackend
from offline.llm.parse import ParseError

from tests.fakes.llm_server import FakeLLMServer
from tests.helpers import SMALL, make_catalog


def test_rate_on_a_hand_made_set():
    weights = [{"a": 0.5, "b": -0.2, "c": 0.0, "d": 0.3}, {"a": -1.0, "b": 0.04}]
    polarity = [{"a": 1, "b": 1, "c": 0, "d": -1}, {"a": -1, "b": 0}]
    # agreements: a (+,+) yes, b (-,+) no, c (0,0) yes, d (+,-) no; a (-,-) yes, b (+,0) no -> 3 of 6
    assert consistency_rate(weights, polarity) == (0.5, 6)
    # with a dead band of 0.05 the tiny 0.04 reads as neutral and agrees: 4 of 6
    assert consistency_rate(weights, polarity, neutral_band=0.05) == (pytest.approx(4 / 6), 6)
    assert np.isnan(consistency_rate([], [])[0])
    assert [weight_sign(v) for v in (2.0, -0.1, 0.0)] == [1, -1, 0]


def test_parse_polarity_is_strict():
    assert parse_polarity('{"polarity": {"a": 1, "b": -1}}', ["a", "b"]) == {"a": 1, "b": -1}
    for bad in ('{"polarity": {"a": 2, "b": 0}}', '{"polarity": {"a": 1}}', '{"polarity": {"a": "1", "b": 0}}',
                '{"polarity": {"a": 1, "b": 0, "c": 1}}', 'The answer: {"polarity": {"a": 1, "b": 0}}',
                '{"polarity": {"a": true, "b": 0}}', '{"polarity": {"a": NaN, "b": 0}}'):
        with pytest.raises(ParseError):
            parse_polarity(bad, ["a", "b"])


def test_measured_rate_equals_the_hand_computed_value(tmp_path):
    ads, nbs = make_catalog(2, F=len(SMALL))
    with FakeLLMServer() as server:
        # f1's rationale argues "more likely", f2's "less likely", f3 and f4 no relation (polarity 0)
        server.rationale_overrides = {"f1": "users high in f1 are more likely to click",
                                      "f2": "users high in f2 are less likely to click"}
        be = GeminiBackend("gemini-fake", api_key="k", base_url=server.base_url, timeout_s=20)
        gen = LLMGenerator(be, n_samples=1, batch_size=4, reasoning=True, cache_dir=tmp_path / "c",
                           sleep=lambda s: None)
        res = generate_all(gen, ads, nbs, SMALL, progress=False)
        m = measure_consistency(gen, ads, res, SMALL)
        calls = server.calls_by_route["gemini"]
        again = measure_consistency(gen, ads, res, SMALL)
        assert server.calls_by_route["gemini"] == calls  # polarity answers come from the cache
    expected_agree = 0
    for g in res:
        w = g.theta
        expected_agree += int(w[1] > 0) + int(w[2] < 0) + int(w[3] == 0) + int(w[4] == 0)
    assert m["pairs"] == 8 and m["ads"] == 2 and m["cost"]["calls"] == 2
    assert m["rate"] == pytest.approx(expected_agree / 8) and again["rate"] == m["rate"]
    # a poisoned polarity answer is retried under the shared budget
    with FakeLLMServer() as server:
        be = GeminiBackend("gemini-fake", api_key="k", base_url=server.base_url, timeout_s=20)
        gen = LLMGenerator(be, n_samples=1, batch_size=4, reasoning=True, cache_dir=None, sleep=lambda s: None)
        server.script(["prose"], match="<<<DATA polarity_request>>>")
        res = generate_all(gen, ads[:1], nbs[:1], SMALL, progress=False)
        m2 = measure_consistency(gen, ads[:1], res, SMALL)
    assert m2["pairs"] == 4 and m2["failed"] == 0


def test_evaluate_reports_consistency_for_every_llm_row(tmp_path):
    from llmhyper.evaluation import StoreServing
    from offline.evaluation.protocol import EvalConfig, evaluate

    with FakeLLMServer() as srv:
        cfg = EvalConfig(dataset="synthetic", seeds=1, k=5, methods=("lrcold",), generator="openai",
                         generator_options={"base_url": srv.openai_base_url, "model": "fake-model", "api_key": "t",
                                            "n_samples": 1, "batch_size": 16, "max_concurrency": 2,
                                            "reasoning": True},
                         llm_shots=(0, 3), llm_captions=(True,), latency_users=0,
                         work_dir=str(tmp_path / "work"), out_dir=str(tmp_path / "out"), quiet=True)
        result = evaluate(cfg, serving=StoreServing(cfg.work_dir))
    n_active = result["dataset"]["n_active"]
    n_feat = result["dataset"]["n_features"]
    for name in ("llm[openai,0-shot,caption]", "llm[openai,3-shot,caption]"):
        info = result["llm"][name]
        # the fake's default rationale argues no relation (polarity 0), and no weight is exactly 0
        assert info["consistency_pairs"] == n_active * (n_feat - 1) and info["consistency"] == 0.0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| consistency |" in md and "HR@5* | Cov@5*" in md
    json.dumps(result["llm"])
