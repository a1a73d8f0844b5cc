"""The pipeline's side of deferral scores, teacher token counts and tiers: the arrays that
`eval/` needs, built from a run's score tables (the maths lives in `eval/`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from distill import runs
from distill.config import RunConfig, TaskConfig
from distill.errors import UserError


# ── the learned deferral score ──────────────────────────────────────────────────────────
def learned_features(
    table: dict[str, np.ndarray], kind: str, vocab: set[str], catch_all: bool = False
):
    """(n, d) features of each row and their names (see `eval.learned.deferral_features`),
    the out-of-vocabulary rate measured against the train split's words."""
    from eval.learned import deferral_features, oov_rate

    rates = oov_rate([str(t) for t in table["text"]], vocab)
    return deferral_features(table, kind, rates, catch_all)


def has_catch_all(task: Any) -> bool:
    """Whether a task (its config, or cascade.json's `task` entry) names a catch-all label."""
    value = task.get("catch_all") if isinstance(task, dict) else getattr(task, "catch_all", None)
    return bool(value)


def fit_share(ids, seed: int, fraction: float) -> np.ndarray:
    """(n,) True for the calib rows that fit the learned scorer: a stable hash of the row id,
    so the same row falls on the same side in every run."""

    def unit(row_id) -> float:
        h = hashlib.sha256(f"learned-scorer:{seed}:{row_id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    return np.array([unit(row_id) < fraction for row_id in ids], dtype=bool)


def fit_learned(
    config: RunConfig, task: TaskConfig, calib: dict, train_texts: list[str], folder: Path
) -> dict[str, Any]:
    """Fit the scorer on its share of calib; check it against the task's raw default score on
    the other share (held out from the fit). Writes the train vocabulary to
    `folder/vocab_TASK.txt`; returns cascade.json's `learned` entry with the fit mask and
    the scorer's scores of every calib row (`fit_mask`, `calib_scores`: not for the JSON)."""
    from distill.config import scores_for
    from eval.learned import LearnedDeferral, auroc, vocabulary

    vocab = vocabulary(train_texts)
    vocab_file = folder / f"vocab_{task.name}.txt"
    vocab_file.write_text("\n".join(sorted(vocab)) + "\n", encoding="utf-8")
    features, names = learned_features(calib, task.kind, vocab, has_catch_all(task))
    agree = calib["student_label"] == calib["teacher_label"]
    fit = fit_share(calib["id"], config.data.seed, config.cascade.learned_fit_fraction)
    if fit.sum() < 10 or (~fit).sum() < 10 or len(set(agree[fit].tolist())) < 2:
        return {"model": None, "fit_mask": fit, "calib_scores": None, "check": None,
                "reason": "too few calib rows (or no disagreement) to fit the scorer"}  # fmt: skip
    model = LearnedDeferral(None, names).fit(features[fit], agree[fit].astype(bool))
    raw_name = scores_for(task.kind)[0]
    held = ~fit
    learned_auroc = auroc(model.predict(features[held]), agree[held].astype(bool))
    raw_auroc = auroc(calib[f"score_{raw_name}"][held].astype(float), agree[held].astype(bool))
    return {
        "model": model.to_dict(),
        "fit_fraction": config.cascade.learned_fit_fraction,  # which calib rows fitted it
        "fit_seed": config.data.seed,
        "vocab_file": f"{runs.stage_dir(Path(), 'calibrate').name}/{vocab_file.name}",
        "vocab_digest": runs.file_sha256(vocab_file),
        "fit_mask": fit,
        "calib_scores": model.predict(features),
        "check": {
            "raw_score": raw_name,
            "n_fit": int(fit.sum()),
            "n_held_out": int(held.sum()),
            "auroc_learned": learned_auroc,
            "auroc_raw": raw_auroc,
            "beats_raw": bool(learned_auroc > raw_auroc),
        },
    }


def read_vocab(run_dir: Path, learned: dict) -> set[str]:
    path = run_dir / learned["vocab_file"]
    if runs.file_sha256(path) != learned["vocab_digest"]:
        raise UserError(f"{path} does not match the digest in cascade.json; re-run calibrate")
    return set(path.read_text(encoding="utf-8").split("\n")) - {""}


def learned_scores(run_dir: Path, table: dict, entry: dict) -> np.ndarray:
    """The learned scorer of cascade.json's `entry` on the rows of `table`."""
    from eval.learned import LearnedDeferral

    learned = entry["learned"]
    features, names = learned_features(
        table, entry["kind"], read_vocab(run_dir, learned), has_catch_all(entry["task"])
    )
    model = LearnedDeferral.from_dict(learned["model"])
    if model.feature_names is not None and list(model.feature_names) != names:
        raise UserError(
            f"task {entry['task']['name']!r}: its learned scorer was fitted on other features "
            f"({model.feature_names}); re-run calibrate"
        )
    return model.predict(features)


def task_scores(run_dir: Path, table: dict, entry: dict, score: str | None = None) -> np.ndarray:
    """A split's scores under cascade.json's `entry` (its own score unless `score` says)."""
    score = score or entry["score"]
    if score == "learned":
        if not (entry.get("learned") or {}).get("model"):
            raise UserError(f"task {entry['task']['name']!r}: no learned scorer was fitted")
        return learned_scores(run_dir, table, entry)
    if score != "temperature_max_prob":
        return table[f"score_{score}"].astype(float)
    from eval.calibration import apply_temperature

    probs = np.array([list(p) for p in table["student_probs"]], dtype=float)
    return apply_temperature(probs, entry.get("temperature") or 1.0).max(axis=1)


# ── teacher token counts ────────────────────────────────────────────────────────────────
def count_teacher_tokens(
    config: RunConfig, task: TaskConfig, rows: dict[str, list], student_tokenizer
) -> tuple[list[int], list[int], str]:
    """Per row, the teacher's input and output tokens: what it reported, else counted with
    `cost.teacher_tokenizer` (or, failing that, the student's tokenizer, as an estimate) on
    the prompt the teacher would see and the answer it gave."""
    reported_in = [int(v or 0) for v in rows["input_tokens"]]
    reported_out = [int(v or 0) for v in rows["output_tokens"]]
    if any(reported_in):
        return reported_in, reported_out, "reported by the teacher"
    from transformers import AutoTokenizer

    from distill.prompts import classification_prompt, generation_prompt_text
    from training.bases import resolve_model

    if config.cost.teacher_tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model(config.cost.teacher_tokenizer, log=lambda _: None),
            trust_remote_code=getattr(config.teacher, "trust_remote_code", False),
        )
        source = f"counted with {config.cost.teacher_tokenizer}"
    else:
        tokenizer = student_tokenizer
        source = "estimated with the student's tokenizer (set cost.teacher_tokenizer)"
    if task.kind == "classification":
        chat = bool(getattr(tokenizer, "chat_template", None))
        prompts = [classification_prompt(task, chat, tokenizer).render(t) for t in rows["text"]]
    else:
        prompts = [generation_prompt_text(task, t, tokenizer) for t in rows["text"]]
    answers = ["" if a is None else str(a) for a in rows["teacher_label"]]
    n_in = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    n_out = [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    return n_in, n_out, source


def teacher_cost_usd(config: RunConfig, table: dict) -> np.ndarray:
    from eval.cost import TierPrice, request_cost_usd

    return request_cost_usd(
        TierPrice(**config.cost.teacher.model_dump()),
        table["teacher_input_tokens"].astype(float),
        table["teacher_output_tokens"].astype(float),
    )


def student_cost_usd(price, table: dict) -> np.ndarray:
    from eval.cost import TierPrice, request_cost_usd

    return request_cost_usd(
        TierPrice(**price.model_dump()),
        table["student_input_tokens"].astype(float),
        table["student_output_tokens"].astype(float),
    )


# ── tiers ───────────────────────────────────────────────────────────────────────────────
def tier_tables(config: RunConfig, task: TaskConfig, split_name: str, table: dict) -> list[dict]:
    """Each tier's score rows for `task`, aligned with `table`'s rows (same ids, same teacher
    answers); a clear error when a tier's run does not cover the same data."""
    from distill.pipeline import load_scores

    aligned = []
    for tier in config.cascade.tiers:
        where = f"cascade.tiers[{tier.name}] ({tier.run_dir})"
        if runs.read_manifest(tier.run_dir, "score") is None:
            raise UserError(f"{where}: no finished score stage; run that tier's config first")
        try:
            other = load_scores(tier.run_dir, task.name, split_name)
        except FileNotFoundError as exc:
            raise UserError(f"{where}: has no task {task.name!r}") from exc
        position = {row_id: i for i, row_id in enumerate(other["id"].tolist())}
        missing = [row_id for row_id in table["id"].tolist() if row_id not in position]
        if missing:
            raise UserError(
                f"{where}: its {split_name} split lacks {len(missing)} of this run's rows "
                f"(e.g. id {missing[0]!r}); tiers must label the same data with the same "
                "split and seed"
            )
        index = np.array([position[row_id] for row_id in table["id"].tolist()], dtype=int)
        other = {column: values[index] for column, values in other.items()}
        if not np.array_equal(other["teacher_label"], table["teacher_label"]):
            raise UserError(f"{where}: its teacher answers differ from this run's teacher's")
        aligned.append(other)
    return aligned


def tier_arrays(config: RunConfig, task: TaskConfig, table: dict, tiers: list[dict], entry_scores):
    """Per-tier scores, disagreement and cost (this run's student first) and the teacher's
    cost, for eval.tiers. `entry_scores(table)` gives a tier table's scores."""
    scores = [entry_scores(table)] + [entry_scores(t) for t in tiers]
    disagree = [(t["student_label"] != t["teacher_label"]).astype(bool) for t in [table, *tiers]]
    costs = [student_cost_usd(config.cost.student, table)] + [
        student_cost_usd(tier.cost, t) for tier, t in zip(config.cascade.tiers, tiers, strict=True)
    ]
    return scores, disagree, costs, teacher_cost_usd(config, table)
