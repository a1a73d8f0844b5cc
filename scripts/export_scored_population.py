"""Export a finished run's scored calib + test rows as a CSV population for the guarantee
tests (tests/eval/test_guarantees_real.py): what each student answered, its scores, the
teacher's answer and the token counts, without the texts.

    python scripts/export_scored_population.py RUN[:NAME] [RUN:NAME ...] --task TASK --out CSV

With several runs (tiers over the same data), their rows are joined on the row id and each
run's columns are prefixed with its NAME.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from distill.pipeline import load_scores

COLUMNS = ("student_label", "score_max_prob", "score_margin", "score_neg_entropy",
           "student_input_tokens")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN or RUN:NAME")
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    merged: dict[str, dict[str, str]] = {}
    for i, ref in enumerate(args.runs):
        path, _, name = ref.partition(":")
        name = name or f"run{i}"
        for split in ("calib", "test"):
            table = load_scores(Path(path), args.task, split)
            for j, row_id in enumerate(table["id"].tolist()):
                row = merged.setdefault(str(row_id), {"id": str(row_id)})
                teacher = str(table["teacher_label"][j])
                if row.setdefault("teacher_label", teacher) != teacher:
                    raise SystemExit(f"{path}: row {row_id}: another teacher answer")
                row["teacher_input_tokens"] = str(table["teacher_input_tokens"][j])
                row["teacher_output_tokens"] = str(table["teacher_output_tokens"][j])
                for column in COLUMNS:
                    row[f"{name}_{column}"] = str(table[column][j])
    rows = [row for row in merged.values() if len(row) == len(next(iter(merged.values())))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["id"]))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
