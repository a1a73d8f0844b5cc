"""Read the run's input rows from JSONL, CSV, Parquet or a saved `datasets` folder.

Every row must have a unique id (or the rows are numbered), a non-empty text, and the other
columns the config names. Problems are reported with the file and the line (or row number),
and nothing is written anywhere: the caller reads and checks all rows before any stage writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import DataConfig
from distill.errors import DataError
from distill.errors import short as _short


@dataclass(frozen=True)
class Record:
    """One input row: its id, the text, the gold label if known, and other named columns."""

    id: str
    text: str
    gold: str | None = None
    fields: dict[str, str | None] = field(default_factory=dict)


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise DataError(
            f"data.path {path}: cannot tell the format from the extension {suffix!r}; "
            "use .jsonl, .csv, .parquet or a `datasets` folder, or set data.format"
        )
    return formats[suffix]


MAX_LINE_BYTES = 16 * 1024 * 1024  # one line of a JSONL or CSV file (a row, or part of one)


def _lines(handle: io.BufferedIOBase, path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line ending in \\n, read no more than MAX_LINE_BYTES at a
    time: a file with no line ends (/dev/zero, a 10 GB blob) is refused, not swallowed."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(
                f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes; a data file "
                "holds one row a line"
            )
        yield number, raw


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as handle:
        for number, raw in _lines(handle, path):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: not valid JSON ({exc.msg}, column {exc.colno})"
                ) from None
            except RecursionError:
                raise DataError(f"{where}: not valid JSON (nested too deeply)") from None
            except ValueError:  # an integer of more than 4,300 digits
                raise DataError(f"{where}: not valid JSON (a number too long to read)") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{where}: each line must be a JSON object, got {type(row).__name__}"
                )
            yield where, row


def _csv_lines(handle: io.BufferedIOBase, path: Path) -> Iterator[str]:
    """The file's text a line at a time, each line checked as UTF-8 (a byte-order mark at
    the start is dropped); lines end only at \\n, \\r\\n or \\r (str.splitlines would also cut
    at U+2028 and others)."""
    offset = 0
    for number, raw in _lines(handle, path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            at = offset + exc.start
            raise DataError(f"{path}:{number}: not UTF-8 ({exc.reason} at byte {at})") from None
        offset += len(raw)
        yield from io.StringIO(text, newline="")


def _iter_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))  # long messages are fine
    with path.open("rb") as handle:
        reader = csv.DictReader(_csv_lines(handle, path), strict=True)
        try:
            header = reader.fieldnames or []
            for column in header:
                if header.count(column) > 1:
                    problem = f"column {_short(column)} appears twice in the header"
                    raise DataError(f"{path}:1: {problem}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise DataError(f"{where}: more cells than header columns")
                yield where, dict(row)
        except csv.Error as exc:  # an unclosed quote, a stray quote inside a cell
            start = reader.line_num + 1  # the line where the bad row begins
            raise DataError(f"{path}:{start}: not valid CSV ({exc})") from None


def _iter_table(rows: Any, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, row in enumerate(rows, start=1):
        yield f"{path} row {number}", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read as Parquet ({exc})") from None
    yield from _iter_table(table.to_pylist(), path)


def _iter_datasets(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ...
        raise DataError(f"{path}: cannot read as a saved `datasets` folder ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(
                f"{path}: a DatasetDict with splits {list(loaded)}; save one Dataset instead"
            )
        loaded = next(iter(loaded.values()))
    yield from _iter_table(loaded, path)


def _as_label(value: Any, where: str, column: str) -> str | None:
    """A label cell as a string; None when empty. Floats that are whole numbers lose '.0'."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    if isinstance(value, bool | int | str):
        text = str(value).strip()
        check_unicode(text, f"{where}: column {column!r}")
        return text or None
    if isinstance(value, dict | list):  # a JSON answer (extraction tasks), kept as it is
        return value  # type: ignore[return-value]
    raise DataError(
        f"{where}: column {column!r} must be a label, a text or a JSON value, got {_short(value)}"
    )


def check_unicode(text: str, what: str) -> None:
    """JSON can spell a lone surrogate (\\ud800), which no file or tokenizer can take: a
    DataError saying `what` (the file, line and column; a request's field) is not valid
    Unicode. The data readers and the server both check their texts with it."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"{what} is not valid Unicode ({exc.reason} at character {exc.start})"
            ) from None


def read_records(
    config: DataConfig,
    extra_fields: tuple[str, ...] = (),
    optional_fields: tuple[str, ...] = (),
) -> list[Record]:
    """Read and check every row; raise DataError naming the file and row of the first fault.

    `extra_fields` must be in every row; `optional_fields` (gold labels) may be missing from
    some rows but not from all. Both land in `Record.fields`.
    """
    return list(iter_records(config, extra_fields, optional_fields))


def iter_records(
    config: DataConfig,
    extra_fields: tuple[str, ...] = (),
    optional_fields: tuple[str, ...] = (),
) -> Iterator[Record]:
    """The rows one at a time, checked as in `read_records`, keeping no row in memory. Ids
    are checked for duplicates through an 8-byte hash each, kept in a temporary SQLite file
    (memory stays flat however many rows there are; a duplicate's first place is then looked
    up by reading again). Faults that need the whole file (no rows, a gold column in no row,
    a duplicate of a row in an earlier block of 8,192) are raised after that point."""
    import hashlib

    path = config.path
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise DataError(f"data.path {path}: cannot be read ({exc.strerror})") from None
    if not exists:
        raise DataError(f"data.path {path} does not exist")
    fmt = _detect_format(path, config.format)
    if fmt != "datasets" and path.is_dir():
        raise DataError(f"data.path {path} is a folder, but data.format is {fmt}")
    readers = {
        "jsonl": _iter_jsonl,
        "csv": _iter_csv,
        "parquet": _iter_parquet,
        "datasets": _iter_datasets,
    }
    optional = tuple(
        dict.fromkeys(
            (*optional_fields, config.gold_field) if config.gold_field else optional_fields
        )
    )
    seen_columns: set[str] = set()
    if not os.access(path, os.R_OK):
        raise DataError(f"data.path {path}: no permission to read it")
    ids = _IdHashes()
    n = 0
    for number, (where, row) in enumerate(readers[fmt](path), start=1):
        if config.limit is not None and number > config.limit:
            break
        text = row.get(config.text_field)
        if config.text_field not in row:
            raise DataError(
                f"{where}: no text field {config.text_field!r} (data.text_field); "
                f"columns are {_short(sorted(row), 300)}"
            )
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: text field {config.text_field!r} is empty or not text")
        check_unicode(text, f"{where}: column {config.text_field!r}")
        if config.id_field is None:
            row_id = str(number)
        else:
            raw_id = row.get(config.id_field)
            if raw_id is None or raw_id == "":
                raise DataError(f"{where}: no id in field {config.id_field!r} (data.id_field)")
            numeric = isinstance(raw_id, int) or (
                isinstance(raw_id, float) and math.isfinite(raw_id)
            )
            if not isinstance(raw_id, str) and (isinstance(raw_id, bool) or not numeric):
                raise DataError(
                    f"{where}: id in field {config.id_field!r} must be a text or a number, "
                    f"got {_short(raw_id)}"
                )
            row_id = str(raw_id)
            check_unicode(row_id, f"{where}: column {config.id_field!r}")
        h = int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest(), "big")
        h -= 1 << 63  # a signed 64-bit integer, as SQLite stores it
        if not ids.add(h):
            _raise_duplicate(config, readers[fmt], row_id, where)
        n += 1
        extras: dict[str, str | None] = {}
        for column in extra_fields:
            if column not in row:
                raise DataError(
                    f"{where}: no column {column!r}; columns are {_short(sorted(row), 300)}"
                )
            extras[column] = _as_label(row[column], where, column)
        for column in optional:
            if column in row:  # rows without it have no known gold label
                extras[column] = _as_label(row[column], where, column)
                if extras[column] is not None:
                    seen_columns.add(column)
            else:
                extras.setdefault(column, None)
        gold = extras.get(config.gold_field) if config.gold_field else None
        yield Record(id=row_id, text=text, gold=gold, fields=extras)
    repeated = ids.close()
    if n == 0:
        raise DataError(f"data.path {path}: no rows")
    if repeated is not None:
        _raise_duplicate_hash(config, readers[fmt], repeated)
    for column in optional:
        if column not in seen_columns:
            raise DataError(
                f"data.path {path}: no row has the gold field {column!r} with a value "
                "(data.gold_field / tasks[].gold_field); set it to the right column or to null"
            )


class _IdHashes:
    """Id hashes seen so far: the current block in a set, earlier blocks in a temporary
    SQLite file. `add` is False for a repeat within the block; a repeat of an earlier block
    is found when the block is flushed and reported by `close` (the hash, or None)."""

    BLOCK = 8192

    def __init__(self) -> None:
        self.block: set[int] = set()
        self.db = None
        self.repeated: int | None = None

    def add(self, h: int) -> bool:
        if h in self.block:
            return False
        self.block.add(h)
        if len(self.block) >= self.BLOCK:
            self._flush()
        return True

    def _flush(self) -> None:
        import sqlite3
        import tempfile

        if self.db is None:
            self._folder = tempfile.TemporaryDirectory(prefix="cascadekit-ids-")
            self.db = sqlite3.connect(Path(self._folder.name) / "ids.sqlite")
            self.db.execute("CREATE TABLE ids (h INTEGER PRIMARY KEY) WITHOUT ROWID")
        block = sorted(self.block)
        if self.repeated is None:
            for start in range(0, len(block), 500):
                part = block[start : start + 500]
                marks = ",".join("?" * len(part))
                found = self.db.execute(f"SELECT h FROM ids WHERE h IN ({marks})", part)
                row = found.fetchone()
                if row is not None:
                    self.repeated = row[0]
                    break
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((h,) for h in block))
        self.block.clear()

    def close(self) -> int | None:
        if self.block and self.db is not None:
            self._flush()
        if self.db is not None:
            self.db.close()
            self._folder.cleanup()
        return self.repeated


def _row_ids(config: DataConfig, reader) -> Iterator[tuple[str, str]]:
    for number, (where, row) in enumerate(reader(config.path), start=1):
        if config.limit is not None and number > config.limit:
            break
        yield (str(number) if config.id_field is None else str(row[config.id_field])), where


def _raise_duplicate(config: DataConfig, reader, row_id: str, where: str) -> None:
    for other, first in _row_ids(config, reader):
        if other == row_id and first != where:
            raise DataError(f"{where}: duplicate id {_short(row_id)} (first at {first})")
    # not found: two ids share a hash (about 1 in 2^64); nothing is wrong


def _raise_duplicate_hash(config: DataConfig, reader, h: int) -> None:
    import hashlib

    first: dict[str, str] = {}
    for row_id, where in _row_ids(config, reader):
        digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") - (1 << 63) != h:
            continue
        if row_id in first:
            raise DataError(f"{where}: duplicate id {_short(row_id)} (first at {first[row_id]})")
        first[row_id] = where
