"""The extraction student against its untrained base, on the run's test split.

    cascadekit run configs/extraction/config.yaml      # first: label, split, train, ...
    python scripts/bench_extraction.py [--run runs/extraction] [--limit N]

Both sides answer the same test messages with greedy decoding on SmolLM2-135M-Instruct:

    untrained   the base model with the teacher's prompt (the instruction, the JSON Schema,
                "answer with one JSON value") and three solved training messages (few-shot)
    trained     the run's LoRA adapter, with the student's prompt (the instruction only)

and are scored against the gold answers: the share of outputs that parse and follow the
schema, exact match of the whole object (canonical JSON), and field accuracy (each of the
object's fields right; an output that does not parse gets every field wrong). The last line
is the ratio of the two field accuracies. About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from distill.config import load_config
from distill.outputs import canonical_output
from distill.pipeline import load_split
from distill.prompts import generation_system_text
from training.bases import resolve_model
from training.generator import PromptSpec, generate, load_base, load_generator

ROOT = Path(__file__).resolve().parents[1]


def score(task, outputs: list[str], gold: list[str]) -> dict[str, float]:
    valid = exact = 0
    fields_right = fields_total = 0
    for output, reference in zip(outputs, gold, strict=True):
        canonical, problem = canonical_output(task, output)
        expected = json.loads(reference)
        fields_total += len(expected)
        if problem is not None:
            continue
        valid += 1
        exact += canonical == reference
        got = json.loads(canonical)
        fields_right += sum(got.get(k) == v for k, v in expected.items())
    n = len(gold)
    return {
        "valid_json": valid / n,
        "exact_match": exact / n,
        "field_accuracy": fields_right / max(1, fields_total),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/extraction/config.yaml"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N test rows")
    args = parser.parse_args()
    config = load_config(args.config)
    task = config.tasks[0]
    rows = load_split(config.run_dir, task.name, "test")
    texts, gold = list(rows["text"]), list(rows["gold"])
    if args.limit:
        texts, gold = texts[: args.limit], gold[: args.limit]
    base_path = resolve_model(config.student.generative.base_model)
    batch = config.student.generative.inference_batch_size
    print(f"{len(texts)} test messages from {config.run_dir}; base {base_path}")

    results = {}
    model, tokenizer = load_base(base_path)
    model.eval()
    train = load_split(config.run_dir, task.name, "train")
    shots = "\n\n".join(
        f"Message: {text}\nJSON: {answer}"
        for text, answer in zip(train["text"][:3], train["teacher_label"][:3], strict=True)
    )
    instruction = f"{generation_system_text(task)}\n\nExamples:\n\n{shots}"
    few_shot = PromptSpec(instruction, task.max_input_tokens, 96)
    started = time.perf_counter()
    out = generate(model, tokenizer, few_shot, texts, batch)
    results["untrained"] = score(task, out.texts, gold) | {"s": time.perf_counter() - started}
    print("untrained sample:", out.texts[0][:160].replace("\n", " "))

    adapter = config.run_dir / "adapters" / task.name
    model, tokenizer, prompt = load_generator(base_path, adapter)
    started = time.perf_counter()
    out = generate(model, tokenizer, prompt, texts, batch)
    results["trained"] = score(task, out.texts, gold) | {"s": time.perf_counter() - started}
    print("trained sample:  ", out.texts[0][:160])

    print("| model | valid JSON | exact match | field accuracy | seconds |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['valid_json']:.1%} | {r['exact_match']:.1%} | "
            f"{r['field_accuracy']:.1%} | {r['s']:.0f} |"
        )
    untrained = results["untrained"]["field_accuracy"]
    trained = results["trained"]["field_accuracy"]
    print(f"exact_match: {results['trained']['exact_match']:.4f} trained, "
          f"{results['untrained']['exact_match']:.4f} untrained")  # fmt: skip
    ratio = trained / untrained if untrained > 0 else float(np.inf)
    print(
        f"ratio: {ratio:.2f} (field accuracy, trained LoRA student over untrained few-shot base:"
        f" {trained:.1%} vs {untrained:.1%})"
    )


if __name__ == "__main__":
    main()
