"""The `openai` teacher: any OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server,
OpenAI, Azure OpenAI), asked asynchronously with a bounded number of requests in flight.

- Optional limits on requests per second and tokens per minute (token buckets, tokens
  estimated before the call and settled with the reported usage).
- Retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
  unparseable replies, honouring `Retry-After`; a per-request timeout. After the last retry
  the row is an error with its reason (`kind: detail`), not a crash.
- Classification through `logprobs`/`top_logprobs` where the endpoint offers them: the first
  answer token's alternatives become a probability over the label set; else the answer text.
  Generation and extraction: the answer text (JSON checked against the schema downstream).
- Token usage per row from the endpoint's `usage`. The key comes from the environment
  variable the config names and is sent only in the Authorization header.

Stops: `Budget` (spend limit, checked before each request) and a run of consecutive failures
(`max_consecutive_failures`) end the labelling cleanly: requests not yet sent are not sent,
the answers received are kept, and `TeacherStopped` says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

from distill.config import OpenAITeacherConfig
from distill.data import Record
from distill.prompts import generation_messages, system_text
from distill.teachers.base import TeacherAnswer

RETRYABLE = {429, 500, 502, 503, 504, 520, 522, 524}
REASON_PREFIX = "Reason:"


class TeacherStopped(Exception):
    """Labelling stopped early on purpose (spend limit, a teacher that keeps failing)."""


class Budget:
    """A spend limit: requests reserve their estimated cost before they are sent and settle
    the real one after; a reservation that would pass the limit is refused."""

    def __init__(self, max_usd: float | None, price: Any) -> None:
        self.max_usd = max_usd
        self.price = price  # TierCost: USD per million input / output tokens, per request
        self.spent = 0.0
        self.reserved = 0.0

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        p = self.price
        if p is None:
            return 0.0
        return (
            input_tokens * p.usd_per_million_input_tokens / 1e6
            + output_tokens * p.usd_per_million_output_tokens / 1e6
            + p.usd_per_request
        )

    def reserve(self, estimate: float) -> bool:
        if self.max_usd is not None and self.spent + self.reserved + estimate > self.max_usd:
            return False
        self.reserved += estimate
        return True

    def settle(self, estimate: float, actual: float) -> None:
        self.reserved -= estimate
        self.spent += actual


class _Limiter:
    """Token buckets for requests per second and tokens per minute (either may be None)."""

    def __init__(self, rps: float | None, tpm: float | None) -> None:
        self.rps, self.tpm = rps, tpm
        self._next_request = 0.0
        self._tokens = tpm or 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self, tokens: float) -> None:
        async with self._lock:
            now = time.monotonic()
            if self.rps:
                delay = self._next_request - now
                if delay > 0:
                    await asyncio.sleep(delay)
                    now = time.monotonic()
                self._next_request = max(now, self._next_request) + 1.0 / self.rps
            if self.tpm:
                self._tokens = min(self.tpm, self._tokens + (now - self._stamp) * self.tpm / 60)
                self._stamp = now
                need = min(tokens, self.tpm)
                if self._tokens < need:
                    await asyncio.sleep((need - self._tokens) * 60 / self.tpm)
                    self._tokens = need
                    self._stamp = time.monotonic()
                self._tokens -= need


def label_probs(top: list[dict], labels: list[str], answer: str) -> dict[str, float] | None:
    """A probability over the label set from the first answer token's top_logprobs.

    Each alternative token's probability goes to the labels it starts (the answer's own label
    when it is one of them, else shared evenly); the result is normalised over the labels.
    None when no alternative starts any label."""
    scores = dict.fromkeys(labels, 0.0)
    for alternative in top:
        token = str(alternative.get("token", "")).strip()
        if not token:
            continue
        starts = [label for label in labels if label.startswith(token)]
        if not starts:
            continue
        mass = math.exp(float(alternative.get("logprob", -math.inf)))
        if answer in starts:
            scores[answer] += mass
        else:
            for label in starts:
                scores[label] += mass / len(starts)
    total = sum(scores.values())
    if total <= 0:
        return None
    return {label: value / total for label, value in scores.items()}


class OpenAITeacher:
    cacheable = True

    def __init__(self, config: OpenAITeacherConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.log = log
        self.batch_size = max(config.max_in_flight * 32, 256)  # rows per label_batch call
        settings = {
            "base_url": config.base_url.rstrip("/"),
            "model": config.model,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "logprobs": config.logprobs,
            "json_mode": config.json_mode,
            "rationales": config.rationales,
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.identity = f"openai:{config.name or config.model}:{digest}"
        self.budget: Budget | None = None  # set by the label stage (spend limit)
        self._failures_in_row = 0
        self._stop: str | None = None

    # ── what is asked ───────────────────────────────────────────────────────────────────
    def messages(self, task, text: str) -> list[dict[str, str]]:
        if task.kind != "classification":
            return generation_messages(task, text)
        system = system_text(task)
        if self.config.rationales:
            system += (
                f"\nThen, on a second line, write '{REASON_PREFIX}' and one short sentence "
                "explaining the label."
            )
        messages = [{"role": "system", "content": system}]
        for example in task.examples:
            messages.append({"role": "user", "content": example.text})
            messages.append({"role": "assistant", "content": example.label})
        messages.append({"role": "user", "content": text})
        return messages

    def body(self, task, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": self.messages(task, text),
            "temperature": self.config.temperature,
        }
        if task.kind == "classification":
            body["max_tokens"] = self.config.max_tokens + (48 if self.config.rationales else 0)
            if self.config.logprobs:
                body |= {"logprobs": True, "top_logprobs": 20}
        else:
            body["max_tokens"] = task.max_new_tokens
            if task.kind == "extraction" and self.config.json_mode:
                body["response_format"] = {"type": "json_object"}
        return body

    def cache_key(self, task, record: Record) -> str:
        blob = json.dumps([self.identity, self.body(task, record.text)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    # ── asking ──────────────────────────────────────────────────────────────────────────
    def label_batch(
        self,
        task,
        records: list[Record],
        on_answer: Callable[[int, TeacherAnswer], None] | None = None,
    ) -> list[TeacherAnswer | None]:
        """One answer per record (None for records not asked because labelling stopped);
        `on_answer(i, answer)` is called as each arrives, so it can be stored at once."""
        if self._stop:
            raise TeacherStopped(self._stop)
        results: list[TeacherAnswer | None] = [None] * len(records)
        asyncio.run(self._run(task, records, results, on_answer))
        if self._stop:
            raise TeacherStopped(self._stop)
        return results

    async def _run(self, task, records, results, on_answer) -> None:
        import aiohttp

        config = self.config
        limiter = _Limiter(config.requests_per_second, config.tokens_per_minute)
        gate = asyncio.Semaphore(config.max_in_flight)
        connector = aiohttp.TCPConnector(limit=config.max_in_flight)
        url, headers = self._endpoint()
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one(i: int, record: Record) -> None:
                async with gate:
                    if self._stop:
                        return
                    answer = await self._ask(session, url, task, record, limiter)
                if answer is None:
                    return
                results[i] = answer
                if on_answer is not None:
                    try:
                        on_answer(i, answer)
                    except BaseException as exc:  # e.g. a full disk: ask nothing more
                        self._stop = f"storing an answer failed ({type(exc).__name__})"
                        raise

            await asyncio.gather(*(one(i, r) for i, r in enumerate(records)))

    def _endpoint(self) -> tuple[str, dict[str, str]]:
        """The completions URL and headers; the key (if set) goes only into the header."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.config.base_url.rstrip("/") + "/chat/completions", headers

    def _estimate(self, body: dict) -> tuple[float, float]:
        chars = sum(len(m["content"]) for m in body["messages"])
        return chars / 3 + 4 * len(body["messages"]), float(body["max_tokens"])

    async def _ask(self, session, url, task, record, limiter) -> TeacherAnswer | None:
        config = self.config
        body = self.body(task, record.text)
        est_in, est_out = self._estimate(body)
        estimate = self.budget.cost(est_in, est_out) if self.budget else 0.0
        if self.budget is not None and not self.budget.reserve(estimate):
            self._stop = (
                f"spend limit: teacher.max_cost_usd = {self.budget.max_usd:g} would be passed "
                f"(spent ${self.budget.spent:.4f} this run)"
            )
            return None
        started = time.monotonic()

        def parse(data: dict) -> TeacherAnswer:
            return self._parse(task, data, time.monotonic() - started)

        answer, error, attempts = await self._post(
            session, url, body, parse, limiter, est_in + est_out
        )
        if answer is not None:
            self._settle(estimate, answer)
            self._failures_in_row = 0
            return answer
        if self.budget is not None:
            self.budget.settle(estimate, 0.0)
        self._failures_in_row += 1
        if self._failures_in_row >= config.max_consecutive_failures and not self._stop:
            self._stop = (
                f"the teacher failed {self._failures_in_row} calls in a row (last: {error}); "
                "check teacher.base_url, the model name and the key"
            )
        return TeacherAnswer(
            label=None,
            error=f"{error} (after {attempts} attempt{'s' * (attempts > 1)})",
            latency_s=time.monotonic() - started,
        )

    async def _post(self, session, url, body, parse, limiter, tokens: float):
        """POST with the retry policy; (parse(reply JSON), None, attempts) or (None, error,
        attempts) once the retries are spent or the error is not worth retrying."""
        import aiohttp

        config = self.config
        error = "unknown"
        attempts = 0
        for attempt in range(config.max_retries + 1):
            attempts = attempt + 1
            await limiter.wait(tokens)
            retry_after = None
            try:
                timeout = aiohttp.ClientTimeout(total=config.timeout_s)
                async with session.post(url, json=body, timeout=timeout) as reply:
                    text = await reply.text()
                    if reply.status == 200:
                        try:
                            return parse(json.loads(text)), None, attempts
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            error = f"malformed_response: {type(exc).__name__}: {str(exc)[:80]}"
                    elif reply.status in RETRYABLE:
                        kind = "rate_limited" if reply.status == 429 else "server_error"
                        error = f"{kind}: HTTP {reply.status}"
                        retry_after = _retry_after(reply.headers.get("Retry-After"))
                    else:  # 4xx other than 429: asking again will not help
                        kind = "auth" if reply.status in (401, 403) else "http_error"
                        error = f"{kind}: HTTP {reply.status}: {_message(text)}"
                        break
            except TimeoutError:
                error = f"timeout: no reply within {config.timeout_s:g} s"
            except aiohttp.ClientError as exc:
                error = f"connection: {type(exc).__name__}"
            if attempt < config.max_retries:
                delay = min(config.max_backoff_s, config.backoff_s * 2**attempt)
                delay *= random.uniform(0.5, 1.5)
                await asyncio.sleep(max(delay, retry_after or 0.0))
        return None, error, attempts

    def complete(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        """One chat completion's text (for writing synthetic inputs); raises on failure."""
        import aiohttp

        body = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        url, headers = self._endpoint()

        async def run():
            limiter = _Limiter(self.config.requests_per_second, self.config.tokens_per_minute)
            async with aiohttp.ClientSession(headers=headers) as session:
                return await self._post(
                    session,
                    url,
                    body,
                    lambda d: d["choices"][0]["message"]["content"],
                    limiter,
                    max_tokens,
                )

        text, error, _ = asyncio.run(run())
        if text is None or not isinstance(text, str):
            raise RuntimeError(f"the teacher did not answer: {error}")
        return text

    def _settle(self, estimate: float, answer: TeacherAnswer) -> None:
        if self.budget is not None:
            actual = self.budget.cost(answer.input_tokens, answer.output_tokens)
            self.budget.settle(estimate, actual)

    def _parse(self, task, data: dict, latency: float) -> TeacherAnswer:
        choice = data["choices"][0]
        content = choice["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("message content is not text")
        usage = data.get("usage") or {}
        rationale = None
        probs = None
        if task.kind == "classification":
            first, _, rest = content.strip().partition("\n")
            label = first.strip()
            if self.config.rationales and REASON_PREFIX in rest:
                rationale = rest.split(REASON_PREFIX, 1)[1].strip() or None
            tokens = ((choice.get("logprobs") or {}).get("content")) or []
            if tokens and tokens[0].get("top_logprobs"):
                probs = label_probs(tokens[0]["top_logprobs"], task.label_names, label)
        else:
            label = content.strip()
        return TeacherAnswer(
            label=label,
            probs=probs,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency,
            rationale=rationale,
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return None


def _message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message)[:200]
    except (ValueError, AttributeError):
        return text[:200]
