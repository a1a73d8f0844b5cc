"""Export a finished run's scored calib + test rows as a CSV population for the guarantee
tests (tests/eval/test_guarantees_real.py): what each student answered, its scores (and,
for classification students, the distance to their training rows, whether the answer is the
catch-all label and the input's out-of-vocabulary rate), the teacher's answer and the token
counts, without the texts.

    python scripts/export_scored_population.py RUN[:NAME] [RUN:NAME ...] --task TASK --out CSV

With several runs (tiers over the same data), their rows are joined on the row id and each
run's columns are prefixed with its NAME.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from distill.pipeline import load_scores, load_split
from eval.learned import oov_rate, vocabulary

COLUMNS = ("student_label", "score_max_prob", "score_margin", "score_neg_entropy",
           "student_input_tokens")  # fmt: skip
# classification students of this version also have these (the learned score's features)
OPTIONAL = ("knn_distance", "catch_all_answer")


def _train_vocabulary(run_dir: Path, task: str) -> set[str]:
    """The words of the task's train split (what the learned score's oov_rate is against)."""
    return vocabulary(load_split(run_dir, task, "train")["text"])


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
        vocab = _train_vocabulary(Path(path), args.task)
        for split in ("calib", "test"):
            table = load_scores(Path(path), args.task, split)
            oov = oov_rate([str(t) for t in table["text"]], vocab)
            for j, row_id in enumerate(table["id"].tolist()):
                row = merged.setdefault(str(row_id), {"id": str(row_id)})
                teacher = str(table["teacher_label"][j])
                if row.setdefault("teacher_label", teacher) != teacher:
                    raise SystemExit(f"{path}: row {row_id}: another teacher answer")
                row["teacher_input_tokens"] = str(table["teacher_input_tokens"][j])
                row["teacher_output_tokens"] = str(table["teacher_output_tokens"][j])
                for column in COLUMNS:
                    row[f"{name}_{column}"] = str(table[column][j])
                for column in OPTIONAL:
                    if column in table:
                        row[f"{name}_{column}"] = str(table[column][j])
                row[f"{name}_oov_rate"] = repr(float(oov[j]))
    rows = [row for row in merged.values() if len(row) == len(next(iter(merged.values())))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["id"]))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
