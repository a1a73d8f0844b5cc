"""Test servers run as subprocesses in their own process group: wait for their `READY URL`
line, and stop the whole group."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

STOP_TIMEOUT_S = 5.0


def wait_ready(process: subprocess.Popen, log_path: Path, timeout_s: float, what: str) -> str:
    """The URL from the server's `READY http://...` line; a RuntimeError naming `what`, its
    exit code and the end of its log if none comes."""
    deadline = time.monotonic() + timeout_s
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0)):
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break  # the server exited
            buffer += chunk
            for line in buffer.split(b"\n")[:-1]:  # whole lines only
                if line.startswith(b"READY "):
                    return line.decode().split(" ", 1)[1].strip()
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1)  # for its exit code
    stderr = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    raise RuntimeError(
        f"{what} did not print READY within {timeout_s:.0f} s "
        f"(exit code {process.returncode}); stdout: {buffer.decode(errors='replace')!r}\n"
        f"stderr ({log_path}):\n{stderr}"
    )


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL if it does not go."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait()


@contextmanager
def started(
    command: list[str], env: dict, log_path: Path, timeout_s: float, what: str, cwd: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `command` in its own process group with stderr to `log_path`; yield the process
    and the URL of its READY line; stop the group on exit."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield process, wait_ready(process, log_path, timeout_s, what)
    finally:
        stop_group(process)
        process.stdout.close()
