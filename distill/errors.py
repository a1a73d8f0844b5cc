"""Errors the CLI turns into exit codes: bad input (config, data) exits 2, anything else 1."""

from __future__ import annotations

import reprlib
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
    """repr(value), cut to `limit` characters. Only about that much is rendered: a 1 MB
    field never floods an error message, and a YAML alias bomb (a list holding itself nine
    levels deep) costs no more than a short list."""
    if isinstance(value, str | bytes):
        text = repr(value[:limit])
    else:
        bounded = reprlib.Repr()
        bounded.maxlevel = 4  # with 8 items a level: at most 8**4 items looked at
        bounded.maxlist = bounded.maxtuple = bounded.maxset = bounded.maxdict = 8
        bounded.maxstring = bounded.maxother = limit
        try:
            text = bounded.repr(value)
        except ValueError:  # an integer of more than 4,300 digits
            text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
