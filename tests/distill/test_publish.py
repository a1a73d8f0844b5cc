"""Publishing to a Hub-protocol server on 127.0.0.1 (tests/hub_server.py) with the real
huggingface_hub client: both layouts, both upload modes, pull back verified, repeat without a
second commit, and the faults: a wrong token, a missing repo, a dropped connection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cascade import Cascade
from distill.cli import main
from distill.errors import UserError
from distill.publish import check_file_name, check_repo_id, check_revision, verify_folder
from tests.hub_fixture import running_hub

SECRET = "hf_cascadekitSECRETtoken1234567890"  # recognisable: it must appear nowhere
TEXTS = ["i lost my card", "refund please", "hello there"]


@pytest.fixture
def online(monkeypatch):
    """The client reads HF_HUB_OFFLINE (set by conftest) at import: lift it for these tests."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SECRET)


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _commits(hub, repo_id: str) -> int:
    return hub.stats()["commits"].get(repo_id, 0)


def _published(run: Path) -> dict:
    return json.loads((run / "published.json").read_text())["publishes"][-1]


def _peft_loads(endpoint: str, repo_id: str, subfolder: str | None, student: Path, n: int):
    """`PeftModel.from_pretrained(base, repo_id)` in a fresh process (HF_ENDPOINT is read at
    import), on the tiny student's encoder; the head (n labels) is beside it."""
    code = f"""
from peft import PeftModel
from transformers import AutoModel
base = AutoModel.from_pretrained({str(student)!r})
kwargs = {{"subfolder": {subfolder!r}}} if {subfolder!r} else {{}}
model = PeftModel.from_pretrained(base, {repo_id!r}, **kwargs)
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
head = load_file(hf_hub_download({repo_id!r}, "head.safetensors", **kwargs))
assert head["weight"].shape[0] == {n}, head["weight"].shape
print("loaded", type(model).__name__)
"""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": SECRET,
        "HF_HOME": str(Path(student).parent / "hf-home"),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded PeftModel" in result.stdout


def test_publish_folders_pull_back_and_repeat(
    online, run, tmp_path, tiny_student, capfd, monkeypatch
):
    with running_hub(tmp_path / "hub", token=SECRET, orgs=["acme"]) as hub:
        publish = [
            "publish",
            str(run),
            "--repo-id",
            "acme/tiny-cascade",
            "--endpoint",
            hub.endpoint,
        ]
        assert main(publish) == 0
        record = _published(run)
        assert record["new_commit"] and len(record["commit"]) == 40
        assert record["tasks"] == {"intent": "intent"}
        assert _commits(hub, "acme/tiny-cascade") >= 1
        commits = _commits(hub, "acme/tiny-cascade")

        # the same content again: no second commit
        assert main(publish) == 0
        assert _commits(hub, "acme/tiny-cascade") == commits
        assert _published(run)["new_commit"] is False
        assert _published(run)["commit"] == record["commit"]

        # pull pinned to the commit, verified; it predicts like the local run
        out = tmp_path / "pulled"
        assert (
            main(
                [
                    "pull",
                    "acme/tiny-cascade",
                    "--endpoint",
                    hub.endpoint,
                    "--revision",
                    record["commit"],
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert verify_folder(out) == ["intent"]
        card = (out / "intent/README.md").read_text()
        assert card.startswith("---\nlibrary_name: peft\n")
        assert "pipeline_tag: text-classification" in card and "model-index:" in card
        assert "## Guarantee" in card and "With probability at least" in card
        for name in (
            "adapter_model.safetensors",
            "adapter_config.json",
            "labels.json",
            "cascade.json",
            "report/summary.json",
            "report/curve.csv",
        ):
            assert (out / "intent" / name).is_file(), name
        local = Cascade.load(run).predict(TEXTS, task="intent")
        hub_cascade = Cascade.from_hub(
            "acme/tiny-cascade", endpoint=hub.endpoint, cache_dir=tmp_path / "cache"
        )
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        assert Cascade.load("acme/tiny-cascade").tasks == ["intent"]  # a hub id loads too
        remote = hub_cascade.predict(TEXTS, task="intent")
        assert [p.student_answer for p in remote] == [p.student_answer for p in local]
        assert [p.source for p in remote] == [p.source for p in local]
        # each answer's cost: the student's mean, plus the teacher's when it was deferred
        costs = json.loads((run / "report/summary.json").read_text())["tasks"]["intent"]
        student_usd = costs["student"]["cost_usd_per_request"]
        teacher_usd = costs["teacher"]["cost_usd_per_request"]
        assert teacher_usd > student_usd > 0
        for p in (*local, *remote):
            deferred = p.source == "teacher"
            assert p.cost_usd == pytest.approx(student_usd + teacher_usd * deferred)

        # a plain PEFT load of the published adapter works too
        labels = json.loads((out / "intent/labels.json").read_text())
        n_labels = len(labels if isinstance(labels, list) else labels["labels"])
        _peft_loads(hub.endpoint, "acme/tiny-cascade", "intent", tiny_student, n_labels)

        # a change in the run: one more commit, on a branch when asked
        cascade = json.loads((run / "cascade.json").read_text())
        cascade["tasks"]["intent"]["threshold"] = 0.99
        (run / "cascade.json").write_text(json.dumps(cascade))
        assert main([*publish, "--revision", "candidate"]) == 0
        assert _published(run)["revision"] == "candidate" and _published(run)["new_commit"]

    # the token is nowhere: run folder, download, server state, output
    _assert_secret_absent([run, out, tmp_path / "hub"], capfd)


def test_repos_layout_lfs_mode_and_peft_load(online, run, tmp_path, tiny_student, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with running_hub(tmp_path / "hub", token=SECRET, upload_mode="lfs", orgs=["acme"]) as hub:
        assert (
            main(
                [
                    "publish",
                    str(run),
                    "--repo-id",
                    "acme/intent",
                    "--layout",
                    "repos",
                    "--endpoint",
                    hub.endpoint,
                    "--private",
                ]
            )
            == 0
        )
        record = _published(run)
        assert record["repo_id"] == "acme/intent" and record["tasks"] == {"intent": "."}
        labels = json.loads((run / "adapters/intent/labels.json").read_text())
        n_labels = len(labels if isinstance(labels, list) else labels["labels"])
        _peft_loads(hub.endpoint, "acme/intent", None, tiny_student, n_labels)
        out = tmp_path / "pulled"
        assert main(["pull", "acme/intent", "--endpoint", hub.endpoint, "--out", str(out)]) == 0
        assert verify_folder(out) == ["intent"]
        # private: without the token the repo cannot be seen
        monkeypatch.delenv("HF_TOKEN")
        assert (
            main(
                ["pull", "acme/intent", "--endpoint", hub.endpoint, "--out", str(tmp_path / "anon")]
            )
            == 2
        )
        assert not (tmp_path / "anon").exists()


def test_faults_wrong_token_missing_repo_dropped_connection(
    online, run, tmp_path, capfd, monkeypatch
):
    from huggingface_hub import constants

    # without Xet the client sends one commit request and does not retry it on its own
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with running_hub(tmp_path / "hub", token=SECRET, drop_commit=1, orgs=["acme"]) as hub:
        base = ["publish", str(run), "--repo-id", "acme/faults", "--endpoint", hub.endpoint]
        monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
        assert main(base) == 2
        assert "refused the token (401)" in capfd.readouterr().err
        monkeypatch.setenv("HF_TOKEN", SECRET)

        # the first commit request is dropped mid-way: exit 2, nothing committed, say retry
        assert main(base) == 2
        err = capfd.readouterr().err
        assert "nothing was committed" in err and "run the same command again" in err
        assert _commits(hub, "acme/faults") == 0
        assert not (run / "published.json").exists()
        assert main(base) == 0  # the retry goes through
        assert _commits(hub, "acme/faults") == 1

        assert (
            main(
                [
                    "pull",
                    "acme/nothing-here",
                    "--endpoint",
                    hub.endpoint,
                    "--out",
                    str(tmp_path / "none"),
                ]
            )
            == 2
        )
        assert "does not exist" in capfd.readouterr().err

        # ids, revisions and names are refused before any request is made
        before = hub.stats()["requests"]
        for bad in (
            ["--repo-id", "../etc"],
            ["--repo-id", "a/b/c"],
            ["--repo-id", "/abs"],
            ["--repo-id", "acme/x", "--revision", "../main"],
        ):
            assert main(["publish", str(run), *bad, "--endpoint", hub.endpoint]) == 2
        assert hub.stats()["requests"] == before
    _assert_secret_absent([run, tmp_path / "hub"], capfd)

    # the commit lands but its reply is lost: the publish sees it in place, no second commit
    with running_hub(tmp_path / "hub2", token=SECRET, lose_commit_response=1, orgs=["acme"]) as hub:
        base = ["publish", str(run), "--repo-id", "acme/lost", "--endpoint", hub.endpoint]
        assert main(base) == 0
        assert "the reply was lost" in capfd.readouterr().err
        assert _commits(hub, "acme/lost") == 1 and _published(run)["new_commit"]
        assert main(base) == 0
        assert _commits(hub, "acme/lost") == 1


def test_names_are_validated():
    for good in ("acme/model", "a.b/c_d-1"):
        assert check_repo_id(good) == good
    for bad in ("acme", "acme/../x", "acme/x--y", "-a/b", "a/b/", "a b/c", "a/b\n"):
        with pytest.raises(UserError):
            check_repo_id(bad)
    assert check_revision("release/v1") == "release/v1"
    for bad in ("../x", "a//b", "a/", "x.lock", " main"):
        with pytest.raises(UserError):
            check_revision(bad)
    assert check_file_name("report/summary.json") == "report/summary.json"
    for bad in ("/etc/passwd", "../x", "a/../b", "a\\b", "", "a//b", "C:/x", "./a"):
        with pytest.raises(UserError):
            check_file_name(bad)


def _assert_secret_absent(folders: list[Path], capfd) -> None:
    captured = capfd.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err
    for folder in folders:
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
