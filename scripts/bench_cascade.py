"""How much a cascade saves on CLINC150, against a plain cascade, with every lever measured.

    python scripts/bench_cascade.py [--out runs/bench_cascade] [--seeds 0 1] [--only NAME ...]

Gold is the teacher (risk = 1 - cascade accuracy), α = 0.02, δ = 0.05, the official split of
`configs/clinc150/` (train / val / calib / test; calib only picks τ, test only reports). One
run measures:

- plain: the fixed recipe of the data's README, written as a careful user would in plain
  transformers + PEFT (all-MiniLM-L6-v2, sequence-classification head, LoRA r=8 on query and
  value, 5 epochs at LR 2e-3, batch 32, bf16 autocast, length-grouped batches), max-prob
  score, Learn-then-Test with the exact binomial p-value;
- defaults: `cascadekit run configs/clinc150/config.yaml`, nothing overridden;
- each lever on its own, removed from the defaults or added to them (VARIANTS);
- few labels: 10 training rows per intent (a seeded stratified sample of train), plain and
  defaults;
- the oracle of the defaults' student (it defers exactly the student's errors).

Table: student accuracy, AUROC of the cascade's score for the student being right, savings at
α (1 - deferral rate on test), realised test risk, APGR (and the oracle's), the oracle's
savings (accuracy + α: it defers exactly the errors α does not allow), train time, the
whole run's time, ms per input. The last line is
`ratio: X.XX (savings of the defaults over the plain cascade at alpha 0.02)`, means over seeds.
Every cascadekit variant is a real run directory under --out (re-running skips finished ones).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.calibration import LearnThenTest  # noqa: E402
from eval.curves import cascade_curve, oracle_scores, summarize_curve  # noqa: E402
from eval.learned import auroc  # noqa: E402

CONFIG = ROOT / "configs/clinc150/config.yaml"
DATA = ROOT / "configs/clinc150/data/clinc150.jsonl"
ALPHA, DELTA = 0.02, 0.05
MINILM = "student.base_model=embedded:all-minilm-l6-v2"
# name -> (overrides of the defaults, what it measures); a variant that changes only the
# calibration starts from a copy of the defaults' run (its trained student is reused)
CALIBRATION_ONLY = {"max_prob"}
VARIANTS: dict[str, tuple[list[str], str]] = {
    "defaults": ([], "cascadekit's defaults"),
    "minilm": ([MINILM], "defaults on all-MiniLM-L6-v2 (22.7M) instead of all-mpnet-base-v2"),
    "no_catch_all": (["tasks.0.catch_all=null"], "defaults without the catch-all rule"),
    "max_prob": (["cascade.score=max_prob"], "defaults with the max-prob score"),
    "one_epoch": (["student.training.min_epochs=1"], "defaults, 400 target steps (1 epoch)"),
    "label_smoothing": (["student.training.label_smoothing=0.1"], "defaults + smoothing 0.1"),
    "select_aurc": (["student.training.select_metric=aurc"], "defaults, selected on AURC"),
    "minilm_full": ([MINILM, "student.finetune=full"], "MiniLM fully fine-tuned (no LoRA)"),
    "v0.1_defaults": (
        [
            MINILM,
            "student.training.learning_rate=2e-3",
            "student.training.min_epochs=1",
            "tasks.0.catch_all=null",
            "cascade.score=max_prob",
            "cascade.learned_fit_fraction=0.5",
        ],
        "the defaults before this change (MiniLM, LR 2e-3, 1 epoch, max_prob)",
    ),
}
FEW = ("few_defaults", "few_plain")


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def few_label_data(out: Path, data: Path, per_intent: int = 10, seed: int = 0) -> Path:
    """The data with `per_intent` train rows per intent (val, calib, test unchanged)."""
    path = out / f"{data.stem}_{per_intent}_per_intent.jsonl"
    if path.is_file():
        return path
    rows = rows_of(data)
    rng = np.random.default_rng(seed)
    by_intent: dict[str, list[dict]] = {}
    for row in rows:
        if row["split"] == "train":
            by_intent.setdefault(row["intent"], []).append(row)
    keep = set()
    for intent in sorted(by_intent):
        chosen_rows = rng.permutation(len(by_intent[intent]))[:per_intent]
        keep.update(by_intent[intent][i]["id"] for i in chosen_rows)
    chosen = [row for row in rows if row["split"] != "train" or row["id"] in keep]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in chosen), encoding="utf-8")
    return path


def measure(scores_calib, wrong_calib, scores_test, wrong_test) -> dict:
    """Learn-then-Test on calib, then savings, risk, AUROC and APGR on test."""
    tau = LearnThenTest(ALPHA, DELTA).fit(scores_calib, wrong_calib).threshold_
    accepted = scores_test >= tau
    gold = np.where(wrong_test, "wrong", "right").astype(object)
    answer = np.full(len(gold), "right", dtype=object)

    def apgr(scores) -> float:
        curve = cascade_curve(scores, answer, gold, np.zeros(len(gold)), np.ones(len(gold)), gold)
        return summarize_curve(curve, "accuracy", 1.0).apgr

    return {
        "accuracy": float(np.mean(~wrong_test)),
        "auroc": auroc(scores_test, ~wrong_test),
        "savings": float(np.mean(accepted)),
        "risk": float(np.mean(accepted & wrong_test)),
        "apgr": apgr(scores_test),
        "oracle_apgr": apgr(oracle_scores(answer, gold, gold)),
    }


def run_cascadekit(
    name: str, overrides: list[str], out: Path, data: Path | None, read: bool = True
) -> dict:
    """`cascadekit run` into out/name (skipped when finished) and the run's figures."""
    run_dir = out / name
    result_file = run_dir / "bench.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    command = [sys.executable, "-m", "distill.cli", "run", str(CONFIG), f"run_dir={run_dir}"]
    command += overrides + ([f"data.path={data}"] if data else [])
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    run_s = time.perf_counter() - started
    if not read:
        return {}
    result = read_run(run_dir) | {"run_s": run_s}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def read_run(run_dir: Path) -> dict:
    from distill import runs
    from distill.deferral import task_scores
    from distill.pipeline import load_scores

    cascade = json.loads((run_dir / "cascade.json").read_text())["tasks"]["intent"]
    calib, test = (load_scores(run_dir, "intent", s) for s in ("calib", "test"))
    scores_calib = task_scores(run_dir, calib, cascade)
    scores_test = task_scores(run_dir, test, cascade)
    wrong_calib = calib["student_label"] != calib["teacher_label"]
    wrong_test = test["student_label"] != test["teacher_label"]
    keep = np.ones(len(scores_calib), dtype=bool)
    if cascade["score"] == "learned":
        keep = _threshold_rows(run_dir, calib)
    figures = measure(scores_calib[keep], wrong_calib[keep], scores_test, wrong_test)
    tau = cascade["threshold"]
    recorded = np.mean(scores_test >= (math.inf if tau is None else tau))
    if abs(recorded - figures["savings"]) > 1e-9:
        raise SystemExit(f"{run_dir}: the bench's threshold differs from the run's")
    metrics = json.loads((run_dir / "adapters/intent/training_metrics.json").read_text())
    speed = runs.read_manifest(run_dir, "score")["tasks"]["intent"]["speed"]
    return figures | {
        "score": cascade["score"],
        "train_s": metrics["duration_s"],
        "ms_per_input": speed["ms_per_input_batched"],
        "ms_alone": speed["ms_per_input_alone"],
        "parameters": speed["parameters"],
    }


def _threshold_rows(run_dir: Path, calib: dict) -> np.ndarray:
    """The calib rows the learned scorer did not fit (its threshold was chosen on them)."""
    import yaml

    from distill.deferral import fit_share

    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    fraction = resolved["cascade"]["learned_fit_fraction"]
    return ~fit_share(calib["id"], resolved["data"]["seed"], fraction)


def run_tiers(out: Path, data: Path | None) -> dict:
    """MiniLM -> mpnet -> teacher: the MiniLM run's copy calibrated with the defaults' mpnet
    run as a middle tier (Pareto testing, end-to-end guarantee; max-prob scores, as tiers
    need). Savings: the share of test requests no tier sends to the teacher."""
    run_dir = out / "tiers_minilm_mpnet"
    result_file = run_dir / "bench.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if not run_dir.exists():
        shutil.copytree(out / "minilm", run_dir, ignore=shutil.ignore_patterns("bench.json"))
    tier = f"[{{name: mpnet, run_dir: {out / 'defaults_s0'}, cost: {{usd_per_request: 4.0e-6}}}}]"
    overrides = [MINILM, "cascade.score=max_prob", f"cascade.tiers={tier}"]
    run_cascadekit(run_dir.name, overrides, out, data, read=False)
    summary = json.loads((run_dir / "report/summary.json").read_text())["tasks"]["intent"]
    tiers = summary["tiers"]
    minilm = json.loads((out / "minilm/bench.json").read_text())
    result = minilm | {
        "score": "max_prob (tiers)",
        "auroc": float("nan"),
        "apgr": float("nan"),
        "oracle_apgr": float("nan"),
        "savings": 1.0 - tiers["share_answered"]["teacher"],
        "risk": tiers["risk"],
        "share_answered": tiers["share_answered"],
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


# ── the plain cascade: what a careful user writes in transformers + PEFT ───────────────────
def plain_cascade(data: Path, seed: int) -> dict:
    """MiniLM + sequence-classification head + LoRA r=8 on query/value, 5 epochs at LR 2e-3,
    max-prob score, Learn-then-Test (the fixed recipe of the data's README)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.bases import resolve_model

    torch.manual_seed(seed)
    rows = rows_of(data)
    labels = sorted({row["intent"] for row in rows})
    index = {label: i for i, label in enumerate(labels)}
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "calib", "test")}
    base = resolve_model("embedded:all-minilm-l6-v2", log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                      target_modules=["query", "value"])  # fmt: skip
    model = get_peft_model(model, lora)
    texts = [r["text"] for r in split["train"]]
    targets = torch.tensor([index[r["intent"]] for r in split["train"]])
    encoded = tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    epochs, batch = 5, 32
    steps = epochs * math.ceil(len(texts) / batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    warmup = int(0.06 * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warmup), max(0.0, (steps - s) / (steps - warmup)))
    )
    started = time.perf_counter()
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=generator).tolist()
        windows = [sorted(order[i : i + 16 * batch], key=lambda j: len(encoded[j]))
                   for i in range(0, len(order), 16 * batch)]  # fmt: skip
        batches = [w[i : i + batch] for w in windows for i in range(0, len(w), batch)]
        for k in torch.randperm(len(batches), generator=generator).tolist():
            rows_ = batches[k]
            padded = tokenizer.pad({"input_ids": [encoded[j] for j in rows_]}, return_tensors="pt")
            with torch.autocast("cpu", torch.bfloat16):
                logits = model(**padded).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[rows_])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    train_s = time.perf_counter() - started
    model.eval()

    def probabilities(part: list[dict]) -> np.ndarray:
        out = np.zeros((len(part), len(labels)))
        order = sorted(range(len(part)), key=lambda i: len(part[i]["text"]))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            inputs = tokenizer([part[i]["text"] for i in idx], padding=True, truncation=True,
                               max_length=128, return_tensors="pt")  # fmt: skip
            with torch.inference_mode():  # fp32, as cascadekit scores (its calibrated precision)
                out[idx] = torch.softmax(model(**inputs).logits.float(), -1).numpy()
        return out

    started = time.perf_counter()
    calib, test = probabilities(split["calib"]), probabilities(split["test"])
    ms = 1000 * (time.perf_counter() - started) / (len(calib) + len(test))
    wrong = {
        name: probs.argmax(1) != np.array([index[r["intent"]] for r in split[name]])
        for name, probs in (("calib", calib), ("test", test))
    }
    figures = measure(calib.max(1), wrong["calib"], test.max(1), wrong["test"])
    return figures | {"score": "max_prob", "train_s": train_s, "ms_per_input": ms,
                      "run_s": train_s}  # fmt: skip


# ── the table ───────────────────────────────────────────────────────────────────────────
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_cascade")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", help="variants to run (default: all)")
    parser.add_argument("--data", type=Path, default=DATA, help="CLINC150-shaped JSONL")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or [*VARIANTS, "plain", "tiers", *FEW])
    results: dict[str, list[dict]] = {}
    data = args.data.resolve()
    custom = None if data == DATA.resolve() else data
    for seed in args.seeds:
        if "plain" in wanted:
            path = args.out / f"plain_s{seed}.json"
            results.setdefault("plain", []).append(_cached(path, plain_cascade, data, seed))
        if "defaults" in wanted:
            seeded = [] if seed == 0 else [f"student.training.seed={seed}"]
            results.setdefault("defaults", []).append(
                run_cascadekit(f"defaults_s{seed}", seeded, args.out, custom)
            )
    for name, (overrides, _) in VARIANTS.items():
        if name != "defaults" and name in wanted:
            if name in CALIBRATION_ONLY and not (args.out / name).exists():
                shutil.copytree(args.out / "defaults_s0", args.out / name,
                                ignore=shutil.ignore_patterns("bench.json"))  # fmt: skip
            results[name] = [run_cascadekit(name, overrides, args.out, custom)]
    if "tiers" in wanted and "minilm" in results and "defaults" in results:
        results["tiers"] = [run_tiers(args.out, custom)]
    few = few_label_data(args.out, data)
    if "few_plain" in wanted:
        results["few_plain"] = [_cached(args.out / "few_plain.json", plain_cascade, few, 0)]
    if "few_defaults" in wanted:
        results["few_defaults"] = [run_cascadekit("few_defaults", [], args.out, few)]
    print_table(results)


def _cached(path: Path, compute, *args) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = compute(*args)
    path.write_text(json.dumps(result, indent=2))
    return result


def print_table(results: dict[str, list[dict]]) -> None:
    described = {name: text for name, (_, text) in VARIANTS.items()}
    described |= {"plain": "plain cascade (README recipe)", "few_plain": "plain, 10 per intent",
                  "few_defaults": "defaults, 10 per intent",
                  "tiers": "tiers MiniLM -> mpnet -> teacher (max_prob)"}  # fmt: skip
    print(
        "\n| variant | runs | student acc | AUROC | savings at α | test risk | APGR (oracle) "
        "| oracle savings | train s | run s | ms/input |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        # the oracle defers exactly the student's errors, as many as α allows to stay
        runs = [r | {"oracle": min(1.0, r["accuracy"] + ALPHA)} for r in runs]

        def cell(key: str, fmt: str, runs=runs) -> str:
            values = np.array([r[key] for r in runs], dtype=float)
            text = format(values.mean(), fmt)
            return text if len(values) == 1 else f"{text} ± {format(values.std(ddof=1), fmt)}"

        print(f"| {name}: {described.get(name, '')} | {len(runs)} | {cell('accuracy', '.3f')} | "
              f"{cell('auroc', '.3f')} | {cell('savings', '.3f')} | {cell('risk', '.3f')} | "
              f"{cell('apgr', '.3f')} ({cell('oracle_apgr', '.3f')}) | {cell('oracle', '.3f')} | "
              f"{cell('train_s', '.0f')} | "
              f"{cell('run_s', '.0f')} | {cell('ms_per_input', '.2f')} |")  # fmt: skip
    if "defaults" in results and "plain" in results:
        ours = np.mean([r["savings"] for r in results["defaults"]])
        plain = np.mean([r["savings"] for r in results["plain"]])
        print(f"ratio: {ours / plain:.2f} (savings of the defaults over the plain cascade at "
              f"alpha {ALPHA})")  # fmt: skip


if __name__ == "__main__":
    main()
