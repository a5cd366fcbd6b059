"""The real google-genai client and real httpx against a local server speaking each protocol."""

import socket

import pytest

from offline.llm import make_backend
from offline.llm.base import (
    FatalLLMError,
    QuotaExhausted,
    RetryableLLMError,
    classify_http_error,
    is_daily_quota,
)
from offline.llm.gemini import GeminiBackend
from offline.llm.openai_compat import OpenAICompatBackend
from offline.llm.prompts import weights_schema

from tests.fakes.llm_server import FakeLLMServer

USER = (
    "## Features\n<<<DATA features>>>\n"
    '[{"name": "g1", "definition": "d1"}, {"name": "g2", "definition": "d2"}]\n<<<END DATA>>>'
)
SCHEMA = weights_schema(["g1", "g2"])


@pytest.fixture()
def server():
    with FakeLLMServer() as s:
        yield s


def _backend(kind, server):
    if kind == "gemini":
        return GeminiBackend("gemini-fake", api_key="test-key", base_url=server.base_url, timeout_s=10)
    return OpenAICompatBackend(server.openai_base_url, "local-model", api_key="tok", timeout_s=10)


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_ok_reply_and_request_shape(kind, server):
    b = _backend(kind, server)
    r = b.complete("SYS", USER, SCHEMA, seed=7)
    assert r.text == '{"g1": 0.01, "g2": 0.02}'
    assert r.input_tokens == len("SYS" + USER) // 4 and r.output_tokens > 0 and r.seconds > 0
    req = server.requests[-1]
    assert req["system"] == "SYS" and req["user"] == USER and server.calls_by_route[kind] == 1
    if kind == "gemini":
        gen = req["body"]["generationConfig"]
        assert gen["seed"] == 7 and gen["responseMimeType"] == "application/json"
        assert gen["temperature"] == 0.5
        assert gen["responseJsonSchema"]["required"] == ["g1", "g2"]
        assert gen["responseJsonSchema"]["propertyOrdering"] == ["g1", "g2"]
        assert req["headers"].get("x-goog-api-key") == "test-key"
    else:
        body = req["body"]
        assert body["seed"] == 7 and body["model"] == "local-model"
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA
        assert req["headers"]["authorization"] == "Bearer tok"


@pytest.mark.parametrize("kind", ["gemini", "openai"])
@pytest.mark.parametrize(
    "behaviour, exc, status",
    [
        ("429", RetryableLLMError, 429),
        ("503", RetryableLLMError, 503),
        ("500", RetryableLLMError, 500),
        ("drop", RetryableLLMError, None),
        ("bad_envelope", RetryableLLMError, None),
        ("quota", QuotaExhausted, 429),
        ("401", FatalLLMError, 401),
        ("400", FatalLLMError, 400),
    ],
)
def test_error_classification_one_call_each(kind, behaviour, exc, status, server):
    """Each error maps to our class, and the client made exactly one HTTP call (no hidden retries)."""
    b = _backend(kind, server)
    server.script([behaviour])
    with pytest.raises(exc) as ei:
        b.complete("SYS", USER, SCHEMA)
    assert type(ei.value) is exc
    assert ei.value.status == status
    assert server.calls_by_route[kind] == 1
    if behaviour == "429":
        assert ei.value.retry_after == 1.0
    if behaviour == "401":
        assert ei.value.stops_job is True
    if behaviour == "400":
        assert ei.value.stops_job is False
    # the server still answers the next call normally
    assert b.complete("SYS", USER, SCHEMA).text.startswith("{")


def test_openai_falls_back_to_json_object(server):
    b = _backend("openai", server)
    server.always("400_schema")
    r = b.complete("SYS", USER, SCHEMA)
    assert r.text == '{"g1": 0.01, "g2": 0.02}'
    assert b.format_mode == "json_object_schema"
    assert [q["body"]["response_format"]["type"] for q in server.requests] == ["json_schema", "json_object"]
    b.complete("SYS", USER, SCHEMA)
    assert server.requests[-1]["body"]["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_openai_llamacpp_style_500_validation_error_downgrades_format(server):
    """llama-cpp-python answers an unsupported response_format with HTTP 500 + a validation error."""
    b = _backend("openai", server)
    server.always("llamacpp_schema")
    r = b.complete("SYS", USER, SCHEMA)
    assert r.text == '{"g1": 0.01, "g2": 0.02}'
    assert [q["body"]["response_format"]["type"] for q in server.requests] == ["json_schema", "json_object"]
    assert b.format_mode == "json_object_schema"


@pytest.mark.parametrize("kind", ["gemini", "openai"])
def test_connection_refused_is_retryable(kind):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"
    b = (GeminiBackend("m", api_key="k", base_url=url, timeout_s=5) if kind == "gemini"
         else OpenAICompatBackend(url + "/v1", "m", timeout_s=5))
    with pytest.raises(RetryableLLMError):
        b.complete("S", "U", None)


def test_gemini_key_from_env(monkeypatch, server):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        GeminiBackend("m", base_url=server.base_url)
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")
    GeminiBackend("m", base_url=server.base_url).complete("S", USER, SCHEMA)
    assert server.requests[-1]["headers"]["x-goog-api-key"] == "from-google-env"
    monkeypatch.setenv("GEMINI_API_KEY", "from-gemini-env")
    GeminiBackend("m", base_url=server.base_url).complete("S", USER, SCHEMA)
    assert server.requests[-1]["headers"]["x-goog-api-key"] == "from-gemini-env"


def test_daily_quota_rule():
    per_minute = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.",
                            "details": [{"violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]}}
    per_day = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.",
                         "details": [{"violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}
    assert not is_daily_quota(per_minute)
    assert is_daily_quota(per_day)
    assert is_daily_quota({"error": {"message": "Daily quota exceeded"}})
    assert is_daily_quota({"error": {"code": "insufficient_quota"}})
    assert not is_daily_quota({"error": {"message": "Rate limit: 20 requests per day remaining"}})  # no quota wording
    assert isinstance(classify_http_error(429, per_minute), RetryableLLMError)
    assert isinstance(classify_http_error(429, per_day), QuotaExhausted)
    assert isinstance(classify_http_error(504, {}), RetryableLLMError)
    assert classify_http_error(403, {}).stops_job
    assert not classify_http_error(404, {}).stops_job


def test_make_backend(server):
    assert make_backend("gemini", {"model": "m", "api_key": "k", "base_url": server.base_url}).name == "gemini"
    o = make_backend("openai", {"model": "m", "base_url": server.openai_base_url})
    assert o.name == "openai"
    assert o.fingerprint() != make_backend("openai", {"model": "m2", "base_url": server.openai_base_url}).fingerprint()
    with pytest.raises(ValueError, match="must be one of"):
        make_backend("claude", {"model": "m"})
    with pytest.raises(ValueError, match="base_url"):
        make_backend("openai", {"model": "m"})


def test_fingerprint_ignores_a_loopback_port_but_not_a_remote_one():
    """`local-llm --exec` serves on a new free port each run; the answer cache must still match."""
    def fp(url):
        return make_backend("openai", {"model": "m", "base_url": url}).fingerprint()

    assert fp("http://127.0.0.1:40001/v1") == fp("http://127.0.0.1:40002/v1")
    assert fp("http://localhost:8080/v1") == fp("http://localhost:9090/v1")
    assert fp("http://127.0.0.1:40001/v1") != fp("http://localhost:40001/v1")
    assert fp("http://gpu-box:8000/v1") != fp("http://gpu-box:8001/v1")
    assert fp("http://127.0.0.1:40001/v1") != fp("http://127.0.0.1:40001/v2")


def test_make_backend_names_unknown_options_and_kinds():
    with pytest.raises(ValueError, match=r"unknown LLM backend option\(s\) \['temprature'\]"):
        make_backend("openai", {"base_url": "http://127.0.0.1:1/v1", "model": "m", "temprature": 0.2})
    with pytest.raises(ValueError, match=r"must be one of \('gemini', 'openai'\), got 'claude'"):
        make_backend("claude", {})
