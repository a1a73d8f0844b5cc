"""Errors the CLI turns into exit codes: bad input (config, data) exits 2, anything else 1."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Something the user can fix: a config field, a data file, a row. Exit code 2.

    The message names what is wrong and where (field path, file and line, row id).
    """


class ConfigError(UserError):
    """A config file or override that does not validate."""


class DataError(UserError):
    """An input data file that cannot be read or breaks the rules of the config."""


def short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a 1 MB field never floods an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
