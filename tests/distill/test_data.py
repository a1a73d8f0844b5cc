"""Reading input rows from every supported format, and naming the faulty row when it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.config import DataConfig
from distill.data import read_records
from distill.errors import DataError

ROWS = [
    {"id": "a1", "text": "card stolen", "intent": "lost"},
    {"id": "a2", "text": "refund late", "intent": "refund"},
    {"id": "a3", "text": "hello", "intent": None},
]


def _config(path: Path, **kw) -> DataConfig:
    return DataConfig(path=path, gold_field="intent", **kw)


def _check(records):
    assert [r.id for r in records] == ["a1", "a2", "a3"]
    assert [r.gold for r in records] == ["lost", "refund", None]
    assert records[0].text == "card stolen"


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    _check(read_records(_config(path)))


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,text,intent\na1,card stolen,lost\na2,refund late,refund\na3,hello,\n")
    _check(read_records(_config(path)))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    _check(read_records(_config(path)))


def test_saved_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    _check(read_records(_config(tmp_path / "ds")))


def test_limit_ids_by_row_number_and_extra_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({**r, "rec": 3.0}) + "\n" for r in ROWS))
    records = read_records(_config(path, limit=2, id_field=None), extra_fields=("rec",))
    assert [r.id for r in records] == ["1", "2"]
    assert records[0].fields == {"rec": "3", "intent": "lost"}  # gold columns land here too


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "no rows"),
        ('{"id": "1", "txt": "x"}\n', "d.jsonl:1: no text field 'text'"),
        ('{"id": "1", "text": "x"}\n{"id": "1", "text": "y"}\n', "d.jsonl:2: duplicate id '1'"),
        ('{"id": "1", "text": "x"}\n{"id": "2", "text": "y"', "d.jsonl:2: not valid JSON"),
        ('{"id": "1", "text": "   "}\n', "d.jsonl:1: text field 'text' is empty"),
        ('{"text": "x"}\n', "d.jsonl:1: no id in field 'id'"),
        ("[1, 2]\n", "d.jsonl:1: each line must be a JSON object"),
    ],
)
def test_bad_files_name_the_line(tmp_path, content, expected):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        read_records(DataConfig(path=path))
    assert expected in str(error.value)


def test_non_utf8_and_missing_and_unknown_format(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8"):
        read_records(_config(path))
    with pytest.raises(DataError, match="does not exist"):
        read_records(_config(tmp_path / "missing.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_records(_config(tmp_path / "d.txt"))


def test_gold_cells_must_be_labels_texts_or_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "1", "text": "x", "intent": {"a": 1}}\n')
    assert read_records(_config(path))[0].gold == {"a": 1}  # a JSON answer (extraction)
    path.write_text("id,text,intent\n1,x,1.5\n")
    path = path.rename(tmp_path / "d.csv")
    assert read_records(_config(path))[0].gold == "1.5"
    path = tmp_path / "d.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["1"], "text": ["x"], "intent": [b"\x00"]}), path)
    with pytest.raises(DataError, match=r"d.parquet.*column 'intent' must be a label"):
        read_records(_config(path))


def test_missing_gold_column_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "1", "text": "x"}\n')
    with pytest.raises(DataError, match="no row has the gold field 'intent'"):
        read_records(_config(path))


def test_a_duplicate_id_far_from_its_first_row_is_found(tmp_path):
    """Ids are checked in blocks, earlier blocks on disk: a repeat 9,000 rows later counts."""
    rows = [{"id": f"row{i}", "text": f"message {i}", "intent": "x"} for i in range(9000)]
    rows.append({"id": "row3", "text": "again", "intent": "x"})
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"many\.jsonl:9001: duplicate id 'row3' \(first at .*:4\)"):
        read_records(_config(path))
    assert len(read_records(_config(path, limit=9000))) == 9000
