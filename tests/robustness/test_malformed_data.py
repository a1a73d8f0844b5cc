"""Malformed data files (JSONL, CSV, Parquet, a `datasets` folder): each exits 2 with an error
naming the file and line (or the row id), no traceback, and leaves a finished run's folder
untouched, under `validate`, `label` and `run` alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import tiny
from tests.robustness.helpers import assert_rejected, finished_project, write_variant

MB = 1_000_000


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_student) -> tuple[Path, Path]:
    folder = tmp_path_factory.getbasetemp() / "robustness-run"
    return folder, finished_project(folder, tiny_student)


# ── file contents ───────────────────────────────────────────────────────────────────────
def rows(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    """Eight good rows; `changes` maps "row2" to the fields to set there (None deletes)."""
    out = tiny.make_rows(8)
    for key, fields in changes.items():
        row = out[int(key.removeprefix("row"))]
        for name, value in fields.items():
            if value is None:
                row.pop(name, None)
            else:
                row[name] = value
    return out


def jsonl(*lines: dict[str, Any] | str) -> bytes:
    """One line per item: a dict as JSON, a str as it is."""
    return "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines).encode()


def every(field: str, value: Any) -> list[dict[str, Any]]:
    return [{**row, field: value} for row in tiny.make_rows(8)]


def csv_text(header: str, *lines: str) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


GOOD_CSV = [f"{r['id']},{r['text']},{r['intent']},{r['recorded']}" for r in tiny.make_rows(8)]
HEADER = "id,text,intent,recorded"


def parquet(columns: dict[str, list]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)

    return write


def _columns(**changes: list) -> dict[str, list]:
    good = tiny.make_rows(8)
    return {name: [r[name] for r in good] for name in good[0]} | changes


def _datasets_folder_without_data(path: Path) -> None:
    path.mkdir()
    (path / "dataset_info.json").write_text("{}")


# name: (file name, contents (bytes, or a function writing the path), data settings,
#        texts the error must contain; {file} is the data file's path)
CASES: dict[str, tuple[str, Any, dict[str, Any], list[str]]] = {
    # JSONL: the file as a whole
    "empty jsonl": ("empty.jsonl", b"", {}, ["data.path {file}: no rows"]),
    "blank lines only": ("blank.jsonl", b"\n  \n\n", {}, ["data.path {file}: no rows"]),
    "byte-order mark only": ("bom.jsonl", b"\xef\xbb\xbf", {}, ["data.path {file}: no rows"]),
    "line cut off": (
        "cut.jsonl",
        jsonl(*rows())[:-20],
        {},
        ["{file}:8: not valid JSON (Unterminated string"],
    ),
    "non-UTF-8 bytes on line 3": (
        "latin1.jsonl",
        jsonl(*rows()[:2]) + b'{"id": "x", "text": "caf\xe9"}\n',
        {},
        ["{file}:3: not UTF-8 (invalid continuation byte"],
    ),
    "UTF-16 file": (
        "utf16.jsonl",
        jsonl(*rows()).decode().encode("utf-16"),
        {},
        ["{file}:1: not UTF-8"],
    ),
    "byte-order mark on line 2": (
        "bom2.jsonl",
        jsonl(rows()[0], "\ufeff" + json.dumps(rows()[1])),
        {},
        ["{file}:2: not valid JSON (Unexpected UTF-8 BOM"],
    ),
    "a JSON array, not lines": (
        "array.jsonl",
        json.dumps(rows(), indent=1).encode(),
        {},
        ["{file}:1: not valid JSON"],
    ),
    "a line that is a list": (
        "list.jsonl",
        jsonl(rows()[0], "[1, 2]"),
        {},
        ["{file}:2: each line must be a JSON object, got list"],
    ),
    "a line that is null": (
        "null.jsonl",
        jsonl("null"),
        {},
        ["{file}:1: each line must be a JSON object, got NoneType"],
    ),
    "number too long": (
        "bigint.jsonl",
        jsonl('{"id": ' + "9" * 5000 + ', "text": "x"}'),
        {},
        ["{file}:1: not valid JSON (a number too long to read)"],
    ),
    "nested too deeply": (
        "deep.jsonl",
        jsonl('{"id": "1", "text": "x", "z": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        {},
        ["{file}:1: not valid JSON (nested too deeply)"],
    ),
    "1 MB line cut off": (
        "mb-cut.jsonl",
        jsonl(rows()[0], '{"id": "r1", "text": "' + "word " * (MB // 5)),
        {},
        ["{file}:2: not valid JSON (Invalid control character"],
    ),
    # JSONL: fields
    "text field missing": (
        "notext.jsonl",
        jsonl(*rows(row2={"text": None})),
        {},
        ["{file}:3: no text field 'text' (data.text_field)"],
    ),
    "text null": (
        "textnull.jsonl",
        jsonl(rows()[0], '{"id": "r9", "text": null}'),
        {},
        ["{file}:2: text field 'text' is empty or not text"],
    ),
    "text a number": (
        "textnum.jsonl",
        jsonl(*rows(row4={"text": 42})),
        {},
        ["{file}:5: text field 'text' is empty or not text"],
    ),
    "text NaN": (
        "textnan.jsonl",
        jsonl('{"id": "1", "text": NaN}'),
        {},
        ["{file}:1: text field 'text' is empty or not text"],
    ),
    "text blank": (
        "textblank.jsonl",
        jsonl(*rows(row0={"text": "   "})),
        {},
        ["{file}:1: text field 'text' is empty or not text"],
    ),
    "text a lone surrogate": (
        "surrogate.jsonl",
        jsonl(rows()[0], '{"id": "r9", "text": "half \\ud800 a character"}'),
        {},
        ["{file}:2: column 'text' is not valid Unicode (surrogates not allowed"],
    ),
    "id missing": (
        "noid.jsonl",
        jsonl(*rows(row3={"id": None})),
        {},
        ["{file}:4: no id in field 'id' (data.id_field)"],
    ),
    "id an object": (
        "idobject.jsonl",
        jsonl(*rows(row1={"id": {"n": 1}})),
        {},
        ["{file}:2: id in field 'id' must be a text or a number, got {'n': 1}"],
    ),
    "id NaN": (
        "idnan.jsonl",
        jsonl('{"id": NaN, "text": "x", "intent": "refund", "recorded": "refund"}'),
        {},
        ["{file}:1: id in field 'id' must be a text or a number, got nan"],
    ),
    "duplicate ids": (
        "dupes.jsonl",
        jsonl(*rows(row4={"id": "r0001"})),
        {},
        ["{file}:5: duplicate id 'r0001' (first at {file}:2)"],
    ),
    "duplicate ids, number and text": (
        "dupes-mixed.jsonl",
        jsonl(*rows(row2={"id": 7}, row6={"id": "7"})),
        {},
        ["{file}:7: duplicate id '7' (first at {file}:3)"],
    ),
    "duplicate 1 MB ids": (
        "dupes-mb.jsonl",
        jsonl(*rows(row1={"id": "i" * MB}, row2={"id": "i" * MB})),
        {},
        ["{file}:3: duplicate id 'iiii", "... (first at {file}:2)"],
    ),
    # JSONL: labels
    "gold label outside the set": (
        "gold-outside.jsonl",
        jsonl(*rows(row2={"intent": "card_lots"})),
        {},
        ["{file}: row id 'r0002': gold label 'card_lots' (column 'intent')", "task 'intent'"],
    ),
    "gold label a list": (
        "gold-list.jsonl",
        jsonl(*rows(row1={"intent": ["refund"]})),
        {},
        ["row id 'r0001': gold label ['refund']"],
    ),
    "gold label a fraction": (
        "gold-float.jsonl",
        jsonl(*rows(row5={"intent": 1.5})),
        {},
        ["{file}:6: column 'intent' must be a label, a text or a JSON value, got 1.5"],
    ),
    "mixed label types": (
        "gold-mixed.jsonl",
        jsonl(*rows(row3={"intent": True}, row4={"intent": 3})),
        {},
        ["row id 'r0003': gold label 'True' (column 'intent') is not valid"],
    ),
    "gold labels all null": (
        "gold-null.jsonl",
        jsonl(*every("intent", None)),
        {},
        ["data.path {file}: no row has the gold field 'intent' with a value"],
    ),
    "gold labels all NaN": (
        "gold-nan.jsonl",
        jsonl(*every("intent", float("nan"))),
        {},
        ["data.path {file}: no row has the gold field 'intent' with a value"],
    ),
    "1 MB message with a gold label outside the set": (
        "mb-gold.jsonl",
        jsonl(*rows(row3={"text": "word " * (MB // 5), "intent": "lost"})),
        {},
        ["row id 'r0003': gold label 'lost'"],
    ),
    "recorded labels all null": (
        "recorded-null.jsonl",
        jsonl(*every("recorded", None)),
        {},
        ["task 'intent': recorded labels (column 'recorded', teacher.label_field): no row has one"],
    ),
    "recorded labels all NaN": (
        "recorded-nan.jsonl",
        jsonl(*every("recorded", float("nan"))),
        {},
        ["task 'intent': recorded labels", "no row has one"],
    ),
    "recorded labels outside the set": (
        "recorded-outside.jsonl",
        jsonl(*every("recorded", "complaint")),
        {},
        ["8 of the 8 present are not in its label set", "label 'complaint'"],
    ),
    "recorded column missing": (
        "recorded-missing.jsonl",
        jsonl(*rows(row2={"recorded": None})),
        {},
        ["{file}:3: no column 'recorded'"],
    ),
    "too few rows for the splits": (
        "two.jsonl",
        jsonl(*rows()[:2]),
        {},
        ["{file}: 2 rows leave the", "split empty"],
    ),
    # CSV
    "empty csv": ("empty.csv", b"", {}, ["data.path {file}: no rows"]),
    "csv header only": ("header.csv", csv_text(HEADER), {}, ["data.path {file}: no rows"]),
    "csv header only after a BOM": (
        "bom-header.csv",
        b"\xef\xbb\xbf" + csv_text(HEADER),
        {},
        ["data.path {file}: no rows"],
    ),
    "csv BOM and a duplicate id": (
        "bom-dupes.csv",
        b"\xef\xbb\xbf" + csv_text(HEADER, *GOOD_CSV, GOOD_CSV[0]),
        {},
        ["{file}:10: duplicate id 'r0000' (first at {file}:2)"],
    ),
    "csv text column misnamed": (
        "body.csv",
        csv_text("id,body,intent,recorded", *GOOD_CSV),
        {},
        ["{file}:2: no text field 'text'"],
    ),
    "csv more cells than header": (
        "wide.csv",
        csv_text(HEADER, GOOD_CSV[0], GOOD_CSV[1] + ",extra"),
        {},
        ["{file}:3: more cells than header columns"],
    ),
    "csv fewer cells than header": (
        "narrow.csv",
        csv_text(HEADER, "r0000"),
        {},
        ["{file}:2: text field 'text' is empty or not text"],
    ),
    "csv unclosed quote": (
        "quote.csv",
        csv_text(HEADER, GOOD_CSV[0], 'r0001,"i lost my card,refund,refund', GOOD_CSV[2]),
        {},
        ["{file}:3: not valid CSV (unexpected end of data)"],
    ),
    "csv stray quote": (
        "stray.csv",
        csv_text(HEADER, GOOD_CSV[0], 'r0001,"lost" card,refund,refund'),
        {},
        ["{file}:3: not valid CSV"],
    ),
    "csv non-UTF-8": (
        "latin1.csv",
        csv_text(HEADER, GOOD_CSV[0]) + b"r0001,caf\xe9,refund,refund\n",
        {},
        ["{file}:3: not UTF-8"],
    ),
    "csv column twice": (
        "twice.csv",
        csv_text("id,text,text,intent,recorded"),
        {},
        ["{file}:1: column 'text' appears twice in the header"],
    ),
    "csv gold label outside the set": (
        "gold.csv",
        csv_text(HEADER, *GOOD_CSV[:3], "r0003,my card,lost,refund"),
        {},
        ["row id 'r0003': gold label 'lost'"],
    ),
    "csv 1 MB message, label outside the set": (
        "mb.csv",
        csv_text(HEADER, GOOD_CSV[0], "r0001," + "word " * (MB // 5) + ",lost,refund"),
        {},
        ["row id 'r0001': gold label 'lost'"],
    ),
    # Parquet
    "not a parquet file": (
        "fake.parquet",
        b"PAR1 this is not parquet",
        {},
        ["{file}: cannot read as Parquet"],
    ),
    "parquet without rows": (
        "empty.parquet",
        parquet({"id": [], "text": [], "intent": [], "recorded": []}),
        {},
        ["data.path {file}: no rows"],
    ),
    "parquet text null": (
        "textnull.parquet",
        parquet(_columns(text=["a", None, "c", "d", "e", "f", "g", "h"])),
        {},
        ["{file} row 2: text field 'text' is empty or not text"],
    ),
    "parquet text numbers": (
        "textint.parquet",
        parquet(_columns(text=list(range(8)))),
        {},
        ["{file} row 1: text field 'text' is empty or not text"],
    ),
    "parquet duplicate ids": (
        "dupes.parquet",
        parquet(_columns(id=["a", "b", "a", "c", "d", "e", "f", "g"])),
        {},
        ["{file} row 3: duplicate id 'a' (first at {file} row 1)"],
    ),
    "parquet gold labels all NaN": (
        "nan.parquet",
        parquet(_columns(intent=[float("nan")] * 8)),
        {},
        ["no row has the gold field 'intent' with a value"],
    ),
    "parquet gold label outside the set": (
        "gold.parquet",
        parquet(_columns(intent=["refund"] * 7 + ["refunds"])),
        {},
        ["row id 'r0007': gold label 'refunds'"],
    ),
    "parquet labels as bytes": (
        "bytes.parquet",
        parquet(_columns(intent=[b"refund"] * 8)),
        {},
        ["{file} row 1: column 'intent' must be a label, a text or a JSON value, got b'refund'"],
    ),
    "parquet ids as lists": (
        "idlist.parquet",
        parquet(_columns(id=[[i] for i in range(8)])),
        {},
        ["{file} row 1: id in field 'id' must be a text or a number, got [0]"],
    ),
    "datasets folder without data": (
        "broken-dataset",
        _datasets_folder_without_data,
        {"format": "datasets"},
        ["{file}: cannot read as a saved `datasets` folder"],
    ),
}


@pytest.mark.parametrize("command", ["validate", "label", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_malformed_data_exits_2_names_the_row_and_writes_nothing(project, case, command, capsys):
    folder, config = project
    name, content, settings, expected = CASES[case]
    data = folder / "bad-data" / name
    if not data.exists():
        data.parent.mkdir(exist_ok=True)
        if callable(content):
            content(data)
        else:
            data.write_bytes(content)
    slug = "data-" + "".join(c if c.isalnum() else "-" for c in case)
    path = write_variant(folder, config, slug, lambda raw: raw["data"].update(path=str(data)))
    if settings:
        path = write_variant(folder, path, slug, lambda raw: raw["data"].update(settings))
    expected = [text.replace("{file}", str(data)) for text in expected]
    assert_rejected([command, str(path), "--quiet"], folder / "run", expected, capsys)


def test_there_are_at_least_25_malformed_data_files():
    assert len(CASES) >= 25
