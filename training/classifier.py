"""LoRA classification students: build, train (through accelerate), save, load, predict.

A student is `AutoModelForSequenceClassification` on a shared base, with LoRA adapters and a
trained head. It is saved as a plain PEFT folder (adapter_config.json, adapter_model.safetensors
with the head inside, the tokenizer) plus `labels.json`, so that

    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N)
    model = PeftModel.from_pretrained(base, ADAPTER_DIR)

reloads it without cascadekit. Run under `accelerate launch` for several processes or GPUs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from training.loop import FitResult, TrainSpec, fit, pad_batch, soft_target_loss

LABELS_FILE = "labels.json"
METRICS_FILE = "training_metrics.json"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


def _load_base(
    base_path: str,
    label_names: Sequence[str],
    tokenizer,
    trust_remote_code: bool,
    allow_pickle: bool = False,
):
    """The base with a fresh head of len(label_names) outputs (safetensors only unless
    `allow_pickle`)."""
    from transformers import AutoModelForSequenceClassification

    from training.bases import use_safetensors

    base = AutoModelForSequenceClassification.from_pretrained(
        base_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        trust_remote_code=trust_remote_code,
        use_safetensors=use_safetensors(allow_pickle),
    )
    if tokenizer.pad_token_id is None:  # decoder bases often have none: pad with eos
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{base_path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    return base


def build_classifier(
    base_path: str,
    label_names: Sequence[str],
    lora: LoraSpec,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """A PEFT-wrapped sequence classifier with fresh LoRA weights and head, and its tokenizer."""
    from peft import LoraConfig, TaskType
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    base = _load_base(base_path, label_names, tokenizer, trust_remote_code, allow_pickle)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    return wrap_lora(base, config), tokenizer


class LoraTargetError(ValueError):
    """LoRA target modules that the base model does not have."""


def wrap_lora(base, config):
    """get_peft_model, with a clear error when a target module is not in the base."""
    from peft import get_peft_model

    try:
        return get_peft_model(base, config)
    except ValueError as exc:
        known = ("not found in the base model", "Target modules", "No modules were targeted")
        if any(text in str(exc) for text in known):  # the wording differs across peft versions
            linear = sorted(
                {name.rsplit(".", 1)[-1] for name, m in base.named_modules()
                 if isinstance(m, torch.nn.Linear)}
            )  # fmt: skip
            raise LoraTargetError(
                f"LoRA target modules {config.target_modules} are not in the base model "
                f"{type(base).__name__}; its linear layers are named {linear}"
            ) from None
        raise


def validation_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): a seeded `fraction` of the rows held out for early stopping.

    No slice below 40 rows or when fewer than 8 rows would be held out; at most 2,000."""
    n_val = min(2000, round(n * fraction))
    if fraction <= 0 or n < 40 or n_val < 8:
        return list(range(n)), []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    val = sorted(order[:n_val])
    held = set(val)
    return [i for i in range(n) if i not in held], val


def make_accelerator(spec: TrainSpec, log_dir: Path | None):
    """An Accelerator that logs to TensorBoard under `log_dir` (offline) unless told not to."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    # without a GPU, cpu=True: under `accelerate launch` the processes then train over gloo
    # (MULTI_CPU); without it accelerate leaves each process on its own
    cpu = not _has_accelerator()
    if spec.tracker == "none" or log_dir is None:
        return Accelerator(cpu=cpu)
    if spec.tracker != "tensorboard":
        raise ValueError(f"tracker must be tensorboard or none, got {spec.tracker!r}")
    project = ProjectConfiguration(project_dir=str(log_dir), logging_dir=str(log_dir))
    return Accelerator(cpu=cpu, log_with="tensorboard", project_config=project)


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu and xpu.is_available()) or (mps and mps.is_available()))


def run_fingerprint(*parts) -> str:
    """What a checkpoint must match to be resumed from: the data and the settings."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def train_classifier(
    base_path: str,
    texts: Sequence[str],
    targets: Sequence[int],
    label_names: Sequence[str],
    out_dir: Path,
    spec: TrainSpec | None = None,
    lora: LoraSpec = LoraSpec(),
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    extra_meta: dict | None = None,
    teacher_probs: Sequence[Sequence[float] | None] | None = None,
    log_dir: Path | None = None,
    **options,
) -> FitResult:
    """Train a LoRA classifier on (text, label id) pairs and save it to `out_dir`.

    Loss: cross-entropy on the teacher's labels, KL to its distribution, or their mix
    (`spec.loss`). A seeded slice of the rows is held out for early stopping and the best
    weights are kept. AdamW with a higher LR for the new head; warm-up then decay; the number
    of epochs follows from the data size unless set. Works in one process or under
    `accelerate launch` (DDP); the main process writes the folder. `options` go to
    `training.loop.fit`: checkpoint_dir, resume, run_name, progress, log, on_step.
    """
    spec = spec or TrainSpec()
    if len(texts) != len(targets):
        raise ValueError("texts and targets must have the same length")
    if len(texts) == 0:
        raise ValueError("no training rows")
    if teacher_probs is not None and len(teacher_probs) != len(texts):
        raise ValueError("teacher_probs must have one entry per text")
    from accelerate.utils import set_seed

    accelerator = make_accelerator(spec, log_dir)
    set_seed(spec.seed)
    model, tokenizer = build_classifier(
        base_path, label_names, lora, trust_remote_code, allow_pickle
    )

    train_idx, val_idx = validation_split(len(texts), spec.val_fraction, spec.seed)
    all_texts = list(texts)
    labels = torch.tensor(list(targets), dtype=torch.long)
    soft = torch.zeros(len(all_texts), len(label_names))
    has_soft = torch.zeros(len(all_texts), dtype=torch.bool)
    for i, row in enumerate(teacher_probs or ()):
        if row is not None and len(row) == len(label_names):
            soft[i] = torch.tensor(row, dtype=torch.float32)
            has_soft[i] = True
    encoded = tokenizer(all_texts, truncation=True, max_length=spec.max_length)["input_ids"]

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [train_idx[i] for i in indices]
        ids, mask = pad_batch([encoded[r] for r in rows], tokenizer.pad_token_id or 0)
        batch = {"input_ids": ids, "attention_mask": mask}
        batch["labels"] = labels[rows]
        batch["teacher_probs"] = soft[rows]
        batch["has_probs"] = has_soft[rows]
        return batch

    def loss_fn(model, batch) -> torch.Tensor:
        targets_batch = batch.pop("labels")
        probs, has = batch.pop("teacher_probs"), batch.pop("has_probs")
        logits = model(**batch).logits  # (batch, n_labels)
        return soft_target_loss(logits, targets_batch, probs, has, spec)

    val_texts = [all_texts[i] for i in val_idx]
    val_targets = labels[val_idx].numpy() if val_idx else None

    def validate(model) -> dict[str, float]:
        probs = predict_proba(model, tokenizer, val_texts, 128, spec.max_length)
        picked = np.clip(probs[np.arange(len(val_texts)), val_targets], 1e-12, 1.0)
        accuracy = float(np.mean(probs.argmax(axis=1) == val_targets))
        loss = float(-np.mean(np.log(picked)))
        return {"loss": loss, "accuracy": accuracy, "metric": accuracy - 1e-3 * loss}

    head, adapters = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if "modules_to_save" in name else adapters).append(param)
    groups = [
        {"params": adapters, "lr": spec.learning_rate},
        {"params": head, "lr": spec.head_learning_rate},
    ]
    soft_digest = hashlib.sha256(soft.numpy().tobytes() + has_soft.numpy().tobytes()).hexdigest()
    fingerprint = run_fingerprint(
        "classifier", base_path, all_texts, list(targets), list(label_names), asdict(spec),
        asdict(lora), accelerator.num_processes, soft_digest,
    )  # fmt: skip
    model, result = fit(
        model,
        groups,
        [len(encoded[i]) for i in train_idx],
        collate,
        loss_fn,
        validate if val_idx else None,
        spec,
        accelerator=accelerator,
        fingerprint=fingerprint,
        n_val=len(val_idx),
        **options,
    )
    if accelerator.is_main_process:
        save_classifier(model, tokenizer, label_names, out_dir, result, extra_meta or {})
    accelerator.wait_for_everyone()
    return result


def save_classifier(
    model,
    tokenizer,
    label_names: Sequence[str],
    out_dir: Path,
    result: FitResult | None = None,
    extra_meta: dict | None = None,
) -> None:
    """A plain PEFT folder (safetensors, head included) + tokenizer + labels.json."""
    labels = {"labels": list(label_names), "num_labels": len(label_names), **(extra_meta or {})}
    save_adapter(model, tokenizer, out_dir, LABELS_FILE, labels, result)


def save_adapter(model, tokenizer, out_dir: Path, meta_file: str, meta: dict, result=None):
    """The PEFT folder (safetensors), the tokenizer, `meta_file` and training_metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / meta_file).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if result is not None:
        (out_dir / METRICS_FILE).write_text(
            json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8"
        )


def read_labels(adapter_dir: Path) -> list[str]:
    return json.loads((adapter_dir / LABELS_FILE).read_text(encoding="utf-8"))["labels"]


def load_classifier(
    base_path: str, adapter_dir: Path, trust_remote_code: bool = False, allow_pickle: bool = False
):
    """Base + saved adapter and head, in eval mode; returns (model, tokenizer, label names).
    The adapter loads from safetensors only and never runs code of its own."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from training.bases import require_safetensors_adapter

    require_safetensors_adapter(adapter_dir)
    label_names = read_labels(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False)
    base = _load_base(base_path, label_names, tokenizer, trust_remote_code, allow_pickle)
    model = PeftModel.from_pretrained(base, adapter_dir)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, label_names


@torch.inference_mode()
def predict_proba(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = False,
    adapter_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Class probabilities, (n, n_labels) float64; batches are formed by length for speed.
    `adapter_names` (one per text) mixes several loaded adapters in a batch."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    chunks = range(0, len(order), batch_size)
    for start in tqdm(chunks, desc="predict", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batch = {key: value.to(model.device) for key, value in batch.items()}
        if adapter_names is not None:
            batch["adapter_names"] = [adapter_names[i] for i in idx]
        logits = model(**batch).logits.float()  # (batch, n_labels)
        probs = torch.softmax(logits, dim=-1).double().cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), probs.shape[1]))
        out[idx] = probs
    if out is None:
        raise ValueError("no texts to predict")
    return out


def count_tokens(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Input tokens the student reads per text (after truncation), for the cost model."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def check_lora_targets(base_path: str, causal_lm: bool, target_modules, trust_remote_code=False):
    """Raise LoraTargetError when the targets are not in the base (built on the meta device:
    no weights are read, it takes a moment)."""
    from accelerate import init_empty_weights
    from peft import LoraConfig, TaskType
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )

    config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    auto = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
    with init_empty_weights():
        base = auto.from_config(config, trust_remote_code=trust_remote_code)
    task = TaskType.CAUSAL_LM if causal_lm else TaskType.SEQ_CLS
    wrap_lora(base, LoraConfig(task_type=task, r=1, target_modules=target_modules))
