"""A local HTTP server speaking the Gemini REST and OpenAI chat-completions wire protocols.

Routes (127.0.0.1, free port):
  POST /v1beta/models/{model}:generateContent   (Gemini; the real google-genai client talks to it)
  POST /v1/chat/completions                     (OpenAI-compatible; httpx talks to it)

Ad-rewrite prompts (a ``rewrite_request`` data block) get :func:`rule_rewrite`'s answer.
Weight prompts get answers that follow a simple deterministic rule, so results are
checkable: for each feature of the batch (read from the prompt's ``features`` data block) the
weight is the similarity-weighted mean of the reference ads' weights for it (read from the
``reference_ad_N`` blocks), or ``0.01 * (position + 1)`` with no references; plus
``jitter * ((seed % 3) - 1)`` when a seed is sent. This parser is written independently of the
project's prompt code, as a real model would be.

Scripted repertoire (``behaviour`` names): ok, ok_fenced, 429, 503, 500, quota (daily-quota
429), 401, 400, 400_schema (OpenAI route: reject response_format json_schema, accept
json_object), llamacpp_schema (OpenAI route: reject json_schema with HTTP 500 and a request
validation error, as llama-cpp-python's server does), drop (connection closed without a response), bad_envelope (HTTP 200 with a
non-JSON body), truncated, malformed, nan, inf,
neg_inf, 1e400, 1e308, missing, extra, prose, string_value, bool_value, null_value, empty,
duplicate. ``script()`` queues behaviours consumed in order (optionally only by prompts that
contain a substring); ``always()`` sets a persistent behaviour for matching prompts;
``stall_after(n)`` holds every request after n valid answers until ``release()``.
Counters: per route, per (route, prompt hash), and a log of every request.

Judge prompts (a ``judge_request`` block) get :meth:`FakeLLMServer.rule_judge`'s verdicts:
``judge_always[feature]`` is that feature's verdict whatever the weight; ``judge_expect[feature]``
(+1/-1) gives "wrong_sign" while the proposed weight's sign differs; everything else is "ok".
``judge_rules`` ``[(title substring, feature, threshold)]`` add content rules for matching ads.
Judge poison (``script([...], match="judge_request")``): prose, truncated, malformed, empty,
missing, extra, nan (a rule with a NaN threshold), bad_verdict. A weight prompt carrying a
``reviewer_notes`` block (a regeneration) gets the rule weights with every feature noted as
wrong_sign negated and every other noted feature set to 0. Polarity prompts (a
``polarity_request`` block): +1 for a rationale containing "more likely", -1 for "less likely",
else 0. ``rationale_overrides[feature]`` replaces the rationale text of weight answers.
``instruction_effects`` ``[(substring, factor)]`` multiply the weights of prompts containing
the substring (prompt optimisation tests). Images sent with a request (Gemini inline data,
OpenAI base64 data URLs) are decoded into ``requests[i]["images"]`` as (mime, bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POISON = [
    "truncated", "malformed", "nan", "inf", "neg_inf", "1e400", "1e308", "missing", "extra",
    "prose", "string_value", "bool_value", "null_value", "empty", "duplicate",
]
_OK = ("ok", "ok_fenced", "400_schema", "llamacpp_schema")
HTTP_ERRORS = ["429", "503", "500", "quota", "401", "400", "drop", "bad_envelope"]

_BLOCK = re.compile(r"^<<<DATA ([A-Za-z0-9_]+)>>>\n(.*)\n<<<END DATA>>>$", re.MULTILINE)


def rule_weights(user_prompt: str, seed: int | None = None, jitter: float = 0.0) -> dict[str, float]:
    """The server's deterministic answer for a prompt (see module docstring)."""
    blocks = {m.group(1): json.loads(m.group(2)) for m in _BLOCK.finditer(user_prompt)}
    feats = [f["name"] for f in blocks["features"]]
    refs = [v for k, v in sorted(blocks.items()) if k.startswith("reference_ad_")]
    off = jitter * ((seed % 3) - 1) if seed is not None else 0.0
    out: dict[str, float] = {}
    for i, name in enumerate(feats):
        if refs:
            sims = [max(float(r["similarity"]), 1e-6) for r in refs]
            w = sum(s * float(r["weights"][name]) for s, r in zip(sims, refs)) / sum(sims)
        else:
            w = 0.01 * (i + 1)
        out[name] = round(max(-9.0, min(9.0, w + off)), 6)
    for note in blocks.get("reviewer_notes", []):  # a regeneration: follow the reviewer
        if note["name"] in out:
            out[note["name"]] = -out[note["name"]] if note["verdict"] == "wrong_sign" else 0.0
    return out


def rule_rewrite(user_prompt: str) -> dict[str, str]:
    """The server's deterministic answer to an ad-rewrite prompt (a ``rewrite_request`` block):
    the target term is the last ``_`` part of the feature name; enhanced appends a sentence
    about it, diminished drops it from the summary, neutralized keeps only the first sentence."""
    blocks = {m.group(1): json.loads(m.group(2)) for m in _BLOCK.finditer(user_prompt)}
    ad, kind = blocks["ad"], blocks["rewrite_request"]["kind"]
    term = str(blocks["target_feature"]["name"]).rsplit("_", 1)[-1]
    summary = str(ad.get("summary", ""))
    if kind == "enhanced":
        new = f"{summary} Above all a {term} story."
    elif kind == "diminished":
        new = re.sub(re.escape(term), "", summary, flags=re.IGNORECASE).replace(", ,", ",").strip()
    else:
        new = summary.split(".")[0] + "."
    return {"modified_title": str(ad.get("title", "")), "modified_summary": new,
            "modification_explanation": f"{kind} edit around {term}"}


def _render(weights: dict[str, float], reasoning: bool, behaviour: str,
            rationale_overrides: dict[str, str] | None = None) -> str:
    """Answer text for a behaviour (valid or poisoned)."""
    w: dict[str, Any] = dict(weights)
    names = list(w)
    first = names[0]
    raw_value: str | None = None
    if behaviour == "missing":
        del w[names[-1]]
    elif behaviour == "extra":
        w["bias_override"] = 5.0
    elif behaviour == "string_value":
        w[first] = str(w[first])
    elif behaviour == "bool_value":
        w[first] = True
    elif behaviour == "null_value":
        w[first] = None
    elif behaviour in ("nan", "inf", "neg_inf", "1e400", "1e308"):
        raw_value = {"nan": "NaN", "inf": "Infinity", "neg_inf": "-Infinity", "1e400": "1e400", "1e308": "1e308"}[behaviour]
        w[first] = "__RAW__"
    if reasoning:
        obj: Any = {
            "ad_analysis": "An ad; analysed by the fake server.",
            "rationale": {n: (rationale_overrides or {}).get(n, f"rule-based weight for {n}") for n in names},
            "weights": w,
        }
    else:
        obj = w
    text = json.dumps(obj)
    if raw_value is not None:
        text = text.replace('"__RAW__"', raw_value)
    if behaviour == "duplicate":
        text = text.replace("{", "{" + json.dumps(first) + ": 0.5, ", 1) if not reasoning else \
            text.replace('"weights": {', '"weights": {' + json.dumps(first) + ": 0.5, ", 1)
    if behaviour == "truncated":
        text = text[: max(1, len(text) // 2)]
    elif behaviour == "malformed":
        text = text.replace(",", "", 1).replace('"', "'", 2)
    elif behaviour == "prose":
        text = "Sure! Based on the reference ads, here are the weights:\n" + text + "\nHope this helps."
    elif behaviour == "ok_fenced":
        text = "```json\n" + text + "\n```"
    elif behaviour == "empty":
        text = ""
    return text


def _inline(part: dict) -> tuple[str, bytes]:
    d = part.get("inlineData") or part.get("inline_data")
    b64 = d["data"].replace("-", "+").replace("_", "/")  # the client may send url-safe base64, unpadded
    return d.get("mimeType") or d.get("mime_type"), base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)


def _data_url(url: str) -> tuple[str, bytes]:
    m = re.fullmatch(r"data:([^;,]+);base64,(.*)", url, re.DOTALL)
    if not m:
        raise ValueError(f"image_url is not a base64 data URL: {url[:40]!r}")
    return m.group(1), base64.b64decode(m.group(2))


def rule_polarity(user_prompt: str) -> dict[str, int]:
    """The server's polarity of each rationale (see module docstring)."""
    blocks = {m.group(1): json.loads(m.group(2)) for m in _BLOCK.finditer(user_prompt)}
    out = {}
    for r in blocks["rationales"]:
        t = r["rationale"].lower()
        out[r["name"]] = 1 if "more likely" in t else -1 if "less likely" in t else 0
    return out


def _render_judge(obj: dict, behaviour: str) -> str:
    """Judge answer text for a behaviour (valid or poisoned)."""
    obj = json.loads(json.dumps(obj))
    names = list(obj["verdicts"])
    if behaviour == "missing":
        del obj["verdicts"][names[-1]]
    elif behaviour == "extra":
        obj["approve_all"] = True
    elif behaviour == "bad_verdict":
        obj["verdicts"][names[0]]["verdict"] = "maybe"
    elif behaviour == "nan":
        obj["content_rules"].append({"feature": names[0], "threshold": "__NAN__", "reason": "x"})
    text = json.dumps(obj).replace('"__NAN__"', "NaN")
    if behaviour == "prose":
        text = "My review follows. " + text
    elif behaviour == "truncated":
        text = text[: len(text) // 2]
    elif behaviour == "malformed":
        text = text.replace(",", "", 1)
    elif behaviour == "empty":
        text = ""
    return text


class FakeLLMServer:
    """Threaded fake of the Gemini and OpenAI HTTP APIs on 127.0.0.1:0. Use as a context manager."""

    def __init__(self, delay_s: float = 0.0, jitter: float = 0.0) -> None:
        self.delay_s = delay_s
        self.jitter = jitter
        self._lock = threading.Lock()
        self._queue: deque[tuple[str | None, str]] = deque()
        self._always: list[tuple[str | None, str]] = []
        self._stall_after: int | None = None
        self._release = threading.Event()
        self.calls_by_route: Counter = Counter()
        self.calls_by_key: Counter = Counter()
        self.log: list[dict] = []
        self.requests: list[dict] = []  # raw (route, system, user, body) of every request
        self.ok_count = 0
        self._admitted = 0
        self.stalled = 0
        self.inflight = 0
        self.max_inflight = 0
        self.judge_always: dict[str, str] = {}
        self.judge_expect: dict[str, int] = {}
        self.judge_rules: list[tuple[str, str, float]] = []
        self.rationale_overrides: dict[str, str] = {}
        self.instruction_effects: list[tuple[str, float]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def script(self, behaviours: list[str], match: str | None = None) -> None:
        """Queue behaviours for the next matching requests (consumed in order)."""
        with self._lock:
            for b in behaviours:
                self._queue.append((match, b))

    def always(self, behaviour: str, match: str | None = None) -> None:
        """Persistent behaviour for prompts containing ``match`` (None: every prompt)."""
        with self._lock:
            self._always.append((match, behaviour))

    def clear(self) -> None:
        """Drop queued and persistent behaviours and any stall."""
        with self._lock:
            self._queue.clear()
            self._always.clear()
            self._stall_after = None
        self._release.set()

    def stall_after(self, n_ok: int) -> None:
        """After ``n_ok`` valid answers (counted from the last reset_counters), hold every further
        request until release()."""
        with self._lock:
            self._stall_after = n_ok
        self._release.clear()

    def release(self) -> None:
        with self._lock:
            self._stall_after = None
        self._release.set()

    def reset_counters(self) -> None:
        with self._lock:
            self.calls_by_route.clear()
            self.calls_by_key.clear()
            self.log.clear()
            self.requests.clear()
            self.ok_count = 0
            self._admitted = 0
            self.stalled = 0
            self.max_inflight = 0

    def rule_judge(self, user_prompt: str) -> dict:
        """The server's judge answer for a review prompt (see module docstring)."""
        blocks = {m.group(1): json.loads(m.group(2)) for m in _BLOCK.finditer(user_prompt)}
        verdicts = {}
        for p in blocks["proposed"]:
            name, w = p["name"], float(p["weight"])
            if name in self.judge_always:
                verdicts[name] = {"verdict": self.judge_always[name], "reason": f"{name} always rejected"}
            elif name in self.judge_expect and (1 if w > 0 else -1) != self.judge_expect[name]:
                verdicts[name] = {"verdict": "wrong_sign", "reason": f"{name} should have sign {self.judge_expect[name]}"}
            else:
                verdicts[name] = {"verdict": "ok", "reason": "consistent with the ad"}
        title = blocks["target_ad"].get("title", "")
        rules = [{"feature": f, "threshold": t, "reason": f"improper for users high in {f}"}
                 for sub, f, t in self.judge_rules if sub in title and f in verdicts]
        return {"verdicts": verdicts, "content_rules": rules}

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                with server._lock:
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    server._handle(self)
                finally:
                    with server._lock:
                        server.inflight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- handling

    def _pick(self, user: str) -> str:
        with self._lock:
            for i, (match, b) in enumerate(self._queue):
                if match is None or match in user:
                    del self._queue[i]
                    return b
            for match, b in reversed(self._always):
                if match is None or match in user:
                    return b
        return "ok"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send(h, 400, {"error": {"code": 400, "message": "body is not JSON", "status": "INVALID_ARGUMENT"}})
        m = re.fullmatch(r"/v1(?:beta)?/models/([^/:]+):generateContent", path)
        if m:
            route, model = "gemini", m.group(1)
            rf: dict = {}
            try:
                user = "".join(p.get("text", "") for c in body["contents"] for p in c["parts"])
                images = [_inline(p) for c in body["contents"] for p in c["parts"]
                          if "inlineData" in p or "inline_data" in p]
                sys_inst = body.get("systemInstruction") or body.get("system_instruction") or {}
                system = "".join(p.get("text", "") for p in sys_inst.get("parts", []))
                gen = body.get("generationConfig") or body.get("generation_config") or {}
                seed = gen.get("seed")
                schema = gen.get("responseJsonSchema") or gen.get("response_json_schema") or {}
            except (KeyError, TypeError, AttributeError):
                return self._send(h, 400, {"error": {"code": 400, "message": "bad request shape", "status": "INVALID_ARGUMENT"}})
        elif path == "/v1/chat/completions":
            route = "openai"
            model = body.get("model", "")
            msgs = body.get("messages") or []
            system = "".join(x.get("content", "") for x in msgs if x.get("role") == "system")
            user, images = "", []
            for x in msgs:
                if x.get("role") != "user":
                    continue
                c = x.get("content", "")
                if isinstance(c, str):
                    user += c
                    continue
                for part in c:  # vision form: text parts and image_url parts (base64 data URLs)
                    if part.get("type") == "text":
                        user += part.get("text", "")
                    elif part.get("type") == "image_url":
                        images.append(_data_url(part["image_url"]["url"]))
            seed = body.get("seed")
            rf = body.get("response_format") or {}
            schema = (rf.get("json_schema") or {}).get("schema") or {}
        else:
            return self._send(h, 404, {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}})

        phash = hashlib.sha256((system + "\x00" + user).encode()).hexdigest()[:16]
        behaviour = self._pick(user)
        with self._lock:
            self.calls_by_route[route] += 1
            self.calls_by_key[(route, phash)] += 1
            stall = self._stall_after is not None and self._admitted >= self._stall_after
            if stall:
                self.stalled += 1
            elif behaviour in _OK:
                self._admitted += 1  # counted on admission so concurrent requests cannot overshoot
            self.log.append({"route": route, "prompt_hash": phash, "seed": seed,
                             "behaviour": "stalled" if stall else behaviour, "t": time.time()})
            self.requests.append({"route": route, "system": system, "user": user, "body": body, "images": images,
                                  "headers": {k.lower(): v for k, v in h.headers.items()}})
        if stall:
            self._release.wait(timeout=60)
            h.close_connection = True
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        if behaviour == "drop":
            h.close_connection = True
            return
        if behaviour == "bad_envelope":  # HTTP 200 whose body is not the protocol's JSON
            data = b"<html>upstream proxy error</html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if behaviour == "400_schema" and route == "openai" and rf.get("type") == "json_schema":
            return self._send(h, 400, {"error": {"message": "response_format type json_schema is not supported",
                                                 "type": "invalid_request_error"}})
        if behaviour == "llamacpp_schema" and route == "openai" and rf.get("type") == "json_schema":
            return self._send(h, 500, {"error": {"message": "1 validation error: response_format.type: Input should "
                                                            "be 'text' or 'json_object'", "type": "internal_server_error"}})
        if behaviour in ("429", "503", "500", "quota", "401", "400"):
            return self._send_error(h, route, behaviour)
        reasoning = "ad_analysis" in json.dumps(schema) or '"ad_analysis"' in user
        try:
            if "<<<DATA rewrite_request>>>" in user:
                text = _render(rule_rewrite(user), False, behaviour)
            elif "<<<DATA judge_request>>>" in user:
                text = _render_judge(self.rule_judge(user), behaviour)
            elif "<<<DATA polarity_request>>>" in user:
                text = json.dumps({"polarity": rule_polarity(user)})
            else:
                w = rule_weights(user, seed, self.jitter)
                for sub, factor in self.instruction_effects:
                    if sub in user or sub in system:
                        w = {k: round(v * factor, 6) for k, v in w.items()}
                text = _render(w, reasoning, behaviour, self.rationale_overrides)
        except (KeyError, ValueError, TypeError) as e:
            return self._send(h, 400, {"error": {"code": 400, "message": f"cannot read prompt: {e}", "status": "INVALID_ARGUMENT"}})
        if behaviour in _OK:
            with self._lock:
                self.ok_count += 1
        tin, tout = len(system + user) // 4, max(1, len(text) // 4)
        if route == "gemini":
            payload = {
                "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": tin, "candidatesTokenCount": tout, "totalTokenCount": tin + tout},
                "modelVersion": model,
            }
        else:
            payload = {
                "id": f"chatcmpl-{phash}", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
            }
        self._send(h, 200, payload)

    def _send_error(self, h: BaseHTTPRequestHandler, route: str, behaviour: str) -> None:
        headers: dict[str, str] = {}
        if behaviour == "429":
            code = 429
            headers["Retry-After"] = "1"
            body = ({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                               "message": "Resource has been exhausted: too many requests per minute, please retry.",
                               "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                            "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}]}}
                    if route == "gemini" else
                    {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}})
        elif behaviour == "quota":
            code = 429
            body = ({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                               "message": "Quota exceeded for metric generate_content_requests, limit per day reached.",
                               "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                            "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}
                    if route == "gemini" else
                    {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                               "type": "insufficient_quota", "code": "insufficient_quota"}})
        elif behaviour in ("503", "500"):
            code = int(behaviour)
            body = {"error": {"code": code, "status": "UNAVAILABLE" if code == 503 else "INTERNAL",
                              "message": "The model is overloaded. Please try again later."}}
        elif behaviour == "401":
            code = 401
            body = {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "API key not valid."}}
        else:
            code = 400
            body = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Request contains an invalid argument."}}
        self._send(h, code, body, headers)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json; charset=UTF-8")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
