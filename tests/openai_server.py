"""An OpenAI-compatible chat server on loopback that answers by rule, for testing teacher backends.

FastAPI on uvicorn (one worker, async endpoints: many requests in flight at once). It answers
`POST /v1/chat/completions` deterministically from the prompt, injects faults on request, and
counts calls per input, so a test can prove that a resumed labelling run repeats no call.

Run:
    python -m tests.openai_server --port 0 [--api-key-env VAR] [--latency-ms N] [--model NAME]
        [--state DIR] [--rate-limit-every N --retry-after-s S] [--error-500-every N]
        [--slow-every N --slow-ms MS] [--drop-every N] [--malformed-every N]
        [--bad-label-every N] [--fail-all] [--fail-inputs SUBSTRING ...]

It prints one line `READY http://127.0.0.1:PORT` to stdout once uvicorn serves, and serves until
killed. tests/openai_fixture.py starts and stops it for tests.

Endpoints:
    POST /v1/chat/completions   GET /v1/models   GET /v1/models/{model}
    GET  /_test/stats           POST /_test/reset   GET|POST /_test/faults   (no auth)
If the environment variable named by --api-key-env (default $CASCADEKIT_TEST_OPENAI_KEY) is set,
/v1/* needs `Authorization: Bearer KEY`; anything else gets 401 with code `invalid_api_key`. The key
is never logged nor written. A request for another model than --model gets 404
`model_not_found`; `stream: true` and `n > 1` get 400.

The answer rule reads the system messages (role system or developer, joined by newlines) and the
input: the text of the last user message.
1. Classification: the system text holds CLASSIFY_MARKER and a line `Labels:` followed by lines
   `- name: description` or `- name` (cascadekit's distill/prompts.py `system_text`; the first
   ": " of a line splits name from description). Each label scores the number of distinct words
   it shares with the input: words are runs of letters and digits, lower-cased, less STOPWORDS;
   a label's words come from its name (underscores as spaces) and its description. The answer is
   the best-scoring label, the first one on a tie. When the system text also asks for a
   `'Reason:'` line (cascadekit's rationales), a second line `Reason: ...` follows the label.
2. Extraction: otherwise, when the system text holds "JSON Schema", the schema is the JSON object
   after SCHEMA_MARKER (else the first `{` after "JSON Schema"); a `response_format` of type
   `json_schema` gives the schema directly and comes first. The answer is json.dumps of
   `schema_value(schema, input)` (see there): it validates against the schema for schemas
   built from type / properties / items / enum / const / minimum / maximum / minItems / anyOf /
   oneOf / allOf / local $ref; `pattern`, `format` and string lengths are not honoured.
3. Anything else: the first 8 whitespace-separated words of the input (as `{"summary": ...}`
   when `response_format` is `json_object`).
`max_tokens` / `max_completion_tokens` cut the answer to that many tokens (finish_reason
"length"); otherwise finish_reason is "stop". Temperature is ignored: answers are deterministic.

Tokens come from `tokenize`: chunks that start with their leading spaces or underscores, so
"card_lost" -> ["card", "_lost"] and "".join(tokenize(text)) == text. usage: prompt_tokens = the
whitespace-separated words of all messages + 4 per message; completion_tokens = the answer's
tokens; total_tokens = their sum.

Log probabilities (classification, `logprobs: true`, `top_logprobs: k` in 0..20): a label's
probability is the softmax of the labels' scores (logit = shared-word count), so
p(label) = exp(score) / sum(exp(scores)). `choices[0].logprobs.content` has one entry per answer
token as the label tree gives it: at position j the candidates are the labels whose first j
tokens equal the answer's; a next token's probability is the summed probability of the
candidates that continue with it, divided by that of all candidates. So the FIRST token's
`top_logprobs` lists the distinct first tokens of all labels (most probable first, ties in
label order, cut to k) with exp(logprob) = the summed probability of the labels starting with
that token; they sum to 1 when k covers them all. A client recovers p(label) as:
- a label whose first token no other label shares: exp(first-token logprob of that token);
- labels sharing a first token (card_lost, card_arrival): that token's probability times the
  later tokens' conditional probabilities from the `top_logprobs` of the answer's later
  entries (given only along the answered path; a label that is a whole-token prefix of
  another keeps the remainder of its group, its end of turn not being a listed token).
The answered token is the best label's, so with shared first tokens it need not be the first
entry of `top_logprobs`. Tokens of a bad-label answer, of a `Reason:` line and of non-label
answers carry logprob 0 with themselves as their only alternative.

Fault switches: the same names on the command line (`--rate-limit-every 3`) and in the JSON body
of `POST /_test/faults` (`{"rate_limit_every": 3}`; the body replaces all switches: one it leaves
out takes its default, off). See `FaultSwitches`. Each completion request that passes auth and
validation gets a number n, 1-based, counted since start, the last /_test/reset or the last
/_test/faults; a `*_every: N` switch fires when n % N == 0 (N = 0 or null: off). Every
completion request first waits --latency-ms; then, in this order, the first of these that
applies decides: fail_all (500), fail_inputs (500), rate_limit (429 + Retry-After), error_500
(500), drop (the connection is closed, no response); slow then sleeps slow_ms more and goes on;
then malformed (200, a body that is not JSON), bad_label (200, the label "not_a_label";
classification prompts only), else the rule's answer. Counts per kind are in the stats under
"faults". `retry_after_s` may be fractional ("0.05"): not valid HTTP, but clients that read the
header as a float (openai, cascadekit) accept it.

Stats (`GET /_test/stats`): requests (every /v1 request), completion_requests (numbered ones),
completions (200 answers with a JSON body, bad labels included), unauthorized, bad_requests,
by_input and completed_by_input ({input_key(input): count} of completion requests, resp. of
completions), faults ({kind: count}), in_flight and in_flight_max (completion requests being
served at once). With --state DIR the stats are loaded from DIR/stats.json at start and written
there (atomically) on every change, so they outlive the server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import math
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

API_KEY_ENV = "CASCADEKIT_TEST_OPENAI_KEY"
DEFAULT_MODEL = "rule-teacher"
CLASSIFY_MARKER = "Reply with exactly one label from the list, and nothing else."
REASON_MARKER = "'Reason:'"
SCHEMA_MARKER = "It must follow this JSON Schema:\n"
BAD_LABEL = "not_a_label"
SUMMARY_WORDS = 8
MAX_TOP_LOGPROBS = 20
# fmt: off
STOPWORDS = frozenset({  # not counted when a label and the input share words
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "for", "from", "has", "have", "i",
    "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "that", "the", "their",
    "this", "to", "was", "we", "were", "will", "with", "you", "your"
})
# fmt: on
WORD_RE = re.compile(r"[^\W_]+")  # letters and digits
LETTERS_RE = re.compile(r"[^\W\d_]+")
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
INTEGER_RE = re.compile(r"-?\d+")
TOKEN_RE = re.compile(r"[\s_]*[^\s_]+|[\s_]+")


class FaultSwitches(BaseModel):
    """What goes wrong, and when (n: the completion request's number; see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_every: int | None = Field(None, ge=0, description="429 when n % N == 0 (0: off)")
    retry_after_s: float = Field(1, ge=0, description="the 429's Retry-After header, seconds")
    error_500_every: int | None = Field(None, ge=0, description="500 when n % N == 0 (0: off)")
    slow_every: int | None = Field(None, ge=0, description="sleep slow_ms more when n % N == 0")
    slow_ms: int = Field(3000, ge=0, description="the extra sleep of a slow request")
    drop_every: int | None = Field(
        None, ge=0, description="close the connection unanswered when n % N == 0"
    )
    malformed_every: int | None = Field(None, ge=0, description="200, body not JSON, n % N == 0")
    bad_label_every: int | None = Field(
        None, ge=0, description="answer a label not in the set when n % N == 0"
    )
    fail_all: bool = Field(False, description="500 for every completion request")
    fail_inputs: list[str] = Field(
        default_factory=list, description="500 for every input holding one of these substrings"
    )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The Chat Completions fields this server reads; others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    response_format: dict[str, Any] | None = None


class OpenAIError(Exception):
    """An error answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": None, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


# ── the answer rule (pure) ───────────────────────────────────────────────────────────────
def input_key(text: str) -> str:
    """The stats key of an input: the first 16 hex digits of its UTF-8 sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def tokenize(text: str) -> list[str]:
    """Chunks that carry their leading spaces / underscores: "card_lost" -> ["card", "_lost"]."""
    return TOKEN_RE.findall(text)


def words(text: str) -> set[str]:
    """The distinct lower-cased words of `text` (letters and digits), less STOPWORDS."""
    return set(WORD_RE.findall(text.lower())) - STOPWORDS


def parse_labels(system: str) -> list[tuple[str, str]] | None:
    """(name, description) of each label of a classification prompt; None if it is not one."""
    if CLASSIFY_MARKER not in system:
        return None
    lines = system.splitlines()
    try:
        start = [line.strip() for line in lines].index("Labels:") + 1
    except ValueError:
        return None
    labels = []
    for line in lines[start:]:
        if not line.startswith("- "):
            break
        name, _, description = line[2:].partition(": ")
        labels.append((name, description))
    return labels or None


def label_scores(labels: list[tuple[str, str]], text: str) -> list[int]:
    """Per label: how many distinct words its name and description share with `text`."""
    input_words = words(text)
    return [
        len(words(name.replace("_", " ") + " " + description) & input_words)
        for name, description in labels
    ]


def label_probabilities(scores: list[int]) -> list[float]:
    """The softmax of the scores: each label's probability in the log probabilities."""
    top = max(scores)
    weights = [math.exp(score - top) for score in scores]
    total = sum(weights)
    return [weight / total for weight in weights]


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def flat_logprobs(answer: str, top_k: int) -> list[dict[str, Any]]:
    """Log probabilities of an answer the label tree does not give: each token is certain."""
    return [
        {**_token_entry(token, 0.0), "top_logprobs": [_token_entry(token, 0.0)][:top_k]}
        for token in tokenize(answer)
    ]


def label_logprobs(
    names: list[str], probabilities: list[float], answer: str, top_k: int
) -> list[dict[str, Any]]:
    """`logprobs.content` for answering the label `answer` (see the module doc)."""
    label_tokens = [tokenize(name) for name in names]
    entries = []
    path: list[str] = []
    for token in tokenize(answer):
        position = len(path)
        candidates = [
            (tokens, p)
            for tokens, p in zip(label_tokens, probabilities, strict=True)
            if tokens[:position] == path
        ]
        total = sum(p for _, p in candidates)
        next_mass: dict[str, float] = {}  # insertion order = label order, for ties
        for tokens, p in candidates:
            if len(tokens) > position:
                next_mass[tokens[position]] = next_mass.get(tokens[position], 0.0) + p
        ranked = sorted(next_mass.items(), key=lambda item: -item[1])
        entry = _token_entry(token, math.log(next_mass[token] / total))
        entry["top_logprobs"] = [_token_entry(t, math.log(m / total)) for t, m in ranked[:top_k]]
        entries.append(entry)
        path.append(token)
    return entries


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    """Follow local `$ref`s ("#/$defs/Name") within the root schema."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        target: Any = root
        for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
            if not part:
                continue
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        schema, seen = target, seen + 1
    return schema


def _clamp(value: float, schema: dict[str, Any]) -> float:
    if isinstance(schema.get("minimum"), (int, float)):
        value = max(value, schema["minimum"])
    if isinstance(schema.get("maximum"), (int, float)):
        value = min(value, schema["maximum"])
    return value


def schema_value(schema: Any, text: str, root: dict[str, Any] | None = None) -> Any:
    """A value for `schema` made from `text`: enum -> its first value, const -> it; string ->
    the input's first word of more than 3 letters (else its first word, else ""); number -> the
    input's first number (else 0), integer -> its first integer (else 0), both clamped to
    minimum / maximum; boolean -> false; null -> null; array -> minItems copies of its items'
    value (none by default); object (or properties without a type) -> every property's value;
    anyOf / oneOf / allOf -> the first branch; a list of types -> the first that is not null."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return schema_value(schema[combinator][0], text, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "string":
        letters = LETTERS_RE.findall(text)
        long_words = [word for word in letters if len(word) > 3]
        return (long_words or letters or [""])[0]
    if kind == "integer":
        match = INTEGER_RE.search(text)
        return int(_clamp(int(match.group()) if match else 0, schema))
    if kind == "number":
        match = NUMBER_RE.search(text)
        number = (float if "." in match.group() else int)(match.group()) if match else 0
        return _clamp(number, schema)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if kind == "array":
        return [schema_value(schema.get("items", {}), text, root)] * int(schema.get("minItems", 0))
    properties = schema.get("properties") or {}
    return {name: schema_value(sub, text, root) for name, sub in properties.items()}


def parse_schema(system: str) -> dict[str, Any] | None:
    """The JSON Schema an extraction prompt embeds, or None."""
    if "JSON Schema" not in system:
        return None
    start = system.find(SCHEMA_MARKER)
    start = (
        start + len(SCHEMA_MARKER) if start >= 0 else system.find("{", system.find("JSON Schema"))
    )
    if start < 0:
        return None
    try:
        schema, _ = json.JSONDecoder().raw_decode(system[start:].lstrip())
    except json.JSONDecodeError:
        return None
    return schema if isinstance(schema, dict) else None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    parts = [part.get("text") for part in content or () if part.get("type") == "text"]
    return "".join(p for p in parts if isinstance(p, str))


def answer_for(request: ChatRequest, *, bad_label: bool = False) -> dict[str, Any]:
    """The rule's answer: {content, kind ('label' | 'json' | 'summary'), logprobs, finish}."""
    system = "\n".join(
        _text(m.content) for m in request.messages if m.role in ("system", "developer")
    )
    users = [m for m in request.messages if m.role == "user"]
    text = _text(users[-1].content) if users else ""
    top_k = request.top_logprobs or 0
    labels = parse_labels(system)
    response_format = request.response_format or {}
    schema = None
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
    elif labels is None:
        schema = parse_schema(system)

    if schema is not None:
        content, kind = json.dumps(schema_value(schema, text), ensure_ascii=False), "json"
        logprobs = flat_logprobs(content, top_k)
    elif labels is not None:
        kind = "label"
        names = [name for name, _ in labels]
        scores = label_scores(labels, text)
        if bad_label:
            content = BAD_LABEL
            logprobs = flat_logprobs(content, top_k)
        else:
            content = names[scores.index(max(scores))]
            logprobs = label_logprobs(names, label_probabilities(scores), content, top_k)
        if REASON_MARKER in system:
            shared = sorted(words(text) & words(content.replace("_", " ")))
            reason = "\nReason: the input mentions " + (", ".join(shared) or "none of the labels")
            content += reason
            logprobs += flat_logprobs(reason, top_k)
    else:
        content = " ".join(text.split()[:SUMMARY_WORDS])
        if response_format.get("type") == "json_object":
            content = json.dumps({"summary": content}, ensure_ascii=False)
        kind = "summary"
        logprobs = flat_logprobs(content, top_k)

    limit = request.max_completion_tokens or request.max_tokens
    finish = "stop"
    if limit is not None and len(logprobs) > limit:
        logprobs = logprobs[:limit]
        content = "".join(entry["token"] for entry in logprobs)
        finish = "length"
    return {"content": content, "kind": kind, "logprobs": logprobs, "finish": finish}


def prompt_tokens(request: ChatRequest) -> int:
    """usage.prompt_tokens: whitespace-separated words of all messages + 4 per message."""
    return sum(len(_text(m.content).split()) + 4 for m in request.messages)


# ── the server ───────────────────────────────────────────────────────────────────────────
class TrackedH11Protocol(H11Protocol):
    """uvicorn's h11 connection, remembered by peer address so a fault can close it unanswered
    (ASGI has no way to abort; uvicorn answers 500 when an app returns without a response)."""

    transports: ClassVar[dict[tuple[str, int], asyncio.Transport]] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a response goes out in two writes: no Nagle delay between them
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.client:
            self.transports[tuple(self.client)] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client:
            self.transports.pop(tuple(self.client), None)
        super().connection_lost(exc)


def _new_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "completion_requests": 0,
        "completions": 0,
        "unauthorized": 0,
        "bad_requests": 0,
        "by_input": {},
        "completed_by_input": {},
        "faults": {},
        "in_flight": 0,
        "in_flight_max": 0,
    }


class ServerState:
    """Settings, fault switches and counters. One event loop: no locks needed."""

    def __init__(
        self,
        model: str,
        api_key: str | None,
        latency_ms: int,
        faults: FaultSwitches,
        state_dir: Path | None,
    ) -> None:
        self.model = model
        self.api_key = api_key
        self.latency_ms = latency_ms
        self.faults = faults
        self.fault_clock = 0  # completion requests since start, reset or faults change
        self.state_path = state_dir / "stats.json" if state_dir else None
        self.stats = _new_stats()
        if self.state_path is not None and self.state_path.exists():
            self.stats |= json.loads(self.state_path.read_text())
            self.stats["in_flight"] = 0

    def save(self) -> None:
        """Write the stats atomically to --state DIR, if given."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".stats.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.stats, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def count_fault(self, kind: str) -> None:
        self.stats["faults"][kind] = self.stats["faults"].get(kind, 0) + 1
        self.save()


def _due(every: int | None, number: int) -> bool:
    return bool(every) and number % every == 0


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app serving `state`."""
    app = FastAPI(title="cascadekit rule teacher", docs_url=None, redoc_url=None)
    stats = state.stats

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return error.response()

    def check_auth(request: Request) -> None:
        stats["requests"] += 1
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), state.api_key.encode()
        ):
            stats["unauthorized"] += 1
            state.save()
            raise OpenAIError(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )

    def model_card() -> dict[str, Any]:
        return {"id": state.model, "object": "model", "created": 0, "owned_by": "cascadekit-test"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_auth(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        check_auth(request)
        if model != state.model:
            raise OpenAIError(404, f"The model `{model}` does not exist", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_auth(request)
        try:
            body = ChatRequest.model_validate_json(await request.body())
        except ValidationError as error:
            stats["bad_requests"] += 1
            state.save()
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()
            )
            raise OpenAIError(400, f"Invalid request: {problems}") from None
        problem = None
        if body.model != state.model:
            stats["bad_requests"] += 1
            state.save()
            raise OpenAIError(
                404, f"The model `{body.model}` does not exist", code="model_not_found"
            )
        if body.stream:
            problem = "stream: streaming is not supported by this test server"
        elif body.n not in (None, 1):
            problem = "n: only n=1 is supported by this test server"
        elif body.top_logprobs is not None and not body.logprobs:
            problem = "top_logprobs: logprobs must be true when top_logprobs is set"
        if problem:
            stats["bad_requests"] += 1
            state.save()
            raise OpenAIError(400, problem)

        users = [m for m in body.messages if m.role == "user"]
        text = _text(users[-1].content) if users else ""
        key = input_key(text)
        state.fault_clock += 1
        number = state.fault_clock
        faults = state.faults
        stats["completion_requests"] += 1
        stats["by_input"][key] = stats["by_input"].get(key, 0) + 1
        stats["in_flight"] += 1
        stats["in_flight_max"] = max(stats["in_flight_max"], stats["in_flight"])
        state.save()
        try:
            if state.latency_ms:
                await asyncio.sleep(state.latency_ms / 1000)
            if faults.fail_all:
                state.count_fault("fail_all")
                raise OpenAIError(500, "fail_all is on", "server_error")
            if any(part in text for part in faults.fail_inputs):
                state.count_fault("fail_inputs")
                raise OpenAIError(500, "this input always fails (fail_inputs)", "server_error")
            if _due(faults.rate_limit_every, number):
                state.count_fault("rate_limit")
                raise OpenAIError(
                    429,
                    f"Rate limit reached for {state.model}. Please try again later.",
                    "requests",
                    "rate_limit_exceeded",
                    {"Retry-After": f"{faults.retry_after_s:g}"},
                )
            if _due(faults.error_500_every, number):
                state.count_fault("error_500")
                raise OpenAIError(
                    500, "The server had an error while processing your request.", "server_error"
                )
            if _due(faults.drop_every, number):
                state.count_fault("drop")
                transport = TrackedH11Protocol.transports.get(tuple(request.client or ()))
                if transport is None:
                    raise RuntimeError("drop: this request's connection is not tracked")
                transport.close()  # FIN with nothing sent: the client reads no response
                for _ in range(3):  # let uvicorn see the connection lost: it then sends nothing
                    await asyncio.sleep(0)
                return Response(status_code=204)
            if _due(faults.slow_every, number):
                state.count_fault("slow")
                await asyncio.sleep(faults.slow_ms / 1000)
            if _due(faults.malformed_every, number):
                state.count_fault("malformed")
                return Response(
                    b'{"id": "chatcmpl-malformed", "choices": [{"message": {"content": ',
                    media_type="application/json",
                )
            bad_label = _due(faults.bad_label_every, number)
            answer = answer_for(body, bad_label=bad_label)
            if bad_label and answer["kind"] == "label":
                state.count_fault("bad_label")
            message = {"role": "assistant", "content": answer["content"], "refusal": None}
            logprobs = None
            if body.logprobs:
                logprobs = {"content": answer["logprobs"], "refusal": None}
            usage_in = prompt_tokens(body)
            usage_out = len(answer["logprobs"])
            stats["completions"] += 1
            stats["completed_by_input"][key] = stats["completed_by_input"].get(key, 0) + 1
            state.save()
            return JSONResponse(
                {
                    "id": f"chatcmpl-{stats['completion_requests']:08d}{key[:8]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": state.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": logprobs,
                            "finish_reason": answer["finish"],
                        }
                    ],
                    "usage": {
                        "prompt_tokens": usage_in,
                        "completion_tokens": usage_out,
                        "total_tokens": usage_in + usage_out,
                    },
                }
            )
        finally:
            stats["in_flight"] -= 1
            state.save()

    @app.get("/_test/stats")
    async def get_stats() -> dict[str, Any]:
        return stats

    @app.post("/_test/reset")
    async def reset() -> dict[str, Any]:
        in_flight = stats["in_flight"]
        stats.clear()
        stats.update(_new_stats(), in_flight=in_flight)
        state.fault_clock = 0
        state.save()
        return stats

    @app.get("/_test/faults")
    async def get_faults() -> dict[str, Any]:
        return state.faults.model_dump()

    @app.post("/_test/faults")
    async def set_faults(request: Request) -> dict[str, Any]:
        try:
            state.faults = FaultSwitches.model_validate_json(await request.body() or b"{}")
        except ValidationError as error:
            raise OpenAIError(400, f"Invalid fault switches: {error}") from None
        state.fault_clock = 0
        return state.faults.model_dump()

    return app


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve on `sock`, printing the READY line once uvicorn accepts connections."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            raise SystemExit("uvicorn stopped before it served")
        await asyncio.sleep(0.01)
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await task


def _fault_arguments(parser: argparse.ArgumentParser) -> None:
    """One command-line switch per FaultSwitches field, same name with dashes."""
    group = parser.add_argument_group("fault switches (also POST /_test/faults)")
    for name, field in FaultSwitches.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = field.description.replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            group.add_argument(flag, dest=name, action="store_true", help=text)
        elif name == "fail_inputs":
            group.add_argument(
                flag, dest=name, nargs="+", action="extend", default=[], help=text, metavar="TEXT"
            )
        else:
            number = float if field.annotation is float else int
            metavar = "N" if name.endswith("_every") else name.rsplit("_", 1)[-1].upper()
            group.add_argument(
                flag, dest=name, type=number, default=field.default, help=text, metavar=metavar
            )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, print the READY line and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        help="variable holding the one valid key (unset: none)",
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="every completion waits this")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the one model served")
    parser.add_argument(
        "--state", type=Path, metavar="DIR", help="keep the stats in DIR/stats.json"
    )
    _fault_arguments(parser)
    args = parser.parse_args(argv)
    faults = FaultSwitches(**{name: getattr(args, name) for name in FaultSwitches.model_fields})
    state = ServerState(
        args.model, os.environ.get(args.api_key_env) or None, args.latency_ms, faults, args.state
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)
    config = uvicorn.Config(
        create_app(state),
        http=TrackedH11Protocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
        timeout_graceful_shutdown=2,
    )
    asyncio.run(_serve(uvicorn.Server(config), sock))


if __name__ == "__main__":
    sys.exit(main())
