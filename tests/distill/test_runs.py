"""The run directory: atomic stages, manifests that verify, recovery after a kill."""

from __future__ import annotations

import json

import pytest

from distill import runs


def test_a_stage_is_swapped_in_whole_with_its_manifest(tmp_path):
    with runs.write_stage(tmp_path, "label", "k1", {}, "cfg") as out:
        (out.folder / "a.txt").write_text("one")
        out.extra["note"] = 1
    manifest = runs.read_manifest(tmp_path, "label")
    assert manifest["key"] == "k1" and manifest["note"] == 1
    assert set(manifest["outputs"]) == {"a.txt"}
    assert runs.is_current(tmp_path, "label", "k1")
    assert not runs.is_current(tmp_path, "label", "k2")
    (tmp_path / "labels" / "a.txt").write_text("tampered")
    assert not runs.is_current(tmp_path, "label", "k1")


def test_a_failing_stage_leaves_the_previous_one_in_place(tmp_path):
    with runs.write_stage(tmp_path, "split", "k1", {}, "cfg") as out:
        (out.folder / "a.txt").write_text("good")
    with pytest.raises(RuntimeError), runs.write_stage(tmp_path, "split", "k2", {}, "cfg") as out:
        (out.folder / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "dataset" / "a.txt").read_text() == "good"
    assert runs.is_current(tmp_path, "split", "k1")
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_published_files_are_checked_like_the_others(tmp_path):
    with runs.write_stage(tmp_path, "calibrate", "k", {}, "cfg") as out:
        (out.folder / "cascade.json").write_text(json.dumps({"t": 1}))
        out.publish["cascade.json"] = "cascade.json"
    assert json.loads((tmp_path / "cascade.json").read_text()) == {"t": 1}
    assert runs.is_current(tmp_path, "calibrate", "k")
    (tmp_path / "cascade.json").write_text("{}")
    assert not runs.is_current(tmp_path, "calibrate", "k")


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path):
    with runs.write_stage(tmp_path, "train", "k", {}, "cfg") as out:
        (out.folder / "adapter.bin").write_text("weights")
    # the state after `final -> .trash-…` and before `.tmp-… -> final`
    (tmp_path / "adapters").rename(tmp_path / ".trash-adapters-0123abcd")
    (tmp_path / ".tmp-adapters-89abcdef").mkdir()
    (tmp_path / ".tmp-unrelated").mkdir()  # not ours: left alone
    runs.clean_stale_temporaries(tmp_path)
    assert runs.is_current(tmp_path, "train", "k")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-unrelated", "adapters"]


def test_downstream_depends_on_outputs_not_timestamps(tmp_path):
    digests = []
    for content in ("same", "same", "other"):
        with runs.write_stage(tmp_path, "label", "k", {}, "cfg") as out:
            (out.folder / "a.txt").write_text(content)
        digests.append(runs.manifest_digest(tmp_path, "label"))
    assert digests[0] == digests[1] != digests[2]
