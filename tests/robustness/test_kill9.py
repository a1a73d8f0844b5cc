"""kill -9 at seeded points of label, train, calibrate and publish, then the same command again.

Each trial's seed (in its test id) picks where the SIGKILL lands through `random.Random(seed)`:
a progress marker the test watches for (answers at the teacher, a checkpoint, the stage's
temporary folder or a file in it, requests at the hub) and a short delay after it, bounded so
that the kill stays inside the stage. The command runs as a real subprocess in its own process
group, frozen with SIGSTOP before the SIGKILL so the test sees where the kill lands: a trial
fails when the marker never appears or the stage was already over. The re-run happens in-process
(no second torch import). After each trial: exit 0, every output of every stage matches its
manifest's sha256, no temporary folder is left, no stage folder lacks its manifest, and no
teacher call whose answer was cached at the kill is made again. The teacher is the
OpenAI-compatible test server (tests/openai_server.py) and the hub the Hub-protocol test server
(tests/hub_server.py).

    pytest tests/robustness/test_kill9.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.config import load_config
from distill.pipeline import iter_inputs
from distill.publish import verify_folder
from distill.runs import MANIFEST, STAGE_DIRS
from distill.teachers import make_teacher
from tests import tiny
from tests.hub_fixture import RunningHub, running_hub
from tests.openai_fixture import RunningOpenAIServer, running_openai_server
from tests.openai_server import input_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-cascadekitKILL9key0987654321"
HF_SECRET = "hf_cascadekitKILL9token1234567890"
N_ROWS = 120
MAX_IN_FLIGHT = 4
POLL_S = 0.005
MARKER_TIMEOUT_S = 90.0
STAGES = ("label", "train", "calibrate", "publish")
TRIALS = [(STAGES[seed % len(STAGES)], seed) for seed in range(20)]  # seed mod 4: 5 per stage


# ── shared: the teacher, the hub, and a finished run with snapshots after split and score ──
@pytest.fixture(scope="module")
def env():
    """The teacher's key and the hub token, for in-process re-runs and the subprocesses."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEST_TEACHER_KEY", KEY)
        patch.setenv("HF_TOKEN", HF_SECRET)
        yield dict(os.environ)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, env):
    with running_openai_server(
        tmp_path_factory.mktemp("k9-teacher"), api_key=KEY, latency_ms=30
    ) as server:
        yield server


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with running_hub(tmp_path_factory.mktemp("k9-hub"), token=HF_SECRET, orgs=["acme"]) as server:
        yield server


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, tiny_student, teacher) -> dict[str, Path]:
    """config.yaml, and copies of an uninterrupted run after split, after score and done."""
    base = tmp_path_factory.mktemp("k9-base")
    data = tiny.write_jsonl(tiny.make_rows(N_ROWS), base / "rows.jsonl")
    config = yaml.safe_load(tiny.tiny_config(base, data, tiny_student, epochs=3).read_text())
    config["teacher"] = {
        "kind": "openai",
        "model": "rule-teacher",
        "base_url": teacher.base_url,
        "api_key_env": "TEST_TEACHER_KEY",
        "max_in_flight": MAX_IN_FLIGHT,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "timeout_s": 5,
    }
    config["student"]["training"]["checkpoint_every_steps"] = 2
    (base / "config.yaml").write_text(yaml.safe_dump(config))
    done = {}
    for stage in ("label", "split", "train", "score", "calibrate", "evaluate"):
        assert main([stage, str(base / "config.yaml"), "--quiet"]) == 0
        if stage in ("split", "score", "evaluate"):
            done[stage] = shutil.copytree(base / "run", base / f"after-{stage}")
    done["config"] = base / "config.yaml"
    return done


def _trial_dir(tmp_path: Path, snapshots: dict[str, Path], after: str | None) -> Path:
    shutil.copy(snapshots["config"], tmp_path / "config.yaml")
    if after is not None:
        shutil.copytree(snapshots[after], tmp_path / "run")
    return tmp_path / "config.yaml"


# ── the kill ─────────────────────────────────────────────────────────────────────────────
def _kill_during(
    command: list[str],
    env: dict,
    log: Path,
    marker: Callable[[], bool],
    delay_s: float,
    inside: Callable[[], bool] = lambda: True,
) -> None:
    """Start `command` in its own process group, wait for `marker()`, sleep `delay_s`, freeze
    the group (SIGSTOP), then SIGKILL it. Fails the test when the marker does not appear
    within MARKER_TIMEOUT_S or before the command ends, and when the kill did not land inside
    the stage: the command had finished, or `inside()` (checked while the group is frozen, so
    it sees the state the kill leaves) is false."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while not marker():
            assert process.poll() is None, (
                f"{command[3]} ended (exit {process.returncode}) before the kill's marker "
                f"appeared:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no marker within {MARKER_TIMEOUT_S} s"
            time.sleep(POLL_S)
        time.sleep(delay_s)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGSTOP)
        running = process.poll() is None  # a stopped process is still running
        landed = running and inside()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert running, f"{command[3]} finished before the kill:\n{log.read_text()[-3000:]}"
    assert landed, f"the kill came after {command[3]}'s stage was over"
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def _cli(stage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", stage, *args]


# ── the checks ───────────────────────────────────────────────────────────────────────────
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(run_dir: Path) -> list[str]:
    """Temporary stage folders, half-swapped folders and temporary files of atomic writes."""
    found = [
        p.name
        for p in run_dir.iterdir()
        if p.name.startswith((".tmp-", ".trash-")) or p.name.endswith(".tmp")
    ]
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        found += [str(p) for p in checkpoints.rglob(".tmp-*")]
    return found


def _check_run(run_dir: Path, finished: bool) -> dict[str, dict]:
    """Every stage folder holds a manifest whose outputs all match; `finished`: also the
    copies at the run's top level (cascade.json) and no temporary folder left. Returns the
    manifests by stage."""
    manifests = {}
    for stage, folder in STAGE_DIRS.items():
        path = run_dir / folder
        if not path.exists():
            continue
        assert (path / MANIFEST).is_file(), f"{folder}/ exists without its manifest"
        manifest = json.loads((path / MANIFEST).read_text())
        for relative, digest in manifest["outputs"].items():
            if relative.startswith("../") and not finished:
                continue  # killed between the swap and the top-level copy: the stage re-runs
            assert _sha256((path / relative).resolve()) == digest, f"{folder}/{relative}"
        manifests[stage] = manifest
    if finished:
        assert _leftovers(run_dir) == []
    return manifests


# ── the trials ───────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Trial:
    seed: int
    rng: random.Random  # every choice of the trial comes from here
    folder: Path
    env: dict[str, str]
    snapshots: dict[str, Path]
    teacher: RunningOpenAIServer
    hub: RunningHub


@pytest.mark.parametrize(("stage", "seed"), TRIALS, ids=[f"{s}-seed{n}" for s, n in TRIALS])
def test_kill_9_then_rerun(stage, seed, tmp_path, env, snapshots, teacher, hub):
    trial = Trial(seed, random.Random(seed), tmp_path, env, snapshots, teacher, hub)
    TRIAL_FUNCTIONS[stage](trial)


def _label_trial(trial: Trial) -> None:
    """Kill once a seeded number of answers are in; the re-run asks only what the cache lacks."""
    rng, tmp_path, env, teacher = trial.rng, trial.folder, trial.env, trial.teacher
    config_path = _trial_dir(tmp_path, trial.snapshots, None)
    config = load_config(config_path)
    task = config.tasks[0]
    records = list(iter_inputs(config))
    key_to_text = {make_teacher(config.teacher).cache_key(task, r): r.text for r in records}
    texts = set(key_to_text.values())
    teacher.reset()
    answered = rng.randint(5, len(texts) - 20)
    _kill_during(
        _cli("label", str(config_path), "--quiet"),
        env,
        tmp_path / "killed.log",
        lambda: teacher.stats()["completions"] >= answered,
        rng.uniform(0, 0.05),
        inside=lambda: not (tmp_path / "run/labels").exists(),
    )
    at_kill = teacher.stats()["by_input"]
    with sqlite3.connect(config.teacher_cache) as db:  # what the killed run had stored
        cached = {key_to_text[k] for (k,) in db.execute("SELECT key FROM answers")}
    assert cached, "the kill landed before any answer was stored"
    print(f"label: killed with {len(cached)} of {len(texts)} answers cached")

    assert main(["label", str(config_path), "--quiet"]) == 0
    after = teacher.stats()
    repeated = [t for t in cached if after["by_input"][input_key(t)] != at_kill[input_key(t)]]
    assert repeated == []
    assert after["completion_requests"] <= len(texts) + MAX_IN_FLIGHT
    assert all(after["by_input"].get(input_key(t), 0) >= 1 for t in texts)
    manifest = _check_run(tmp_path / "run", finished=True)["label"]
    assert manifest["tasks"]["intent"]["n_rows"] == N_ROWS
    assert manifest["tasks"]["intent"]["n_errors"] == 0


def _train_trial(trial: Trial) -> None:
    """Kill a seeded delay after a seeded checkpoint (step 0: the stage's temporary folder);
    the re-run, with or without --resume, finishes with the uninterrupted run's adapter."""
    rng, tmp_path, env = trial.rng, trial.folder, trial.env
    config_path = _trial_dir(tmp_path, trial.snapshots, "split")
    run = tmp_path / "run"
    resume = rng.random() < 0.5
    step = rng.randint(0, 12)  # 15 steps in all, a checkpoint every 2

    def marker() -> bool:
        if step == 0:
            return any(run.glob(".tmp-adapters-*"))
        done = (run / "checkpoints/intent").glob("step-*/state.json")
        return any(int(p.parent.name.split("-")[1]) >= step for p in done)

    delay_s = rng.uniform(0, 0.05)  # a step takes about 10 ms here, model loading longer
    _kill_during(  # inside the command; it may follow the swap of adapters/
        _cli("train", str(config_path), "--quiet"), env, tmp_path / "killed.log", marker, delay_s
    )
    _check_run(run, finished=False)  # adapters/ whole or absent (the kill may follow the swap)
    last = max(
        (p.parent.name for p in run.glob("checkpoints/intent/step-*/state.json")), default=None
    )
    print(
        f"train: killed at checkpoint {last}, adapters/ in place: {(run / 'adapters').exists()}; "
        f"re-run with resume={resume}"
    )

    assert main(["train", str(config_path), "--quiet", *(["--resume"] * resume)]) == 0
    manifests = _check_run(run, finished=True)
    assert not (run / "checkpoints").exists()
    assert manifests["train"]["tasks"]["intent"]["steps"] == 15
    _assert_same_adapter(run / "adapters", trial.snapshots["score"] / "adapters")


def _assert_same_adapter(folder: Path, reference: Path) -> None:
    """The uninterrupted run's adapter weights, head and labels, byte for byte; timings aside,
    and adapter_config.json's target_modules in any order (PEFT writes a set, in the order of
    the process's string hashes)."""
    outputs, expected = (
        json.loads((f / MANIFEST).read_text())["outputs"] for f in (folder, reference)
    )
    skip = ("training_metrics.json", "adapter_config.json")
    assert {k: v for k, v in outputs.items() if not k.endswith(skip)} == {
        k: v for k, v in expected.items() if not k.endswith(skip)
    }
    for name in (k for k in outputs if k.endswith("adapter_config.json")):
        configs = [json.loads((f / name).read_text()) for f in (folder, reference)]
        for config in configs:
            config["target_modules"] = sorted(config["target_modules"])
        assert configs[0] == configs[1]


def _calibrate_trial(trial: Trial) -> None:
    """Kill a seeded delay after a seeded marker: the stage's temporary folder, or the learned
    score's vocabulary in it (written first; the threshold scan follows, 0.5 s or more). The
    kill lands before the folder is swapped into place."""
    rng, tmp_path, env = trial.rng, trial.folder, trial.env
    config_path = _trial_dir(tmp_path, trial.snapshots, "score")
    run = tmp_path / "run"
    delay_s = rng.uniform(0, 0.15)
    marker = rng.choice([".tmp-calibration-*", ".tmp-calibration-*/vocab_intent.txt"])
    _kill_during(
        _cli("calibrate", str(config_path), "--quiet"),
        env,
        tmp_path / "killed.log",
        lambda: any(run.glob(marker)),
        delay_s,
        inside=lambda: any(run.glob(".tmp-calibration-*")),
    )
    print(f"calibrate: killed inside the stage, {delay_s * 1000:.0f} ms after {marker}")
    assert not (run / "calibration").exists()
    _check_run(run, finished=False)
    assert main(["calibrate", str(config_path), "--quiet"]) == 0
    manifests = _check_run(run, finished=True)
    reference = json.loads((trial.snapshots["evaluate"] / "calibration" / MANIFEST).read_text())
    assert manifests["calibrate"]["outputs"] == reference["outputs"]


def _publish_trial(trial: Trial) -> None:
    """Kill after a seeded number of requests at the hub, before the staging folder is gone
    (the last request is the commit); the re-run makes one commit in all (none when the killed
    run's commit landed), and the pull verifies every file."""
    rng, seed, tmp_path, env, hub = trial.rng, trial.seed, trial.folder, trial.env, trial.hub
    _trial_dir(tmp_path, trial.snapshots, "evaluate")
    run = tmp_path / "run"
    repo_id = f"acme/kill9-seed{seed}"
    command = _cli("publish", str(run), "--repo-id", repo_id, "--endpoint", hub.endpoint)
    scratch = tmp_path / "tmp"  # the killed run's temporary staging folder lands here
    scratch.mkdir()
    before = hub.stats()["requests"]
    # a first publish makes 6 requests (create, info, lookup, ..., commit) in about 0.2 s and
    # removes its staging folder some 40 ms after the commit request
    requests = rng.randint(1, 6)
    _kill_during(
        command,
        {**env, "TMPDIR": str(scratch)},
        tmp_path / "killed.log",
        lambda: hub.stats()["requests"] >= before + requests,
        rng.uniform(0, 0.01),
        inside=lambda: any(scratch.glob("cascadekit-publish-*")),
    )
    committed = hub.stats()["commits"].get(repo_id, 0)
    print(f"publish seed {seed}: killed inside after {requests} hub requests, commit {committed}")
    _check_run(run, finished=True)
    assert not (run / "published.json").exists()  # written after the staging folder is gone

    assert main(["publish", str(run), "--repo-id", repo_id, "--endpoint", hub.endpoint]) == 0
    assert hub.stats()["commits"][repo_id] == 1
    record = json.loads((run / "published.json").read_text())["publishes"][-1]
    out = tmp_path / "pulled"
    pull = ["pull", repo_id, "--endpoint", hub.endpoint, "--revision", record["commit"]]
    assert main([*pull, "--out", str(out)]) == 0
    assert verify_folder(out) == ["intent"]
    pulled = json.loads((out / "intent/cascade.json").read_text())
    assert pulled["content_digest"] == record["content_digests"]["intent"]
    _check_run(run, finished=True)


TRIAL_FUNCTIONS = {
    "label": _label_trial,
    "train": _train_trial,
    "calibrate": _calibrate_trial,
    "publish": _publish_trial,
}
