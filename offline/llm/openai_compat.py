"""Backend for any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, ...).

One ``httpx`` POST to ``{base_url}/chat/completions`` per call, no retries of its own.
Structured output: ``response_format={"type": "json_schema", ...}``; a server that rejects it
(HTTP 400/422, or a 500 whose body is a validation error naming response_format/json_schema, as
llama-cpp-python's server answers) is switched once to ``json_object`` with a ``schema`` (the
llama.cpp-server form of schema-constrained output), then to plain ``json_object``, then to
plain prompting, for the rest of this backend's life.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Sequence

import httpx

from offline.llm.base import (
    LLMReply,
    RetryableLLMError,
    classify_http_error,
    parse_retry_after,
)

_FORMAT_MODES = ("json_schema", "json_object_schema", "json_object", "none")
_FORMAT_COMPLAINT = re.compile(r"response_format|json_schema|json_object|schema", re.IGNORECASE)


_LOOPBACK_PORT = re.compile(r"^(https?://(?:127\.0\.0\.1|localhost|\[::1\])):\d+(/|$)", re.IGNORECASE)


def _endpoint_key(base_url: str) -> str:
    """``base_url`` for cache keys: ``http://127.0.0.1:PORT/v1`` -> ``http://127.0.0.1:*/v1``."""
    return _LOOPBACK_PORT.sub(r"\1:*\2", base_url)


class OpenAICompatBackend:
    """``LLMBackend`` over HTTP for OpenAI-style ``/chat/completions``.

    base_url: API root including the version path, e.g. ``http://127.0.0.1:8080/v1``.
    api_key: optional bearer token; else the env var named by ``api_key_env`` if set.
    response_format: "json_schema" (default), "json_object_schema", "json_object" or "none"
    (the first mode tried; see the module docstring for the downgrade order).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.5,
        timeout_s: float = 120.0,
        max_tokens: int | None = None,
        response_format: str = "json_schema",
        client: httpx.Client | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("OpenAI-compatible backend needs a base_url, e.g. http://127.0.0.1:8080/v1")
        if not model:
            raise ValueError("OpenAI-compatible backend needs a model name")
        if response_format not in _FORMAT_MODES:
            raise ValueError(f"response_format must be one of {_FORMAT_MODES}, got {response_format!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.format_mode = response_format
        self._lock = threading.Lock()
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._headers = headers
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout_s), trust_env=False)

    def fingerprint(self) -> str:
        """Settings that change answers: endpoint, model, temperature, output cap. A loopback
        endpoint's port is left out (``llmhyper local-llm --exec`` serves on a new free port each
        run, and the answer cache must still let a killed build resume); a remote host keeps it."""
        return f"openai|{_endpoint_key(self.base_url)}|{self.model}|t={self.temperature}|max={self.max_tokens}"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _payload(self, system: str, user: str, schema: dict | None, seed: int | None, mode: str,
                 images: Sequence[Any] = ()) -> dict:
        content: Any = user
        if images:  # OpenAI vision form: a text part, then one base64 data-URL part per image
            content = [{"type": "text", "text": user}] + [
                {"type": "image_url", "image_url": {"url": f"data:{im.mime};base64,{im.b64()}"}} for im in images]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}],
            "temperature": self.temperature,
        }
        if seed is not None:
            body["seed"] = int(seed)
        if self.max_tokens:
            body["max_tokens"] = int(self.max_tokens)
        if mode == "json_schema" and schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "weights", "strict": True, "schema": schema},
            }
        elif mode == "json_object_schema" and schema is not None:
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif mode != "none":
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(
        self, system: str, user: str, json_schema: dict | None = None, *, seed: int | None = None,
        images: Sequence[Any] = (),
    ) -> LLMReply:
        """One chat-completions call (``images``: ImagePart, sent as data URLs). Raises
        RetryableLLMError, QuotaExhausted or FatalLLMError."""
        url = f"{self.base_url}/chat/completions"
        while True:
            mode = self.format_mode
            body = self._payload(system, user, json_schema, seed, mode, images)
            t0 = time.perf_counter()
            try:
                r = self._client.post(url, json=body, headers=self._headers)
            except httpx.TransportError as e:  # timeouts, refused, reset, protocol errors
                raise RetryableLLMError(f"OpenAI-compatible transport error: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - t0
            if r.status_code == 200:
                break
            text = r.text
            try:
                err_body: Any = r.json()
            except ValueError:
                err_body = text
            if (r.status_code in (400, 422) or (r.status_code == 500 and "validation error" in (text or "")))\
                    and mode != "none" and _FORMAT_COMPLAINT.search(text or ""):
                with self._lock:  # downgrade the structured-output mode once, then try again
                    if self.format_mode == mode:
                        self.format_mode = _FORMAT_MODES[_FORMAT_MODES.index(mode) + 1]
                continue
            raise classify_http_error(
                r.status_code, err_body, text, parse_retry_after(r.headers.get("retry-after")),
                where="OpenAI-compatible",
            )
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetryableLLMError(f"OpenAI-compatible malformed response envelope: {r.text[:200]!r}") from e
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise RetryableLLMError("OpenAI-compatible response content is not a string")
        usage = data.get("usage") or {}
        try:
            tin = int(usage.get("prompt_tokens") or 0)
            tout = int(usage.get("completion_tokens") or 0)
        except (TypeError, ValueError):
            tin = tout = 0
        return LLMReply(text=text, input_tokens=tin, output_tokens=tout, seconds=seconds)
