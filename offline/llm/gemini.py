"""Gemini backend through the official ``google-genai`` client.

The client's own retries are switched off (``HttpRetryOptions(attempts=1)``) so that our retry
policy in offline/generate.py is the only one that runs and every attempt is counted.
``base_url`` lets tests point the real client at a local server speaking Gemini REST.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Sequence

from offline.llm.base import (
    FatalLLMError,
    LLMReply,
    RetryableLLMError,
    classify_http_error,
    parse_retry_after,
)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Transport exception classes of the HTTP stacks google-genai may use."""
    out: list[type[BaseException]] = []
    for mod_name in ("httpx", "httpx2"):
        try:
            mod = __import__(mod_name)
        except ImportError:
            continue
        for attr in ("TransportError", "TimeoutException", "StreamError"):
            cls = getattr(mod, attr, None)
            if isinstance(cls, type):
                out.append(cls)
    out.extend([ConnectionError, TimeoutError])
    return tuple(out)


def with_property_ordering(schema: dict) -> dict:
    """Copy of a JSON schema with Gemini's ``propertyOrdering`` set from the properties' order.

    Gemini emits object keys in this order; we put reasoning fields before the numbers.
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                node["propertyOrdering"] = list(props.keys())
                for v in props.values():
                    walk(v)
            if isinstance(node.get("items"), dict):
                walk(node["items"])

    walk(schema)
    return schema


class GeminiBackend:
    """``LLMBackend`` for Gemini models (``google-genai``), JSON output constrained by a schema.

    api_key: explicit key, else env ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``.
    base_url: override of the API endpoint (tests: ``http://127.0.0.1:PORT``).
    temperature: sampling temperature (paper: 0.5). timeout_s: per-call timeout in seconds.
    api_version: REST version path (default ``v1beta``, where JSON-schema output lives).
    """

    name = "gemini"

    def __init__(
        self,
        model: str = "gemini-2.5-flash",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float = 0.5,
        timeout_s: float = 120.0,
        max_output_tokens: int | None = None,
        api_version: str | None = "v1beta",
    ) -> None:
        from google import genai
        from google.genai import types

        key = api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not key:
            raise ValueError("Gemini backend needs an API key: set GEMINI_API_KEY or GOOGLE_API_KEY")
        if not model:
            raise ValueError("Gemini backend needs a model name")
        self.model = model
        self.temperature = float(temperature)
        self.max_output_tokens = max_output_tokens
        self.base_url = base_url
        self._types = types
        self._errors = __import__("google.genai.errors", fromlist=["errors"])
        self._transport = _transport_errors()
        http_options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=int(timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),  # our policy retries, not the client
        )
        self._client = genai.Client(api_key=key, vertexai=False, http_options=http_options)

    def fingerprint(self) -> str:
        """Settings that change answers: backend, model, temperature, output cap."""
        return f"gemini|{self.model}|t={self.temperature}|max={self.max_output_tokens}"

    def _contents(self, user: str, images: Sequence[Any]) -> Any:
        """The user turn: plain text, or a text part followed by one inline-data part per image."""
        if not images:
            return user
        types = self._types
        parts = [types.Part(text=user)]
        parts += [types.Part(inline_data=types.Blob(mime_type=im.mime, data=im.data)) for im in images]
        return [types.Content(role="user", parts=parts)]

    def complete(
        self, system: str, user: str, json_schema: dict | None = None, *, seed: int | None = None,
        images: Sequence[Any] = (),
    ) -> LLMReply:
        """One generateContent call; JSON mime type and (if given) a response JSON schema.
        ``images`` (ImagePart) go as inline-data parts after the text part of the user turn."""
        types = self._types
        cfg: dict[str, Any] = dict(
            system_instruction=system,
            temperature=self.temperature,
            response_mime_type="application/json",
            candidate_count=1,
        )
        if json_schema is not None:
            cfg["response_json_schema"] = with_property_ordering(json_schema)
        if seed is not None:
            cfg["seed"] = int(seed)
        if self.max_output_tokens:
            cfg["max_output_tokens"] = int(self.max_output_tokens)
        t0 = time.perf_counter()
        try:
            resp = self._client.models.generate_content(
                model=self.model, contents=self._contents(user, images), config=types.GenerateContentConfig(**cfg)
            )
        except self._errors.APIError as e:
            headers = getattr(getattr(e, "response", None), "headers", None) or {}
            retry_after = parse_retry_after(headers.get("retry-after") if headers else None)
            raise classify_http_error(
                int(e.code or 0), e.details, str(e.message or ""), retry_after, where="Gemini"
            ) from e
        except self._transport as e:
            raise RetryableLLMError(f"Gemini transport error: {type(e).__name__}: {e}") from e
        except Exception as e:  # envelope not parseable (e.g. UnknownApiResponseError)
            if type(e).__name__ in ("UnknownApiResponseError", "JSONDecodeError", "ValidationError"):
                raise RetryableLLMError(f"Gemini malformed response envelope: {e}"[:400]) from e
            raise FatalLLMError(f"Gemini call failed: {type(e).__name__}: {e}"[:400]) from e
        seconds = time.perf_counter() - t0
        try:
            text = resp.text or ""
        except Exception:  # non-text parts only
            text = ""
        usage = getattr(resp, "usage_metadata", None)
        return LLMReply(
            text=text,
            input_tokens=int(getattr(usage, "prompt_token_count", None) or 0),
            output_tokens=int(getattr(usage, "candidates_token_count", None) or 0),
            seconds=seconds,
        )
