"""The `hf` teacher's option scoring: shared-prefix KV cache + batches, against the naive path.

    python scripts/bench_teacher.py [--items 48] [--batch-size 8] [--model REF]

Both paths give each input the model's exact probability over the quickstart's 19 intents.

    cascadekit (fast)   the prompt's shared prefix (instruction, label list, 19 examples) runs
                        once and its KV cache serves every input; inputs go in batches of
                        `--batch-size`, each one forward pass with the label trie alongside
    naive               one input at a time: the whole prompt (prefix included) through the
                        model for every input, then the same label trie

Same model, same inputs (the first `--items` quickstart messages), in one run. It checks
that the two give the same labels and probabilities (max |Δp| printed) and prints items/s of
each; the last line is their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from distill.config import HFTeacherConfig, load_config
from distill.data import Record
from distill.teachers.hf import HFTeacher

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs/quickstart/config.yaml"


def naive_label(teacher: HFTeacher, task, records: list[Record]) -> np.ndarray:
    """(n, labels) probabilities, one input at a time with the whole prompt each time."""
    state = teacher._task_state(task)
    out = []
    with torch.inference_mode():
        for record in records:
            state.prefix_kv = teacher._prefix_kv(state.prefix_ids)  # not shared: per input
            ids = teacher.tokenizer(record.text, add_special_tokens=False).input_ids
            row = ids[: teacher.config.max_input_tokens] + state.suffix_ids
            out.append(np.exp(teacher._score_rows(state, [row]))[0])
    state.prefix_kv = None  # the fast path computes its own
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="embedded:qwen2.5-coder-1.5b-instruct")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = load_config(QUICKSTART)
    task = config.tasks[0]
    lines = config.data.path.read_text(encoding="utf-8").splitlines()[: args.items]
    records = [
        Record(id=row["id"], text=row["text"], gold=None, fields={})
        for row in map(json.loads, lines)
    ]
    teacher = HFTeacher(
        HFTeacherConfig(kind="hf", model=args.model, dtype="bfloat16", batch_size=args.batch_size)
    )
    teacher.label_batch(task, records[:2])  # load the model and warm up, untimed
    teacher._task_state(task).prefix_kv = None

    started = time.perf_counter()
    fast = []
    for i in range(0, len(records), args.batch_size):
        fast += teacher.label_batch(task, records[i : i + args.batch_size])
    fast_s = time.perf_counter() - started
    fast_p = np.array([[a.probs[name] for name in task.label_names] for a in fast])

    started = time.perf_counter()
    naive_p = naive_label(teacher, task, records)
    naive_s = time.perf_counter() - started

    same = int(np.sum(fast_p.argmax(1) == naive_p.argmax(1)))
    prefix = len(teacher._task_state(task).prefix_ids)
    print(
        f"{args.items} inputs, {len(task.label_names)} labels, shared prefix {prefix} tokens, "
        f"{args.model}"
    )
    print(
        f"cascadekit: {fast_s:7.1f} s = {args.items / fast_s:6.2f} items/s "
        f"(prefix once, batches of {args.batch_size})"
    )
    print(f"naive:      {naive_s:7.1f} s = {args.items / naive_s:6.2f} items/s (whole prompt each)")
    print(
        f"same label on {same}/{args.items} inputs; max |Δp| {np.abs(fast_p - naive_p).max():.2e}"
    )
    print(
        f"ratio: {naive_s / fast_s:.2f} (items/s, shared-prefix batches over one input at a time)"
    )


if __name__ == "__main__":
    main()
