"""A content-addressed cache of teacher answers in SQLite.

Keys are sha256 digests of (teacher identity, prompt, parameters), so the same question to the
same teacher is never paid for twice: a killed labelling run resumes where it stopped, and a
new run directory over the same data reuses every answer. Each batch is committed as it
arrives (WAL mode), so a crash loses at most the batch in flight. A full disk is reported as
an OSError naming the cache file; every answer committed before it stays readable.
"""

from __future__ import annotations

import errno
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
# SQLite's result codes (sqlite3.SQLITE_* from Python 3.11)
SQLITE_IOERR = 10  # "disk I/O error": a failed write (e.g. past a file size limit)
SQLITE_FULL = 13  # "database or disk is full"
LOCK_WAIT_S = 60  # how long a writer waits for another process's lock on the cache


class AnswerCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=LOCK_WAIT_S)
        self._set_up()

    def _set_up(self) -> None:
        """WAL mode and the table. Switching the journal mode does not wait on SQLite's busy
        timeout: while another process opens the same new cache file it fails at once with
        "database is locked", so it is retried here for as long as that timeout."""
        deadline = time.monotonic() + LOCK_WAIT_S
        pause = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(SCHEMA)
                self._db.commit()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

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
        """Store answers in one transaction: all of them or, on an error, none."""
        now = time.time()
        rows = [(k, teacher, json.dumps(a.to_json()), now) for k, a in items]
        try:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO answers (key, teacher, answer, created_s) "
                    "VALUES (?,?,?,?)",
                    rows,
                )
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            if code == SQLITE_FULL or "disk is full" in str(exc):
                raise OSError(
                    errno.ENOSPC, "no space left to store teacher answers", str(self.path)
                ) from exc
            if code == SQLITE_IOERR or "disk I/O error" in str(exc):
                raise OSError(
                    errno.EIO,
                    "disk I/O error storing teacher answers (a full disk, a file size limit "
                    "or a failing device)",
                    str(self.path),
                ) from exc
            raise

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
