"""Fuzz the config loader and the data readers with hypothesis: whatever the input, they either
succeed or raise a UserError with a message (ConfigError, DataError), never anything else.

Configs: arbitrary text and bytes, YAML-like token soup, a valid config with fields set to
random values, removed or misspelt, and random `key.sub=value` overrides. Data: arbitrary bytes
as .jsonl and .csv, CSV-like text, and JSON lines of random values (lone surrogates, NaN,
numbers of thousands of digits, nesting).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.config import DataConfig, load_config
from distill.data import read_records
from distill.errors import ConfigError, DataError
from tests import tiny

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MORE = settings(FUZZ, max_examples=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_student) -> Path:
    """A folder holding a valid config (over the tiny student) and its data."""
    folder = tmp_path_factory.mktemp("fuzz")
    data = tiny.write_jsonl(tiny.make_rows(20), folder / "messages.jsonl")
    tiny.tiny_config(folder, data, tiny_student, teacher=None, epochs=1)
    return folder


def _valid(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))


def _load(folder: Path, content: str | bytes, overrides: list[str] = ()) -> None:
    """load_config on `content`: success, or a ConfigError with a message."""
    path = folder / "fuzz.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        load_config(path, overrides)
    except ConfigError as exc:
        assert str(exc).strip()


def _read(path: Path, _extra: tuple[str, ...] = (), **options: Any) -> None:
    """read_records on `path`: success, or a DataError with a message."""
    try:
        read_records(DataConfig(path=path, **options), extra_fields=_extra)
    except DataError as exc:
        assert str(exc).strip()


# ── values ──────────────────────────────────────────────────────────────────────────────
ODD_TEXT = st.sampled_from(
    ["", " ", "\ud800", "a\udfffb", "\ufeff", "\u2028", "\x00", "~nobody/x", "../..", "é" * 300]
)
TEXT = st.one_of(st.text(max_size=40), ODD_TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a parsed config, sections and leaves alike."""
    found = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, dict | list):
            found += _paths(value, (*prefix, key))
        else:
            found.append((*prefix, key))
    return found


def _mutate(raw: dict[str, Any], path: tuple, how: str, value: Any) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    last = path[-1]
    if how == "set":
        node[last] = value
    elif how == "drop":
        del node[last]
    elif isinstance(node, dict):  # misspell the key, or add one beside it
        node[f"{last}_" if how == "rename" else "unknown"] = node.pop(last)


# ── the config loader ───────────────────────────────────────────────────────────────────
@MORE
@given(text=st.text(max_size=300))
def test_any_text_as_a_config(folder, text):
    _load(folder, text)


@FUZZ
@given(content=st.binary(max_size=300))
def test_any_bytes_as_a_config(folder, content):
    _load(folder, content)


YAML_TOKENS = st.sampled_from(
    [
        "\n", "  ", "- ", ": ", "? ", "[", "]", "{", "}", ", ", "&a ", "*a", "!!str ", "!!int ",
        "!!python/name:os.system ", "!!binary ", "!!set ", "'", '"', "#", "|", ">", "---",
        "...", "\t", "~", "null", "1e400", ".nan", "-.inf", "0x1F", "2020-01-01", "<<: *a",
        "run_dir", "data", "path", "tasks", "name", "labels", "teacher", "kind", "dataset",
        "hf", "student", "training", "epochs", "cascade", "alpha", "0", "-1", "x", "\\ud800",
    ]
)  # fmt: skip


@MORE
@given(tokens=st.lists(YAML_TOKENS, max_size=40))
def test_yaml_like_token_soup_as_a_config(folder, tokens):
    _load(folder, "".join(tokens))


@MORE
@given(data=st.data())
def test_a_valid_config_with_fields_mutated(folder, data):
    raw = _valid(folder)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(raw)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        how = data.draw(st.sampled_from(["set", "set", "set", "drop", "rename", "add"]))
        _mutate(raw, path, how, data.draw(VALUES, label="value") if how == "set" else None)
    _load(folder, yaml.safe_dump(raw, allow_unicode=False))


@FUZZ
@given(data=st.data())
def test_random_overrides(folder, data):
    paths = [".".join(map(str, p)) for p in _paths(_valid(folder))]
    key = data.draw(st.one_of(st.sampled_from(paths), st.text(max_size=20)), label="key")
    value = data.draw(st.one_of(st.text(max_size=30), YAML_TOKENS), label="value")
    separator = data.draw(st.sampled_from(["=", "=", ""]), label="separator")
    _load(folder, (folder / "config.yaml").read_text(), [f"{key}{separator}{value}"])


# ── the data readers ────────────────────────────────────────────────────────────────────
READ_SETTINGS = st.fixed_dictionaries(
    {
        "id_field": st.sampled_from(["id", None]),
        "gold_field": st.sampled_from([None, "intent"]),
        "limit": st.sampled_from([None, 1, 3]),
        "_extra": st.sampled_from([(), ("recorded",)]),
    }
)


@MORE
@given(content=st.binary(max_size=500), options=READ_SETTINGS)
def test_any_bytes_as_jsonl(folder, content, options):
    path = folder / "fuzz.jsonl"
    path.write_bytes(content)
    _read(path, **options)


@MORE
@given(content=st.binary(max_size=500), options=READ_SETTINGS)
def test_any_bytes_as_csv(folder, content, options):
    path = folder / "fuzz.csv"
    path.write_bytes(content)
    _read(path, **options)


CSV_PIECES = st.sampled_from(
    ["id", "text", "intent", "recorded", ",", '"', '""', "\n", "\r\n", "\r", "\ufeff", "\u2028",
     "\x00", "a", "refund", "1", " ", "\t", "é"]
)  # fmt: skip


@MORE
@given(pieces=st.lists(CSV_PIECES, max_size=60), options=READ_SETTINGS)
def test_csv_like_text(folder, pieces, options):
    path = folder / "fuzz.csv"
    path.write_bytes("".join(pieces).encode("utf-8"))
    _read(path, **options)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        ODD_TEXT,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
ROW = st.dictionaries(
    st.one_of(st.sampled_from(["id", "text", "intent", "recorded"]), st.text(max_size=5)),
    JSON_VALUES,
    max_size=5,
)
RAW_LINES = st.sampled_from(
    ['{"id": ' + "9" * 5000 + ', "text": "x"}', "[" * 5000 + "]" * 5000, '{"id": "1", "te', ""]
)


@MORE
@given(lines=st.lists(st.one_of(ROW, ROW, RAW_LINES), max_size=6), options=READ_SETTINGS)
def test_json_lines_of_random_values(folder, lines, options):
    path = folder / "rows.jsonl"
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_bytes(text.encode("utf-8"))
    _read(path, **options)
