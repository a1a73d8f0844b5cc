"""A disk that fills up during labelling and during training.

The CLI runs with its run directory and its teacher cache ($CASCADEKIT_CACHE) on a small tmpfs
mounted in a private mount namespace (`unshare -rm`), sized so the stage runs out of space.
A shell driver inside the namespace runs the command, copies the disk's contents out (the
mount vanishes with the namespace), grows the tmpfs (space freed) and runs the command again.
Expected: a clear error (non-zero exit, "no space left" and the path, no traceback), earlier
stages' manifests and the cache intact (every answer stored before the failure readable, none
asked again), no half-written stage folder, and a re-run that completes.

Where `unshare` cannot mount (or CASCADEKIT_TEST_DISK_FULL=rlimit), a file size limit
(RLIMIT_FSIZE, SIGXFSZ ignored) stands in for the full disk: writes fail with EFBIG, which
SQLite reports as a disk I/O error.

    pytest tests/robustness/test_disk_full.py -q
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.config import load_config
from distill.pipeline import iter_inputs
from distill.runs import MANIFEST, STAGE_DIRS
from distill.teachers import make_teacher
from distill.teachers.base import TeacherAnswer
from tests import tiny
from tests.openai_fixture import running_openai_server
from tests.openai_server import input_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-cascadekitDISKFULLkey0987654321"
MAX_IN_FLIGHT = 4
CACHE_FILE = "teacher-answers.sqlite"  # in $CASCADEKIT_CACHE when the config names none
# The sizes at which the stage runs out: a tmpfs (KiB, all files) or a file size limit (bytes).
# Labelling: SQLite's write-ahead log grows about 4 KiB per answer stored. Training: the run
# through split takes about 80 KiB of tmpfs; the first checkpoint needs 200 KiB more and its
# adapter file alone 64 KiB.
LABEL_ROWS = 400
LABEL_TMPFS_KIB, LABEL_FSIZE_BYTES = 512, 256 * 1024
TRAIN_TMPFS_KIB, TRAIN_FSIZE_BYTES = 200, 32 * 1024
# "free some space": the tmpfs is grown to this for the re-run (a size string of mount's
# tmpfs size= option: 64 MiB)
ROOMY_TMPFS_SIZE = "64m"

# Inside the namespace: mount, seed the disk, run twice (growing the disk in between) and copy
# what the disk held after each run to $OUT/after-1 and $OUT/after-2.
DRIVER = r"""
set -u
mount -t tmpfs -o "size=${SIZE_KIB}k" tmpfs "$DISK" || exit 97
if [ -d "$SEED" ]; then cp -a "$SEED/." "$DISK/"; fi
cd "$ROOT"
for attempt in 1 2; do
    "$PY" -m distill.cli "$@" >"$OUT/$attempt.out" 2>"$OUT/$attempt.err"
    echo $? >"$OUT/$attempt.rc"
    mkdir -p "$OUT/after-$attempt" && cp -a "$DISK/." "$OUT/after-$attempt/"
    mount -o "remount,size=$ROOMY" "$DISK"
done
"""


@functools.cache
def _namespace_mounts() -> bool:
    """Whether `unshare -rm` may mount a tmpfs here (not in every container)."""
    if os.environ.get("CASCADEKIT_TEST_DISK_FULL") == "rlimit" or not shutil.which("unshare"):
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"cascadekit-unshare-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        script = 'mount -t tmpfs -o size=64k tmpfs "$1"'
        result = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script, "sh", str(probe)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0
    finally:
        probe.rmdir()


def _run_twice_on_a_small_disk(
    tmp_path: Path, disk: Path, seed: Path | None, tmpfs_kib: int, fsize: int, args: list[str]
) -> list[dict]:
    """Run `cascadekit ARGS` with `disk` too small, then again with room; per attempt its
    exit code, stderr and a copy of what `disk` held after it (`after`)."""
    out = tmp_path / "attempts"
    out.mkdir()
    disk.mkdir()
    env = {**os.environ, "TEST_TEACHER_KEY": KEY, "CASCADEKIT_CACHE": str(disk / "cache")}
    if _namespace_mounts():
        env |= {"SIZE_KIB": str(tmpfs_kib), "DISK": str(disk), "SEED": str(seed or "")}
        env |= {"ROOT": str(ROOT), "PY": sys.executable, "OUT": str(out), "ROOMY": ROOMY_TMPFS_SIZE}
        command = ["unshare", "-rm", "sh", "-c", DRIVER, "sh", *args]
        driver = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert driver.returncode == 0, driver.stderr
    else:  # a file size limit stands in for the full disk; the re-run has none
        if seed is not None:
            shutil.copytree(seed, disk, dirs_exist_ok=True)
        for attempt, limit in ((1, fsize), (2, None)):
            result = subprocess.run(
                [sys.executable, "-m", "distill.cli", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                preexec_fn=None if limit is None else functools.partial(_limit_file_size, limit),
            )
            (out / f"{attempt}.rc").write_text(f"{result.returncode}\n")
            (out / f"{attempt}.err").write_text(result.stderr)
            shutil.copytree(disk, out / f"after-{attempt}")
    return [
        {
            "rc": int((out / f"{n}.rc").read_text()),
            "err": (out / f"{n}.err").read_text(),
            "after": out / f"after-{n}",
        }
        for n in (1, 2)
    ]


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _assert_clear_error(attempt: dict, path: Path) -> None:
    err = attempt["err"]
    print(f"the disk filled: exit {attempt['rc']}: {err.strip()}")
    assert attempt["rc"] == 1, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and str(path) in err, err
    if _namespace_mounts():
        assert "no space left on the device" in err, err
    else:
        assert "file too large" in err or "disk I/O error" in err, err


def _assert_stages_intact(run_dir: Path, stages: list[str]) -> None:
    """Exactly `stages` are in place, each output matching its manifest's sha256, and no
    temporary or half-written folder is left (a failed checkpoint included)."""
    present = sorted(stage for stage, folder in STAGE_DIRS.items() if (run_dir / folder).exists())
    assert present == sorted(stages)
    for stage in stages:
        folder = run_dir / STAGE_DIRS[stage]
        manifest = json.loads((folder / MANIFEST).read_text())
        for relative, digest in manifest["outputs"].items():
            path = (folder / relative).resolve()
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, (stage, relative)
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    leftovers += [str(p) for p in run_dir.glob("checkpoints/*/.tmp-*")]
    assert leftovers == []


def _config(folder: Path, tiny_student: Path, run_dir: Path, n_rows: int, **changes) -> Path:
    data = tiny.write_jsonl(tiny.make_rows(n_rows), folder / "rows.jsonl")
    config = yaml.safe_load(tiny.tiny_config(folder, data, tiny_student, epochs=3).read_text())
    config.pop("teacher_cache")  # the default: $CASCADEKIT_CACHE, on the small disk
    config["run_dir"] = str(run_dir)
    config["student"]["training"]["checkpoint_every_steps"] = 2
    config |= changes
    path = folder / f"config-{run_dir.parent.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_disk_full_while_labelling(tmp_path, tiny_student):
    """The cache's write-ahead log fills the disk: a clear error naming the cache, every
    answer stored before it readable, and a re-run with room asks none of them again."""
    disk = tmp_path / "disk"
    with running_openai_server(tmp_path / "teacher", api_key=KEY) as server:
        teacher = {
            "kind": "openai",
            "model": "rule-teacher",
            "base_url": server.base_url,
            "api_key_env": "TEST_TEACHER_KEY",
            "max_in_flight": MAX_IN_FLIGHT,
        }
        config_path = _config(tmp_path, tiny_student, disk / "run", LABEL_ROWS, teacher=teacher)
        full, roomy = _run_twice_on_a_small_disk(
            tmp_path,
            disk,
            None,
            LABEL_TMPFS_KIB,
            LABEL_FSIZE_BYTES,
            ["label", str(config_path), "--quiet"],
        )
        stats = server.stats()

    cache_path = disk / "cache" / CACHE_FILE
    _assert_clear_error(full, cache_path)
    _assert_stages_intact(full["after"] / "run", [])
    config = load_config(config_path)
    task = config.tasks[0]
    key_to_text = {
        make_teacher(config.teacher).cache_key(task, r): r.text for r in iter_inputs(config)
    }
    texts = set(key_to_text.values())
    with sqlite3.connect(full["after"] / "cache" / CACHE_FILE) as db:  # a copy: reading is safe
        stored = dict(db.execute("SELECT key, answer FROM answers"))
    answers = [TeacherAnswer.from_json(json.loads(blob)) for blob in stored.values()]
    assert 0 < len(stored) < len(texts)  # the disk filled in the middle of labelling
    assert all(a.error is None and a.label in tiny.LABELS for a in answers)

    assert roomy["rc"] == 0, roomy["err"]
    _assert_stages_intact(roomy["after"] / "run", ["label"])
    manifest = json.loads((roomy["after"] / "run/labels" / MANIFEST).read_text())
    assert manifest["tasks"]["intent"]["n_rows"] == LABEL_ROWS
    assert manifest["tasks"]["intent"]["n_errors"] == 0
    assert manifest["tasks"]["intent"]["n_from_cache"] >= len(stored)
    # stored before the disk filled: asked once, never again
    repeated = [k for k in stored if stats["by_input"][input_key(key_to_text[k])] != 1]
    assert repeated == []
    # asked twice at most: those in flight when the disk filled, and the answer being stored
    assert stats["completion_requests"] <= len(texts) + MAX_IN_FLIGHT + 1


def test_disk_full_while_training(tmp_path, tiny_student):
    """Checkpoints fill the disk: a clear error naming the run, labels and split intact, no
    adapters/ folder and no half-written checkpoint; with room, the same command trains."""
    prepared, disk = tmp_path / "prepared", tmp_path / "disk"
    prepared_config = _config(tmp_path, tiny_student, prepared / "run", 120)
    for stage in ("label", "split"):
        assert main([stage, str(prepared_config), "--quiet"]) == 0
    config_path = _config(tmp_path, tiny_student, disk / "run", 120)
    full, roomy = _run_twice_on_a_small_disk(
        tmp_path,
        disk,
        prepared,
        TRAIN_TMPFS_KIB,
        TRAIN_FSIZE_BYTES,
        ["train", str(config_path), "--quiet"],
    )

    _assert_clear_error(full, disk / "run")
    _assert_stages_intact(full["after"] / "run", ["label", "split"])
    assert roomy["rc"] == 0, roomy["err"]
    _assert_stages_intact(roomy["after"] / "run", ["label", "split", "train"])
    assert not (roomy["after"] / "run/checkpoints").exists()
