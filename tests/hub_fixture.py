"""Start tests/hub_server.py in a subprocess for one test and stop it afterwards.

    with running_hub(tmp_path / "hub", token="hf_test") as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test")
        ...
        assert hub.stats()["commits"]["cascadekit-test/model"] == 1

Pass `endpoint=hub.endpoint` to HfApi / hf_hub_download / snapshot_download: huggingface_hub reads
HF_ENDPOINT only when it is imported. tests/conftest.py sets HF_HUB_OFFLINE=1, which the client
also reads at import: set `huggingface_hub.constants.HF_HUB_OFFLINE = False` (monkeypatch) for the
test. With upload_mode="lfs", also set `huggingface_hub.constants.HF_HUB_DISABLE_XET = True`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.hub_server import TOKEN_ENV
from tests.processes import started

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 20.0
# Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class RunningHub:
    """A started server: its base URL, its process and the file its stderr goes to."""

    endpoint: str
    process: subprocess.Popen
    log_path: Path

    def stats(self) -> dict:
        """`GET /_test/stats`: commits and empty commits per repo, request and commit counts."""
        with _OPENER.open(f"{self.endpoint}/_test/stats", timeout=10) as response:
            return json.loads(response.read())


def _as_numbers(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


@contextmanager
def running_hub(
    data_dir: str | Path,
    token: str,
    upload_mode: str = "regular",
    drop_commit: int | Iterable[int] | None = None,
    *,
    lose_commit_response: int | Iterable[int] | None = None,
    orgs: Iterable[str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[RunningHub]:
    """Run `python -m tests.hub_server` on a free loopback port for the `with` block.

    `data_dir` holds the server's state (a second `running_hub` on it sees the same repos) and
    `server.log`, its stderr. The token travels in the environment, not on the command line.
    `drop_commit` / `lose_commit_response` name the 1-based commit requests to fail (see the
    server's docstring). The server runs in its own process group, killed on exit.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    command = [sys.executable, "-m", "tests.hub_server", "--data", str(data_dir)]
    command += ["--upload-mode", upload_mode, "--port", "0"]
    for number in _as_numbers(drop_commit):
        command += ["--drop-commit", str(number)]
    for number in _as_numbers(lose_commit_response):
        command += ["--lose-commit-response", str(number)]
    for org in orgs or ():
        command += ["--org", org]
    env = {**os.environ, TOKEN_ENV: token}
    with started(command, env, log_path, ready_timeout_s, "hub server", REPO_ROOT) as (
        process,
        endpoint,
    ):
        yield RunningHub(endpoint=endpoint, process=process, log_path=log_path)
