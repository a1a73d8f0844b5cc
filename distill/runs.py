"""The run directory: one folder per stage, each with a manifest written last.

A stage writes into a temporary folder beside its final place, writes its manifest, then swaps
the folder into place with renames: a present manifest means the stage finished, and a killed
stage leaves nothing half-written. The manifest records the stage's key (a digest of its
settings and of its inputs' manifests), the sha256 of every output file, package versions,
the git revision and the teacher's token cost, so a stage whose key is unchanged is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from training.bases import file_sha256

STAGE_DIRS = {
    "label": "labels",
    "split": "dataset",
    "train": "adapters",
    "score": "scores",
    "calibrate": "calibration",
    "evaluate": "report",
}
STAGES = list(STAGE_DIRS)
MANIFEST = "manifest.json"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "scipy")
DISK_FULL = {  # the errnos of a write that ran out of room, and how to say so
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file size limit or quota)",
}
DISK_FULL_ERRNOS = tuple(DISK_FULL)
WRAPS_OS_ERRORS = {"safetensors", "safetensors_rust", "pyarrow", "sqlite3", "torch"}


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, sorted)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("cascadekit", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    """The commit of the cascadekit checkout, when it runs from one."""
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def stage_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / STAGE_DIRS[stage]


def read_manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = stage_dir(run_dir, stage) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def manifest_digest(run_dir: Path, stage: str) -> str | None:
    """What downstream stages depend on: the digest of a stage's outputs (not its timestamps),
    so a forced re-run that writes the same files invalidates nothing downstream."""
    manifest = read_manifest(run_dir, stage)
    if manifest is None:
        return None
    blob = json.dumps(manifest.get("outputs", {}), sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def verify_outputs(run_dir: Path, stage: str, manifest: dict[str, Any]) -> list[str]:
    """Output files that are missing or whose sha256 differs from the manifest."""
    folder = stage_dir(run_dir, stage)
    bad = []
    for relative, expected in manifest.get("outputs", {}).items():
        path = (folder / relative).resolve()
        if not path.is_file() or file_sha256(path) != expected:
            bad.append(relative)
    return bad


def is_current(run_dir: Path, stage: str, key: str) -> bool:
    """True when the stage finished with this key and every output still verifies."""
    manifest = read_manifest(run_dir, stage)
    if manifest is None or manifest.get("key") != key:
        return False
    return not verify_outputs(run_dir, stage, manifest)


@dataclass
class StageWriter:
    """Where a running stage writes; `extra` lands in the manifest."""

    stage: str
    folder: Path  # temporary, swapped into place at the end
    run_dir: Path
    extra: dict[str, Any]
    # files of the stage folder also published at the run directory's top level once the stage
    # is in place (e.g. cascade.json): {name in folder: name in run_dir}
    publish: dict[str, str]


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Swap `tmp` in as `final`. A crash between the two renames leaves `.trash-<name>-*`,
    which `clean_stale_temporaries` puts back; nothing is lost."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the copy failed (e.g. a full disk)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def disk_full_errno(exc: BaseException | None) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when `exc` or one of its causes is a write that ran out of
    space; libraries (safetensors, pyarrow, SQLite) wrap the OSError and keep only its text."""
    texts = {os.strerror(code): code for code in DISK_FULL_ERRNOS}
    texts |= {f"os error {code})": code for code in DISK_FULL_ERRNOS}
    texts["database or disk is full"] = errno.ENOSPC
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        # the text only from libraries known to wrap a failed write (not, say, an HTTP error
        # whose body quotes it)
        if type(exc).__module__.split(".")[0] in WRAPS_OS_ERRORS or type(exc) is RuntimeError:
            message = str(exc)
            for text, code in texts.items():
                if text in message:
                    return code
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def write_stage(
    run_dir: Path, stage: str, key: str, inputs: dict[str, str | None], config_digest: str
) -> Iterator[StageWriter]:
    """Yield a temporary folder; on success write the manifest last and swap it into place."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir(run_dir, stage)
    tmp = run_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    writer = StageWriter(stage=stage, folder=tmp, run_dir=run_dir, extra={}, publish={})
    started = time.perf_counter()
    try:
        yield writer
        outputs = {
            str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        for inside, name in writer.publish.items():
            outputs[f"../{name}"] = outputs[inside]  # the published copy must match too
        manifest = {
            "stage": stage,
            "key": key,
            "config_digest": config_digest,
            "inputs": inputs,
            "outputs": outputs,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - started, 3),
            "versions": package_versions(),
            "git_revision": git_revision(),
            **writer.extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _atomic_replace_dir(tmp, final)
        for inside, name in writer.publish.items():
            _atomic_copy(final / inside, run_dir / name)
    except Exception as exc:
        # a full disk: name the stage's folder (not the temporary one, removed below)
        code, named = disk_full_errno(exc), getattr(exc, "filename", None)
        if code is None or (named and not str(named).startswith(str(tmp))):
            raise
        raise OSError(code, os.strerror(code), str(final)) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_LEFTOVER = re.compile(r"^\.(tmp|trash)-(" + "|".join(STAGE_DIRS.values()) + r")-[0-9a-f]{8}$")
_LEFTOVER_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # atomic_write_text, _atomic_copy


def clean_stale_temporaries(run_dir: Path) -> None:
    """Tidy up after a stage that was killed: drop its temporary folder, temporary files and
    any half-written checkpoint; if it died between the two renames of the swap, put the
    previous finished folder back."""
    if not run_dir.is_dir():
        return
    for path in sorted(run_dir.iterdir()):
        if _LEFTOVER_FILE.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            continue
        match = _LEFTOVER.match(path.name)
        if not match or not path.is_dir():
            continue
        final = run_dir / match.group(2)
        if match.group(1) == "trash" and not final.exists():
            os.rename(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)
    drop_partial_checkpoints(run_dir)


def drop_partial_checkpoints(run_dir: Path) -> None:
    """Remove checkpoints cut short (`checkpoints/TASK/.tmp-step-*`); finished ones stay."""
    for path in Path(run_dir).glob("checkpoints/*/.tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)
