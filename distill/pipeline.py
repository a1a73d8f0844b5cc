"""The stages of a run, each one function you can read top to bottom.

    label → split → train → score → calibrate → evaluate

Every stage reads its inputs' manifests, computes its key (settings + input manifest digests),
skips itself when a finished manifest has that key, and otherwise writes its outputs into a
temporary folder that is swapped into place with the manifest last (see `distill.runs`).
`run_stage(config, "train")` refuses to run when an upstream stage is missing or out of date.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill import runs
from distill.config import RunConfig, TaskConfig, digest, dump_config
from distill.data import Record, iter_records
from distill.deferral import (
    count_teacher_tokens,
    fit_learned,
    student_cost_usd,
    task_scores,
    teacher_cost_usd,
    tier_arrays,
    tier_tables,
)
from distill.errors import DataError, UserError
from distill.errors import short as _short
from distill.outputs import canonical_output
from distill.teachers import make_teacher

Log = Callable[[str], None]

# cascade.score auto: the learned score for classification tasks with at least this many calib
# rows (its fit share then holds enough disagreements to learn from), else max_prob
AUTO_LEARNED_MIN_CALIB = 1000
CASCADE_FORMAT = "cascadekit.cascade/1"
# Bump a stage's version when its code changes what it writes: finished stages then re-run.
STAGE_VERSIONS = {
    "label": 3, "split": 2, "train": 3, "score": 4, "calibrate": 6, "evaluate": 11,
}  # fmt: skip


@dataclass
class Context:
    config: RunConfig
    log: Log
    progress: bool = True
    force: bool = False
    resume: bool = False  # train: continue from the last checkpoint of an interrupted run

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def config_digest(self) -> str:
        return digest(self.config)


def _default_cache_path() -> Path:
    from training.bases import cache_dir

    return cache_dir() / "teacher-answers.sqlite"


def teacher_cache_path(config: RunConfig) -> Path:
    return config.teacher_cache or _default_cache_path()


# ── keys ────────────────────────────────────────────────────────────────────────────────
def _data_digest(config: RunConfig) -> str:
    return runs.tree_sha256(config.data.path) if config.data.path.exists() else "missing"


def _upstream(run_dir: Path, *stages: str) -> dict[str, str | None]:
    return {stage: runs.manifest_digest(run_dir, stage) for stage in stages}


def stage_key(
    config: RunConfig, stage: str, teacher_identity: str | None = None
) -> tuple[str, dict]:
    """The digest a stage's manifest must carry to be current, and the inputs it depends on."""
    run_dir = config.run_dir
    tasks = [task.model_dump(mode="json") for task in config.tasks]
    if stage == "label":
        data = config.data.model_dump(mode="json", exclude={"split", "seed", "path"})
        settings = {
            "data": data,
            "data_digest": _data_digest(config),
            "tasks": tasks,
            "teacher": config.teacher.model_dump(mode="json"),
            "teacher_identity": teacher_identity,
        }
        inputs: dict[str, str | None] = {}
    elif stage == "split":
        settings = {
            "split": config.data.split.model_dump(),
            "seed": config.data.seed,
            "split_field": config.data.split_field,
        }
        inputs = _upstream(run_dir, "label")
    elif stage == "train":
        from training.bases import model_identity

        student = config.student.model_dump(mode="json", exclude={"inference_batch_size"})
        settings = {
            "student": student,
            "base_identity": model_identity(config.student.base_model),
            "labels": [t.label_names for t in config.tasks],
            "catch_all": [getattr(t, "catch_all", None) for t in config.tasks],
        }
        inputs = _upstream(run_dir, "split")
    elif stage == "score":
        settings = {
            "max_length": config.student.training.max_length,
            "kinds": [task.kind for task in config.tasks],
            "teacher_tokenizer": config.cost.teacher_tokenizer,
        }
        inputs = _upstream(run_dir, "split", "train")
    elif stage == "calibrate":
        # cascade.json also carries the adapter and the teacher: depend on them too
        settings = {
            "cascade": config.cascade.model_dump(mode="json"),
            "tasks": [task.model_dump(mode="json") for task in config.tasks],
            "scores": [config.score_for(task) for task in config.tasks],
        }
        inputs = _upstream(run_dir, "score", "train", "label")
        for tier in config.cascade.tiers:  # a re-scored tier re-runs calibrate
            inputs[f"tier:{tier.name}"] = runs.manifest_digest(tier.run_dir, "score")
    elif stage == "evaluate":
        settings = {
            "cost": config.cost.model_dump(mode="json"),
            "evaluate": config.evaluate.model_dump(mode="json"),
        }
        inputs = _upstream(run_dir, "calibrate", "score", "train")
    else:
        raise ValueError(f"unknown stage {stage!r}")
    version = STAGE_VERSIONS[stage]
    return digest({"stage": stage, "v": version, "settings": settings, "inputs": inputs}), inputs


def _write_resolved_config(ctx: Context) -> None:
    if not _is_main_process():
        return
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(ctx.run_dir / "config.resolved.yaml", dump_config(ctx.config))


def _require_upstream(ctx: Context, stage: str, teacher_identity: str | None) -> None:
    for upstream in runs.STAGES[: runs.STAGES.index(stage)]:
        key, _ = stage_key(ctx.config, upstream, teacher_identity)
        if not runs.is_current(ctx.run_dir, upstream, key):
            state = (
                "missing" if runs.read_manifest(ctx.run_dir, upstream) is None else "out of date"
            )
            raise UserError(
                f"stage {upstream!r} is {state} in {ctx.run_dir} for this config: run "
                f"`cascadekit {upstream} CONFIG` first, or `cascadekit run CONFIG` for all stages"
            )


# ── inputs ──────────────────────────────────────────────────────────────────────────────
def teacher_fields(config: RunConfig) -> tuple[str, ...]:
    """Columns the teacher reads besides the text (recorded labels for `kind: dataset`)."""
    columns: list[str] = []
    for name in ("label_field", "rationale_field"):
        fields = getattr(config.teacher, name, None)
        if fields is not None:
            columns += list(fields.values()) if isinstance(fields, dict) else [fields]
    return tuple(dict.fromkeys(columns))


def iter_inputs(config: RunConfig) -> Iterator[Record]:
    """The input rows one at a time (checked as they are read; see `check_inputs`)."""
    gold_columns = tuple(dict.fromkeys(c for c in map(config.gold_column, config.tasks) if c))
    required = teacher_fields(config)
    if config.data.split_field:
        required = tuple(dict.fromkeys((*required, config.data.split_field)))
    return iter_records(config.data, required, gold_columns)


SPLIT_NAMES = ("train", "val", "calib", "test")


def split_name(config: RunConfig, record: Record) -> str:
    """The split a row belongs to: its `data.split_field` value, checked, or the hash split
    (which never gives val: that is a slice of train chosen when training)."""
    column = config.data.split_field
    if column is None:
        fractions = config.data.split
        return split_of(record.id, config.data.seed, fractions.train, fractions.calib)
    value = record.fields.get(column)
    if value not in SPLIT_NAMES:
        raise DataError(
            f"{config.data.path}: row id {_short(record.id)}: split {_short(value)} in column "
            f"{column!r} (data.split_field) is not one of {', '.join(SPLIT_NAMES)}"
        )
    return value


def check_inputs(config: RunConfig) -> int:
    """Read every row and check what the stages will need, before anything is written; keep
    no row in memory. Gold labels must be in their task's label set, and no split may come
    out empty. With a dataset teacher, most recorded labels that are present must be in the
    label set, and at least one row must have one (rows without one become error rows, as
    the label stage does; better to refuse before it begins). Returns the number of rows."""
    fractions = config.data.split
    counts: Counter[str] = Counter()
    recorded = _recorded_columns(config)
    invalid: Counter[str] = Counter()
    present: Counter[str] = Counter()
    first_invalid: dict[str, str] = {}
    for record in iter_inputs(config):
        for task in config.tasks:
            if task.name in recorded:
                value = record.fields.get(recorded[task.name])
                if value is not None and value == value:  # not missing, not NaN
                    present[task.name] += 1
                    _, problem = canonical_output(task, value)
                    if problem is not None:
                        invalid[task.name] += 1
                        first_invalid.setdefault(
                            task.name, f"row id {_short(record.id)}: {problem}"
                        )
            column = config.gold_column(task)
            gold = record.fields.get(column) if column else None
            if gold is None:
                continue
            _, problem = canonical_output(task, gold)
            if problem is not None:
                what = "gold label" if task.kind == "classification" else "gold answer"
                raise DataError(
                    f"{config.data.path}: row id {_short(record.id)}: {what} {_short(gold)} "
                    f"(column {column!r}) is not valid for task {task.name!r}: {problem[:200]}"
                )
        counts[split_name(config, record)] += 1
    n_rows = sum(counts.values())
    for name, column in recorded.items():
        where = (
            f"{config.data.path}: task {name!r}: recorded labels "
            f"(column {column!r}, teacher.label_field)"
        )
        if n_rows and present[name] == 0:
            raise DataError(f"{where}: no row has one")
        if invalid[name] > present[name] / 2:
            raise DataError(
                f"{where}: {invalid[name]} of the {present[name]} present are not in its "
                f"label set; first: {first_invalid[name][:200]}. Fix tasks[].labels or the column"
            )
    for name in ("train", "calib", "test"):
        if counts[name] == 0:
            how = (
                f"no row has {name!r} in column {config.data.split_field!r} (data.split_field)"
                if config.data.split_field
                else f"data.split {fractions.model_dump()}; add rows or change the fractions"
            )
            raise DataError(
                f"{config.data.path}: {n_rows} rows leave the {name} split empty ({how})"
            )
    return n_rows


def _recorded_columns(config: RunConfig) -> dict[str, str]:
    """{classification task: column of its recorded labels} for a dataset teacher."""
    if config.teacher.kind != "dataset":
        return {}
    from distill.teachers.dataset import DatasetTeacher

    teacher = DatasetTeacher(config.teacher)
    return {
        task.name: teacher.column(task) for task in config.tasks if task.kind == "classification"
    }


def read_inputs(config: RunConfig) -> list[Record]:
    """Every input row, checked (`check_inputs`)."""
    check_inputs(config)
    return list(iter_inputs(config))


# ── 1 label ─────────────────────────────────────────────────────────────────────────────
LABEL_CHUNK = 4096  # rows read, looked up and written at a time: memory stays flat


def label(ctx: Context) -> dict[str, Any]:
    """Ask the teacher about every input of every task, streaming: rows are read, looked up
    in the cache, asked and written a chunk at a time, and each answer is stored the moment
    it arrives (the cache is the source of truth: a killed run repeats no answered call).
    An answer that failed is kept as an error row and asked again on the next run."""
    from distill.teachers.openai import Budget, TeacherStopped

    config = ctx.config
    check_inputs(config)
    teacher = make_teacher(config.teacher, log=ctx.log)
    key, inputs = stage_key(config, "label", teacher.identity)
    _write_resolved_config(ctx)  # the config and its data are valid: the run may begin
    if not ctx.force and runs.is_current(ctx.run_dir, "label", key):
        ctx.log("label: up to date, skipped")
        return {"skipped": True}
    cache = None
    if teacher.cacheable:
        from distill.cache import AnswerCache

        cache = AnswerCache(teacher_cache_path(config))
    budget = Budget(getattr(config.teacher, "max_cost_usd", None), config.cost.teacher)
    if hasattr(teacher, "budget"):
        teacher.budget = budget
    extra: dict[str, Any] = {"teacher": teacher.identity, "tasks": {}}
    try:
        with runs.write_stage(ctx.run_dir, "label", key, inputs, ctx.config_digest) as out:
            for task in config.tasks:
                extra["tasks"][task.name] = _label_task(
                    ctx, task, teacher, cache, out.folder / f"{task.name}.parquet"
                )
            out.extra.update(extra)
    except TeacherStopped as exc:
        raise UserError(
            f"labelling stopped: {exc}. Every answer received is cached; nothing was written "
            "to the run. Fix the cause (or raise the limit) and run the same command again: "
            "it asks only what is still unanswered"
        ) from exc
    finally:
        if cache is not None:
            cache.close()
    return extra


def _label_task(ctx: Context, task: TaskConfig, teacher, cache, path: Path) -> dict[str, Any]:
    """One task's rows: label what the cache lacks, write the table chunk by chunk."""
    from tqdm.auto import tqdm

    config = ctx.config
    price = config.cost.teacher
    stats: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    cost_total = cost_this_run = 0.0
    writer = None
    bar = None  # shown once there is something to ask
    streaming = "on_answer" in inspect.signature(teacher.label_batch).parameters
    try:
        for chunk in _batched(iter_inputs(config), LABEL_CHUNK):
            keys = [teacher.cache_key(task, record) for record in chunk]
            answers = cache.get_many(set(keys)) if cache is not None else {}
            answers = {k: a for k, a in answers.items() if a.error is None}  # retry errors
            stats["from_cache"] += sum(1 for k in keys if k in answers)
            first: dict[str, Record] = {}
            for k, record in zip(keys, chunk, strict=True):
                first.setdefault(k, record)
            todo = sorted((k for k in first if k not in answers),
                          key=lambda k: (len(first[k].text), k))  # fmt: skip
            if todo and bar is None:
                bar = tqdm(desc=f"label {task.name}", unit="row", disable=not ctx.progress)
            for start in range(0, len(todo), teacher.batch_size):
                batch = todo[start : start + teacher.batch_size]

                def store(i: int, answer, batch=batch) -> None:
                    if cache is not None:
                        cache.put_many(teacher.identity, [(batch[i], answer)])

                if streaming:
                    got = teacher.label_batch(task, [first[k] for k in batch], on_answer=store)
                else:
                    got = teacher.label_batch(task, [first[k] for k in batch])
                    if cache is not None:
                        cache.put_many(teacher.identity, zip(batch, got, strict=True))
                answers.update((k, a) for k, a in zip(batch, got, strict=True) if a is not None)
                stats["computed"] += len(batch)
                bar.update(len(batch))
            table = _label_rows(task, config.gold_column(task), chunk, keys, answers, price)
            table["data_split"] = [
                record.fields.get(config.data.split_field) if config.data.split_field else None
                for record in chunk
            ]
            asked = set(todo)
            cost_this_run += sum({k: c for k, c in zip(keys, table["cost_usd"], strict=True)
                                  if k in asked}.values())  # fmt: skip
            cost_total += sum(table["cost_usd"])
            for error in table["error"]:
                if error is None:
                    continue
                if error.endswith(" is not in the label set"):
                    outside[
                        error.removesuffix(" is not in the label set").removeprefix("label ")
                    ] += 1
                errors[error.split(":", 1)[0] if ":" in error else error.split(" ", 1)[0]] += 1
            stats["rows"] += len(chunk)
            writer = _append_parquet(writer, table, path)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    _check_label_set(task, outside, stats["rows"])
    n_errors = sum(errors.values())
    ctx.log(
        f"label {task.name}: {stats['rows']} rows, {stats['computed']} asked, "
        f"{stats['from_cache']} from cache, {n_errors} error rows"
        + (f" ({', '.join(f'{k} {v}' for k, v in errors.most_common())})" if errors else "")
    )
    return {
        "n_rows": stats["rows"],
        "n_errors": n_errors,
        "errors_by_kind": dict(errors.most_common()),
        "n_from_cache": stats["from_cache"],
        "n_computed": stats["computed"],
        "teacher_cost_usd": cost_total,
        "teacher_cost_usd_this_run": cost_this_run,
    }


def _batched(items, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _label_schema():
    import pyarrow as pa

    text = pa.string()
    return pa.schema([
        ("id", text), ("text", text), ("gold", text), ("teacher_label", text),
        ("teacher_probs", pa.list_(pa.float64())), ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()), ("cost_usd", pa.float64()), ("latency_s", pa.float64()),
        ("error", text), ("teacher_rationale", text), ("teacher_agreement", pa.float64()),
        ("data_split", text),
    ])  # fmt: skip


def _append_parquet(writer, table: dict[str, list], path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _label_schema()
    arrow = pa.table(table, schema=schema)
    if writer is None:
        writer = pq.ParquetWriter(path, schema)
    writer.write_table(arrow)
    return writer


def _check_label_set(task: TaskConfig, outside: Counter[str], n_rows: int) -> None:
    """Refuse answers that mostly fall outside the label set: the config's labels and the
    teacher's (or the recorded data's) do not describe the same task."""
    if task.kind == "classification" and sum(outside.values()) > n_rows / 2:
        common = ", ".join(f"{label} ({n})" for label, n in outside.most_common(5))
        raise DataError(
            f"task {task.name!r}: {sum(outside.values())} of {n_rows} answers are not in "
            f"its label set {task.label_names}; most common: {common}. The config's labels "
            "and the teacher's (or the data's) differ: fix tasks[].labels or the label column"
        )


def _label_rows(
    task: TaskConfig,
    gold_column: str | None,
    records: list[Record],
    keys: list[str],
    answers: dict,
    price,
) -> dict[str, list]:
    from eval.cost import TierPrice, request_cost_usd

    table: dict[str, list] = {
        "id": [], "text": [], "gold": [], "teacher_label": [], "teacher_probs": [],
        "input_tokens": [], "output_tokens": [], "latency_s": [], "error": [],
        "teacher_rationale": [], "teacher_agreement": [],
    }  # fmt: skip
    names = task.label_names
    for record, k in zip(records, keys, strict=True):
        answer = answers[k]
        label, error = answer.label, answer.error
        if error is None:  # never coerce: an answer outside the label set / schema is an error
            label, error = canonical_output(task, label)
        gold = record.fields.get(gold_column) if gold_column else None
        table["id"].append(record.id)
        table["text"].append(record.text)
        table["gold"].append(canonical_output(task, gold)[0] if gold is not None else None)
        table["teacher_label"].append(label)
        table["teacher_probs"].append(
            [answer.probs.get(n, 0.0) for n in names] if answer.probs else None
        )
        table["input_tokens"].append(answer.input_tokens)
        table["output_tokens"].append(answer.output_tokens)
        table["latency_s"].append(answer.latency_s)
        table["error"].append(error)
        table["teacher_rationale"].append(answer.rationale)
        table["teacher_agreement"].append(answer.agreement)
    # an answer is paid for even when it is unusable
    tier = TierPrice(**price.model_dump())
    costs = request_cost_usd(tier, table["input_tokens"], table["output_tokens"]).tolist()
    columns = list(table)
    at = columns.index("output_tokens") + 1  # keep the column layout: cost after the tokens
    return (
        {c: table[c] for c in columns[:at]}
        | {"cost_usd": costs}
        | {c: table[c] for c in columns[at:]}
    )


def _write_parquet(table: dict[str, list], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(table), path)


def _read_parquet(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


# ── 2 split ─────────────────────────────────────────────────────────────────────────────
def split_of(row_id: str, seed: int, train: float, calib: float) -> str:
    """Stable split: a hash of (seed, id) mapped to [0, 1), cut at the fractions."""
    h = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < train:
        return "train"
    if u < train + calib:
        return "calib"
    return "test"


def split(ctx: Context) -> dict[str, Any]:
    """Assign every labelled row to train, calib or test by a stable hash of its id."""
    import datasets

    config = ctx.config
    key, inputs = stage_key(config, "split")
    if not ctx.force and runs.is_current(ctx.run_dir, "split", key):
        ctx.log("split: up to date, skipped")
        return {"skipped": True}
    fractions = config.data.split
    extra: dict[str, Any] = {"tasks": {}}
    with runs.write_stage(ctx.run_dir, "split", key, inputs, ctx.config_digest) as out:
        for task in config.tasks:
            table = _read_parquet(runs.stage_dir(ctx.run_dir, "label") / f"{task.name}.parquet")
            parts: dict[str, dict[str, list]] = {
                s: {c: [] for c in table} | {"split": []} for s in SPLIT_NAMES
            }
            n_dropped = 0
            for i, row_id in enumerate(table["id"]):
                if table["error"][i] is not None:
                    n_dropped += 1  # no teacher answer: nothing to learn or compare with
                    continue
                name = table["data_split"][i] if config.data.split_field else (
                    split_of(row_id, config.data.seed, fractions.train, fractions.calib)
                )  # fmt: skip
                for column, values in table.items():
                    parts[name][column].append(values[i])
                parts[name]["split"].append(name)
            if not parts["val"]["id"]:
                del parts["val"]  # none given: training holds out a slice of train
            for name, part in parts.items():
                if not part["id"]:
                    raise UserError(
                        f"task {task.name}: the {name} split is empty ({len(table['id'])} rows, "
                        f"{n_dropped} without a teacher label); add data or change data.split"
                    )
            dataset = datasets.DatasetDict(
                {name: datasets.Dataset.from_dict(part) for name, part in parts.items()}
            )
            dataset.save_to_disk(str(out.folder / task.name))
            counts = {name: len(part["id"]) for name, part in parts.items()}
            extra["tasks"][task.name] = {**counts, "dropped_teacher_errors": n_dropped}
            ctx.log(f"split {task.name}: {counts} ({n_dropped} error rows left out)")
        out.extra.update(extra)
    return extra


def load_splits(run_dir: Path, task: str):
    """The task's DatasetDict: train, calib, test, and val when the data gave one."""
    import datasets

    return datasets.load_from_disk(str(runs.stage_dir(run_dir, "split") / task))


def load_split(run_dir: Path, task: str, name: str):
    return load_splits(run_dir, task)[name]


# ── 3 train ─────────────────────────────────────────────────────────────────────────────
def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_students(ctx: Context) -> dict[str, str]:
    """Resolve the student bases and check the LoRA targets exist in them, before any
    teacher call or training step; returns {"classification"|"generative": base path}."""
    from training.bases import resolve_model
    from training.classifier import LoraTargetError, check_lora_targets

    config = ctx.config
    kinds = {task.kind for task in config.tasks}
    wanted = []
    if "classification" in kinds:
        wanted.append(("classification", "student", config.student))
    if kinds - {"classification"}:
        wanted.append(("generative", "student.generative", config.student.generative))
    bases = {}
    for key, field, section in wanted:
        path = resolve_model(section.base_model, log=ctx.log)
        try:
            check_lora_targets(
                path, key == "generative", section.lora.target_modules,
                config.student.trust_remote_code,
            )  # fmt: skip
        except LoraTargetError as exc:
            raise UserError(f"{field}.lora.target_modules: {exc}") from None
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{field}.base_model: {section.base_model} does not load: {exc}"
            ) from None
        bases[key] = path
    return bases


DEFAULT_LEARNING_RATE = {"lora": 1e-3, "full": 5e-5}  # learning_rate null, by finetune


def train_spec(settings, finetune: str = "lora") -> Any:
    from training.loop import TrainSpec

    values = settings.model_dump()
    if values["learning_rate"] is None:
        values["learning_rate"] = DEFAULT_LEARNING_RATE[finetune]
    return TrainSpec(**values)


def train(ctx: Context) -> dict[str, Any]:
    """One LoRA student per task on the teacher's answers of the train split: a classifier on
    the shared encoder base, or a generator on the shared causal-LM base."""
    import shutil

    from training.loop import ResumeMismatch

    config = ctx.config
    key, inputs = stage_key(config, "train")
    if not ctx.force and runs.is_current(ctx.run_dir, "train", key):
        ctx.log("train: up to date, skipped")
        if _is_main_process():  # a run killed after its adapters were in place left these
            shutil.rmtree(ctx.run_dir / "checkpoints", ignore_errors=True)
        return {"skipped": True}
    student, generative = config.student, config.student.generative
    bases = check_students(ctx)
    checkpoints = ctx.run_dir / "checkpoints"
    extra: dict[str, Any] = {
        "base_model": student.base_model,
        "generative_base_model": generative.base_model,
        "tasks": {},
    }
    with runs.write_stage(ctx.run_dir, "train", key, inputs, ctx.config_digest) as out:
        for task in config.tasks:
            try:
                result = _train_task(ctx, task, bases, out.folder, checkpoints)
            except ResumeMismatch as exc:
                raise UserError(
                    f"train {task.name}: {exc} (folder {checkpoints / task.name})"
                ) from None
            except BaseException:  # e.g. a full disk: drop a checkpoint cut short, keep the rest
                if _is_main_process():  # only rank 0 writes checkpoints
                    runs.drop_partial_checkpoints(ctx.run_dir)
                raise
            extra["tasks"][task.name] = {
                "kind": task.kind,
                "n_train": result.n_train,
                "n_val": result.n_val,
                "steps": result.steps,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "best_step": result.best_step,
                "best_val": result.best_val,
                "duration_s": round(result.duration_s, 2),
                "examples_per_s": round(result.examples_per_s, 2),
                "first_loss": result.first_loss,
                "final_loss": result.final_loss,
                "trainable_params": result.trainable_params,
                "resumed_from_step": result.resumed_from_step,
            }
            stop = "stopped early, " if result.stopped_early else ""
            (ctx.log if _is_main_process() else _silent)(
                f"train {task.name}: {result.n_train} rows (+{result.n_val} validation), "
                f"{result.steps} steps in {result.duration_s:.0f}s ({stop}best step "
                f"{result.best_step}), loss {result.first_loss:.3f} → {result.final_loss:.3f}"
            )
        out.extra.update(extra)
        if not _is_main_process():  # under accelerate launch, only rank 0 keeps the stage
            raise _NotMainProcess
    shutil.rmtree(checkpoints, ignore_errors=True)  # the adapters are in place: not needed
    return extra


def _train_task(ctx: Context, task: TaskConfig, bases: dict[str, str], folder: Path,
                checkpoints: Path):  # fmt: skip
    """Train one task's student into folder/TASK; returns its FitResult."""
    from training.classifier import LoraSpec, train_classifier
    from training.generator import PromptSpec, train_generator

    config = ctx.config
    student, generative = config.student, config.student.generative
    splits = load_splits(ctx.run_dir, task.name)
    rows = splits["train"]
    val = splits.get("val")  # none: training holds out a slice of train
    common = {
        "trust_remote_code": student.trust_remote_code,
        "allow_pickle": student.allow_pickle,
        "progress": ctx.progress,
        "checkpoint_dir": checkpoints / task.name,
        "resume": ctx.resume,
        "log_dir": ctx.run_dir / "logs",
        "run_name": task.name,
        "log": ctx.log,
    }
    if task.kind == "classification":
        spec = train_spec(student.training, student.finetune)
        index = {name: i for i, name in enumerate(task.label_names)}
        return train_classifier(
            bases["classification"],
            rows["text"],
            [index[label] for label in rows["teacher_label"]],
            task.label_names,
            folder / task.name,
            spec=spec,
            lora=LoraSpec(**student.lora.model_dump()) if student.finetune == "lora" else None,
            catch_all=task.catch_all,
            extra_meta={"task": task.name, "base_model": student.base_model},
            teacher_probs=rows["teacher_probs"] if spec.loss != "ce" else None,
            val_texts=None if val is None else val["text"],
            val_targets=None if val is None else [index[label] for label in val["teacher_label"]],
            **common,
        )
    return train_generator(
        bases["generative"],
        rows["text"],
        rows["teacher_label"],
        PromptSpec(task.instruction, task.max_input_tokens, task.max_new_tokens),
        folder / task.name,
        spec=train_spec(generative.training),
        lora=LoraSpec(**generative.lora.model_dump()),
        rationales=rows["teacher_rationale"] if generative.rationales else None,
        extra_meta={"task": task.name, "kind": task.kind, "base_model": generative.base_model},
        val_texts=None if val is None else val["text"],
        val_answers=None if val is None else val["teacher_label"],
        **common,
    )


def _silent(_: str) -> None:
    pass


class _NotMainProcess(Exception):
    pass


# ── 4 score ─────────────────────────────────────────────────────────────────────────────
INVALID_PENALTY = 1000.0  # subtracted from the score of an answer that does not parse


def score(ctx: Context) -> dict[str, Any]:
    """Student answers and confidence scores on calib and test.

    Classification: class probabilities and max_prob / margin / neg_entropy. Generation and
    extraction: greedy answers from one base model carrying every task's adapter (a batch mixes
    tasks), scored by their mean and minimum token log-probability; an extraction answer that
    does not parse or follow the schema counts as wrong and its score drops by 1,000.
    """
    from training.bases import resolve_model
    from training.classifier import count_tokens, footprint, load_classifier, predict
    from training.student import StudentRule

    config = ctx.config
    key, inputs = stage_key(config, "score")
    if not ctx.force and runs.is_current(ctx.run_dir, "score", key):
        ctx.log("score: up to date, skipped")
        return {"skipped": True}
    max_length = config.student.training.max_length
    adapters = runs.stage_dir(ctx.run_dir, "train")
    tables: dict[str, dict[str, list]] = {}
    speeds: dict[str, dict[str, float]] = {}  # classification students: ms per input, memory
    classifiers = [task for task in config.tasks if task.kind == "classification"]
    if classifiers:
        base_path = resolve_model(config.student.base_model, log=ctx.log)
    for task in classifiers:
        model, tokenizer, _ = load_classifier(
            base_path,
            adapters / task.name,
            trust_remote_code=config.student.trust_remote_code,
            allow_pickle=config.student.allow_pickle,
        )
        student = StudentRule.load(adapters / task.name)
        table: dict[str, list] = {}
        predict_s = 0.0
        for name in ("calib", "test"):
            rows = load_split(ctx.run_dir, task.name, name).to_dict()
            started = time.perf_counter()
            probs, features = predict(
                model, tokenizer, rows["text"], config.student.inference_batch_size, max_length,
                progress=ctx.progress,
            )  # fmt: skip
            predict_s += time.perf_counter() - started
            rows |= student.columns(probs, features)
            rows["student_input_tokens"] = count_tokens(
                tokenizer, rows["text"], max_length
            ).tolist()
            rows["student_output_tokens"] = [0] * len(rows["text"])  # a label, no tokens
            for column, values in rows.items():
                table.setdefault(column, []).extend(values)
        tables[task.name] = table
        speeds[task.name] = {
            "ms_per_input_batched": 1000 * predict_s / len(table["id"]),
            "batch_size": config.student.inference_batch_size,
            **footprint(model, tokenizer, table["text"], max_length),
        }
    generative = [task for task in config.tasks if task.kind != "classification"]
    if generative:
        tables |= _score_generative(ctx, generative)
    for task in config.tasks:  # the teacher's tokens, for the cost model
        table = tables[task.name]
        table["teacher_input_tokens"], table["teacher_output_tokens"], source = (
            count_teacher_tokens(config, task, table, _StudentTokenizer(config, task.kind))
        )
        table["teacher_tokens_source"] = [source] * len(table["id"])
    extra: dict[str, Any] = {"tasks": {}}
    with runs.write_stage(ctx.run_dir, "score", key, inputs, ctx.config_digest) as out:
        for task in config.tasks:
            table = tables[task.name]
            _write_parquet(table, out.folder / f"{task.name}.parquet")
            agree = np.mean(np.array(table["student_label"]) == np.array(table["teacher_label"]))
            extra["tasks"][task.name] = {"n_rows": len(table["id"]), "agreement": float(agree)}
            if task.name in speeds:
                extra["tasks"][task.name]["speed"] = speeds[task.name]
            if task.kind == "extraction":
                invalid = sum(1 for e in table["student_error"] if e is not None)
                extra["tasks"][task.name]["invalid_outputs"] = invalid
            ctx.log(f"score {task.name}: {len(table['id'])} rows, agreement {agree:.1%}")
        out.extra.update(extra)
    return extra


class _StudentTokenizer:
    """The student's tokenizer for a task kind, loaded only if something calls it."""

    def __init__(self, config: RunConfig, kind: str) -> None:
        self.config, self.kind, self._tokenizer = config, kind, None

    def _load(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from training.bases import resolve_model

            student = self.config.student
            base = (
                student.base_model
                if self.kind == "classification"
                else (student.generative.base_model)
            )
            self._tokenizer = AutoTokenizer.from_pretrained(
                resolve_model(base, log=lambda _: None),
                trust_remote_code=student.trust_remote_code,
            )
        return self._tokenizer

    def __getattr__(self, name: str):
        return getattr(self._load(), name)

    def __call__(self, *args, **kwargs):
        return self._load()(*args, **kwargs)


def _score_generative(ctx: Context, tasks: list) -> dict[str, dict[str, list]]:
    """Every generation/extraction task's calib and test rows, answered in mixed batches."""
    from training.bases import resolve_model
    from training.generator import generate, read_prompt
    from training.multitask import load_generators

    config = ctx.config
    adapters = runs.stage_dir(ctx.run_dir, "train")
    base_path = resolve_model(config.student.generative.base_model, log=ctx.log)
    model, tokenizer = load_generators(
        base_path,
        {task.name: adapters / task.name for task in tasks},
        trust_remote_code=config.student.trust_remote_code,
        allow_pickle=config.student.allow_pickle,
    )
    parts: list[tuple[Any, dict[str, list]]] = []
    for task in tasks:
        for name in ("calib", "test"):
            parts.append((task, load_split(ctx.run_dir, task.name, name).to_dict()))
    texts = [text for _, rows in parts for text in rows["text"]]
    owners = [task.name for task, rows in parts for _ in rows["text"]]
    prompts = {task.name: read_prompt(adapters / task.name) for task in tasks}
    answers = generate(
        model,
        tokenizer,
        [prompts[name] for name in owners],
        texts,
        config.student.generative.inference_batch_size,
        adapter_names=owners,
        progress=ctx.progress,
    )
    tables: dict[str, dict[str, list]] = {}
    at = 0
    for task, rows in parts:
        n = len(rows["text"])
        span = slice(at, at + n)
        at += n
        raw = answers.texts[span]
        checked = [canonical_output(task, text) for text in raw]
        penalty = np.array([INVALID_PENALTY if error else 0.0 for _, error in checked])
        rows["student_label"] = [answer for answer, _ in checked]
        rows["student_raw"] = raw
        rows["student_error"] = [error for _, error in checked]
        rows["score_mean_logprob"] = (answers.mean_logprob[span] - penalty).tolist()
        rows["score_min_logprob"] = (answers.min_logprob[span] - penalty).tolist()
        rows["student_input_tokens"] = answers.input_tokens[span].tolist()
        rows["student_output_tokens"] = answers.output_tokens[span].tolist()
        table = tables.setdefault(task.name, {})
        for column, values in rows.items():
            table.setdefault(column, []).extend(values)
    return tables


def load_scores(run_dir: Path, task: str, split_name: str) -> dict[str, np.ndarray]:
    table = _read_parquet(runs.stage_dir(run_dir, "score") / f"{task}.parquet")
    keep = np.array(table["split"]) == split_name
    return {column: np.array(values, dtype=object)[keep] for column, values in table.items()}


# ── 5 calibrate ─────────────────────────────────────────────────────────────────────────
def calibrate(ctx: Context) -> dict[str, Any]:
    """Per task, the threshold on calib only (Learn-then-Test with a guarantee, per label or
    jointly over tiers; or a target deferral rate, or a cost budget); writes RUN/cascade.json.
    The learned deferral score is fitted here too, on its own share of calib."""
    config = ctx.config
    key, inputs = stage_key(config, "calibrate")
    if not ctx.force and runs.is_current(ctx.run_dir, "calibrate", key):
        ctx.log("calibrate: up to date, skipped")
        return {"skipped": True}
    cascade_cfg = config.cascade
    document: dict[str, Any] = {"format": CASCADE_FORMAT, "tasks": {}}
    with runs.write_stage(ctx.run_dir, "calibrate", key, inputs, ctx.config_digest) as out:
        for task in config.tasks:
            calib = load_scores(ctx.run_dir, task.name, "calib")
            score_name = config.score_for(task)
            train_texts = load_split(ctx.run_dir, task.name, "train").to_dict()["text"]
            learned = fit_learned(config, task, calib, train_texts, out.folder)
            fit_mask = learned.pop("fit_mask")
            learned_calib = learned.pop("calib_scores")  # the fitted scorer on every calib row
            if cascade_cfg.score == "auto" and task.kind == "classification":
                enough = len(calib["id"]) >= AUTO_LEARNED_MIN_CALIB and learned["model"] is not None
                score_name = "learned" if enough and not cascade_cfg.tiers else "max_prob"
            entry: dict[str, Any] = {
                "kind": task.kind,
                "labels": task.label_names,
                "task": task.model_dump(mode="json"),
                "score": score_name,
                "temperature": _fit_temperature(task, calib),
                "learned": learned,
            }
            if score_name == "learned" and learned["model"] is None:
                raise UserError(
                    f"task {task.name!r}: cannot use score learned: {learned['reason']}"
                )
            scores = (
                learned_calib if score_name == "learned" else task_scores(ctx.run_dir, calib, entry)
            )
            # the learned score's threshold is chosen on the calib rows that did not fit it
            rows = ~fit_mask if score_name == "learned" else np.ones(len(scores), dtype=bool)
            disagree = (calib["student_label"] != calib["teacher_label"]).astype(bool)
            sub = {column: values[rows] for column, values in calib.items()}
            fitted = _fit_threshold(config, task, sub, scores[rows], disagree[rows], out.folder)
            threshold = fitted["threshold"]
            finite = math.isfinite(threshold)
            accepted = scores[rows] >= fitted.get("row_thresholds", threshold)
            calib_ids = sorted(zip(calib["id"], calib["teacher_label"], strict=True))
            adapter_dir = runs.stage_dir(ctx.run_dir, "train") / task.name
            entry |= {
                "method": fitted["method"],
                "threshold": threshold if finite else None,
                "defer_all": not finite,
                "per_label": fitted.get("per_label"),
                "alpha": cascade_cfg.alpha,
                "delta": cascade_cfg.delta,
                "guarantee": fitted["guarantee"],
                "n_calib": int(rows.sum()),
                "calib_risk": float(np.mean(disagree[rows] & accepted)),
                "calib_deferral_rate": float(np.mean(~accepted)),
                "calib_digest": digest([list(pair) for pair in calib_ids]),
                "adapter": f"adapters/{task.name}",
                "adapter_digest": runs.file_sha256(adapter_dir / "adapter_model.safetensors"),
                "base_model": (
                    config.student.base_model
                    if task.kind == "classification"
                    else config.student.generative.base_model
                ),
                "max_length": (
                    config.student.training.max_length
                    if task.kind == "classification"
                    else config.student.generative.training.max_length
                ),
                "teacher": (runs.read_manifest(ctx.run_dir, "label") or {}).get("teacher"),
            }
            document["tasks"][task.name] = entry
            shown = (
                "per label"
                if entry["per_label"]
                else (f"{threshold:.4f}" if finite else "∞ (defer everything)")
            )
            ctx.log(
                f"calibrate {task.name}: τ = {shown} on {entry['n_calib']} calib rows "
                f"(calib deferral {entry['calib_deferral_rate']:.1%}, risk "
                f"{entry['calib_risk']:.1%}, {fitted['summary']})"
            )
            if cascade_cfg.tiers:
                entry["tiers"] = _fit_tiers(ctx, task, calib, entry)
            check = learned.get("check")
            if check and score_name == "learned" and not check["beats_raw"]:
                ctx.log(
                    f"calibrate {task.name}: warning: the learned score does not beat "
                    f"{check['raw_score']} on held-out calib rows (AUROC "
                    f"{check['auroc_learned']:.3f} vs {check['auroc_raw']:.3f})"
                )
        (out.folder / "cascade.json").write_text(json.dumps(document, indent=2) + "\n")
        out.publish["cascade.json"] = "cascade.json"  # RUN/cascade.json, once in place
        out.extra["tasks"] = {
            name: {k: v for k, v in entry.items() if k not in ("task", "labels", "learned")}
            for name, entry in document["tasks"].items()
        }
    return document


def _fit_tiers(ctx: Context, task: TaskConfig, calib: dict, entry: dict) -> dict[str, Any]:
    """Joint thresholds for this run's student, each tier in `cascade.tiers` and the teacher
    (Pareto testing), with the end-to-end guarantee."""
    from eval.tiers import ParetoTesting

    config = ctx.config
    cascade_cfg = config.cascade
    tables = tier_tables(config, task, "calib", calib)
    scores, disagree, costs, teacher = tier_arrays(
        config, task, calib, tables, lambda t: task_scores(ctx.run_dir, t, entry)
    )
    fitted = ParetoTesting(
        cascade_cfg.alpha, cascade_cfg.delta, cascade_cfg.p_value, cascade_cfg.tier_grid,
        seed=config.data.seed,
    ).fit(scores, disagree, costs, teacher)  # fmt: skip
    names = ["student", *(tier.name for tier in cascade_cfg.tiers)]
    shown = ", ".join(
        f"{name} τ={t:.4f}" if math.isfinite(t) else f"{name} skipped"
        for name, t in zip(names, fitted.thresholds_, strict=True)
    )
    ctx.log(
        f"calibrate {task.name}: tiers {shown}; calib share answered "
        + ", ".join(f"{n} {s:.1%}" for n, s in zip([*names, "teacher"], fitted.calib_share_,
                                                    strict=True))
        + f"; end-to-end risk {fitted.calib_risk_:.1%}"
    )  # fmt: skip
    return {
        "names": names,
        "run_dirs": [str(ctx.run_dir), *(str(tier.run_dir) for tier in cascade_cfg.tiers)],
        "thresholds": [t if math.isfinite(t) else None for t in fitted.thresholds_],
        "method": "pareto-testing/fixed-sequence/" + cascade_cfg.p_value.replace("_", "-"),
        "guarantee": (
            f"P(share of traffic whose final answer departs from the teacher <= "
            f"{cascade_cfg.alpha}) >= {1 - cascade_cfg.delta:.4g}, end to end over every tier"
        ),
        "n_calib": fitted.n_calib_,
        "n_front_fit": fitted.n_opt_,
        "n_front_test": fitted.n_test_,
        "calib_risk": fitted.calib_risk_,
        "calib_cost_usd_per_request": fitted.calib_cost_usd_,
        "calib_share_answered": dict(zip([*names, "teacher"], fitted.calib_share_, strict=True)),
        "front": fitted.front_,
    }


def _fit_temperature(task: TaskConfig, calib: dict[str, np.ndarray]) -> float | None:
    """Classification: the temperature that calibrates the student's probabilities against
    the teacher's labels on calib (Guo et al., 2017); None for generative tasks."""
    from eval.calibration import TemperatureScaling

    if task.kind != "classification":
        return None
    index = {name: i for i, name in enumerate(task.label_names)}
    probs = np.array([list(p) for p in calib["student_probs"]], dtype=float)
    targets = np.array([index[label] for label in calib["teacher_label"]])
    return TemperatureScaling().fit(probs, targets).temperature_


def _fit_threshold(
    config: RunConfig, task: TaskConfig, calib, scores, disagree, folder: Path
) -> dict:
    """The configured estimator fitted on calib: threshold, method, guarantee (or None)."""
    from eval.calibration import CostBudget, LearnThenTest, PerLabelLearnThenTest, TargetDeferral

    cascade = config.cascade
    if cascade.method == "target_deferral":
        fitted = TargetDeferral(cascade.target_deferral).fit(scores)
        return {
            "threshold": fitted.threshold_,
            "method": f"target-deferral/{cascade.target_deferral:g}",
            "guarantee": None,
            "summary": f"target deferral {cascade.target_deferral:.0%}, no risk guarantee",
        }
    if cascade.method == "cost_budget":
        student = student_cost_usd(config.cost.student, calib)
        teacher = teacher_cost_usd(config, calib)
        fitted = CostBudget(cascade.budget_usd_per_1000).fit(scores, student, teacher)
        return {
            "threshold": fitted.threshold_,
            "method": f"cost-budget/{cascade.budget_usd_per_1000:g}-usd-per-1000",
            "guarantee": None,
            "summary": f"${fitted.calib_usd_per_1000_:.4g} per 1,000 requests on calib "
            f"(budget ${cascade.budget_usd_per_1000:g}), no risk guarantee",
        }
    p_name = cascade.p_value.replace("_", "-")
    if cascade.per_label and task.kind == "classification":
        per = PerLabelLearnThenTest(
            cascade.alpha, cascade.delta, cascade.p_value, cascade.min_label_examples
        ).fit(scores, disagree, calib["student_label"])
        for group, fit in per.fits_.items():
            _write_scan(fit, folder / f"scan_{task.name}_{group}.csv")
        thresholds = {g: (t if math.isfinite(t) else None) for g, t in per.thresholds_.items()}
        n_groups = len(per.fits_)
        return {
            "threshold": min(per.thresholds_.values()),  # the loosest: the curve's reference
            "row_thresholds": per.threshold_for(calib["student_label"]),
            "per_label": {
                "groups": per.groups_,
                "thresholds": thresholds,
                "delta_per_group": per.delta_per_group_,
                "min_examples": cascade.min_label_examples,
            },
            "method": f"learn-then-test/fixed-sequence/{p_name}/per-label",
            "guarantee": (
                f"for every predicted label at once (labels with fewer than "
                f"{cascade.min_label_examples} calib rows pooled): P(share of that label's "
                f"traffic where the cascade departs from the teacher <= {cascade.alpha}) >= "
                f"{1 - cascade.delta:.4g} (δ split over {n_groups} groups)"
            ),
            "summary": f"α={cascade.alpha}, δ={cascade.delta} split over {n_groups} label groups",
        }
    ltt = LearnThenTest(cascade.alpha, cascade.delta, cascade.p_value).fit(scores, disagree)
    _write_scan(ltt, folder / f"scan_{task.name}.csv")
    return {
        "threshold": ltt.threshold_,
        "method": f"learn-then-test/fixed-sequence/{p_name}",
        "guarantee": (
            f"P(share of traffic where the cascade departs from the teacher <= "
            f"{cascade.alpha}) >= {1 - cascade.delta:.4g}"
        ),
        "summary": f"α={cascade.alpha}, δ={cascade.delta}",
    }


def _write_scan(ltt, path: Path) -> None:
    """The fixed-sequence test's rows, for a person checking the threshold."""
    scan_rows = zip(
        ltt.scan_.thresholds, ltt.scan_.n_accepted, ltt.scan_.n_disagree,
        ltt.scan_.p_values, ltt.scan_.rejected, strict=True,
    )  # fmt: skip
    lines = ["threshold,n_accepted,n_disagree,p_value,rejected"]
    lines += [f"{t!r},{a},{d},{p!r},{bool(r)}" for t, a, d, p, r in scan_rows]
    path.write_text("\n".join(lines) + "\n")


# ── 6 evaluate ──────────────────────────────────────────────────────────────────────────
def evaluate(ctx: Context) -> dict[str, Any]:
    """Curves, summaries and plots on test only; writes RUN/report/."""
    from distill.config import scores_for
    from eval.calibration import per_label_thresholds
    from eval.html import write_html
    from eval.report import summary_table, write_report
    from eval.summary import Guarantee, evaluate_cascade

    config = ctx.config
    key, inputs = stage_key(config, "evaluate")
    if not ctx.force and runs.is_current(ctx.run_dir, "evaluate", key):
        ctx.log("evaluate: up to date, skipped")
        return {"skipped": True, "summary": _read_summary(ctx.run_dir)}
    cascade = json.loads((ctx.run_dir / "cascade.json").read_text(encoding="utf-8"))
    evaluations = []
    token_sources: dict[str, str] = {}
    for task in config.tasks:
        entry = cascade["tasks"][task.name]
        test = load_scores(ctx.run_dir, task.name, "test")
        token_sources[task.name] = str(test["teacher_tokens_source"][0])
        threshold = float("inf") if entry["threshold"] is None else float(entry["threshold"])
        per_label = entry.get("per_label")
        others = {  # every score of the task (the configured one among them), for the report
            name: task_scores(ctx.run_dir, test, entry, name)
            for name in scores_for(task.kind)
            if name != "learned" or (entry.get("learned") or {}).get("model")
        }
        scores = others[entry["score"]]
        teacher_cost = teacher_cost_usd(config, test)
        labelling_usd, training_hours = _one_off_costs(ctx, task, float(np.mean(teacher_cost)))
        evaluations.append(
            evaluate_cascade(
                task=task.name,
                scores=scores,
                student_pred=test["student_label"],
                teacher_pred=test["teacher_label"],
                gold=test["gold"] if config.gold_column(task) else None,
                student_cost_usd=student_cost_usd(config.cost.student, test),
                teacher_cost_usd=teacher_cost,
                teacher_input_tokens=test["teacher_input_tokens"].astype(float),
                guarantee=Guarantee(
                    method=entry["method"],
                    score=entry["score"],
                    alpha=entry["alpha"],
                    delta=entry["delta"],
                    n_calib=entry["n_calib"],
                    threshold=threshold,
                ),
                cpt_levels=config.evaluate.cpt_levels,
                confidence=(
                    test["score_max_prob"].astype(float) if task.kind == "classification" else None
                ),
                scaled_confidence=others.get("temperature_max_prob"),
                tolerance=config.evaluate.matched_quality_tolerance,
                tokens_per_day=config.cost.tokens_per_day,
                row_thresholds=(
                    None if not per_label else per_label_thresholds(
                        test["student_label"], per_label["groups"], per_label["thresholds"]
                    )
                ),
                other_scores=others,
                labelling_usd=labelling_usd,
                training_usd=training_hours * config.cost.training_usd_per_hour,
                tiers=_evaluate_tiers(ctx, task, test, entry) if entry.get("tiers") else None,
            )
        )  # fmt: skip
    meta = {
        "run_dir": str(ctx.run_dir),
        "config_digest": ctx.config_digest,
        "teacher": cascade["tasks"][config.tasks[0].name].get("teacher"),
        "student": config.student.base_model,
        "tolerance": config.evaluate.matched_quality_tolerance,
        "teacher_tokens": token_sources,
        "student_speed": _student_speeds(ctx.run_dir),
    }  # fmt: skip
    with runs.write_stage(ctx.run_dir, "evaluate", key, inputs, ctx.config_digest) as out:
        summary = write_report(evaluations, out.folder, meta)
        _training_curves(ctx, out.folder)
        write_html(out.folder)  # after report.md is complete
    return {"summary": summary, "table": summary_table(summary)}


def _student_speeds(run_dir: Path) -> dict[str, dict]:
    """Per classification task, what its student costs to run (measured by the score stage)."""
    tasks = (runs.read_manifest(run_dir, "score") or {}).get("tasks") or {}
    return {name: extra["speed"] for name, extra in tasks.items() if "speed" in extra}


def _one_off_costs(ctx: Context, task: TaskConfig, teacher_usd_per_request: float):
    """What labelling the task cost (the teacher's reported spend, else its labelled rows at
    the mean test-row cost) and the hours spent training its student."""
    label = ((runs.read_manifest(ctx.run_dir, "label") or {}).get("tasks") or {}).get(task.name)
    label = label or {}
    spent = label.get("teacher_cost_usd") or label.get("n_rows", 0) * teacher_usd_per_request
    path = runs.stage_dir(ctx.run_dir, "train") / task.name / "training_metrics.json"
    hours = 0.0
    if path.is_file():
        hours = json.loads(path.read_text(encoding="utf-8")).get("duration_s", 0.0) / 3600
    return float(spent), hours


def _evaluate_tiers(ctx: Context, task: TaskConfig, test: dict, entry: dict) -> dict[str, Any]:
    """The tiered cascade on test: at the calibrated thresholds, and every Pareto-front
    combination from calib (for the cost-vs-quality plot)."""
    from eval.tiers import evaluate_tiers

    config = ctx.config
    tiers = entry["tiers"]
    tables = tier_tables(config, task, "test", test)
    scores, _, costs, teacher = tier_arrays(
        config, task, test, tables, lambda t: task_scores(ctx.run_dir, t, entry)
    )
    preds = [t["student_label"] for t in [test, *tables]]
    gold = test["gold"] if config.gold_column(task) else None
    inf = float("inf")

    def at(thresholds: list) -> dict[str, Any]:
        chosen = [inf if t is None else float(t) for t in thresholds]
        return evaluate_tiers(tiers["names"], chosen, scores, preds, test["teacher_label"],
                              costs, teacher, gold)  # fmt: skip

    result = at(tiers["thresholds"])
    result |= {
        "names": tiers["names"],
        "method": tiers["method"],
        "guarantee": tiers["guarantee"],
        "alpha": config.cascade.alpha,
        "front": [at(point["thresholds"]) for point in tiers["front"]],
    }
    return result


def _training_curves(ctx: Context, folder: Path) -> None:
    """report/training_TASK.png from each adapter's training_metrics.json, listed in report.md."""
    from eval.plots import plot_training

    lines = ["", "## Training", ""]
    for task in ctx.config.tasks:
        path = runs.stage_dir(ctx.run_dir, "train") / task.name / "training_metrics.json"
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text(encoding="utf-8"))
        plot_training(task.name, metrics, folder / f"training_{task.name}.png")
        best = metrics.get("best_val") or {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in best.items() if k in ("loss", "accuracy"))
        lines.append(
            f"- **{task.name}**: {metrics['steps']} steps ({metrics['epochs_run']:.3g} epochs"
            f"{', stopped early' if metrics['stopped_early'] else ''}) in "
            f"{metrics['duration_s']:.0f} s at {metrics['examples_per_s']:.1f} examples/s; "
            f"kept step {metrics['best_step']} ({shown or 'no validation slice'})"
        )
        lines.append(f"  ![{task.name} training](training_{task.name}.png)")
    with (folder / "report.md").open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = runs.stage_dir(run_dir, "evaluate") / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


STAGE_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "label": label,
    "split": split,
    "train": train,
    "score": score,
    "calibrate": calibrate,
    "evaluate": evaluate,
}


def run_stage(ctx: Context, stage: str) -> dict[str, Any]:
    """Run one stage after checking that every upstream stage is current for this config."""
    if _is_main_process():
        runs.clean_stale_temporaries(ctx.run_dir)
    if stage != "label":
        identity = None
        if runs.read_manifest(ctx.run_dir, "label") is not None:
            identity = make_teacher(ctx.config.teacher, log=ctx.log).identity
        _require_upstream(ctx, stage, identity)
    try:
        result = STAGE_FUNCTIONS[stage](ctx)
    except _NotMainProcess:
        return {"skipped": True, "reason": "not the main process"}
    if stage != "label":
        _write_resolved_config(ctx)
    return result


def run_all(ctx: Context) -> dict[str, Any]:
    """Every stage in order; current stages are skipped."""
    if _is_main_process():
        runs.clean_stale_temporaries(ctx.run_dir)
    key, _ = stage_key(ctx.config, "train")
    if not runs.is_current(ctx.run_dir, "train", key):
        check_students(ctx)  # a bad student setting fails now, not after the teacher
    results: dict[str, Any] = {}
    for stage in runs.STAGES:
        try:
            results[stage] = STAGE_FUNCTIONS[stage](ctx)
        except _NotMainProcess:
            results[stage] = {"skipped": True}
    return results
