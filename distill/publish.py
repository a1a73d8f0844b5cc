"""Publish a run's cascades to a Hugging Face-protocol model hub or an MLflow model registry,
and pull them back, verified.

A published task is one folder: the PEFT adapter (+ head, label map or prompt, tokenizer),
`cascade.json` (the threshold with everything it means nothing without, and the sha256 of
every other file), the report (summary, curve, plots) and a model card `README.md`. Either one
repo with a folder per task (`layout="folders"`) or one repo per task (`layout="repos"`,
adapter at the repo root so `PeftModel.from_pretrained(base, repo_id)` works).

Publishing is one commit per repo, made only when the content changed (the content digest is
compared with the remote cascade.json first); a failed upload commits nothing. Repo ids,
revisions and file names are validated before any request; the token comes from the caller or
`HF_TOKEN` and is never written or printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distill import runs
from distill.errors import UserError

CASCADE_FILE = "cascade.json"
PUBLISHED_FILE = "published.json"  # RUN/published.json: every publish, newest last
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
REPORT_FILES = ("curves.png", "reliability.png", "per_label_deferral.png")
ADAPTER_SKIP = {"README.md"}  # PEFT's template card: the cascade's card replaces it
Log = Callable[[str], None]


# ── validation ──────────────────────────────────────────────────────────────────────────
def check_repo_id(value: str) -> str:
    if not isinstance(value, str) or not REPO_ID.fullmatch(value) or ".." in value or "--" in value:
        raise UserError(
            f"repo id {value!r} is not valid: use ORG/NAME with letters, digits, '-', '_' "
            "and '.', no '..' or '--', at most 96 characters per part"
        )
    return value


def check_revision(value: str | None) -> str | None:
    if value is None:
        return None
    if (
        not REVISION.fullmatch(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", ".lock"))
    ):
        raise UserError(
            f"revision {value!r} is not valid: a branch name or commit id (letters, digits, "
            "'-', '_', '.', '/'; no '..', '//' or trailing '/')"
        )
    return value


def check_file_name(path: str) -> str:
    """A relative path inside a repo: no absolute paths, '..', backslashes or empty parts."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in parts)
        or re.match(r"^[A-Za-z]:", path)
    ):
        raise UserError(f"file name {path!r} is not a safe relative path")
    return path


# ── staging ─────────────────────────────────────────────────────────────────────────────
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def require_finished_run(run_dir: Path) -> tuple[dict, dict]:
    """cascade.json and report/summary.json of a run whose evaluate stage finished."""
    run_dir = Path(run_dir)
    if runs.read_manifest(run_dir, "evaluate") is None or not (run_dir / CASCADE_FILE).is_file():
        raise UserError(
            f"{run_dir} is not a finished run (no evaluate stage or cascade.json): run "
            "`cascadekit run CONFIG` first"
        )
    return _read_json(run_dir / CASCADE_FILE), _read_json(run_dir / "report/summary.json")


def stage_task(run_dir: Path, task: str, out: Path, cascade: dict, summary: dict) -> str:
    """Write one task's publishable folder into `out`; return its content digest."""
    from distill.cards import model_card
    from distill.outputs import load_schema

    entry = json.loads(json.dumps(cascade["tasks"][task]))  # a deep copy
    out.mkdir(parents=True, exist_ok=True)
    adapter_dir = run_dir / entry["adapter"]
    for path in sorted(adapter_dir.iterdir()):
        if path.is_file() and path.name not in ADAPTER_SKIP:
            shutil.copy2(path, out / path.name)
    entry["adapter"] = "."
    if (entry.get("learned") or {}).get("vocab_file"):
        vocab = entry["learned"]["vocab_file"]
        (out / vocab).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / vocab, out / vocab)
    schema = entry["task"].get("json_schema")
    if isinstance(schema, str):  # a path on this machine: publish the schema itself
        entry["task"]["json_schema"] = load_schema(Path(schema))
    tiers = entry.pop("tiers", None)  # other runs' adapters are not part of this repo
    report = out / "report"
    report.mkdir()
    task_summary = {
        "meta": {k: v for k, v in summary.get("meta", {}).items() if k not in ("run_dir",)},
        "tasks": {task: summary["tasks"][task]},
    }
    (report / "summary.json").write_text(json.dumps(task_summary, indent=2) + "\n")
    lines = (run_dir / "report/curve.csv").read_text(encoding="utf-8").splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.split(",", 1)[0] == task]
    (report / "curve.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    for name in (*REPORT_FILES, f"training_{task}.png", f"tiers_{task}.png"):
        if (run_dir / "report" / name).is_file():
            shutil.copy2(run_dir / "report" / name, report / name)
    document = {"format": cascade.get("format"), "tasks": {task: entry}}
    (out / "README.md").write_text(
        model_card(task, entry, summary["tasks"][task], tiers), encoding="utf-8"
    )
    files = {
        path.relative_to(out).as_posix(): _sha256(path)
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    document |= {"files": files, "content_digest": content}
    (out / CASCADE_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return content


def verify_folder(folder: Path) -> list[str]:
    """Check every cascade.json under `folder` (root or TASK/) against its file digests;
    return the task names, or raise naming the first file that does not match."""
    from distill.cascade import read_documents

    tasks = read_documents(folder)
    checked = set()
    for task, (where, _) in tasks.items():
        if where in checked:
            continue
        checked.add(where)
        document = _read_json(where / CASCADE_FILE)
        files = document.get("files")
        if not isinstance(files, dict) or not files:
            raise UserError(f"{where / CASCADE_FILE}: no file digests to verify against")
        for name, digest in files.items():
            path = where / check_file_name(name)
            if not path.is_file():
                raise UserError(f"{task}: {name} is missing from the download")
            if _sha256(path) != digest:
                raise UserError(f"{task}: {name} does not match its digest in cascade.json")
        expected = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        if document.get("content_digest") != expected:
            raise UserError(f"{where / CASCADE_FILE}: content digest does not match its files")
    return sorted(tasks)


# ── the hub ─────────────────────────────────────────────────────────────────────────────
@contextmanager
def _online():
    """Publishing and pulling are the two commands that talk to a hub: lift the offline
    switch (which cascadekit sets for every other command) while they run."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_error(exc: Exception, repo_id: str, endpoint: str) -> UserError:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, RepositoryNotFoundError):
        return UserError(f"{endpoint}: repo {repo_id} does not exist or the token cannot see it")
    if isinstance(exc, RevisionNotFoundError):
        return UserError(f"{endpoint}: {repo_id} has no such revision")
    if status in (401, 403):
        return UserError(
            f"{endpoint} refused the token ({status}) for {repo_id}: set HF_TOKEN to a token "
            "with write access"
        )
    if isinstance(exc, HfHubHTTPError):
        return UserError(f"{endpoint}: {repo_id}: the hub answered {status}: {exc}")
    return UserError(f"{endpoint}: {repo_id}: {type(exc).__name__}: {exc}")


def hub_settings(endpoint: str | None, token: str | None) -> tuple[str, str | None]:
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if not re.match(r"^https?://[^\s/]+", endpoint):
        raise UserError(f"endpoint {endpoint!r} is not an http(s) URL")
    return endpoint, token or os.environ.get("HF_TOKEN") or None


def publish_hub(
    run_dir: Path,
    repo_id: str,
    layout: str = "folders",
    endpoint: str | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Publish every task of a finished run; returns one record per repo (also appended to
    RUN/published.json)."""
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    check_revision(revision)
    if layout not in ("folders", "repos"):
        raise UserError(f"layout must be 'folders' or 'repos', got {layout!r}")
    endpoint, token = hub_settings(endpoint, token)
    cascade, summary = require_finished_run(run_dir)
    tasks = sorted(cascade["tasks"])
    if layout == "folders":
        targets = [(repo_id, {task: task for task in tasks})]
    else:
        targets = [
            (repo_id if len(tasks) == 1 else f"{repo_id}-{task}", {task: ""}) for task in tasks
        ]
    for target, _ in targets:
        check_repo_id(target)
    api = HfApi(endpoint=endpoint, token=token)
    records = []
    for target, folders in targets:
        with tempfile.TemporaryDirectory(prefix="cascadekit-publish-") as tmp:
            staged = Path(tmp) / "repo"  # beside it, "hub-cache": this publish's own downloads
            digests = {
                task: stage_task(
                    run_dir, task, staged / prefix if prefix else staged, cascade, summary
                )
                for task, prefix in folders.items()
            }
            with _online():
                record = _push(
                    api, target, staged, folders, digests, private, revision, endpoint, log
                )
        records.append(record)
    _record(run_dir, records)
    return records


def _remote_state(api, repo_id, branch, folders, digests, scratch: Path) -> tuple[str, bool]:
    """The branch's head commit, and whether it already holds exactly this content."""
    from huggingface_hub import hf_hub_download

    head = api.model_info(repo_id, revision=branch).sha
    for task, prefix in folders.items():
        name = f"{prefix}/{CASCADE_FILE}" if prefix else CASCADE_FILE
        try:
            remote = hf_hub_download(
                repo_id,
                name,
                revision=head,
                endpoint=api.endpoint,
                token=api.token,
                cache_dir=scratch,
            )
        except Exception:  # not there yet: this publish changes the repo
            return head, False
        if _read_json(Path(remote)).get("content_digest") != digests[task]:
            return head, False
    return head, head is not None


def _push(api, repo_id, staged, folders, digests, private, revision, endpoint, log) -> dict:
    branch = revision or "main"
    record = {
        "endpoint": endpoint,
        "repo_id": repo_id,
        "revision": branch,
        "tasks": {task: prefix or "." for task, prefix in folders.items()},
        "content_digests": digests,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    scratch = staged.parent / "hub-cache"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head, unchanged = _remote_state(api, repo_id, branch, folders, digests, scratch)
        if unchanged:
            log(f"publish {repo_id}@{branch}: unchanged since commit {head}; no new commit")
            return record | {"commit": head, "new_commit": False}
        patterns = [f"{prefix}/*" for prefix in folders.values() if prefix] or ["*"]
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            revision=branch,
            commit_message=f"cascadekit: publish {', '.join(sorted(folders))}",
            delete_patterns=patterns,
            parent_commit=head,  # one commit on top of what was checked, or none
        )
    except UserError:
        raise
    except Exception as exc:
        try:  # a commit whose reply was lost is in place all the same
            landed, done = _remote_state(api, repo_id, branch, folders, digests, scratch)
        except Exception:
            done = False
        if done:
            log(f"publish {repo_id}@{branch}: the reply was lost, but commit {landed} is in place")
            return record | {"commit": landed, "new_commit": True}
        error = _hub_error(exc, repo_id, endpoint)
        raise UserError(
            f"{error} — nothing was committed (a publish is one commit); run the same command "
            "again to retry"
        ) from exc
    log(f"publish {repo_id}@{branch}: commit {info.oid}")
    return record | {"commit": info.oid, "new_commit": True}


def _record(run_dir: Path, records: list[dict]) -> None:
    path = run_dir / PUBLISHED_FILE
    history = _read_json(path).get("publishes", []) if path.is_file() else []
    runs.atomic_write_text(path, json.dumps({"publishes": history + records}, indent=2) + "\n")


def pull(
    repo_id: str,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Download a published cascade pinned to the commit `revision` resolves to now, and
    verify every file against cascade.json; returns the local folder."""
    from huggingface_hub import HfApi, snapshot_download

    check_repo_id(repo_id)
    check_revision(revision)
    endpoint, token = hub_settings(endpoint, token)
    try:
        with _online():
            commit = (
                HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision).sha
            )
            folder = Path(
                snapshot_download(
                    repo_id, revision=commit, endpoint=endpoint, token=token, cache_dir=cache_dir
                )
            )
    except Exception as exc:
        raise _hub_error(exc, repo_id, endpoint) from exc
    verify_folder(folder)
    return folder
