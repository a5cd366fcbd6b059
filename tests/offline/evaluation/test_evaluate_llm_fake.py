"""The LLM-HYPER variants run through the evaluation harness against the local fake LLM server
(OpenAI-compatible route): one variant, calibrated and not, on the synthetic data set."""


from tests.fakes.llm_server import FakeLLMServer


def test_llm_variant_through_harness(tmp_path):
    from llmhyper.evaluation import StoreServing
    from offline.evaluation.protocol import EvalConfig, evaluate

    with FakeLLMServer() as srv:
        cfg = EvalConfig(dataset="synthetic", seeds=1, k=5, methods=("lrwarm", "lrcold", "default"),
                         generator="openai",
                         generator_options={"base_url": srv.openai_base_url, "model": "fake-model",
                                            "api_key": "test", "n_samples": 1, "batch_size": 8,
                                            "max_concurrency": 2},
                         llm_shots=(3,), llm_captions=(True,), latency_users=5,
                         work_dir=str(tmp_path / "work"), out_dir=str(tmp_path / "out"), quiet=True)
        result = evaluate(cfg, serving=StoreServing(cfg.work_dir))
        calls = sum(info["cost"].get("calls", 0) for info in result["llm"].values())
    s = result["summary"]
    name = "llm[openai,3-shot,caption]"
    assert name in s and name + "+cal" in s
    assert calls > 0
    info = result["llm"][name]
    assert info["n_failed"] == 0
    assert 0.0 <= s[name]["auc"]["mean"] <= 1.0
    assert "latency_ms" in s[name]
    assert any(f.endswith("metric_vs_shots.png") for f in result["files"])
