"""What `cascadekit synthesize` buys when few inputs are at hand: the quickstart with a few
messages per intent, with and without inputs the teacher wrote.

    python scripts/bench_synthesize.py [--out runs/bench_synthesize] [--per-intent 5]
                                       [--per-label 10] [--seed 0] [--train-seeds 0 1 2]

The quickstart's own teacher (Qwen2.5-Coder-1.5B-Instruct, on this CPU) labels everything, as
in `configs/quickstart/config.yaml`; nothing else is overridden. Three real runs, the same
calib and test rows (the quickstart's hash split, kept through `data.split_field`):

- few: `--per-intent` train messages per author intent (a seeded sample), nothing more;
- few + synthetic: the same, plus `cascadekit synthesize --per-label N`: the teacher writes N
  new messages per label from the task's instruction, the label's description and the few
  train messages (never a calib or test one), de-duplicated; then it labels them like any
  other row;
- all: every train message of the quickstart (the reference a user with the data would get).

Each run is trained with every `--train-seeds` seed (`student.training.seed`); the table gives
the mean and standard deviation over them.

Teacher answers are cached (`teacher_cache`), so the quickstart's messages are labelled once
across runs and the runs differ only in their train rows. Table per run: train rows, student
agreement with the teacher and accuracy against the authors' intents on test, the cascade's
deferral, realised risk and cost savings at the quickstart's α = 0.1, and the seconds spent
writing inputs. The last line is
`ratio: X.XX (savings of few + synthetic over few)`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.pipeline import split_of  # noqa: E402

CONFIG = ROOT / "configs/quickstart/config.yaml"
DATA = ROOT / "configs/quickstart/data/messages.jsonl"
SPLIT_SEED, TRAIN, CALIB = 0, 0.6, 0.2  # the quickstart's `data.split` and `data.seed`


def with_splits(per_intent: int | None, seed: int) -> list[dict]:
    """The quickstart's rows with their hash split written out; `per_intent` train rows per
    author intent (all when None), calib and test rows unchanged."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["split"] = split_of(row["id"], SPLIT_SEED, TRAIN, CALIB)
    if per_intent is None:
        return rows
    rng = np.random.default_rng(seed)
    by_intent: dict[str, list[str]] = {}
    for row in rows:
        if row["split"] == "train":
            by_intent.setdefault(row["intent"], []).append(row["id"])
    keep = set()
    for intent in sorted(by_intent):
        ids = by_intent[intent]
        keep.update(ids[i] for i in rng.permutation(len(ids))[:per_intent])
    return [row for row in rows if row["split"] != "train" or row["id"] in keep]


def write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def cascadekit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distill.cli", *args], check=True, cwd=ROOT)


def run(name: str, data: Path, out: Path, seed: int) -> dict:
    """`cascadekit run` on the quickstart config with `data` (skipped when finished)."""
    run_dir = out / (name if seed == 0 else f"{name}_s{seed}")
    if not (run_dir / "report/summary.json").is_file():
        cascadekit("run", str(CONFIG), f"run_dir={run_dir}", f"data.path={data}",
                   "data.split_field=split", f"student.training.seed={seed}")  # fmt: skip
    summary = json.loads((run_dir / "report/summary.json").read_text())["tasks"]["intent"]
    metrics = json.loads((run_dir / "adapters/intent/training_metrics.json").read_text())
    train = sum(json.loads(line)["split"] == "train" for line in data.open(encoding="utf-8"))
    return {
        "train_rows": train,
        "agreement": summary["student"]["agreement"],
        "accuracy": summary["student"]["accuracy"],
        "deferral": summary["cascade"]["deferral_rate"],
        "risk": summary["cascade"]["risk"],
        "savings": summary["cascade"]["savings_rate"],
        "train_s": metrics["duration_s"],
    }


def _mean_sd(runs: list[dict]) -> dict[str, tuple[float, float]]:
    return {
        key: (float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs])))
        for key in runs[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_synthesize")
    parser.add_argument("--per-intent", type=int, default=5, help="train messages per intent")
    parser.add_argument("--per-label", type=int, default=10, help="inputs written per label")
    parser.add_argument("--seed", type=int, default=0, help="seeds the few-message sample")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out = args.out.resolve()
    few = write(with_splits(args.per_intent, args.seed), out / "few.jsonl")
    synthetic = out / "synthetic.jsonl"
    write_s = 0.0
    if not synthetic.is_file():
        started = time.perf_counter()
        cascadekit("synthesize", str(CONFIG), f"data.path={few}", "data.split_field=split",
                   "--per-label", str(args.per_label), "--out", str(synthetic))  # fmt: skip
        write_s = time.perf_counter() - started
        (out / "synthetic_s.json").write_text(json.dumps({"seconds": write_s}))
    else:
        write_s = json.loads((out / "synthetic_s.json").read_text())["seconds"]
    written = [json.loads(line) for line in synthetic.read_text(encoding="utf-8").splitlines()]
    few_synthetic = write(
        [*with_splits(args.per_intent, args.seed),
         *({**row, "split": "train"} for row in written)],
        out / "few_synthetic.jsonl",
    )  # fmt: skip
    everything = write(with_splits(None, args.seed), out / "all.jsonl")
    datasets = {"few": few, "few + synthetic": few_synthetic, "all": everything}
    names = {"few": "few", "few + synthetic": "few_synthetic", "all": "all"}
    runs = {
        label: [run(names[label], data, out, seed) for seed in args.train_seeds]
        for label, data in datasets.items()
    }
    results = {label: _mean_sd(figures) for label, figures in runs.items()}
    (out / "bench.json").write_text(json.dumps({"write_s": write_s, "runs": runs}, indent=2))
    print(f"\n{len(written)} inputs written by the teacher in {write_s:.0f} s "
          f"({args.per_label} asked per label); mean ± sd over training seeds "
          f"{', '.join(map(str, args.train_seeds))}")  # fmt: skip
    print(f"{'run':<16}{'train rows':>11}{'agreement':>14}{'accuracy':>14}{'deferral':>14}"
          f"{'risk':>14}{'savings':>14}{'train s':>9}")  # fmt: skip
    for name, r in results.items():
        shown = ("agreement", "accuracy", "deferral", "risk", "savings")
        figures = "".join(f"{r[k][0]:>8.3f} ± {r[k][1]:.2f}" for k in shown)
        print(f"{name:<16}{r['train_rows'][0]:>11.0f}{figures}{r['train_s'][0]:>9.0f}")
    ratio = results["few + synthetic"]["savings"][0] / max(results["few"]["savings"][0], 1e-9)
    print(f"ratio: {ratio:.2f} (savings of few + synthetic over few)")


if __name__ == "__main__":
    main()
