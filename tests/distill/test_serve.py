"""`cascadekit serve` as a real uvicorn process on 127.0.0.1: answers, escalation to a teacher
endpoint, the OpenAI client, metrics, limits, concurrent clients, a full queue, drift."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests import tiny
from tests.openai_fixture import running_openai_server
from tests.processes import started

ROOT = Path(__file__).resolve().parents[2]
KEY = "serve-test-key-123"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def serving(run: Path, *args: str, env: dict | None = None):
    """`cascadekit serve RUN --port 0 ...` in its own process group; yields its base URL,
    the process and its log."""
    log = run.parent / f"serve-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "distill.cli", "serve", str(run), "--port", "0", *args]
    with started(command, {**os.environ, **(env or {})}, log, 120, "cascadekit serve", ROOT) as (
        process,
        url,
    ):
        yield url, process, log


def call(url: str, path: str, body=None, key: str | None = KEY, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with OPENER.open(request, timeout=60) as reply:
            text = reply.read().decode()
            return reply.status, (json.loads(text) if path != "/metrics" else text), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "{}"), exc.headers


def _config_with_teacher(run: Path, teacher: dict) -> Path:
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    config["teacher"] = teacher
    path = run.parent / f"serve-config-{teacher['kind']}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TEXTS = [
    "i lost my card",
    "my card was declined at the shop",
    "where is my refund",
    "hello",
    "cannot find my card at all",
    "refund please, the order never came",
]


def test_answers_escalation_openai_client_metrics_and_limits(finished_run, tmp_path):
    with running_openai_server(tmp_path / "teacher") as teacher:
        config = _config_with_teacher(
            finished_run,
            {
                "kind": "openai",
                "model": "rule-teacher",
                "base_url": teacher.base_url,
                "api_key_env": "NO_KEY_NEEDED",
            },
        )
        with serving(
            finished_run,
            "--config",
            str(config),
            "--api-key-env",
            "SERVE_KEY",
            "--max-inputs",
            "8",
            "--max-body-bytes",
            "4000",
            env={"SERVE_KEY": KEY},
        ) as (url, _, _):
            status, body, _ = call(url, "/healthz")
            assert status == 200 and body["tasks"] == ["intent"]
            status, body, _ = call(url, "/v1/classify", {"task": "intent", "inputs": TEXTS})
            assert status == 200
            results = body["results"]
            assert len(results) == len(TEXTS)
            for r in results:
                assert r["source"] in ("student", "teacher") and r["answer"] in tiny.LABELS
                assert (r["source"] == "student") == (r["score"] >= r["threshold"])
            deferred = sum(r["source"] == "teacher" for r in results)
            assert teacher.stats()["completions"] == deferred  # the teacher saw only those

            from openai import OpenAI

            client = OpenAI(base_url=url + "/v1", api_key=KEY)
            reply = client.chat.completions.create(
                model="intent", messages=[{"role": "user", "content": "i lost my card"}]
            )
            assert reply.choices[0].message.content in tiny.LABELS

            assert (
                call(url, "/v1/classify", {"task": "intent", "inputs": ["x"]}, key="no")[0] == 401
            )
            assert call(url, "/v1/classify", {"task": "nope", "inputs": ["x"]})[0] == 404
            assert call(url, "/v1/classify", {"task": "intent", "inputs": ["x"] * 9})[0] == 413
            big = json.dumps({"task": "intent", "inputs": ["x" * 5000]}).encode()
            assert call(url, "/v1/classify", raw=big)[0] == 413
            assert call(url, "/v1/classify", raw=b"not json")[0] == 400

            status, text, _ = call(url, "/metrics")
            assert status == 200
            for source in {r["source"] for r in results}:  # every source seen is counted
                assert f'cascade_requests_total{{source="{source}",task="intent"}}' in text
            assert "cascade_latency_seconds_bucket" in text and "cascade_deferral_rate" in text
            assert "cascade_savings_usd_total" in text and "cascade_batch_size_count" in text


def test_concurrent_clients_micro_batch_and_a_full_queue_answers_503(finished_run):
    # in bf16, with the threshold recalibrated on the run's calib rows at start
    args = ("--max-batch", "16", "--max-wait-ms", "20", "--precision", "bf16")
    with serving(finished_run, *args) as (url, _, log):
        assert "serve: bf16: task intent: τ" in log.read_text()

        def one(i: int):
            return call(url, "/v1/classify", {"task": "intent", "inputs": [TEXTS[i % 6]]}, key=None)

        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            replies = list(pool.map(one, range(128)))
        assert all(status == 200 for status, _, _ in replies)
        assert time.monotonic() - started < 60
        _, text, _ = call(url, "/metrics", key=None)
        count = float(text.split("cascade_batch_size_count ")[1].split()[0])
        total = float(text.split("cascade_batch_size_sum ")[1].split()[0])
        assert total >= 128 and total / count > 1.5  # requests shared forward passes
    # a tiny queue under a burst: some requests are turned away with Retry-After, none hang
    with serving(finished_run, "--queue", "4", "--max-batch", "2", "--max-wait-ms", "50") as (
        url,
        _,
        _,
    ):
        with ThreadPoolExecutor(48) as pool:
            replies = list(
                pool.map(
                    lambda i: call(
                        url, "/v1/classify", {"task": "intent", "inputs": TEXTS[:3]}, key=None
                    ),
                    range(96),
                )
            )
        statuses = [status for status, _, _ in replies]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        assert all(h.get("Retry-After") == "1" for s, _, h in replies if s == 503)
        assert call(url, "/healthz", key=None)[0] == 200


@pytest.mark.parametrize("shifted", [False, True])
def test_drift_audit_trips_on_a_shift_and_not_on_a_stable_stream(finished_run, tmp_path, shifted):
    """The teacher stays the rule the student learned (stable), or starts answering `other`
    to everything (a shift): the audit must raise the threshold only for the shift."""
    function = "tests.rule_teacher:always_other" if shifted else "tests.rule_teacher:by_keyword"
    config = _config_with_teacher(finished_run, {"kind": "python", "function": function})
    audit_log = tmp_path / "audit.jsonl"
    rows = tiny.make_rows(400, seed=7)
    with serving(
        finished_run,
        "--config",
        str(config),
        "--audit-share",
        "1",
        "--audit-log",
        str(audit_log),
        "--drift-limit",
        "0.45",
    ) as (url, _, log):
        for start in range(0, 400, 8):
            texts = [r["text"] for r in rows[start : start + 8]]
            assert (
                call(url, "/v1/classify", {"task": "intent", "inputs": texts}, key=None)[0] == 200
            )
        time.sleep(1.0)  # audits run in the background
        _, text, _ = call(url, "/metrics", key=None)
    alarm = float(text.split('cascade_drift_alarm{task="intent"} ')[1].split()[0])
    audited = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert len(audited) > 50 and {"text", "student", "teacher", "departed"} <= set(audited[0])
    if shifted:
        assert alarm == 1 and "drift alarm intent" in log.read_text()
        assert "cascade_threshold_raises_total" in text
    else:
        assert alarm == 0 and "drift alarm" not in log.read_text()


def test_router_sends_each_input_to_its_specialist(tmp_path, tiny_student):
    """Three tasks on one base: `route` names the specialist (`cards` or `money`), which
    answers; mixed-task batches run in one server."""
    from distill.cli import main

    rows = []
    for row in tiny.make_rows(200):
        card = row["intent"] in ("card_lost", "card_declined")
        rows.append(
            {
                **row,
                "route": "cards" if card else "money",
                "cards_label": row["intent"] if card else "card_lost",
                "money_label": row["intent"] if not card else "other",
            }
        )
    data = tiny.write_jsonl(rows, tmp_path / "rows.jsonl")
    path = tiny.tiny_config(tmp_path, data, tiny_student, epochs=6)
    config = yaml.safe_load(path.read_text())
    base = config["tasks"][0]
    config["tasks"] = [
        {
            **base,
            "name": "route",
            "labels": ["cards", "money"],
            "examples": [],
            "gold_field": "route",
        },
        {
            **base,
            "name": "cards",
            "labels": ["card_lost", "card_declined"],
            "examples": [],
            "gold_field": "cards_label",
        },
        {
            **base,
            "name": "money",
            "labels": ["refund", "other"],
            "examples": [],
            "gold_field": "money_label",
        },
    ]
    config["data"]["gold_field"] = None
    config["teacher"] = {
        "kind": "dataset",
        "label_field": {"route": "route", "cards": "cards_label", "money": "money_label"},
    }
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--quiet"]) == 0
    with serving(tmp_path / "run", "--router", "route") as (url, _, _):
        status, body, _ = call(url, "/v1/route", {"inputs": TEXTS}, key=None)
        assert status == 200
        for result in body["results"]:
            assert result["task"] in ("cards", "money", "route")
            if result["task"] == "cards" and result["source"] == "student":
                assert result["answer"] in ("card_lost", "card_declined")
            if result["task"] == "money" and result["source"] == "student":
                assert result["answer"] in ("refund", "other")
        assert call(url, "/v1/classify", {"task": "money", "inputs": TEXTS}, key=None)[0] == 200
    with serving(tmp_path / "run") as (url, _, _):
        assert call(url, "/v1/route", {"inputs": TEXTS}, key=None)[0] == 404


def test_graceful_shutdown_finishes_requests_in_flight(finished_run, tmp_path):
    import shutil
    import threading

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cascade = json.loads((run / "cascade.json").read_text())
    cascade["tasks"]["intent"]["threshold"] = 0.9999  # everything defers to the slow teacher
    (run / "cascade.json").write_text(json.dumps(cascade))
    with running_openai_server(tmp_path / "teacher", latency_ms=1500) as teacher:
        config = _config_with_teacher(
            run, {"kind": "openai", "model": "rule-teacher", "base_url": teacher.base_url}
        )
        with serving(run, "--config", str(config)) as (url, process, _):
            replies = []
            worker = threading.Thread(
                target=lambda: replies.append(
                    call(url, "/v1/classify", {"task": "intent", "inputs": TEXTS[:2]}, key=None)
                )
            )
            worker.start()
            time.sleep(0.6)  # the request waits on the teacher
            os.killpg(process.pid, signal.SIGTERM)
            worker.join(timeout=30)
            # uvicorn re-raises the signal once it has shut down gracefully
            assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        status, body, _ = replies[0]
        assert status == 200
        assert [r["source"] for r in body["results"]] == ["teacher", "teacher"]
        assert all(r["answer"] in tiny.LABELS for r in body["results"])
