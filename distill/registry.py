"""Publish a run's cascades to an MLflow model registry and load them back, verified.

The same files as a hub publication (a folder per task: adapter, cascade.json with digests,
report, model card) are logged as the artifacts of one MLflow run, registered as a new version
of a registered model, and given an alias (`candidate` by default). Publishing content that an
existing version already holds creates no version: the alias moves to that version. A failed
upload registers nothing. Needs `mlflow-skinny` (`pip install 'cascadekit[registry]'`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.publish import Log, _record, require_finished_run, stage_task, verify_folder

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
DIGEST_TAG = "cascadekit.content_digest"
EXPERIMENT = "cascadekit"


CONNECT_TIMEOUT_S = 5.0
# MLflow's own HTTP retries (unless the environment sets them): 3 tries after the first,
# 1 + 2 + 4 s apart, and 60 s per read, instead of 7 tries over about 4 minutes
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def _client(tracking_uri: str):
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise UserError("publishing to MLflow needs pip install 'cascadekit[registry]'") from exc
    if not re.match(r"^(https?|file|sqlite)://", tracking_uri):
        raise UserError(f"tracking URI {tracking_uri!r} is not an http(s), file or sqlite URI")
    _check_reachable(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _check_reachable(tracking_uri: str) -> None:
    """For an http(s) URI, one TCP connection within CONNECT_TIMEOUT_S, or a UserError naming
    the address: nothing listening there fails in seconds, not after minutes of retries."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UserError(f"tracking URI {tracking_uri!r} has a port that is not a number") from None
    try:
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise UserError(
            f"MLflow at {tracking_uri}: cannot connect to {parts.hostname}:{port} ({reason} "
            f"within {CONNECT_TIMEOUT_S:g} s); is the tracking server running there?"
        ) from None


def publish_mlflow(
    run_dir: Path, tracking_uri: str, model_name: str, alias: str = "candidate", log: Log = print
) -> dict[str, Any]:
    """Log, register and alias a finished run's cascades; returns what was recorded in
    RUN/published.json."""
    run_dir = Path(run_dir)
    if not MODEL_NAME.fullmatch(model_name or ""):
        raise UserError(f"model name {model_name!r} is not valid (letters, digits, . _ -)")
    if not ALIAS.fullmatch(alias or ""):
        raise UserError(f"alias {alias!r} is not valid (a letter, then letters, digits, _ -)")
    cascade, summary = require_finished_run(run_dir)
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="cascadekit-mlflow-") as tmp:
        staged = Path(tmp) / "cascade"
        digests = {
            task: stage_task(run_dir, task, staged / task, cascade, summary)
            for task in sorted(cascade["tasks"])
        }
        content = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
        try:
            version, new = _register(client, model_name, staged, content, summary)
            client.set_registered_model_alias(model_name, alias, version)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"MLflow at {tracking_uri}: {type(exc).__name__}: {exc} — no model version was "
                "registered; run the same command again to retry"
            ) from exc
    record = {
        "registry": "mlflow",
        "tracking_uri": tracking_uri,
        "model_name": model_name,
        "version": version,
        "alias": alias,
        "model_uri": f"models:/{model_name}@{alias}",
        "new_version": new,
        "content_digests": digests,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _record(run_dir, [record])
    state = "new version" if new else "unchanged: the alias moved to the existing version"
    log(f"publish mlflow {model_name} version {version} @{alias} ({state})")
    return record


def _register(client, name: str, staged: Path, content: str, summary: dict) -> tuple[str, bool]:
    """The version holding `content`: an existing one, or a new run + version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="cascadekit cascades")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    for existing in client.search_model_versions(f"name='{name}'"):
        if (existing.tags or {}).get(DIGEST_TAG) == content:
            return str(existing.version), False
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, tags={DIGEST_TAG: content})
    try:
        client.log_artifacts(run.info.run_id, str(staged), artifact_path="cascade")
        for task, result in summary["tasks"].items():
            for key in ("savings_rate", "deferral_rate", "risk"):
                client.log_metric(run.info.run_id, f"{task}.{key}", result["cascade"][key])
    except Exception:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/cascade",
        run_id=run.info.run_id,
        tags={DIGEST_TAG: content},
    )
    for _ in range(100):  # file stores are READY at once; remote ones may take a moment
        if client.get_model_version(name, version.version).status == "READY":
            break
        time.sleep(0.1)
    return str(version.version), True


def pull_mlflow(model_uri: str, tracking_uri: str, dst: Path | None = None) -> Path:
    """Download `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) and verify every file."""
    if not re.fullmatch(r"^models:/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9_-]+|/\d+)$", model_uri):
        raise UserError(f"{model_uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    _client(tracking_uri)
    import mlflow

    dst = Path(dst or tempfile.mkdtemp(prefix="cascadekit-pull-"))
    try:
        mlflow.set_tracking_uri(tracking_uri)  # else mlflow falls back to ./mlflow.db
        mlflow.set_registry_uri(tracking_uri)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=str(dst), tracking_uri=tracking_uri
        )
    except Exception as exc:
        raise UserError(f"MLflow at {tracking_uri}: cannot download {model_uri}: {exc}") from exc
    verify_folder(Path(path))
    return Path(path)
