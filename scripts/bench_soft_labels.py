"""Does learning the teacher's probabilities help? The quickstart (a real LLM teacher that
records its distribution over the 19 intents) trained with `loss: ce`, `kl` and `mix`, over
seeds, each judged by its cascade on test.

    python scripts/bench_soft_labels.py [--seeds 0 1 2] [--out runs/bench_soft_labels]

Every run shares the teacher's cached answers (the first run labels, about 7 minutes on a
2-core CPU). Table: student accuracy and agreement with the teacher, AUROC of max_prob for
agreement, deferral and savings at the config's α, APGR; mean ± sd over seeds. The last line
is `ratio: X.XX (savings of kl over ce)`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/quickstart/config.yaml"
LOSSES = ("ce", "kl", "mix")


def run(loss: str, seed: int, out: Path) -> dict:
    run_dir = out / f"{loss}_s{seed}"
    summary = run_dir / "report/summary.json"
    if not summary.is_file():
        overrides = [f"run_dir={run_dir}", f"student.training.loss={loss}",
                     f"student.training.seed={seed}"]  # fmt: skip
        subprocess.run([sys.executable, "-m", "distill.cli", "run", str(CONFIG), *overrides,
                        "--quiet"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    task = json.loads(summary.read_text())["tasks"]["intent"]
    max_prob = next(row for row in task["scores"] if row["score"] == "max_prob")
    return {
        "accuracy": task["student"]["accuracy"],
        "agreement": task["student"]["agreement"],
        "auroc": max_prob["auroc_agreement"],
        "deferral": task["cascade"]["deferral_rate"],
        "savings": task["cascade"]["savings_rate"],
        "apgr": task["curve"]["apgr"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_soft_labels")
    args = parser.parse_args()
    results = {loss: [run(loss, seed, args.out) for seed in args.seeds] for loss in LOSSES}
    keys = ("accuracy", "agreement", "auroc", "deferral", "savings", "apgr")
    print("| loss | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for loss, runs in results.items():
        cells = []
        for key in keys:
            values = np.array([r[key] for r in runs])
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.3f} ± {spread:.3f}")
        print(f"| {loss} | " + " | ".join(cells) + " |")
    ce = np.mean([r["savings"] for r in results["ce"]])
    kl = np.mean([r["savings"] for r in results["kl"]])
    print(f"ratio: {kl / ce:.2f} (savings of kl over ce)")


if __name__ == "__main__":
    main()
