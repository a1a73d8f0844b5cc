"""Audit this environment's locked dependency set for known vulnerabilities with pip-audit.

    python scripts/audit_deps.py [LOCK]          # default LOCK: .ci/requirements.lock

Writes `pip freeze --exclude-editable` of the running interpreter, sorted, to LOCK, then asks
pip-audit about exactly those pins (`-r LOCK --no-deps --disable-pip`): the PyPI advisory data
first, OSV when PyPI's cannot be reached. Exit 1 when a vulnerability is found (each one is
listed) or pip-audit fails, a TLS error included (a certificate that does not verify is a
problem to fix, not an absent service). When no vulnerability service answers (pip-audit then
reports every dependency as skipped, raises a connection error, or does not finish within
RUN_TIMEOUT_S; each request times out after REQUEST_TIMEOUT_S), it prints

    dependency audit NOT RUN: no vulnerability service reachable (<reason>)

and exits 0, or 1 when CASCADEKIT_AUDIT_REQUIRED=1.

pip-audit comes with the dev extra (`pip install -e '.[dev]'`, as .ci/run does); the script
runs it as `python -m pip_audit`, or the `pip-audit` on PATH. CASCADEKIT_PIP_AUDIT, a command
line, replaces it: it is for the tests, which run a stand-in.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOCK = Path(".ci/requirements.lock")
SERVICES = ("pypi", "osv")
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+$")
REQUEST_TIMEOUT_S = 30  # pip-audit's --timeout: each request to a vulnerability service
RUN_TIMEOUT_S = 300  # one pip-audit run, all its requests
# a TLS failure in pip-audit's stderr: the audit FAILED (checked before UNREACHABLE, whose
# "Max retries exceeded" requests puts in front of an SSLError too)
TLS_ERROR = (
    "SSLError",
    "SSLCertVerificationError",
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "[SSL:",
)
# what a vulnerability service that cannot be reached looks like in pip-audit's stderr
UNREACHABLE = (
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "timed out",
    "Max retries exceeded",
    "NameResolutionError",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Connection refused",
    "ProxyError",
    "ServiceError",
)


@dataclass(frozen=True)
class Outcome:
    """What one pip-audit run against one vulnerability service came to.

    `kind` is "clean" (no known vulnerability), "vulnerable", "unreachable" (the service did
    not answer: the next one is tried) or "failed" (pip-audit failed otherwise, TLS errors
    included). `lines` are what to print: one per vulnerability, or one with the reason.
    """

    kind: str
    lines: tuple[str, ...]


def write_lock(path: Path) -> int:
    """The running environment's pins, sorted, to `path`; lines that are not `name==version`
    (a package installed from a URL or a folder) are kept as comments: they cannot be looked up.
    Returns the number of pins."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    lines = sorted((line.strip() for line in frozen if line.strip()), key=str.lower)
    pins = [line for line in lines if PINNED.match(line)]
    others = [f"# not audited (not an index pin): {line}" for line in lines if line not in pins]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*pins, *others]) + "\n", encoding="utf-8")
    return len(pins)


def pip_audit_command() -> list[str] | None:
    """The command that runs pip-audit: $CASCADEKIT_PIP_AUDIT split as a shell would (for the
    tests' stand-in), else `python -m pip_audit` when this interpreter has it, else
    `pip-audit` on PATH; None when there is none."""
    if os.environ.get("CASCADEKIT_PIP_AUDIT"):
        return shlex.split(os.environ["CASCADEKIT_PIP_AUDIT"])
    if importlib.util.find_spec("pip_audit") is not None:
        return [sys.executable, "-m", "pip_audit"]
    found = shutil.which("pip-audit")
    return [found] if found else None


def audit(command: list[str], lock: Path, service: str, osv_url: str | None) -> Outcome:
    """Run pip-audit on the lock against one service and classify what came back."""
    args = [*command, "-r", str(lock), "--no-deps", "--disable-pip"]
    args += ["--progress-spinner", "off", "--format", "json", "--vulnerability-service", service]
    args += ["--timeout", str(REQUEST_TIMEOUT_S)]
    if service == "osv" and osv_url:
        args += ["--osv-url", osv_url]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Outcome(
            "unreachable", (f"{service}: pip-audit did not finish in {RUN_TIMEOUT_S} s",)
        )
    errors = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    reason = errors[-1] if errors else f"exit code {done.returncode}"
    try:
        report = json.loads(done.stdout)
        dependencies = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        if any(marker in done.stderr for marker in TLS_ERROR):
            return Outcome("failed", (f"{service}: TLS error: {reason}",))
        unreachable = any(marker in done.stderr for marker in UNREACHABLE)
        return Outcome("unreachable" if unreachable else "failed", (f"{service}: {reason}",))
    found = []
    for dep in dependencies:
        for vuln in dep.get("vulns") or ():
            fixes = ", ".join(vuln.get("fix_versions") or ()) or "none yet"
            found.append(
                f"{dep['name']} {dep.get('version', '?')}: {vuln['id']} (fixed in {fixes})"
            )
    if found:
        return Outcome("vulnerable", tuple(found))
    skipped = [dep for dep in dependencies if dep.get("skip_reason")]
    if dependencies and len(skipped) == len(dependencies):
        why = skipped[0]["skip_reason"]
        return Outcome(
            "unreachable", (f"{service}: all {len(skipped)} dependencies skipped, e.g. {why}",)
        )
    audited = len(dependencies) - len(skipped)
    note = f"{service}: no known vulnerabilities in {audited} dependencies"
    return Outcome("clean", (note + (f" ({len(skipped)} skipped)" if skipped else ""),))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", nargs="?", type=Path, default=DEFAULT_LOCK, help="file to write")
    parser.add_argument(
        "--services",
        default=",".join(SERVICES),
        help="vulnerability services to try in order, comma-separated (pypi, osv)",
    )
    parser.add_argument("--osv-url", help="OSV query URL (default: pip-audit's)")
    args = parser.parse_args(argv)
    command = pip_audit_command()
    if command is None:
        print("dependency audit FAILED: pip-audit is not installed (pip install pip-audit)")
        return 1
    n_pins = write_lock(args.lock)
    print(f"dependency audit: {n_pins} pinned packages in {args.lock}")
    unreachable = []
    for service in args.services.split(","):
        outcome = audit(command, args.lock, service.strip(), args.osv_url)
        if outcome.kind == "unreachable":
            unreachable += outcome.lines
            continue
        if outcome.kind == "clean":
            print(f"dependency audit: {outcome.lines[0]}")
            return 0
        if outcome.kind == "vulnerable":
            print(f"dependency audit: {len(outcome.lines)} known vulnerabilities ({service}):")
        else:
            print("dependency audit FAILED:")
        print("\n".join(f"  {line}" for line in outcome.lines))
        return 1
    print(
        f"dependency audit NOT RUN: no vulnerability service reachable ({'; '.join(unreachable)})"
    )
    return 1 if os.environ.get("CASCADEKIT_AUDIT_REQUIRED") == "1" else 0


if __name__ == "__main__":
    sys.exit(main())
