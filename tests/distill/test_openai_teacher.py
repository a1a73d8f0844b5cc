"""The `openai` teacher against a real OpenAI-compatible server on 127.0.0.1
(tests/openai_server.py): labels and probabilities, retries through every fault, error rows
that a re-run retries (and nothing else), the spend limit, a teacher that always fails, the
key kept secret, and a kill -9 in the middle of labelling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from distill.cli import main
from tests import tiny
from tests.openai_fixture import running_openai_server

KEY = "sk-cascadekitSECRETkey0987654321"
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, tiny_student, base_url: str, n: int = 120, **teacher) -> str:
    data = tiny.write_jsonl(tiny.make_rows(n), tmp_path / "rows.jsonl")
    path = tiny.tiny_config(tmp_path, data, tiny_student)
    config = yaml.safe_load(path.read_text())
    config["teacher"] = {
        "kind": "openai",
        "model": "rule-teacher",
        "base_url": base_url,
        "api_key_env": "TEST_TEACHER_KEY",
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "timeout_s": 2,
        **teacher,
    }
    config["cost"]["teacher"] = {
        "usd_per_million_input_tokens": 1000.0,
        "usd_per_million_output_tokens": 1000.0,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _table(tmp_path: Path) -> dict:
    return pq.read_table(tmp_path / "run/labels/intent.parquet").to_pydict()


def _manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run/labels/manifest.json").read_text())["tasks"]["intent"]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("TEST_TEACHER_KEY", KEY)


def test_labels_probabilities_usage_and_cache(tmp_path, tiny_student, key, capfd):
    with running_openai_server(tmp_path / "server", api_key=KEY) as server:
        config = _config(tmp_path, tiny_student, server.base_url)
        assert main(["label", config, "--quiet"]) == 0
        table = _table(tmp_path)
        assert all(e is None for e in table["error"]) and len(table["id"]) == 120
        assert set(table["teacher_label"]) <= set(tiny.LABELS)
        probs = [p for p in table["teacher_probs"] if p is not None]
        assert len(probs) == 120 and all(abs(sum(p) - 1) < 1e-6 for p in probs)
        assert min(table["input_tokens"]) > 0 and min(table["output_tokens"]) > 0
        assert _manifest(tmp_path)["teacher_cost_usd"] > 0
        distinct = len(set(tiny.make_rows(120)[i]["text"] for i in range(120)))
        assert server.stats()["completions"] == distinct  # each distinct prompt once
        # the whole run again: all from the cache, not one call
        assert main(["label", config, "--force", "--quiet"]) == 0
        assert server.stats()["completions"] == distinct
        # the whole pipeline runs on these labels
        assert main(["run", config, "--quiet"]) == 0
    _assert_key_absent(tmp_path, capfd)


def test_every_fault_is_retried_and_the_run_completes(tmp_path, tiny_student, key, capfd):
    faults = {
        "rate_limit_every": 7,
        "retry_after_s": 0.05,
        "error_500_every": 11,
        "drop_every": 13,
        "malformed_every": 17,
        "slow_every": 19,
        "slow_ms": 2500,
    }
    with running_openai_server(tmp_path / "server", api_key=KEY, **faults) as server:
        config = _config(tmp_path, tiny_student, server.base_url, max_in_flight=8, max_retries=12)
        started = time.monotonic()
        assert main(["label", config, "--quiet"]) == 0
        table = _table(tmp_path)
        assert all(e is None for e in table["error"]), [e for e in table["error"] if e][:3]
        stats = server.stats()
        for kind in ("rate_limit", "error_500", "drop", "malformed", "slow"):
            assert any(kind in name for name in stats["faults"]), (kind, stats["faults"])
        assert time.monotonic() - started < 60
    _assert_key_absent(tmp_path, capfd)


def test_errors_stay_rows_and_a_rerun_asks_only_them(tmp_path, tiny_student, key):
    rows = tiny.make_rows(120)
    failing = "ref3"  # every text with this reference fails on the server, whatever we do
    n_failing = sum(1 for r in rows if r["text"].endswith(failing))
    with running_openai_server(
        tmp_path / "server", api_key=KEY, fail_inputs=[failing], bad_label_every=0
    ) as server:
        config = _config(tmp_path, tiny_student, server.base_url, max_retries=2)
        assert main(["label", config, "--quiet"]) == 0
        table = _table(tmp_path)
        errors = [e for e in table["error"] if e is not None]
        assert len(errors) == n_failing and all(e.startswith("server_error") for e in errors)
        assert "after 3 attempts" in errors[0]
        assert _manifest(tmp_path)["errors_by_kind"] == {"server_error": n_failing}
        # the endpoint recovers: a re-run asks exactly the failed rows again, nothing else
        server.set_faults()
        server.reset()
        assert main(["label", config, "--force", "--quiet"]) == 0
        assert all(e is None for e in _table(tmp_path)["error"])
        failed_texts = {r["text"] for r in rows if r["text"].endswith(failing)}
        assert server.stats()["completions"] == len(failed_texts)


def test_labels_outside_the_set_are_error_rows(tmp_path, tiny_student, key):
    with running_openai_server(tmp_path / "server", api_key=KEY, bad_label_every=4) as server:
        config = _config(tmp_path, tiny_student, server.base_url, logprobs=False)
        assert main(["label", config, "--quiet"]) == 0
        errors = [e for e in _table(tmp_path)["error"] if e is not None]
        assert errors and all("is not in the label set" in e for e in errors)
        assert server.stats()["completions"] > 0


def test_spend_limit_stops_cleanly_and_resume_finishes(tmp_path, tiny_student, key, capfd):
    with running_openai_server(tmp_path / "server", api_key=KEY) as server:
        # about 100 input tokens per call at $1,000 per million: ~$0.1 a call, stop near 3
        config = _config(
            tmp_path, tiny_student, server.base_url, max_cost_usd=0.35, max_in_flight=1
        )
        assert main(["label", config, "--quiet"]) == 2
        err = capfd.readouterr().err
        assert "labelling stopped: spend limit" in err and "run the same command again" in err
        assert not (tmp_path / "run/labels/manifest.json").exists()  # nothing half-written
        asked = server.stats()["completions"]
        assert 1 <= asked <= 5
        with open(tmp_path / "config.yaml") as handle:
            raw = yaml.safe_load(handle)
        raw["teacher"].pop("max_cost_usd")
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
        assert main(["label", config, "--quiet"]) == 0
        distinct = len({r["text"] for r in tiny.make_rows(120)})
        assert server.stats()["completions"] == distinct  # nothing asked twice


def test_a_teacher_that_always_fails_stops_early(tmp_path, tiny_student, key, capfd):
    with running_openai_server(tmp_path / "server", api_key=KEY, fail_all=True) as server:
        config = _config(
            tmp_path,
            tiny_student,
            server.base_url,
            max_retries=1,
            max_consecutive_failures=5,
            max_in_flight=2,
        )
        assert main(["label", config, "--quiet"]) == 2
        assert "failed 5 calls in a row" in capfd.readouterr().err
        assert server.stats()["requests"] <= 2 * (5 + 2 * 2)  # not 120 rows' worth
    # a wrong key: 401 is not retried, and the run stops early too
    with running_openai_server(tmp_path / "server2", api_key="sk-other") as server:
        config = _config(tmp_path, tiny_student, server.base_url, max_consecutive_failures=5)
        assert main(["label", config, "--quiet"]) == 2
        assert "auth: HTTP 401" in capfd.readouterr().err
        assert server.stats()["requests"] <= 5 + 16


def test_kill_9_mid_labelling_then_resume_repeats_no_call(tmp_path, tiny_student, key):
    """A real subprocess labels with 100 ms per call; kill -9 when some answers are in, start
    again: every input is answered exactly once at the server and no row is lost."""
    with running_openai_server(tmp_path / "server", api_key=KEY, latency_ms=100) as server:
        config = _config(tmp_path, tiny_student, server.base_url, n=200, max_in_flight=4)
        env = {**os.environ, "TEST_TEACHER_KEY": KEY}
        command = [sys.executable, "-m", "distill.cli", "label", config, "--quiet"]
        process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while server.stats()["completions"] < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed_at = server.stats()["completions"]
        assert 30 <= killed_at < 200
        assert not (tmp_path / "run/labels/manifest.json").exists()
        assert subprocess.run(command, env=env, cwd=ROOT, timeout=120).returncode == 0
        texts = {r["text"] for r in tiny.make_rows(200)}
        calls = [server.calls_for(text) for text in texts]
        # answered before the kill: never asked again; in flight at the kill: asked at most twice
        assert sum(c == 1 for c in calls) >= len(texts) - 4 and max(calls) <= 2
        table = _table(tmp_path)
        assert len(table["id"]) == 200 and all(e is None for e in table["error"])


def _assert_key_absent(tmp_path: Path, capfd) -> None:
    captured = capfd.readouterr()
    assert KEY not in captured.out and KEY not in captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert KEY.encode() not in path.read_bytes(), path
    cache = Path(os.environ.get("CASCADEKIT_CACHE", ""))
    if cache.is_dir():
        for path in cache.rglob("*.sqlite*"):
            assert KEY.encode() not in path.read_bytes(), path


def test_rationales_are_stored_with_each_label(tmp_path, tiny_student, key):
    with running_openai_server(tmp_path / "server", api_key=KEY) as server:
        config = _config(tmp_path, tiny_student, server.base_url, n=40, rationales=True)
        assert main(["label", config, "--quiet"]) == 0
        table = _table(tmp_path)
        assert all(e is None for e in table["error"])
        assert set(table["teacher_label"]) <= set(tiny.LABELS)
        assert all(r and r.startswith("the input mentions") for r in table["teacher_rationale"])
