"""Start tests/openai_server.py in a subprocess for a test or benchmark and stop it afterwards.

    with running_openai_server(tmp_path / "teacher", api_key="sk-test", latency_ms=50) as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-test")
        ...
        server.set_faults(rate_limit_every=3, retry_after_s=0)
        assert server.calls_for("some input") == 1

Fault switches are keyword arguments with the server's names (`drop_every=2`,
`fail_inputs=["poison"]`, `fail_all=True`); `set_faults(**switches)` replaces them all at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.openai_server import API_KEY_ENV, input_key
from tests.processes import started

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0
# Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class RunningOpenAIServer:
    """A started server: its URLs, its process and the file its stderr goes to."""

    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        """The OpenAI client's base_url: http://127.0.0.1:PORT/v1."""
        return f"{self.url}/v1"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"}
        )
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """`GET /_test/stats`: request, completion and fault counts, calls per input."""
        return self._call("/_test/stats")

    def reset(self) -> dict[str, Any]:
        """`POST /_test/reset`: zero the counters (the fault switches stay)."""
        return self._call("/_test/reset", {})

    def set_faults(self, **switches: Any) -> dict[str, Any]:
        """`POST /_test/faults`: replace all fault switches (none given: all off)."""
        return self._call("/_test/faults", switches)

    def calls_for(self, text: str) -> int:
        """How many completion requests had `text` as their input."""
        return self.stats()["by_input"].get(input_key(text), 0)


def _fault_flags(faults: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in faults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)] if value else []
        elif value is not None:
            flags += [flag, str(value)]
    return flags


@contextmanager
def running_openai_server(
    log_dir: str | Path,
    api_key: str | None = None,
    latency_ms: int = 0,
    model: str = "rule-teacher",
    *,
    state_dir: str | Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    **faults: Any,
) -> Iterator[RunningOpenAIServer]:
    """Run `python -m tests.openai_server` on a free loopback port for the `with` block.

    Its stderr goes to `log_dir/server.log`. With `api_key`, requests need that bearer key; it
    travels in the environment, not on the command line. `state_dir` keeps the stats in
    `state_dir/stats.json` (a second server on it continues the counts). `faults` are the
    server's fault switches (see tests/openai_server.py). The server runs in its own process
    group, killed on exit.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "server.log"
    command = [sys.executable, "-m", "tests.openai_server", "--port", "0"]
    command += ["--api-key-env", API_KEY_ENV, "--latency-ms", str(latency_ms), "--model", model]
    if state_dir is not None:
        command += ["--state", str(state_dir)]
    command += _fault_flags(faults)
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if api_key is not None:
        env[API_KEY_ENV] = api_key
    with started(command, env, log_path, ready_timeout_s, "openai test server", REPO_ROOT) as (
        process,
        url,
    ):
        yield RunningOpenAIServer(url=url, process=process, log_path=log_path)
