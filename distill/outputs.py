"""What counts as the same answer: canonical forms of labels, texts and JSON outputs.

The cascade compares the student's answer with the teacher's (and the gold one) by their
canonical forms: a classification label as it is, generated text with outer whitespace
stripped, an extraction output as compact JSON with sorted keys after it parsed and
validated against the task's JSON Schema. An answer that does not parse or validate has no
canonical form: it is an error row for the teacher, and a wrong answer for the student.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any


def load_schema(value: dict[str, Any] | Path | str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return _read_schema(str(value))


@cache
def _read_schema(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"JSON Schema file {path} does not exist")
    try:
        schema = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"JSON Schema file {path} is not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise ValueError(f"JSON Schema file {path} must hold an object")
    return schema


def check_schema(value: dict[str, Any] | Path | str) -> None:
    """Raise ValueError naming the fault when `value` is not a valid JSON Schema."""
    import jsonschema

    schema = load_schema(value)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    _check_refs(schema, schema, "")


def _check_refs(schema: Any, node: Any, where: str) -> None:
    """Every `$ref` must point inside the schema (`#/$defs/...`): answers are checked offline,
    and a reference that resolves to nothing would fail on the first answer instead."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_refs(schema, item, f"{where}/{i}")
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and _pointed_to(schema, ref) is None:
        raise ValueError(
            f"not a valid JSON Schema at {where or '(top level)'}: $ref {ref!r} does not point "
            "to a part of this schema (#/...)"
        )
    for key, value in node.items():
        _check_refs(schema, value, f"{where}/{key}")


def _pointed_to(schema: Any, ref: str) -> Any:
    """The part of `schema` that a local reference ("#", "#/$defs/item") names, or None."""
    if ref == "#":
        return schema
    if not ref.startswith("#/"):
        return None  # another document or an anchor: not checked, so not allowed
    target = schema
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


@cache
def _validator(schema_json: str):
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_output(task, value: Any) -> tuple[str | None, str | None]:
    """(canonical answer, None), or (None, why it is not a valid answer for `task`)."""
    if value is None:
        return None, "no answer"
    if task.kind == "classification":
        if not isinstance(value, str):
            return None, f"label {value!r} is not a string"
        if value not in task.label_names:
            return None, f"label {value!r} is not in the label set"
        return value, None
    if task.kind == "generation":
        if not isinstance(value, str):
            return None, f"answer {value!r} is not text"
        text = value.strip()
        return (text, None) if text else (None, "empty answer")
    # extraction: a JSON value that follows the schema
    if isinstance(value, str):
        try:
            value = json.loads(_strip_fence(value))
        except json.JSONDecodeError as exc:
            return None, f"output is not valid JSON ({exc.msg} at char {exc.pos})"
    schema = load_schema(task.json_schema)
    error = next(iter(_validator(canonical_json(schema)).iter_errors(value)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        return None, f"output does not follow the schema at {where}: {error.message}"
    return canonical_json(value), None


def _strip_fence(text: str) -> str:
    """Models often wrap JSON in a ```json fence: take what is inside."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()
