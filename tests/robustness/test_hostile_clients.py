"""Hostile clients against a real `cascadekit serve` on 127.0.0.1, and the readers against
endless or exploding input under a memory cap.

    python -m pytest tests/robustness/test_hostile_clients.py -q

Whatever a client sends, the server answers 2xx or 4xx (never 5xx) with the API's JSON error
shape naming what is wrong, and goes on answering everyone else: hypothesis writes bodies
(nesting, wrong types, lone surrogates, sizes), raw sockets break the framing (chunked over
the limit, two Content-Lengths, a slow or vanishing client), and valid requests run beside
hostile ones at the same time. One server process serves the whole module.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import tiny
from tests.distill.test_serve import TEXTS, call, serving
from tests.robustness.helpers import finished_project

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY_BYTES = 30_000
MAX_INPUTS = 4
BODY_TIMEOUT_S = 5.0  # above the slow client's 3 s pause
HOSTILE = settings(
    max_examples=40,
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_student) -> Path:
    """A finished tiny run (80 rows, one epoch): its config; the run is in `run` beside it."""
    return finished_project(tmp_path_factory.mktemp("hostile"), tiny_student)


@pytest.fixture(scope="module")
def url(config):
    """`cascadekit serve` of that run, its one task also the router (so /v1/route answers)."""
    args = ("--max-body-bytes", str(MAX_BODY_BYTES), "--max-inputs", str(MAX_INPUTS))
    args += ("--body-timeout-s", str(BODY_TIMEOUT_S))
    with serving(config.parent / "run", *args, "--max-wait-ms", "20", "--router", "intent") as (
        url,
        _,
        _,
    ):
        yield url


def post(url: str, path: str, body=None, raw: bytes | None = None):
    """(status, parsed JSON reply): json.dumps writes a lone surrogate as \\ud800."""
    return call(url, path, body, key=None, raw=raw)[:2]


def assert_refused(status: int, reply, *expected: str) -> str:
    """A 4xx in the API's shape, {"error": {"message": ..., "type": ...}}; its message."""
    assert 400 <= status < 500, (status, reply)
    assert set(reply) == {"error"} and set(reply["error"]) == {"message", "type"}, reply
    message = reply["error"]["message"]
    for text in expected:
        assert text in message, (text, message)
    assert len(message) < 1000
    return message


def assert_answered_or_refused(status: int, reply) -> None:
    if status == 200:
        assert "results" in reply or "choices" in reply
    else:
        assert_refused(status, reply)


# ── bodies ─────────────────────────────────────────────────────────────────────────────
# any code point, lone surrogates (\ud800) often
ANY_TEXT = st.text(
    st.characters(exclude_categories=[]) | st.characters(categories=["Cs"]), max_size=30
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
INPUTS = JSON | ANY_TEXT | st.lists(ANY_TEXT | JSON, max_size=MAX_INPUTS + 2)
TASKS = st.sampled_from(["intent", "nope", "", "x" * 5000]) | JSON
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]) | JSON},
    optional={
        "content": ANY_TEXT
        | JSON
        | st.lists(st.fixed_dictionaries({"type": st.just("text") | JSON, "text": ANY_TEXT}))
    },
)
MESSAGES = JSON | st.lists(MESSAGE | JSON, max_size=3)
ENDPOINTS = ["/v1/classify", "/v1/chat/completions", "/v1/route"]


@HOSTILE
@given(task=TASKS, inputs=INPUTS, extra=st.dictionaries(ANY_TEXT, JSON, max_size=2))
def test_classify_bodies_of_any_shape(url, task, inputs, extra):
    status, reply = post(url, "/v1/classify", {**extra, "task": task, "inputs": inputs})
    assert_answered_or_refused(status, reply)


@HOSTILE
@given(model=TASKS, messages=MESSAGES, stream=st.none() | st.booleans() | JSON)
def test_chat_bodies_of_any_shape(url, model, messages, stream):
    status, reply = post(
        url, "/v1/chat/completions", {"model": model, "messages": messages, "stream": stream}
    )
    assert_answered_or_refused(status, reply)


@HOSTILE
@given(path=st.sampled_from(ENDPOINTS), body=JSON)
def test_any_json_value_as_the_body(url, path, body):
    assert_answered_or_refused(*post(url, path, body))


@HOSTILE
@given(path=st.sampled_from(ENDPOINTS), raw=st.binary(max_size=200))
def test_any_bytes_as_the_body(url, path, raw):
    assert_answered_or_refused(*post(url, path, raw=raw or b" "))


@HOSTILE
@given(
    path=st.sampled_from(ENDPOINTS),
    depth=st.integers(1, 10_000),
    bracket=st.sampled_from(["[", '{"a":']),
)
def test_nesting_of_any_depth(url, path, depth, bracket):
    close = "]" if bracket == "[" else "}"
    raw = (bracket * depth + "1" + close * depth).encode()
    status, reply = post(url, path, raw=raw)
    if len(raw) > MAX_BODY_BYTES:
        assert_refused(status, reply, f"over {MAX_BODY_BYTES} bytes")
    elif depth > 32:
        assert_refused(status, reply, "nests deeper than 32 levels")
    else:
        assert status == 422 and assert_refused(status, reply)


@HOSTILE
@given(n=st.integers(0, 2 * MAX_INPUTS), chars=st.integers(0, 2 * MAX_BODY_BYTES))
def test_sizes_around_the_limits(url, n, chars):
    body = {"task": "intent", "inputs": ["a" * chars] * n}
    status, reply = post(url, "/v1/classify", body)
    if len(json.dumps(body)) > MAX_BODY_BYTES:
        assert_refused(status, reply, f"over {MAX_BODY_BYTES} bytes")
        assert status == 413
    elif n == 0:
        assert status == 422 and assert_refused(status, reply, "inputs")
    elif n > MAX_INPUTS:
        assert status == 413 and assert_refused(status, reply, "inputs per request")
    else:
        assert status == 200 and len(reply["results"]) == n


def test_the_findings_of_the_probe_are_4xx_naming_the_fault(url):
    """Each case the issue's probe saw as a 500 (or a misleading 413)."""
    chat = "/v1/chat/completions"
    cases = [
        ("/v1/classify", {"task": "intent", "inputs": ["ok", "\ud800"]}, 400, "input 1"),
        (chat, {"model": "intent", "messages": [{"role": "user", "content": "\udfff"}]}, 400, ""),
        (chat, {"model": "intent", "messages": "hello"}, 422, "messages"),
        (chat, {"model": "intent", "messages": {"role": "user"}}, 422, "messages"),
        (chat, {"model": "intent", "messages": ["hi", 3]}, 422, "messages.0"),
        (chat, {"model": "intent", "messages": []}, 422, "messages"),
        (chat, {"model": "intent", "messages": [{"role": "system", "content": "x"}]}, 422, "user"),
        (chat, {"model": 3, "messages": [{"role": "user", "content": "x"}]}, 422, "model"),
        ("/v1/classify", {"task": "intent", "inputs": [1, 2]}, 422, "inputs.0"),
        ("/v1/classify", {"task": "intent", "inputs": []}, 422, "inputs"),
        ("/v1/classify", {"task": ["intent"], "inputs": ["x"]}, 422, "task"),
        ("/v1/classify", {"inputs": ["x"]}, 422, "task: Field required"),
        ("/v1/route", {"inputs": ["x", "\ud800"]}, 400, "input 1"),
        ("/v1/route", {"inputs": {"x": 1}}, 422, "inputs"),
    ]
    for path, body, expected, text in cases:
        status, reply = post(url, path, body)
        assert status == expected, (path, body, status, reply)
        assert_refused(status, reply, text)
    # an OpenAI client asking for a stream gets a clear refusal, not a reply it cannot parse
    stream = {"model": "intent", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    assert_refused(*post(url, chat, stream), "stream")
    # an unknown task's name comes back cut short
    status, reply = post(url, "/v1/classify", {"task": "y" * 20_000, "inputs": ["x"]})
    assert status == 404 and len(assert_refused(status, reply, "no task")) < 200
    # routes and methods the server lacks: the same shape
    assert_refused(*call(url, "/nowhere", key=None)[:2])
    assert call(url, "/v1/classify", key=None)[0] == 405  # a GET
    assert_refused(*call(url, "/v1/classify", key=None)[:2])


def test_valid_requests_beside_hostile_ones_all_get_their_answers(url):
    """24 valid requests at the same time as 36 hostile ones (lone surrogates, wrong shapes,
    too long): every valid one is answered, every hostile one refused alone."""
    hostile = [
        ("/v1/classify", {"task": "intent", "inputs": ["\ud800"]}),
        ("/v1/classify", {"task": "intent", "inputs": ["fine", "\udc80 after"]}),
        (
            "/v1/chat/completions",
            {"model": "intent", "messages": [{"role": "user", "content": "\ud83d"}]},
        ),
        ("/v1/chat/completions", {"model": "intent", "messages": "a string"}),
        ("/v1/classify", {"task": "intent", "inputs": [[[[]]]]}),
        ("/v1/classify", {"task": "intent", "inputs": ["x" * 25_000]}),
    ]

    def one(i: int):
        if i % 5 < 2:
            texts = [TEXTS[i % len(TEXTS)], TEXTS[(i + 1) % len(TEXTS)]]
            return "valid", texts, post(url, "/v1/classify", {"task": "intent", "inputs": texts})
        path, body = hostile[i % len(hostile)]
        return "hostile", None, post(url, path, body)

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(one, range(60)))
    valid = [(texts, reply) for kind, texts, reply in replies if kind == "valid"]
    assert len(valid) == 24
    for texts, (status, reply) in valid:
        assert status == 200, reply
        assert len(reply["results"]) == len(texts)
        assert all(r["student_answer"] in tiny.LABELS for r in reply["results"])
    for kind, _, (status, reply) in replies:
        if kind == "hostile":
            assert_refused(status, reply)
    _, metrics, _ = call(url, "/metrics", key=None)
    assert "cascade_batch_size_count" in metrics


# ── framing, on raw sockets ───────────────────────────────────────────────────────────
def exchange(url: str, data: bytes, pause_s: float = 0.0, rest: bytes = b"") -> tuple[int, bytes]:
    """Send raw bytes (then `rest` after `pause_s`); the reply's status and whole text."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        try:
            sock.sendall(data)
            if rest:
                time.sleep(pause_s)
                sock.sendall(rest)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before all was sent
        reply = b""
        try:
            while b"\r\n\r\n" not in reply or not _complete(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
    return int(reply.split(b" ", 2)[1]), reply


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def request(headers: list[str], body: bytes = b"") -> bytes:
    lines = ["POST /v1/classify HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


VALID = json.dumps({"task": "intent", "inputs": ["i lost my card"]}).encode()


def test_framing(url):
    """Each framing case: the status, and that the server answers the next client."""
    big = b"x" * 8192
    cases = {
        "chunked, small": (request(["Transfer-Encoding: chunked"], chunked(VALID)), 200),
        "chunked, over the limit": (
            request(["Transfer-Encoding: chunked"], chunked(*[big] * 8)),
            413,
        ),
        "chunked with a small Content-Length": (
            request(["Transfer-Encoding: chunked", "Content-Length: 10"], chunked(*[big] * 8)),
            400,
        ),
        "a chunk larger than it says": (
            request(["Transfer-Encoding: chunked"], b"4\r\n" + big + b"\r\n0\r\n\r\n"),
            400,
        ),
        "a chunk size of 2**64": (
            request(["Transfer-Encoding: chunked"], b"ffffffffffffffff\r\n" + big * 4),
            413,
        ),
        "a Content-Length over the limit, no body sent": (
            request([f"Content-Length: {MAX_BODY_BYTES + 1}"]),
            413,
        ),
        "a Content-Length of 10**30": (request(["Content-Length: " + "9" * 30]), 400),
        "two different Content-Lengths": (
            request([f"Content-Length: {len(VALID)}", "Content-Length: 5"], VALID),
            400,
        ),
        "a negative Content-Length": (request(["Content-Length: -5"], VALID), 400),
        "no Content-Length": (request([], VALID), 400),  # an empty body; the rest is junk
        "Content-Length shorter than the body": (request(["Content-Length: 5"], VALID), 400),
    }
    for name, (data, expected) in cases.items():
        status, reply = exchange(url, data)
        assert status == expected, (name, reply[:300])
        if expected != 200 and b"application/json" in reply.split(b"\r\n\r\n")[0]:
            body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
            assert set(body) == {"error"}, (name, body)
        assert post(url, "/v1/classify", {"task": "intent", "inputs": ["hi"]})[0] == 200, name


def test_a_slow_client_holds_up_no_one(url):
    """A client that sends half a body and waits: others are answered meanwhile, and it is
    answered when the rest comes; one that leaves mid-body leaves nothing behind."""
    head = request([f"Content-Length: {len(VALID)}", "Content-Type: application/json"])
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(exchange, url, head + VALID[:10], 3.0, VALID[10:])
        time.sleep(0.5)
        started = time.monotonic()
        assert post(url, "/v1/classify", {"task": "intent", "inputs": ["hi"]})[0] == 200
        assert time.monotonic() - started < 2.0
        assert slow.result()[0] == 200
    # one that never sends the rest gets 408 once the body timeout has passed
    started = time.monotonic()
    status, _ = exchange(url, head + VALID[:10])
    assert status == 408 and BODY_TIMEOUT_S <= time.monotonic() - started < BODY_TIMEOUT_S + 3
    parts = urlsplit(url)
    for _ in range(20):  # clients that leave mid-body
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            sock.sendall(head + VALID[:10])
    assert post(url, "/v1/classify", {"task": "intent", "inputs": ["hi"]})[0] == 200


# ── readers, under a memory cap ───────────────────────────────────────────────────────
MEMORY_CAP_BYTES = 3 << 30  # address space; a reader that swallows /dev/zero passes it fast


def capped_cli(*argv: str) -> subprocess.CompletedProcess:
    """`cascadekit ARGV` in a subprocess whose address space is capped."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))

    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap,
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_endless_data_file_is_refused_in_bounded_memory(config, fmt):
    started = time.monotonic()
    done = capped_cli("validate", str(config), "data.path=/dev/zero", f"data.format={fmt}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "/dev/zero:1: a line longer than" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


def test_an_endless_quoted_csv_cell_is_refused_in_bounded_memory(config, tmp_path):
    """Short lines without end inside one quoted cell (from a pipe): the cell's size is
    bounded as the line's is."""
    import os
    import threading

    fifo = tmp_path / "endless.csv"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as pipe:
            pipe.write(b'id,text,intent,recorded\nr1,"')
            while True:
                pipe.write(b"a" * 1023 + b"\n")

    threading.Thread(target=feed, daemon=True).start()
    done = capped_cli("validate", str(config), f"data.path={fifo}", "data.format=csv")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{fifo}:2: not valid CSV (field larger than field limit" in done.stderr


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(config):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = config.parent / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n" + config.read_text())
    started = time.monotonic()
    done = capped_cli("validate", str(bomb))
    assert done.returncode == 2, done.stderr[-2000:]
    # a5 (line 6) is the first to hold more than 100,000 values: 9**6 "lol"s
    assert f"{bomb}:6: not valid YAML" in done.stderr and "aliases" in done.stderr
    assert time.monotonic() - started < 60


# ── the worker, in-process ────────────────────────────────────────────────────────────
class PoisonedCascade:
    """A stand-in Cascade whose forward pass fails on any batch holding `poison`: what a
    tokenizer or model fault an input check missed would do."""

    tasks = ["intent"]  # noqa: RUF012

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict_mixed(self, items):
        from distill.cascade import Prediction

        self.batch_sizes.append(len(items))
        if any(text == "poison" for _, text in items):
            raise RuntimeError("the tokenizer failed")
        return [Prediction("refund", "student", 0.9, 0.5, "refund") for _ in items]

    def costs_usd(self, task):
        return None


def test_a_failing_forward_pass_fails_only_its_culprit():
    """Eight requests share a batch with a poisoned one: the batch fails, its inputs are
    answered one by one, and only the poisoned request gets the error."""
    import asyncio

    from distill.serve import CascadeService, InputFailed, ServeSettings

    cascade = PoisonedCascade()
    service = CascadeService(cascade, None, ServeSettings(max_wait_ms=200), log=lambda _: None)

    async def clients():
        texts = ["one", "two", "three", "poison", "four", "five", "six", "seven", "eight"]
        return await asyncio.gather(
            *(service.answer("intent", [t]) for t in texts), return_exceptions=True
        )

    try:
        replies = asyncio.run(clients())
    finally:
        service.close()
    assert cascade.batch_sizes[0] == 9  # one shared batch, which failed
    assert [isinstance(r, InputFailed) for r in replies] == [False] * 3 + [True] + [False] * 5
    assert all(r[0]["answer"] == "refund" for r in replies if not isinstance(r, InputFailed))
    assert "the tokenizer failed" in str(replies[3])


class DeferringCascade(PoisonedCascade):
    """A stand-in Cascade that defers every input to the teacher."""

    def predict_mixed(self, items):
        from distill.cascade import Prediction

        return [Prediction(None, "teacher", 0.1, 0.5, "refund") for _ in items]


def test_a_teacher_that_fails_gives_502_in_the_api_shape():
    """The teacher is upstream: its failure is a 502 naming it, never a 500 or a hang."""
    from fastapi.testclient import TestClient

    from distill.serve import CascadeService, ServeSettings, create_app

    def teacher(task, texts):
        raise ConnectionError("teacher endpoint refused the connection")

    service = CascadeService(DeferringCascade(), teacher, ServeSettings(), log=lambda _: None)
    try:
        with TestClient(create_app(service)) as client:
            reply = client.post("/v1/classify", json={"task": "intent", "inputs": ["hi"]})
    finally:
        service.close()
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["type"] == "server_error" and "teacher endpoint refused" in error["message"]


# ── services that do not answer ───────────────────────────────────────────────────────
def pull_command(address: str, out: Path) -> list[str]:
    pull = ["pull", "models:/intent@candidate", "--tracking-uri", address, "--out", str(out)]
    return [sys.executable, "-m", "distill.cli", *pull]


def test_a_pull_from_an_address_where_nothing_listens_fails_fast(tmp_path):
    pytest.importorskip("mlflow")
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    done = subprocess.run(
        pull_command(address, tmp_path / "pulled"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"MLflow at {address}: cannot connect to 127.0.0.1:{port}" in done.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "pulled").exists()


def test_ctrl_c_during_a_pull_speaks_of_the_pull(tmp_path):
    """A tracking server that accepts connections and never answers: Ctrl-C while the pull
    waits prints what happened to --out, not the training stages' message."""
    pytest.importorskip("mlflow")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        process = subprocess.Popen(
            pull_command(address, tmp_path / "pulled"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        held = []
        try:
            silent.settimeout(60)
            while True:  # the reachability check connects and leaves; MLflow's request stays
                connection, _ = silent.accept()
                held.append(connection)
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    if connection.recv(1024).startswith((b"GET", b"POST")):
                        break
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
        finally:
            process.kill()
            for connection in held:
                connection.close()
    assert process.returncode == 130, err[-2000:]
    assert "interrupted: nothing was written to --out" in err
    assert "stages" not in err and "Traceback" not in err
    assert not (tmp_path / "pulled").exists()
