"""Security checks: pickled weights are refused unless a config allows them, code shipped with
a model never runs unless the config says so, secrets appear in no file and no output, names
cannot climb out of their folders, the server's key and size limits hold, and the dependency
audit script tells its three outcomes apart.

    python -m pytest tests/robustness/test_security.py -q

One tiny run labelled by the real OpenAI-protocol test server (module-scoped) carries the
secrets checks, the pickled-adapter and remote-code adapter checks and one `cascadekit serve`
process that every server check shares.
"""

from __future__ import annotations

import base64
import builtins
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from distill.cascade import Cascade, read_documents
from distill.cli import main
from distill.config import load_config
from distill.errors import ConfigError, UserError
from distill.publish import check_repo_id, verify_folder
from tests import tiny
from tests.hub_fixture import running_hub
from tests.openai_fixture import running_openai_server
from tests.processes import started

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "SECURITY_TEST_TEACHER_KEY"
TOKEN_ENV = "SECURITY_TEST_HUB_TOKEN"
SERVE_KEY_ENV = "SECURITY_TEST_SERVE_KEY"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TEXTS = ["i lost my card", "where is my refund", "hello there"]


def _secret(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _forms(secret: str) -> list[bytes]:
    """The secret as it could leak: plain, and inside base64 at each of the three alignments
    (standard and URL-safe), edge characters that depend on neighbours left out."""
    raw = secret.encode()
    forms = [raw]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + raw).rstrip(b"=")
            forms.append(text[(pad * 4 + 2) // 3 + 1 : -2])
    return forms


def _assert_nowhere(secret: str, folders: list[Path], texts: list[str]) -> int:
    """No form of `secret` in any file under `folders` nor in `texts`; returns files read."""
    forms = _forms(secret)
    for text in texts:
        assert not any(form in text.encode() for form in forms), "secret in the output"
    n_files = 0
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert not any(form in data for form in forms), path
                n_files += 1
    return n_files


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`cascadekit ARGS` in a subprocess with every library's debug logging on."""
    full = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    full |= {"HF_DEBUG": "1", "TRANSFORMERS_VERBOSITY": "debug", **env}
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args],
        env=full,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _openai_config(folder: Path, student: Path, base_url: str, n: int = 120, **teacher) -> Path:
    data = tiny.write_jsonl(tiny.make_rows(n), folder / "rows.jsonl")
    path = tiny.tiny_config(folder, data, student, epochs=2)
    config = yaml.safe_load(path.read_text())
    config["teacher"] = {
        "kind": "openai",
        "model": "rule-teacher",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "timeout_s": 5,
        **teacher,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass(frozen=True)
class Trained:
    folder: Path  # everything the run wrote or read: config, data, cache, server logs
    run: Path
    key: str  # the teacher's API key, in the environment only
    output: str  # the run's stdout and stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_student) -> Trained:
    """`cascadekit run --debug` in a subprocess, labelled by the OpenAI-protocol test server;
    its key lives in an environment variable only."""
    folder = tmp_path_factory.mktemp("secret-run")
    key = _secret("sk-")
    with running_openai_server(folder / "teacher-server", api_key=key) as server:
        config = _openai_config(folder, tiny_student, server.base_url)
        done = _cli(["run", str(config), "--debug", "--quiet"], {KEY_ENV: key})
        assert server.stats()["completions"] > 0
    assert done.returncode == 0, done.stderr[-3000:]
    return Trained(folder, folder / "run", key, done.stdout + done.stderr)


@pytest.fixture
def no_prompt(monkeypatch):
    """Answer "y" to any question a library asks: were transformers to ask whether to run a
    model's code, it would run it, and the marker file would show."""
    monkeypatch.setattr(builtins, "input", lambda *args: "y")


# ── pickle ──────────────────────────────────────────────────────────────────────────────
def _pickled(source: Path, folder: Path) -> Path:
    """A copy of a tiny model folder whose weights are pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(source, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture(scope="module")
def pickled_student(tiny_student, tmp_path_factory) -> Path:
    return _pickled(tiny_student, tmp_path_factory.mktemp("pickled") / "student")


def test_pickled_student_base_is_refused_unless_allowed(pickled_student, tmp_path, capfd):
    from training.classifier import LoraSpec, build_classifier

    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "rows.jsonl")
    config = str(tiny.tiny_config(tmp_path, data, pickled_student))
    for command in ("validate", "run"):
        assert main([command, config, "--quiet"]) == 2
        err = capfd.readouterr().err
        assert str(pickled_student) in err and "student.allow_pickle" in err
        assert "pytorch_model.bin" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert main(["validate", config, "student.allow_pickle=true"]) == 0
    assert "valid:" in capfd.readouterr().out
    # the loaders hold the line too, whatever a caller checked before
    with pytest.raises(OSError, match=r"model\.safetensors"):
        build_classifier(str(pickled_student), tiny.LABELS, LoraSpec())
    model, _ = build_classifier(str(pickled_student), tiny.LABELS, LoraSpec(), allow_pickle=True)
    assert model.num_parameters() > 0


def test_pickled_teacher_and_generative_base_are_refused_unless_allowed(
    tiny_teacher, tiny_student, tmp_path, capfd
):
    from distill.teachers.hf import HFTeacher
    from training.generator import load_base

    teacher = _pickled(tiny_teacher, tmp_path / "teacher")
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "rows.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student, teacher=teacher)
    assert main(["validate", str(config)]) == 2
    err = capfd.readouterr().err
    assert str(teacher) in err and "teacher.allow_pickle" in err
    with pytest.raises(ConfigError, match=r"teacher\.allow_pickle"):
        load_config(config)
    allowed = load_config(config, ["teacher.allow_pickle=true"])
    assert HFTeacher(allowed.teacher, log=lambda _: None).lm.num_parameters() > 0
    refused = allowed.teacher.model_copy(update={"allow_pickle": False})
    with pytest.raises(OSError, match=r"model\.safetensors"):
        HFTeacher(refused, log=lambda _: None).lm  # noqa: B018 - loading is the point
    # the generative student's loader: the same causal-LM folder
    with pytest.raises(OSError, match=r"model\.safetensors"):
        load_base(str(teacher))
    assert load_base(str(teacher), allow_pickle=True)[0].num_parameters() > 0


def test_pickled_adapter_and_base_are_refused_by_the_cascade(trained, pickled_student, tmp_path):
    import torch
    from safetensors.torch import load_file

    from training.bases import UnsafeWeightsError
    from training.classifier import load_classifier

    run = tmp_path / "run"
    shutil.copytree(trained.run, run, ignore=shutil.ignore_patterns("logs", "labels", "dataset"))
    adapter = run / "adapters/intent"
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match=r"adapter_model\.safetensors"):
        Cascade.load(run).predict(TEXTS, task="intent")
    base = yaml.safe_load((run / "config.resolved.yaml").read_text())["student"]["base_model"]
    with pytest.raises(UnsafeWeightsError):
        load_classifier(base, adapter)

    # a cascade whose base is pickled: refused, and loaded when the caller allows it
    run2 = tmp_path / "run2"
    shutil.copytree(trained.run, run2, ignore=shutil.ignore_patterns("logs", "labels", "dataset"))
    document = json.loads((run2 / "cascade.json").read_text())
    document["tasks"]["intent"]["base_model"] = str(pickled_student)
    (run2 / "cascade.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match="allow_pickle"):
        Cascade.load(run2).predict(TEXTS, task="intent")
    allowed = Cascade.load(run2, allow_pickle=True).predict(TEXTS, task="intent")
    safe = Cascade.load(trained.run).predict(TEXTS, task="intent")
    assert [p.student_answer for p in allowed] == [p.student_answer for p in safe]


# ── remote code ─────────────────────────────────────────────────────────────────────────
def _with_remote_code(source: Path, folder: Path, marker: Path) -> Path:
    """A copy of a model folder whose config and tokenizer name classes in a Python file
    shipped beside them (`auto_map`), a file that writes `marker` when it is imported."""
    shutil.copytree(source, folder)
    (folder / "shipped_code.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "ShippedConfig = ShippedModel = ShippedTokenizer = None\n"
    )
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "shipped-custom"
        config["auto_map"] = {
            name: f"shipped_code.Shipped{'Config' if name == 'AutoConfig' else 'Model'}"
            for name in (
                "AutoConfig",
                "AutoModel",
                "AutoModelForCausalLM",
                "AutoModelForSequenceClassification",
            )
        }
        (folder / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = "ShippedTokenizer"
    tokenizer["auto_map"] = {"AutoTokenizer": ["shipped_code.ShippedTokenizer"] * 2}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


def test_student_base_code_is_not_run(tiny_student, tmp_path, no_prompt, capfd):
    from training.generator import load_base

    marker = tmp_path / "MARKER"
    student = _with_remote_code(tiny_student, tmp_path / "student", marker)
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "rows.jsonl")
    config = str(tiny.tiny_config(tmp_path, data, student))
    assert main(["validate", config]) == 2
    err = capfd.readouterr().err
    assert "student.base_model" in err and "trust_remote_code" in err
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_base(str(student))  # the generative student's loader
    assert not marker.exists()


def test_teacher_code_is_not_run(tiny_teacher, tiny_student, tmp_path, no_prompt, capfd):
    marker = tmp_path / "MARKER"
    teacher = _with_remote_code(tiny_teacher, tmp_path / "teacher", marker)
    data = tiny.write_jsonl(tiny.make_rows(40), tmp_path / "rows.jsonl")
    config = str(tiny.tiny_config(tmp_path, data, tiny_student, teacher=teacher))
    assert main(["label", config, "--quiet"]) == 2
    assert "teacher.trust_remote_code: true" in capfd.readouterr().err
    assert not marker.exists()


def test_adapter_tokenizer_code_is_not_run(trained, tmp_path, no_prompt):
    """A downloaded adapter's tokenizer_config names a class in shipped code: loading the
    cascade fails and runs nothing (transformers would otherwise ask, and "y" runs it)."""
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    shutil.copytree(trained.run, run, ignore=shutil.ignore_patterns("logs", "labels", "dataset"))
    shutil.rmtree(run / "adapters/intent")
    _with_remote_code(trained.run / "adapters/intent", run / "adapters/intent", marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        Cascade.load(run).predict(TEXTS, task="intent")
    assert not marker.exists()


# ── secrets ─────────────────────────────────────────────────────────────────────────────
def test_secrets_appear_nowhere(trained, tmp_path, monkeypatch, capfd):
    """The teacher key and the hub token, each in an environment variable, through a run,
    a publish and a pull with debug logging: in no file, no output, no server log."""
    from huggingface_hub import constants

    token = _secret("hf_")
    hub_dir = trained.folder / "hub"
    pulled = trained.folder / "pulled"
    outputs = [trained.output]
    with running_hub(hub_dir, token=token, orgs=["acme"]) as hub:
        common = ["--endpoint", hub.endpoint, "--token-env", TOKEN_ENV, "--debug"]
        env = {TOKEN_ENV: token, KEY_ENV: trained.key}
        done = _cli(["publish", str(trained.run), "--repo-id", "acme/secure", *common], env)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout + done.stderr)
        done = _cli(["pull", "acme/secure", "--out", str(pulled), *common], env)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout + done.stderr)
        assert (pulled / "intent/README.md").is_file()  # the model card is among the files
        pulled_answers = Cascade.load(pulled).predict(TEXTS, task="intent")  # it loads
        local_answers = Cascade.load(trained.run).predict(TEXTS, task="intent")
        assert [p.student_answer for p in pulled_answers] == [
            p.student_answer for p in local_answers
        ]

        # a wrong token: refused with 401, and neither token is printed
        wrong = _secret("hf_")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv(TOKEN_ENV, wrong)
        publish = ["publish", str(trained.run), "--repo-id", "acme/other", *common]
        assert main(publish) == 2
        captured = capfd.readouterr()
        assert "refused the token (401)" in captured.err
        outputs.append(captured.out + captured.err)
    assert (hub_dir / "server.log").is_file()
    for secret in (trained.key, token, wrong):
        assert _assert_nowhere(secret, [trained.folder], outputs) > 20


def test_a_wrong_teacher_key_is_not_printed(tiny_student, tmp_path, monkeypatch, capfd):
    key, wrong = _secret("sk-"), _secret("sk-")
    monkeypatch.setenv(KEY_ENV, wrong)
    with running_openai_server(tmp_path / "teacher-server", api_key=key) as server:
        config = _openai_config(
            tmp_path, tiny_student, server.base_url, n=40, max_consecutive_failures=3
        )
        assert main(["label", str(config), "--quiet", "--debug"]) == 2
    captured = capfd.readouterr()
    assert "401" in captured.err
    for secret in (key, wrong):
        assert _assert_nowhere(secret, [tmp_path], [captured.out, captured.err]) > 0


# ── traversal ───────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "", "..", ".", "x\n", "a\\b"])
def test_task_names_cannot_be_paths(name, tmp_path, tiny_student):
    data = tiny.write_jsonl(tiny.make_rows(20), tmp_path / "rows.jsonl")
    config = tiny.tiny_config(tmp_path, data, tiny_student)
    raw = yaml.safe_load(config.read_text())
    raw["tasks"][0]["name"] = name
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="name"):
        load_config(config)


def test_hub_repo_ids_and_pull_out_are_checked(tmp_path, capfd):
    for bad in ("../../x", "a/b/c", "a--b", "acme/a--b", "acme/x\n", "/abs", "acme/..", ""):
        with pytest.raises(UserError, match="is not valid"):
            check_repo_id(bad)
    endpoint = ["--endpoint", "http://127.0.0.1:9"]  # nothing listens: no request may be needed
    assert main(["pull", "../../x", *endpoint, "--out", str(tmp_path / "a")]) == 2
    assert "is not valid" in capfd.readouterr().err
    assert main(["publish", str(tmp_path), "--repo-id", "a/b/c", *endpoint]) == 2
    assert "is not valid" in capfd.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    target = tmp_path / "elsewhere"
    (tmp_path / "link").symlink_to(target)  # dangling: pulling through it would write elsewhere
    (tmp_path / "file").write_text("x")
    for out in (existing, tmp_path / "link", tmp_path / "file"):
        assert main(["pull", "acme/x", *endpoint, "--out", str(out)]) == 2
        assert "exists; give a new folder" in capfd.readouterr().err
    assert not target.exists() and list(existing.iterdir()) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a\\..\\b", "a/../../b"])
def test_published_file_names_cannot_leave_the_folder(name, tmp_path):
    folder = tmp_path / "pulled"
    (folder / "intent").mkdir(parents=True)
    document = {"tasks": {"intent": {"adapter": "."}}, "files": {name: "0" * 64}}
    (folder / "intent/cascade.json").write_text(json.dumps(document))
    with pytest.raises(UserError, match="not a safe relative path"):
        verify_folder(folder)


@pytest.mark.parametrize(
    "entry, task",
    [
        ({"adapter": "../../outside"}, "intent"),
        ({"adapter": "/etc"}, "intent"),
        ({"adapter": "a\\..\\..\\b"}, "intent"),
        ({"adapter": None}, "intent"),
        ({"adapter": ".", "learned": {"vocab_file": "../secret.txt"}}, "intent"),
        ({"adapter": "."}, "../x"),
        ({"adapter": "."}, "a/b"),
    ],
)
def test_cascade_entries_name_nothing_outside_their_folder(entry, task, tmp_path):
    (tmp_path / "cascade.json").write_text(json.dumps({"tasks": {task: entry}}))
    with pytest.raises(UserError, match=r"not a path inside|not a safe name"):
        read_documents(tmp_path)


def test_cascade_entries_inside_their_folder_are_read_through_links(tmp_path):
    """A pulled snapshot's files are links into the hub cache's blobs: still inside."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs/abc").write_text("card\n")
    snapshot = tmp_path / "snapshot"
    (snapshot / "calibration").mkdir(parents=True)
    (snapshot / "calibration/vocab_intent.txt").symlink_to(tmp_path / "blobs/abc")
    entry = {"adapter": ".", "learned": {"vocab_file": "calibration/vocab_intent.txt"}}
    (snapshot / "cascade.json").write_text(json.dumps({"tasks": {"intent": entry}}))
    assert list(read_documents(snapshot)) == ["intent"]


# ── server ──────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Served:
    url: str
    key: str
    log: Path


MAX_BODY_BYTES = 30_000


@pytest.fixture(scope="module")
def server(trained) -> Served:
    """One `cascadekit serve` of the trained run with an API key and a small body limit."""
    config = yaml.safe_load((trained.run / "config.resolved.yaml").read_text())
    config["teacher"] = {"kind": "dataset", "label_field": "recorded"}
    config_path = trained.folder / "serve-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    key = _secret("serve-")
    log = trained.folder / "serve.log"
    command = [sys.executable, "-m", "distill.cli", "serve", str(trained.run), "--port", "0"]
    command += ["--config", str(config_path), "--api-key-env", SERVE_KEY_ENV]
    command += ["--max-body-bytes", str(MAX_BODY_BYTES), "--max-inputs", "4"]
    env = {**os.environ, SERVE_KEY_ENV: key}
    with started(command, env, log, 120, "cascadekit serve", ROOT) as (_, url):
        yield Served(url, key, log)


def _call(url: str, path: str, body=None, key: str | None = None, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with OPENER.open(request, timeout=60) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_server_requires_the_key(server):
    body = {"task": "intent", "inputs": TEXTS[:2]}
    for key in (None, "", "wrong", server.key + "x", server.key[:-1]):
        status, text = _call(server.url, "/v1/classify", body, key=key)
        assert status == 401 and "API key" in text
    request = urllib.request.Request(
        server.url + "/v1/classify", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Authorization", f"Basic {server.key}")  # the key in another scheme
    with pytest.raises(urllib.error.HTTPError) as refused:
        OPENER.open(request, timeout=60)
    assert refused.value.code == 401
    status, text = _call(server.url, "/v1/classify", body, key=server.key)
    assert status == 200 and len(json.loads(text)["results"]) == 2
    # the liveness check is open by design; it shows the tasks and nothing secret
    status, text = _call(server.url, "/healthz")
    assert status == 200 and json.loads(text)["tasks"] == ["intent"]
    status, metrics = _call(server.url, "/metrics")
    assert status == 200
    _assert_nowhere(server.key, [], [text, metrics, server.log.read_text()])


def test_server_refuses_oversized_requests(server):
    status, text = _call(
        server.url, "/v1/classify", key=server.key, raw=b"x" * (MAX_BODY_BYTES + 1)
    )
    assert status == 413 and f"over {MAX_BODY_BYTES} bytes" in text
    too_many = {"task": "intent", "inputs": ["a"] * 5}
    status, text = _call(server.url, "/v1/classify", too_many, key=server.key)
    assert status == 413 and "1 to 4 inputs" in text
    too_long = {"task": "intent", "inputs": ["a" * 20_001]}
    status, text = _call(server.url, "/v1/classify", too_long, key=server.key)
    assert status == 413 and "at most 20000 characters" in text
    # a chunked body (no Content-Length) is counted as it arrives: answered when small,
    # refused once it passes the limit
    parts = urlsplit(server.url)
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    for chunks, expected in (
        ([b'{"task": "intent", ', b'"inputs": ["hi"]}'], 200),
        ([b'{"task": "intent", "inputs": ["', *[b"x" * 10_000] * 4, b'"]}'], 413),
    ):
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        connection.request(
            "POST", "/v1/classify", body=iter(chunks), headers=headers, encode_chunked=True
        )
        reply = connection.getresponse()
        assert reply.status == expected, reply.read()
        connection.close()


def test_server_task_names_are_only_names(server):
    for name in ("../x", "../../etc/passwd", "/etc/passwd", "intent/../intent", "."):
        chat = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
        status, text = _call(server.url, "/v1/chat/completions", chat, key=server.key)
        assert status == 404 and "no task" in text, (name, status, text)
        status, _ = _call(server.url, "/v1/classify", {"task": name, "inputs": ["hi"]}, server.key)
        assert status == 404
    assert _call(server.url, "/healthz")[0] == 200  # still serving


# ── dependency audit ────────────────────────────────────────────────────────────────────
FAKE_PIP_AUDIT = """
import json, os, sys
mode = os.environ["FAKE_AUDIT_MODE"]
service = sys.argv[sys.argv.index("--vulnerability-service") + 1]
assert int(sys.argv[sys.argv.index("--timeout") + 1]) > 0  # each request has a timeout
deps = [{"name": "pytest", "version": "8.0.0", "vulns": []},
        {"name": "numpy", "version": "2.0.0", "vulns": []}]
if mode == "vulnerable":
    deps[0]["vulns"] = [{"id": "GHSA-fake-0001", "fix_versions": ["99.0"], "aliases": []}]
elif mode == "crash":
    sys.exit("pip-audit: error: unreadable requirements file")
elif mode == "tls":
    sys.exit("requests.exceptions.SSLError: HTTPSConnectionPool(host='pypi.org', port=443): "
             "Max retries exceeded with url: /pypi/pytest/8.0.0/json (Caused by SSLError("
             "SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
             "verify failed: self-signed certificate in certificate chain')))")
elif mode == "hang":
    import time
    time.sleep(60)
elif mode == "unreachable":
    if service == "osv":
        sys.exit("requests.exceptions.ConnectionError: Max retries exceeded")
    reason = "Dependency not found on PyPI and could not be audited"
    deps = [{"name": d["name"], "skip_reason": reason} for d in deps]
print(json.dumps({"dependencies": deps, "fixes": []}))
sys.exit(1 if mode == "vulnerable" else 0)
"""


def _audit_module():
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts/audit_deps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_audit_script_outcomes_with_a_stand_in(tmp_path, monkeypatch, capsys):
    audit = _audit_module()
    fake = tmp_path / "fake_pip_audit.py"
    fake.write_text(FAKE_PIP_AUDIT)
    monkeypatch.setenv("CASCADEKIT_PIP_AUDIT", f"{sys.executable} {fake}")
    monkeypatch.delenv("CASCADEKIT_AUDIT_REQUIRED", raising=False)
    lock = tmp_path / "ci/requirements.lock"
    expected = {
        "clean": (0, "no known vulnerabilities in 2 dependencies"),
        "vulnerable": (1, "pytest 8.0.0: GHSA-fake-0001 (fixed in 99.0)"),
        "unreachable": (0, "dependency audit NOT RUN: no vulnerability service reachable (pypi"),
        "crash": (1, "dependency audit FAILED"),
        "tls": (1, "pypi: TLS error: requests.exceptions.SSLError"),  # not NOT RUN
    }
    for mode, (code, line) in expected.items():
        monkeypatch.setenv("FAKE_AUDIT_MODE", mode)
        assert audit.main([str(lock)]) == code, mode
        assert line in capsys.readouterr().out, mode
    monkeypatch.setattr(audit, "RUN_TIMEOUT_S", 2)  # a pip-audit that hangs is stopped
    monkeypatch.setenv("FAKE_AUDIT_MODE", "hang")
    assert audit.main([str(lock)]) == 0
    out = capsys.readouterr().out
    assert "NOT RUN: no vulnerability service reachable (pypi: pip-audit did not finish" in out
    monkeypatch.setenv("CASCADEKIT_AUDIT_REQUIRED", "1")
    monkeypatch.setenv("FAKE_AUDIT_MODE", "unreachable")
    assert audit.main([str(lock)]) == 1
    assert "NOT RUN" in capsys.readouterr().out
    pins = lock.read_text().splitlines()
    assert pins == sorted(pins, key=str.lower) and any(p.startswith("pytest==") for p in pins)
    assert not any(p.lower().startswith("cascadekit") for p in pins)  # editable: not a pin


class _FakeOSV(BaseHTTPRequestHandler):
    """OSV's query API with one planted advisory, for pytest at any version."""

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = {}
        if query["package"]["name"] == "pytest":
            affected = {
                "package": {"name": "pytest", "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "99"}]}],
            }
            body = {"vulns": [{"id": "GHSA-fake-0002", "summary": "x", "affected": [affected]}]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_audit_script_with_the_real_pip_audit(tmp_path, monkeypatch, capsys):
    """The real pip-audit (the dev extra brings it): a local OSV stand-in with one advisory
    fails the audit; a service nobody answers on is NOT RUN."""
    audit = _audit_module()
    assert audit.pip_audit_command() is not None, "pip-audit is missing: install the dev extra"
    monkeypatch.delenv("CASCADEKIT_AUDIT_REQUIRED", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    lock = tmp_path / "requirements.lock"
    osv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOSV)
    threading.Thread(target=osv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{osv.server_address[1]}/v1/query"
        assert audit.main([str(lock), "--services", "osv", "--osv-url", url]) == 1
        assert "GHSA-fake-0002 (fixed in 99)" in capsys.readouterr().out
    finally:
        osv.shutdown()
        osv.server_close()
    closed = f"http://127.0.0.1:{osv.server_address[1]}/v1/query"
    assert audit.main([str(lock), "--services", "osv", "--osv-url", closed]) == 0
    assert "dependency audit NOT RUN: no vulnerability service reachable" in capsys.readouterr().out
