"""`cascadekit serve`: the cascade behind an HTTP API (FastAPI + uvicorn).

    POST /v1/classify           {"task": "intent", "inputs": ["...", ...]}
    POST /v1/chat/completions   OpenAI-compatible; `model` names the task, the last user
                                message is the input (existing OpenAI clients work unchanged)
    GET  /healthz               ready, tasks, queue depth
    GET  /metrics               Prometheus text: requests, deferral, latency per source,
                                teacher spend, estimated savings, drift audit

Student calls are micro-batched: requests wait in a bounded queue (full: 503 with
Retry-After) and a worker takes up to `max_batch` of them, of any tasks, waiting at most
`max_wait_ms` to fill a batch; it sorts them by length and answers them in forward passes of
`forward_batch` (little padding). Deferred inputs go to the teacher in a thread of their own,
so student answers are never held behind teacher calls. A share of the student-answered
requests (`audit_share`) is also sent to the teacher in the background: an anytime-valid test
of their disagreement (eval.drift) raises the task's threshold when drift shows, exposes the
alarm in /metrics and the log, and appends the audited pairs to a JSONL file that
`label`/`train` can take as data.

Whatever a client sends, it gets an answer or a 4xx in one shape, {"error": {"message",
"type"}}, naming what is wrong: bodies are read counting bytes as they arrive (413 past
`max_body_bytes`, chunked or not), parsed with a depth limit (400), checked field by field
(422) and text by text (a lone surrogate: 400) before they join a batch; a forward pass that
fails anyway is retried one input at a time, so only the culprit's request fails.
"""

import asyncio  # no `from __future__ import annotations`: FastAPI reads the handlers' types
import hmac
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.cascade import Cascade, Prediction, read_documents
from distill.data import check_unicode
from distill.errors import DataError, UserError, short

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ServeSettings:
    max_batch: int = 16  # inputs the worker takes from the queue at once
    forward_batch: int = 8  # inputs per forward pass, sorted by length (less padding)
    max_wait_ms: float = 5.0
    queue_size: int = 256  # waiting inputs; beyond this a request gets 503
    max_inputs: int = 64  # inputs per request
    max_body_bytes: int = 1_000_000
    body_timeout_s: float = 30.0  # a body must arrive whole within this (else 408)
    max_connections: int = 1000  # open connections; beyond this a new one gets 503
    max_input_chars: int = 20_000
    api_key: str | None = None  # required as a bearer token when set
    audit_share: float = 0.0  # share of student answers also sent to the teacher
    audit_log: Path | None = None
    drift_delta: float = 0.05
    drift_limit: dict[str, float] = field(default_factory=dict)  # task -> alarm level of p
    router: str | None = None  # a task whose answer names the task that handles a request
    precision: str = "fp32"  # "bf16": classifiers in bfloat16, thresholds recalibrated on calib


class Metrics:
    """Counters and histograms in Prometheus' text format (no client library needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = {}
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.histograms: dict[tuple[str, tuple], list[float]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def counter(self, name: str, **labels: str) -> float:
        with self.lock:
            return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            buckets = self.histograms.setdefault(key, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, edge in enumerate(LATENCY_BUCKETS):
                if value <= edge:
                    buckets[i] += 1
            buckets[-2] += 1  # count
            buckets[-1] += value  # sum

    def render(self) -> str:
        def fmt(labels: tuple, extra: str = "") -> str:
            parts = [f'{k}="{v}"' for k, v in labels] + ([extra] if extra else [])
            return "{" + ",".join(parts) + "}" if parts else ""

        lines = []
        with self.lock:
            for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
                for name in sorted({n for n, _ in table}):
                    lines.append(f"# TYPE {name} {kind}")
                    for (n, labels), value in sorted(table.items()):
                        if n == name:
                            lines.append(f"{name}{fmt(labels)} {value:g}")
            for name in sorted({n for n, _ in self.histograms}):
                lines.append(f"# TYPE {name} histogram")
                for (n, labels), buckets in sorted(self.histograms.items()):
                    if n != name:
                        continue
                    for i, edge in enumerate(LATENCY_BUCKETS):
                        bound = f'le="{edge:g}"'
                        lines.append(f"{name}_bucket{fmt(labels, bound)} {buckets[i]:g}")
                    infinite = 'le="+Inf"'
                    lines.append(f"{name}_bucket{fmt(labels, infinite)} {buckets[-2]:g}")
                    lines.append(f"{name}_count{fmt(labels)} {buckets[-2]:g}")
                    lines.append(f"{name}_sum{fmt(labels)} {buckets[-1]:g}")
        return "\n".join(lines) + "\n"


@dataclass
class _Item:
    task: str
    text: str
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float


class CascadeService:
    """The micro-batching worker, teacher escalation and drift audits around a Cascade."""

    def __init__(
        self,
        cascade: Cascade,
        teacher: Callable[[str, list[str]], list[Any]] | None,
        settings: ServeSettings,
        log: Callable[[str], None] = print,
    ) -> None:
        from eval.drift import DriftAudit

        self.cascade = cascade
        self.teacher = teacher
        self.settings = settings
        self.log = log
        self.metrics = Metrics()
        self.queue: deque[_Item] = deque()
        self.cond = threading.Condition()
        self.running = True
        self.teacher_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="teacher")
        self.audits = {
            task: DriftAudit(limit=settings.drift_limit.get(task, 0.1), delta=settings.drift_delta)
            for task in cascade.tasks
        }
        self.recent_scores: dict[str, deque] = {t: deque(maxlen=2000) for t in cascade.tasks}
        self.audit_lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="student", daemon=True)
        self.worker.start()
        for task in cascade.tasks:
            self.metrics.set("cascade_drift_alarm", 0, task=task)

    # ── the queue and the worker ──
    def submit(self, task: str, texts: list[str]) -> list[asyncio.Future]:
        """Enqueue the inputs; raises QueueFull when there is no room for all of them."""
        loop = asyncio.get_running_loop()
        with self.cond:
            if len(self.queue) + len(texts) > self.settings.queue_size:
                raise QueueFull()
            futures = []
            now = time.perf_counter()
            for text in texts:
                future = loop.create_future()
                self.queue.append(_Item(task, text, future, loop, now))
                futures.append(future)
            self.cond.notify()
        return futures

    def _work(self) -> None:
        settings = self.settings
        while True:
            with self.cond:
                while self.running and not self.queue:
                    self.cond.wait(0.1)
                if not self.running and not self.queue:
                    return
                deadline = self.queue[0].enqueued + settings.max_wait_ms / 1000
                while len(self.queue) < settings.max_batch and time.perf_counter() < deadline:
                    self.cond.wait(max(deadline - time.perf_counter(), 0))
                batch = [
                    self.queue.popleft() for _ in range(min(settings.max_batch, len(self.queue)))
                ]
            self.metrics.observe("cascade_batch_size", len(batch))
            self._answer_batch(batch)

    def _answer_batch(self, batch: list[_Item]) -> None:
        """One forward pass for the batch; if it fails, each input again on its own, so that
        only the input that fails gets the error (never its neighbours' requests)."""
        try:
            predictions = self.cascade.predict_mixed([(i.task, i.text) for i in batch])
        except Exception as exc:
            if len(batch) > 1:
                self.log(f"serve: a batch of {len(batch)} failed ({exc!r}); one by one now")
                for item in batch:
                    self._answer_batch([item])
                return
            self.log(f"serve: an input of task {batch[0].task} failed ({exc!r})")
            failure = InputFailed(f"{type(exc).__name__}: {short(str(exc), 200)}")
            batch[0].loop.call_soon_threadsafe(_set_exception, batch[0].future, failure)
            return
        for item, prediction in zip(batch, predictions, strict=True):
            item.loop.call_soon_threadsafe(_set_result, item.future, prediction)

    def close(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        self.worker.join(timeout=30)
        self.teacher_pool.shutdown(wait=True)

    # ── answering ──
    async def answer(self, task: str, texts: list[str]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        predictions: list[Prediction] = list(await asyncio.gather(*self.submit(task, texts)))
        student_done = time.perf_counter()
        deferred = [i for i, p in enumerate(predictions) if p.source == "teacher"]
        teacher_answers: dict[int, Any] = {}
        if deferred and self.teacher is not None:
            loop = asyncio.get_running_loop()
            try:
                got = await loop.run_in_executor(
                    self.teacher_pool, self.teacher, task, [texts[i] for i in deferred]
                )
            except Exception as exc:  # the upstream's fault, not the client's
                self.log(f"serve: the teacher failed on {len(deferred)} {task} inputs ({exc!r})")
                raise TeacherFailed(f"{type(exc).__name__}: {short(str(exc), 200)}") from exc
            teacher_answers = dict(zip(deferred, got, strict=True))
        done = time.perf_counter()
        s = self.settings
        teacher_usd = (self.cascade.costs_usd(task) or (0.0, 0.0))[1]
        results = []
        for i, p in enumerate(predictions):
            source = p.source
            cost = p.cost_usd or 0.0
            self.metrics.inc("cascade_requests_total", task=task, source=source)
            self.metrics.inc("cascade_cost_usd_total", cost, task=task)
            self.metrics.inc("cascade_savings_usd_total", teacher_usd - cost, task=task)
            if source == "teacher":
                self.metrics.inc("cascade_teacher_spend_usd_total", teacher_usd, task=task)
            latency = (student_done if source == "student" else done) - started
            self.metrics.observe("cascade_latency_seconds", latency, source=source)
            answer = p.answer if source == "student" else teacher_answers.get(i)
            results.append(
                {
                    "answer": answer,
                    "source": source,
                    "score": p.score,
                    "threshold": None if p.threshold == float("inf") else p.threshold,
                    "cost_usd": cost,
                    "student_answer": p.student_answer,
                }
            )
            if source == "student":
                self.recent_scores[task].append(p.score)
                if self.teacher is not None and random.random() < s.audit_share:
                    self.teacher_pool.submit(self._audit, task, texts[i], p)
        self._update_deferral(task)
        return results

    def _update_deferral(self, task: str) -> None:
        student = self.metrics.counter("cascade_requests_total", source="student", task=task)
        teacher = self.metrics.counter("cascade_requests_total", source="teacher", task=task)
        if student + teacher:
            self.metrics.set("cascade_deferral_rate", teacher / (student + teacher), task=task)

    # ── the drift audit ──
    def _audit(self, task: str, text: str, prediction: Prediction) -> None:
        from eval.drift import raised_threshold

        try:
            (teacher_answer,) = self.teacher(task, [text])
        except Exception as exc:
            self.log(f"audit {task}: the teacher failed ({exc})")
            return
        departed = teacher_answer != prediction.student_answer
        with self.audit_lock:
            audit = self.audits[task]
            audit.update(departed)
            self.metrics.inc("cascade_audits_total", task=task)
            self.metrics.set("cascade_drift_disagreement_upper_bound", audit.upper_bound, task=task)
            self.metrics.set("cascade_drift_disagreement_rate", audit.rate, task=task)
            if self.settings.audit_log is not None:
                row = {
                    "task": task,
                    "text": text,
                    "student": prediction.student_answer,
                    "teacher": teacher_answer,
                    "score": prediction.score,
                    "departed": departed,
                    "time": time.time(),
                }
                with self.settings.audit_log.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            if audit.alarm:
                entry = self.cascade.entry(task)
                current = entry.get("threshold")
                current = float("inf") if current is None else float(current)
                scores = list(self.recent_scores[task])
                raised = raised_threshold(current, scores)
                self.cascade.set_threshold(task, raised)
                self.metrics.set("cascade_drift_alarm", 1, task=task)
                self.metrics.inc("cascade_threshold_raises_total", task=task)
                self.metrics.set("cascade_threshold", raised, task=task)
                self.log(
                    f"drift alarm {task}: disagreement with the teacher {audit.rate:.1%} over "
                    f"{audit.n} audits is above {audit.limit:.1%} with confidence "
                    f"{1 - audit.delta:.0%}; threshold raised {current:.4f} -> {raised:.4f}"
                )
                audit.reset()
                self.recent_scores[task].clear()


class QueueFull(Exception):
    pass


class TeacherFailed(Exception):
    """The teacher did not answer the inputs the student deferred (HTTP 502)."""


class InputFailed(Exception):
    """The student failed on this input alone (its batch was retried one input at a time)."""


class ApiError(Exception):
    """A request the server refuses: the HTTP status and a message naming what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ── request bodies ──
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; the API needs 4


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # OpenAI clients send more fields


class ClassifyBody(_Body):
    task: str
    inputs: str | list[str]


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: str
    content: str | list[TextPart] | None = None


class ChatBody(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None


class RouteBody(_Body):
    inputs: str | list[str]


def parse_body(body: bytes, model: type[_Body], usage: str) -> Any:
    """The request body checked as `model`: ApiError 400 for what is not JSON or nests
    deeper than MAX_JSON_DEPTH, 422 naming the fields of the wrong shape."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        problem = f"the body is not JSON ({exc.msg} at character {exc.pos}); {usage}"
        raise ApiError(400, problem) from None
    except ValueError as exc:  # not UTF-8, an integer of more than 4,300 digits
        raise ApiError(400, f"the body is not JSON ({short(str(exc), 120)}); {usage}") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for problem in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in problem["loc"] if not _is_type_tag(p))
            problems.append(f"{where or 'the body'}: {problem['msg']}")
        shown = "; ".join(list(dict.fromkeys(problems))[:4])
        raise ApiError(422, f"{shown}; {usage}") from None


def _is_type_tag(part: Any) -> bool:
    """pydantic names the branch of a union in an error's place: `inputs.list[str].0`."""
    return isinstance(part, str) and (part in ("str", "bool", "none") or "[" in part)


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value (without recursion), counting
    no further than one past MAX_JSON_DEPTH."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, dict | list):
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def create_app(service: CascadeService):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    settings = service.settings
    app = FastAPI(title="cascadekit", docs_url=None, redoc_url=None)

    def error(status: int, message: str, headers: dict | None = None):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(
            {"error": {"message": message, "type": kind}}, status_code=status, headers=headers
        )

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)  # no such route (404), a wrong method (405)
    async def not_routed(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)  # a fault of the server: the same shape, details logged
    async def failed(request: Request, exc: Exception):
        service.log(f"serve: {request.url.path} failed ({exc!r})")
        return error(500, "the server failed on this request; its log says why")

    app.add_middleware(_Guard, settings=settings, error=error)

    async def run(task: str, texts: list[str]) -> list[dict[str, Any]]:
        if task not in service.cascade.tasks:
            tasks = ", ".join(service.cascade.tasks)  # the server's own names
            raise ApiError(404, f"no task {short(task)}; tasks: {tasks}")
        if not texts:
            raise ApiError(422, f"inputs: send 1 to {settings.max_inputs} inputs per request")
        if len(texts) > settings.max_inputs:
            raise ApiError(413, f"send 1 to {settings.max_inputs} inputs per request")
        for i, text in enumerate(texts):
            if len(text) > settings.max_input_chars:
                raise ApiError(
                    413,
                    f"each input must be text of at most {settings.max_input_chars} "
                    f"characters (input {i} has {len(text)})",
                )
            try:
                check_unicode(text, f"input {i}")
            except DataError as exc:
                raise ApiError(400, str(exc)) from None
        try:
            return await service.answer(task, texts)
        except QueueFull:
            service.metrics.inc("cascade_rejected_total", reason="queue_full")
            raise ApiError(503, "the queue is full; retry shortly", {"Retry-After": "1"}) from None
        except InputFailed as exc:
            raise ApiError(422, f"the student could not answer an input ({exc})") from None
        except TeacherFailed as exc:
            raise ApiError(502, f"the teacher did not answer the deferred inputs ({exc})") from None

    @app.post("/v1/classify")
    async def classify(request: Request):
        usage = 'send JSON {"task": "...", "inputs": ["...", ...]}'
        body = parse_body(await request.body(), ClassifyBody, usage)
        inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        return {"task": body.task, "results": await run(body.task, inputs)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        usage = "send an OpenAI chat request whose model names a task"
        body = parse_body(await request.body(), ChatBody, usage)
        if body.stream:
            raise ApiError(400, "stream: true is not supported; send stream: false")
        users = [m for m in body.messages if m.role == "user" and m.content is not None]
        if not users:
            raise ApiError(422, f"messages: no user message with content; {usage}")
        content = users[-1].content
        text = content if isinstance(content, str) else "\n".join(p.text for p in content)
        result = (await run(body.model, [text]))[0]
        answer = result["answer"]
        content = answer if isinstance(answer, str) or answer is None else json.dumps(answer)
        return {
            "id": f"cascade-{random.getrandbits(48):012x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content or ""},
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "cascade": result,
        }

    @app.post("/v1/route")
    async def route(request: Request):
        """The router task picks each input's specialist task, which then answers it (the
        motivating pattern: intent -> specialist -> teacher)."""
        if settings.router is None:
            raise ApiError(404, "this server has no router task (start it with --router TASK)")
        body = parse_body(await request.body(), RouteBody, 'send JSON {"inputs": ["...", ...]}')
        inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        routed = await run(settings.router, inputs)
        results = []
        for text, decision in zip(inputs, routed, strict=True):
            target = decision["answer"]
            if target in service.cascade.tasks and target != settings.router:
                answered = await run(target, [text])
                results.append({"task": target, "route": decision, **answered[0]})
            else:  # the router's own answer is the reply (e.g. "out_of_scope")
                results.append({"task": settings.router, "route": decision, **decision})
        return {"results": results}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "tasks": service.cascade.tasks, "queued": len(service.queue)}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class _Guard:
    """The API key and the body size, checked before any /v1/ handler runs: a Content-Length
    over the limit is refused at once, and the body is read here, counting the bytes as they
    arrive (chunked or not, whatever Content-Length said), then handed on whole. A plain
    ASGI middleware: Starlette's `@app.middleware("http")` costs about a millisecond."""

    def __init__(self, app, settings: ServeSettings, error: Callable) -> None:
        self.app = app
        self.settings = settings
        self.error = error
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, refusal = await self._read_body(receive)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope):
        headers = scope["headers"]
        names = [name for name, _ in headers]
        if self.expected is not None and not hmac.compare_digest(
            dict(headers).get(b"authorization", b""), self.expected
        ):
            return self.error(401, "missing or wrong API key")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        if b"transfer-encoding" in names and b"content-length" in names:  # smuggling
            message = "send Content-Length or Transfer-Encoding, not both"
            return self.error(400, message, {"Connection": "close"})
        length = dict(headers).get(b"content-length", b"0").decode("latin-1")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return self._too_large()  # before a byte of the body is read
        return None

    async def _read_body(self, receive) -> tuple[bytes, Any]:
        """The whole body, or a 413 as soon as more than max_body_bytes have come, or a 408
        when it has not come whole within body_timeout_s (a client trickling bytes would
        otherwise hold its connection for ever)."""
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                limit = self.settings.body_timeout_s
                message = f"the request body did not arrive within {limit:g} s"
                return b"", self.error(408, message, {"Connection": "close"})
            if message["type"] == "http.disconnect":
                return b"", self.error(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                return b"", self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    def _too_large(self):
        limit = self.settings.max_body_bytes
        return self.error(413, f"request body over {limit} bytes", {"Connection": "close"})


def _replay(body: bytes, receive):
    """An ASGI receive that gives the body read already, then waits on the connection."""
    given = False

    async def replay():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def teacher_caller(config, log) -> Callable[[str, list[str]], list[Any]] | None:
    """A function (task name, texts) -> answers from the run config's teacher, or None."""
    from distill.data import Record
    from distill.teachers import make_teacher

    if config is None or config.teacher.kind == "dataset":
        return None
    teacher = make_teacher(config.teacher, log=log)
    tasks = {task.name: task for task in config.tasks}
    lock = threading.Lock()  # local models are not thread-safe; HTTP teachers are fast anyway

    def ask(task: str, texts: list[str]) -> list[Any]:
        records = [Record(id=str(i), text=t, gold=None, fields={}) for i, t in enumerate(texts)]
        with lock:
            answers = teacher.label_batch(tasks[task], records)
        return [None if a is None or a.error else a.label for a in answers]

    return ask


def _no_delay_protocol():
    """uvicorn's h11 protocol with TCP_NODELAY on each connection: a reply goes out in two
    writes, and without it Nagle's algorithm holds the second ~40 ms."""
    import socket

    from uvicorn.protocols.http.h11_impl import H11Protocol

    class NoDelayH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    return NoDelayH11Protocol


def recalibrate(cascade: Cascade, run_dir: Path, precision: str, log) -> list[dict]:
    """Switch the classifiers to `precision` and choose every threshold again on the run's
    calib rows scored that way (the same Learn-then-Test settings), so that the guarantee
    holds for the scores served. Needs the run directory (its score stage), not a pull."""
    from distill import runs
    from distill.pipeline import load_scores

    cascade.set_precision(precision)
    changes = []
    for task in cascade.tasks:
        if not (runs.stage_dir(run_dir, "score") / f"{task}.parquet").is_file():
            raise UserError(
                f"--precision {precision} recalibrates on the run's calib split, and {run_dir} "
                f"has no scores for task {task!r}: serve the run directory, not a pulled cascade"
            )
        calib = load_scores(run_dir, task, "calib")
        change = cascade.recalibrate(
            task, list(calib["text"]), list(calib["teacher_label"]), list(calib["id"])
        )
        shown = "∞" if change["threshold"] is None else f"{change['threshold']:.4f}"
        was = change["threshold_was"]
        log(
            f"serve: {precision}: task {task}: τ {'∞' if was is None else f'{was:.4f}'} → "
            f"{shown}, recalibrated on {change['n_calib']} calib rows (calib deferral "
            f"{change['calib_deferral_rate']:.1%}, risk {change['calib_risk']:.1%})"
        )
        changes.append(change)
    return changes


def serve(
    path: Path,
    host: str,
    port: int,
    settings: ServeSettings,
    config=None,
    log: Callable[[str], None] = print,
) -> None:
    """Load the cascade, bind, print `READY http://host:port`, serve until SIGTERM/SIGINT
    (uvicorn then stops taking connections and finishes the requests in flight)."""
    import socket

    import uvicorn

    # the user's own opt-in, for the user's own bases only (not any base a pulled file names)
    allow_pickle = config is not None and config.student.allow_pickle
    if allow_pickle:
        own = {config.student.base_model, config.student.generative.base_model}
        allow_pickle = all(e["base_model"] in own for _, e in read_documents(path).values())
    cascade = Cascade.load(path, trust_remote_code=False, allow_pickle=allow_pickle)
    if not cascade.tasks:
        raise UserError(f"{path}: no tasks to serve")
    cascade.forward_batch = settings.forward_batch
    if settings.precision != "fp32":
        recalibrate(cascade, path, settings.precision, log)
    cascade.predict_mixed([(task, "warm up") for task in cascade.tasks])  # load every base
    service = CascadeService(cascade, teacher_caller(config, log), settings, log)
    app = create_app(service)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            timeout_graceful_shutdown=30,
            access_log=False,
            http=_no_delay_protocol(),
            limit_concurrency=settings.max_connections,
        )
    )

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        print(f"READY http://{host}:{sock.getsockname()[1]}", flush=True)
        await task

    try:
        asyncio.run(main())
    finally:
        service.close()
        log("serve: stopped")


__all__ = ["CascadeService", "Metrics", "ServeSettings", "create_app", "serve"]
