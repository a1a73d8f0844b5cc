"""A content-addressed cache of teacher answers in SQLite.

Keys are sha256 digests of (teacher identity, prompt, parameters), so the same question to the
same teacher is never paid for twice: a killed labelling run resumes where it stopped, and a
new run directory over the same data reuses every answer. Each batch is committed as it
arrives (WAL mode), so a crash loses at most the batch in flight.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from distill.teachers.base import TeacherAnswer

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_s REAL NOT NULL
)
"""


class AnswerCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, TeacherAnswer]:
        found: dict[str, TeacherAnswer] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, answer FROM answers WHERE key IN ({marks})",
                chunk,
            )
            for key, blob in rows:
                found[key] = TeacherAnswer.from_json(json.loads(blob))
        return found

    def put_many(self, teacher: str, items: Iterable[tuple[str, TeacherAnswer]]) -> None:
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO answers (key, teacher, answer, created_s) VALUES (?,?,?,?)",
                [(k, teacher, json.dumps(a.to_json()), now) for k, a in items],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
