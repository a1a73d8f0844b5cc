"""Measure candidate teachers on a config's gold labels: accuracy and items per second.

    python scripts/compare_teachers.py configs/quickstart/config.yaml --n 300 \
        embedded:qwen2.5-coder-0.5b-instruct embedded:qwen2.5-coder-1.5b-instruct

Each candidate labels the same random sample (seeded) through the `hf` backend with the
config's prompt; load and conversion time is reported apart from labelling time.
"""

import argparse
import random
import time

from distill.config import load_config
from distill.data import read_records
from distill.teachers.hf import HFTeacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("models", nargs="+", help="teacher.model values to compare")
    parser.add_argument("--n", type=int, default=300, help="sample size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = load_config(args.config)
    task = config.tasks[0]
    records = read_records(config.data)
    sample = random.Random(args.seed).sample(records, min(args.n, len(records)))
    sample.sort(key=lambda r: len(r.text))  # batch by length, as the label stage does
    print("| teacher | n | accuracy vs gold | items/s | s/item | load s |")
    print("|---|---|---|---|---|---|")
    accuracies = []
    for model in args.models:
        teacher_config = config.teacher.model_copy(update={"model": model})
        teacher = HFTeacher(teacher_config, log=lambda _: None)
        started = time.perf_counter()
        teacher.label_batch(task, sample[:1])  # load (convert once), prefix, warm-up
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        answers = []
        for i in range(0, len(sample), teacher.batch_size):
            answers += teacher.label_batch(task, sample[i : i + teacher.batch_size])
        elapsed = time.perf_counter() - started
        right = sum(a.label == r.gold for a, r in zip(answers, sample, strict=True))
        accuracies.append(right / len(sample))
        print(
            f"| {model} | {len(sample)} | {right / len(sample):.1%} | "
            f"{len(sample) / elapsed:.2f} | {elapsed / len(sample):.3f} | {load_s:.0f} |"
        )
    first, last = args.models[0], args.models[-1]
    print(f"ratio: {accuracies[-1] / accuracies[0]:.2f} (accuracy of {last} over {first})")


if __name__ == "__main__":
    main()
