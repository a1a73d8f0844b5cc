"""Publishing to a real MLflow tracking server and registry on 127.0.0.1: log, register,
alias, load back from models:/NAME@alias, verified; the same content twice makes no version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distill.cascade import Cascade
from distill.cli import main
from distill.errors import UserError
from distill.publish import verify_folder

pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` (SQLite backend, local artifact folder) in its own process group."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow_cli),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'db.sqlite'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_publish_register_alias_and_load_back(mlflow_server, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    publish = [
        "publish",
        str(run),
        "--to",
        "mlflow",
        "--tracking-uri",
        mlflow_server,
        "--model-name",
        "tiny-intent",
    ]
    assert main(publish) == 0
    record = json.loads((run / "published.json").read_text())["publishes"][-1]
    assert record["version"] == "1" and record["new_version"] is True
    assert record["model_uri"] == "models:/tiny-intent@candidate"

    # the same content again: no second version, the alias stays where it is
    assert main(publish) == 0
    again = json.loads((run / "published.json").read_text())["publishes"][-1]
    assert again["version"] == "1" and again["new_version"] is False

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert [v.version for v in client.search_model_versions("name='tiny-intent'")] == ["1"]
    assert client.get_model_version_by_alias("tiny-intent", "candidate").version == "1"

    out = tmp_path / "pulled"
    assert (
        main(
            [
                "pull",
                "models:/tiny-intent@candidate",
                "--tracking-uri",
                mlflow_server,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert verify_folder(out) == ["intent"]
    texts = ["i lost my card", "refund please", "hello"]
    pulled = Cascade.load(out).predict(texts, task="intent")
    local = Cascade.load(run).predict(texts, task="intent")
    assert [p.student_answer for p in pulled] == [p.student_answer for p in local]
    assert [p.source for p in pulled] == [p.source for p in local]
    assert [round(p.score, 5) for p in pulled] == [round(p.score, 5) for p in local]

    # a tampered file is caught
    (out / "intent/labels.json").write_text("[]")
    with pytest.raises(UserError, match=r"labels\.json does not match"):
        verify_folder(out)

    # an alias of a new version after a change in the run (another threshold)
    cascade = json.loads((run / "cascade.json").read_text())
    cascade["tasks"]["intent"]["threshold"] = 0.99
    (run / "cascade.json").write_text(json.dumps(cascade))
    assert main([*publish, "--alias", "champion"]) == 0
    assert client.get_model_version_by_alias("tiny-intent", "champion").version == "2"
    assert client.get_model_version_by_alias("tiny-intent", "candidate").version == "1"


def test_bad_names_and_unfinished_runs_exit_2(mlflow_server, tmp_path, finished_run):
    base = ["publish", str(finished_run), "--to", "mlflow", "--tracking-uri", mlflow_server]
    assert main([*base, "--model-name", "../evil"]) == 2
    assert main([*base, "--model-name", "ok", "--alias", "bad alias"]) == 2
    assert (
        main(
            [
                "publish",
                str(tmp_path),
                "--to",
                "mlflow",
                "--tracking-uri",
                mlflow_server,
                "--model-name",
                "x",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "pull",
                "models:/../x@y",
                "--tracking-uri",
                mlflow_server,
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
