"""Training throughput of the cascadekit student loop against Hugging Face `Trainer` + PEFT.

    python scripts/bench_training.py [--rows 800] [--epochs 2] [--batch-size 32] \
        [--repeats 2] [--max-length 128]

Every variant trains the same LoRA classifier (`build_classifier`: all-MiniLM-L6-v2, r=16,
all-linear) on the first `--rows` quickstart messages (label: intent) with the same batch
size, sequence limit, epochs, warm-up, weight decay and precision (bf16 where the CPU has it),
no validation, no checkpoints, no logging:

    cascadekit        `train_classifier`: length-grouped batches, dynamic padding
    trainer-maxlen    `Trainer`, texts tokenised with padding="max_length" (the common recipe)
    trainer-dynamic   `Trainer` with `DataCollatorWithPadding` (pads to the longest in a batch)

Each run is a fresh subprocess (this script with `--worker VARIANT`), so peak RSS
(`ru_maxrss` at its end) is its own; the variants alternate for `--repeats` rounds and the
median of each is reported. examples/s = rows x epochs / loop seconds, where loop seconds
are the training loop alone on both sides (`FitResult.duration_s`; `Trainer`'s
`train_runtime`), after the model, optimiser and data are set up.

MFU: useful model FLOPs over loop time over the machine's matmul peak, measured here first
(2048x2048 matmuls, best of several, in the training precision, same thread count). Useful
FLOPs count only real (unpadded) tokens, identical for all variants: per token
4 x N_base (forward, plus input gradients through the frozen non-embedding weights) +
6 x N_lora (the adapters also get weight gradients); attention's length-squared terms are
left out. The usual 6 x N convention would read 1.5x higher. "padded tok" counts the token
positions actually computed, padding included, so the waste of each variant shows.

The last line is `ratio: X.XX (...)`: cascadekit examples/s over the faster Trainer variant.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent / "configs" / "quickstart" / "data" / "messages.jsonl"
BASE = "embedded:all-minilm-l6-v2"
VARIANTS = ("cascadekit", "trainer-maxlen", "trainer-dynamic")
RESULT_TAG = "RESULT "


# ── shared setup ────────────────────────────────────────────────────────────────────────
def load_data(rows: int) -> tuple[list[str], list[int], list[str]]:
    """Texts, label ids and label names (all intents of the file, so every head is equal)."""
    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
    label_names = sorted({r["intent"] for r in records})
    index = {name: i for i, name in enumerate(label_names)}
    picked = records[:rows]
    return [r["text"] for r in picked], [index[r["intent"]] for r in picked], label_names


def train_spec(args: argparse.Namespace):
    from training.loop import TrainSpec

    return TrainSpec(
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        precision=args.precision,
        val_fraction=0.0,
        early_stopping_patience=0,
        checkpoint_every_steps=0,
        tracker="none",
    )


def token_lengths(tokenizer, texts: list[str], max_length: int) -> list[int]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


# ── workers: one training run each, in their own process ────────────────────────────────
def run_cascadekit(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from training.bases import resolve_model
    from training.classifier import LoraSpec, train_classifier

    base = resolve_model(BASE, log=lambda _: None)
    texts, targets, label_names = load_data(args.rows)
    spec = train_spec(args)
    with tempfile.TemporaryDirectory() as out:
        result = train_classifier(
            base, texts, targets, label_names, Path(out), spec=spec, lora=LoraSpec(), progress=False
        )
    lengths = token_lengths(AutoTokenizer.from_pretrained(base), texts, args.max_length)
    return {
        "loop_s": result.duration_s,
        "examples": result.n_train * result.epochs,
        "padded_tokens": replay_padded_tokens(lengths, spec),
        "precision": result.precision,
    }


def replay_padded_tokens(lengths: list[int], spec) -> int:
    """Token positions our loop computes: its batches replayed, each padded to its longest."""
    from training.loop import EpochBatches

    sampler = EpochBatches(lengths, spec.batch_size, spec.seed, spec.group_by_length)
    total = 0
    for epoch in range(spec.epochs):
        sampler.epoch = epoch
        total += sum(max(lengths[i] for i in batch) * len(batch) for batch in sampler)
    return total


class CountingCollator:
    """Wraps a collator and counts the token positions of every batch it builds."""

    def __init__(self, collate) -> None:
        self.collate = collate
        self.tokens = 0

    def __call__(self, features):
        batch = self.collate(features)
        self.tokens += batch["input_ids"].numel()
        return batch


def run_trainer(args: argparse.Namespace, dynamic: bool) -> dict:
    from datasets import Dataset
    from transformers import (
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from training.bases import resolve_model
    from training.classifier import LoraSpec, build_classifier

    base = resolve_model(BASE, log=lambda _: None)
    texts, targets, label_names = load_data(args.rows)
    spec = train_spec(args)
    set_seed(spec.seed)
    model, tokenizer = build_classifier(base, label_names, LoraSpec())
    padding = False if dynamic else "max_length"
    encoded = tokenizer(texts, truncation=True, max_length=spec.max_length, padding=padding)
    dataset = Dataset.from_dict({**encoded, "labels": targets})
    collate = DataCollatorWithPadding(tokenizer) if dynamic else default_data_collator
    counting = CountingCollator(collate)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            use_cpu=True,
            per_device_train_batch_size=spec.batch_size,
            num_train_epochs=spec.epochs,
            learning_rate=spec.learning_rate,
            warmup_steps=spec.warmup_ratio,  # a float below 1 is a ratio of the total steps
            weight_decay=spec.weight_decay,
            bf16=spec.precision == "bf16",
            seed=spec.seed,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=dataset, data_collator=counting
        )
        output = trainer.train()
    return {
        "loop_s": output.metrics["train_runtime"],
        "examples": len(texts) * spec.epochs,
        "padded_tokens": counting.tokens,
        "precision": spec.precision,
    }


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.worker == "cascadekit":
        result = run_cascadekit(args)
    else:
        result = run_trainer(args, dynamic=args.worker == "trainer-dynamic")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
    print(RESULT_TAG + json.dumps(result), flush=True)


# ── the parent: peak, model size, alternating runs, table ───────────────────────────────
def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, iterations: int = 8) -> float:
    """Best-of throughput of a square matmul, GFLOP/s."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(iterations):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def flops_per_token() -> tuple[float, int, int]:
    """Useful training FLOPs per real token, N_base (non-embedding) and N_lora."""
    from training.bases import resolve_model
    from training.classifier import LoraSpec, build_classifier

    base = resolve_model(BASE, log=lambda _: None)
    model, _ = build_classifier(base, ["a", "b"], LoraSpec())
    n_base = n_lora = 0
    for name, param in model.named_parameters():
        if "lora_" in name:
            n_lora += param.numel()
        elif "embeddings" not in name and "classifier" not in name:
            n_base += param.numel()
    return 4.0 * n_base + 6.0 * n_lora, n_base, n_lora


def useful_tokens(rows: int, epochs: int, max_length: int) -> int:
    from transformers import AutoTokenizer

    from training.bases import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(BASE, log=lambda _: None))
    texts, _, _ = load_data(rows)
    return sum(token_lengths(tokenizer, texts, max_length)) * epochs


def spawn(variant: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant]
    command += [f"--rows={args.rows}", f"--epochs={args.epochs}", f"--threads={args.threads}"]
    command += [f"--batch-size={args.batch_size}", f"--max-length={args.max_length}"]
    command += [f"--precision={args.precision}"]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"worker {variant} failed (exit {done.returncode})")
    return json.loads(lines[-1].removeprefix(RESULT_TAG))


def summarise(runs: list[dict]) -> dict:
    loop_s = statistics.median(r["loop_s"] for r in runs)
    return {
        "examples_per_s": statistics.median(r["examples"] / r["loop_s"] for r in runs),
        "loop_s": loop_s,
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "padded_tokens": statistics.median(r["padded_tokens"] for r in runs),
    }


def print_table(summary: dict[str, dict], useful: int, flops_token: float, peak: float) -> None:
    print("| variant | examples/s | loop s | peak RSS MB | padded tok | pad % | MFU % |")
    print("|---|---|---|---|---|---|---|")
    for variant, s in summary.items():
        mfu = 100 * useful * flops_token / s["loop_s"] / (peak * 1e9)
        pad = 100 * (1 - useful / s["padded_tokens"])
        print(
            f"| {variant} | {s['examples_per_s']:.1f} | {s['loop_s']:.1f} | "
            f"{s['peak_rss_mb']:.0f} | {s['padded_tokens']:.0f} | {pad:.0f} | {mfu:.1f} |"
        )


def quiet() -> None:
    """No load reports, progress bars or deprecation notes around the table."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def parent(args: argparse.Namespace) -> None:
    from training.loop import bf16_available

    quiet()
    torch.set_num_threads(args.threads)
    args.precision = "bf16" if bf16_available("cpu") else "fp32"
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    flops_token, n_base, n_lora = flops_per_token()
    useful = useful_tokens(args.rows, args.epochs, args.max_length)
    print(
        f"rows={args.rows} epochs={args.epochs} batch={args.batch_size} "
        f"max_length={args.max_length} repeats={args.repeats} threads={args.threads} "
        f"precision={args.precision}"
    )
    print(
        f"matmul peak 2048x2048: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} "
        f"GFLOP/s; N_base={n_base:,} N_lora={n_lora:,}; useful tokens={useful:,}"
    )
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for round_no in range(args.repeats):
        for variant in VARIANTS:
            result = spawn(variant, args)
            runs[variant].append(result)
            print(
                f"  round {round_no + 1} {variant}: {result['examples'] / result['loop_s']:.1f} "
                f"examples/s, {result['loop_s']:.1f} s, {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    summary = {variant: summarise(variant_runs) for variant, variant_runs in runs.items()}
    print_table(summary, useful, flops_token, peaks[args.precision])
    ours = summary["cascadekit"]["examples_per_s"]
    best = max(summary[v]["examples_per_s"] for v in VARIANTS if v != "cascadekit")
    print(
        f"ratio: {ours / best:.2f} "
        "(cascadekit loop examples/s over HF Trainer+PEFT examples/s, best Trainer variant)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=800, help="first N quickstart messages")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all variants")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
