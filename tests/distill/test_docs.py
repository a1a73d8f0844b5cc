"""The README's promises: two commands, a current config reference, CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from distill.cli import STAGE_HELP, build_parser
from distill.config import config_reference

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_config_reference_in_readme_is_current():
    block = re.search(
        r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", README, re.S
    )
    assert block is not None
    assert block.group(1) == config_reference(), "run: python scripts/config_reference.py"


def test_quickstart_and_test_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    quickstart, tests = commands[0], commands[1]
    assert "pip install torch==2.13.0" in quickstart
    assert 'pip install -e ".[quickstart]"' in quickstart
    assert quickstart.endswith("cascadekit run configs/quickstart/config.yaml")
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert "pip install --quiet torch==2.13.0" in ci and "python -m pytest" in ci


def test_every_command_is_documented():
    for command in ["validate", "run", *STAGE_HELP]:
        assert f"`cascadekit {command} CONFIG`" in README
    help_text = build_parser().format_help()
    assert all(command in help_text for command in STAGE_HELP)
