"""The loopback Hub server (tests/hub_server.py) against the real huggingface_hub client."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_fixture import running_hub

TOKEN = "hf_cascadekit_test_token_0123456789"
REPO = "cascadekit-test/student"
README = "---\nlicense: apache-2.0\nlibrary_name: peft\ntags:\n- cascadekit\n---\n# Student\n"
WEIGHTS = bytes(range(256)) * 8  # binary, with NUL bytes: LFS material


@pytest.fixture(autouse=True)
def online_client(monkeypatch):
    """tests/conftest.py makes the client offline; these tests talk to a loopback server."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def no_xet(monkeypatch):
    """The client's legacy path: LFS uploads over HTTP, one commit request that is not retried.

    `is_xet_available()` reads `constants.HF_HUB_DISABLE_XET` on each call; in a fresh process,
    HF_HUB_DISABLE_XET=1 in the environment before importing huggingface_hub does the same.
    """
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    (folder / "adapter").mkdir(parents=True)
    (folder / "README.md").write_text(README)
    (folder / "config.json").write_text(json.dumps({"labels": ["a", "b"]}))
    (folder / "adapter" / "model.safetensors").write_bytes(WEIGHTS)
    return folder


def _local_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _raw(conn, method: str, path: str, body: bytes = b"", token: str | None = TOKEN):
    """One request on `conn` (kept alive between calls); returns (status, decoded JSON or None)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def _commit_body(*operations: dict, summary: str = "raw", parent: str | None = None) -> bytes:
    header = {"summary": summary, "description": ""}
    if parent is not None:
        header["parentCommit"] = parent
    lines = [{"key": "header", "value": header}, *operations]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _inline(path: str, content: bytes) -> dict:
    value = {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}
    return {"key": "file", "value": value}


@pytest.mark.parametrize("upload_mode", ["regular", "lfs"])
def test_an_uploaded_folder_comes_back_byte_for_byte(
    tmp_path, model_folder, monkeypatch, upload_mode
):
    if upload_mode == "lfs":
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with running_hub(tmp_path / "hub", TOKEN, upload_mode=upload_mode) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        assert api.whoami()["name"] == "cascadekit-test"
        assert api.create_repo(REPO).repo_id == REPO
        commit = api.upload_folder(repo_id=REPO, folder_path=model_folder, commit_message="v1")

        info = api.model_info(REPO, files_metadata=True)
        assert commit.oid == info.sha
        assert info.card_data.library_name == "peft" and info.tags == ["cascadekit"]
        siblings = {s.rfilename: s for s in info.siblings}
        assert set(siblings) == {".gitattributes", *_local_files(model_folder)}
        weights = siblings["adapter/model.safetensors"]
        if upload_mode == "lfs":
            assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
        else:
            assert weights.lfs is None
        assert siblings["README.md"].lfs is None
        assert sorted(api.list_repo_files(REPO)) == sorted(siblings)

        one = hf_hub_download(
            REPO,
            "adapter/model.safetensors",
            endpoint=hub.endpoint,
            token=TOKEN,
            cache_dir=tmp_path / "c1",
        )
        snapshot = Path(
            snapshot_download(
                REPO,
                revision=info.sha,
                endpoint=hub.endpoint,
                token=TOKEN,
                cache_dir=tmp_path / "c2",
            )
        )
        assert Path(one).read_bytes() == WEIGHTS
        downloaded = _local_files(snapshot)
        assert downloaded.pop(".gitattributes").startswith(b"*.7z filter=lfs")
        assert downloaded == _local_files(model_folder)

        # Same folder again: the client sees nothing changed and sends no commit.
        again = api.upload_folder(repo_id=REPO, folder_path=model_folder, commit_message="v1")
        assert again.oid == commit.oid
        stats = hub.stats()
        assert stats["commits"] == {REPO: 1} and stats["commit_requests"] == 1


def test_create_repo_conflicts_unless_exist_ok(tmp_path):
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        with pytest.raises(HfHubHTTPError) as conflict:
            api.create_repo(REPO)
        assert conflict.value.response.status_code == 409
        assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
        with pytest.raises(HfHubHTTPError) as foreign:
            api.create_repo("someone-else/student")
        assert foreign.value.response.status_code == 403


def test_a_wrong_token_is_refused_and_never_stored(tmp_path, model_folder):
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        HfApi(endpoint=hub.endpoint, token=TOKEN).create_repo(REPO)
        wrong = HfApi(endpoint=hub.endpoint, token="hf_wrong")
        for call in (
            lambda: wrong.create_repo("cascadekit-test/other"),
            lambda: wrong.upload_folder(repo_id=REPO, folder_path=model_folder),
            lambda: wrong.model_info(REPO),
            wrong.whoami,
        ):
            with pytest.raises(HfHubHTTPError) as refused:
                call()
            assert refused.value.response.status_code == 401
        assert hub.stats()["commits"] == {REPO: 0}
    for path in (tmp_path / "hub").rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_missing_repo_revision_and_file_raise_the_clients_errors(tmp_path):
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("cascadekit-test/missing")
        api.create_repo(REPO)
        with pytest.raises(RevisionNotFoundError):
            api.model_info(REPO, revision="no-such-branch")
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(
                REPO, "absent.json", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c"
            )


def test_private_repo_reads_need_the_token(tmp_path, model_folder):
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO, private=True)
        api.upload_folder(repo_id=REPO, folder_path=model_folder)
        anonymous = HfApi(endpoint=hub.endpoint, token=False)
        with pytest.raises(RepositoryNotFoundError):
            anonymous.model_info(REPO)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(
                REPO, "config.json", endpoint=hub.endpoint, token=False, cache_dir=tmp_path / "c"
            )
        assert api.model_info(REPO).private is True
        path = hf_hub_download(
            REPO, "config.json", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c"
        )
        assert Path(path).read_bytes() == (model_folder / "config.json").read_bytes()


def test_a_branch_takes_uploads_and_leaves_main_alone(tmp_path, model_folder):
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        main_before = api.model_info(REPO).sha
        api.create_branch(REPO, branch="candidate")
        with pytest.raises(HfHubHTTPError) as exists:
            api.create_branch(REPO, branch="candidate")
        assert exists.value.response.status_code == 409
        api.create_branch(REPO, branch="candidate", exist_ok=True)

        commit = api.upload_folder(repo_id=REPO, folder_path=model_folder, revision="candidate")
        assert api.model_info(REPO, revision="candidate").sha == commit.oid
        assert api.model_info(REPO).sha == main_before
        assert "config.json" in api.list_repo_files(REPO, revision="candidate")
        assert api.list_repo_files(REPO) == [".gitattributes"]
        branches = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
        assert branches == {"main": main_before, "candidate": commit.oid}


def test_a_dropped_commit_fails_the_upload_and_changes_nothing(tmp_path, model_folder, no_xet):
    with running_hub(tmp_path / "hub", TOKEN, drop_commit=1) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        before = api.model_info(REPO).sha
        with pytest.raises(httpx2.TransportError):  # RemoteProtocolError: no response at all
            api.upload_folder(repo_id=REPO, folder_path=model_folder)
        stats = hub.stats()
        assert stats["commits"] == {REPO: 0}
        assert stats["commit_requests"] == stats["dropped_commits"] == 1
        assert api.model_info(REPO).sha == before
        # The next commit request is served normally.
        commit = api.upload_folder(repo_id=REPO, folder_path=model_folder)
        assert api.model_info(REPO).sha == commit.oid != before
        assert hub.stats()["commits"] == {REPO: 1}


def test_the_xet_upload_pipeline_retries_a_commit_whose_answer_is_lost(tmp_path, model_folder):
    """With hf_xet installed, upload_folder re-sends a commit that got no answer (after 1 s).

    A dropped request is then harmless; a lost response after the commit was applied makes a
    second, empty commit, which the stats show.
    """
    pytest.importorskip("hf_xet")
    with running_hub(tmp_path / "hub", TOKEN, drop_commit=1, lose_commit_response=3) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        api.upload_folder(repo_id=REPO, folder_path=model_folder)  # dropped once, then applied
        assert hub.stats()["commits"] == {REPO: 1}
        (model_folder / "config.json").write_text("{}")
        commit = api.upload_folder(repo_id=REPO, folder_path=model_folder)  # applied, lost, re-sent
        stats = hub.stats()
        assert stats["commit_requests"] == 4 and stats["dropped_commits"] == 2
        assert stats["commits"] == {REPO: 3} and stats["empty_commits"] == {REPO: 1}
        assert api.model_info(REPO).sha == commit.oid


def test_commits_are_validated_whole_and_keep_alive_survives_errors(tmp_path):
    with running_hub(tmp_path / "hub", TOKEN, upload_mode="lfs") as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        head = api.model_info(REPO).sha
        url = f"/api/models/{REPO}/commit/main"
        conn = http.client.HTTPConnection(hub.endpoint.removeprefix("http://"), timeout=10)
        ok = _inline("ok.txt", b"fine")
        never_uploaded = {"key": "lfsFile", "value": {"path": "w.bin", "oid": "0" * 64}}
        cases = [
            (_commit_body(ok), "hf_wrong", 401),
            (_commit_body(ok), None, 401),
            (_commit_body(ok, _inline("../escape.txt", b"x")), TOKEN, 400),
            (_commit_body(_inline("/abs.txt", b"x")), TOKEN, 400),
            (_commit_body(_inline("a\\b.txt", b"x")), TOKEN, 400),
            (_commit_body(_inline("a//b.txt", b"x")), TOKEN, 400),
            (_commit_body(ok, _inline("w.safetensors", WEIGHTS)), TOKEN, 400),  # must be LFS
            (_commit_body(ok, never_uploaded), TOKEN, 400),
            (_commit_body(ok, {"key": "deletedFile", "value": {"path": "absent"}}), TOKEN, 404),
            (_commit_body(ok, parent="0" * 40), TOKEN, 412),
            (_commit_body(_inline("README.md", b"---\n[unclosed\n---\n")), TOKEN, 400),
        ]
        for body, token, status in cases:
            answer, data = _raw(conn, "POST", url, body, token)
            assert answer == status and "error" in data, (body, data)
            if status == 401:
                assert data["error"] == "Invalid credentials in Authorization header"
        assert hub.stats()["commits"] == {REPO: 0}
        assert api.model_info(REPO).sha == head

        answer, data = _raw(conn, "POST", url, _commit_body(ok, parent=head))
        assert answer == 200 and data["commitOid"] == api.model_info(REPO).sha
        answer, data = _raw(conn, "POST", url, _commit_body(summary="nothing"))
        assert answer == 200  # an empty commit is made, as on the Hub, and counted
        assert hub.stats()["empty_commits"] == {REPO: 1}
        lines = [_commit_body(_inline("chunked.txt", b"c"))]
        headers = {"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"}
        conn.request("POST", url, body=iter(lines), headers=headers, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
        assert hub.stats()["commits"] == {REPO: 3}
        assert "chunked.txt" in api.list_repo_files(REPO)
        conn.close()


def test_a_restarted_server_keeps_its_repos(tmp_path, model_folder):
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        api.create_repo(REPO)
        commit = api.upload_folder(repo_id=REPO, folder_path=model_folder)
    with running_hub(tmp_path / "hub", TOKEN) as hub:
        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        assert api.model_info(REPO).sha == commit.oid
        path = hf_hub_download(
            REPO,
            "README.md",
            revision=commit.oid,
            endpoint=hub.endpoint,
            token=TOKEN,
            cache_dir=tmp_path / "c",
        )
        assert Path(path).read_text() == README
