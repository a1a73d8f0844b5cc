"""Classification students: build, train (through accelerate), save, load, predict.

A student is an encoder (`AutoModel` of the base, its pooler dropped) whose last hidden states
are mean-pooled over the attention mask, then a dropout and a trained linear head. The
encoder learns through LoRA adapters (the default: one small adapter per task on a shared
base) or, for small bases, by full fine-tuning (`finetune="full"`). Sentence-embedding bases
such as all-MiniLM-L6-v2 and all-mpnet-base-v2 were trained with mean pooling, which is why
it is used here rather than the first token.

A LoRA student is saved as a PEFT folder of the encoder (adapter_config.json,
adapter_model.safetensors) plus `head.safetensors`, `labels.json` and the tokenizer, so that

    encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), ADAPTER_DIR)
    head = load_file(ADAPTER_DIR / "head.safetensors")   # weight (n_labels, hidden), bias
    hidden = encoder(**batch).last_hidden_state           # (batch, seq, hidden)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    logits = pooled @ head["weight"].T + head["bias"]

reloads it without cascadekit. A fully fine-tuned student saves `encoder.safetensors` (every
encoder weight) instead of the adapter. Run under `accelerate launch` for several processes.
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
from transformers.utils import ModelOutput

from training.loop import FitResult, TrainSpec, fit, pad_batch, soft_target_loss

LABELS_FILE = "labels.json"
METRICS_FILE = "training_metrics.json"
HEAD_FILE = "head.safetensors"
ENCODER_FILE = "encoder.safetensors"  # a fully fine-tuned student's encoder weights
CLASSIFIER_FORMAT = "cascadekit.classifier/2"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


class EncoderClassifier(torch.nn.Module):
    """Encoder -> mean pooling over the attention mask -> dropout -> linear head.

    `encoder` is a transformers `AutoModel` (or a PEFT model around one); `forward` returns an
    object with `.logits` (batch, n_labels), as transformers' classifiers do, and
    `embed` the pooled features (batch, hidden) the head reads."""

    def __init__(self, encoder: torch.nn.Module, n_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.head = torch.nn.Linear(hidden, n_labels)
        self.dropout = torch.nn.Dropout(dropout)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Parameters of encoder and head, as transformers' models count them."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def embed(self, input_ids, attention_mask, **peft_kwargs) -> torch.Tensor:
        """(batch, hidden) mean of the last hidden states over the real tokens."""
        return mean_pooled(self.encoder, input_ids, attention_mask, **peft_kwargs)

    def forward(self, input_ids, attention_mask, labels=None, **peft_kwargs):
        """`.logits` (batch, n_labels) and `.pooled` (batch, hidden); with `labels`, also the
        cross-entropy `.loss`, so that transformers' Trainer can train it too."""
        pooled = self.embed(input_ids, attention_mask, **peft_kwargs)
        logits = self.head(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return ClassifierOutput(loss=loss, logits=logits, pooled=pooled)


def mean_pooled(encoder, input_ids, attention_mask, **peft_kwargs) -> torch.Tensor:
    """(batch, hidden) the encoder's last hidden states averaged over the real tokens."""
    hidden = encoder(
        input_ids=input_ids, attention_mask=attention_mask, **peft_kwargs
    ).last_hidden_state  # (batch, seq, hidden)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@dataclass
class ClassifierOutput(ModelOutput):  # a transformers ModelOutput: a dict and a tuple too
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (batch, n_labels)
    pooled: torch.Tensor | None = None  # (batch, hidden)


def load_encoder(base_path: str, tokenizer, trust_remote_code: bool, allow_pickle: bool = False):
    """The base as an encoder in fp32, its pooler dropped (mean pooling replaces it; an unused
    layer would also stall data-parallel training). Safetensors only unless `allow_pickle`."""
    from transformers import AutoModel

    from training.bases import use_safetensors

    encoder = AutoModel.from_pretrained(
        base_path,
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=use_safetensors(allow_pickle),
    )
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    if tokenizer.pad_token_id is None:  # decoder bases often have none: pad with eos
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{base_path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return encoder


def build_classifier(
    base_path: str,
    label_names: Sequence[str],
    lora: LoraSpec | None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """An `EncoderClassifier` with fresh LoRA weights (or, with `lora=None`, an encoder whose
    every weight trains) and a fresh head; and its tokenizer."""
    from peft import LoraConfig, TaskType
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    encoder = load_encoder(base_path, tokenizer, trust_remote_code, allow_pickle)
    if lora is not None:
        config = LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
        encoder = wrap_lora(encoder, config)
    return EncoderClassifier(encoder, len(label_names)), tokenizer


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
    lora: LoraSpec | None = LoraSpec(),
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    extra_meta: dict | None = None,
    teacher_probs: Sequence[Sequence[float] | None] | None = None,
    log_dir: Path | None = None,
    val_texts: Sequence[str] | None = None,
    val_targets: Sequence[int] | None = None,
    catch_all: str | None = None,
    **options,
) -> FitResult:
    """Train a classifier on (text, label id) pairs and save it to `out_dir`.

    LoRA on the encoder (`lora=None`: every encoder weight trains) and a new head, with a
    higher LR for the head; warm-up then decay; the number of epochs follows from the data
    size unless set. Loss: cross-entropy on the teacher's labels, KL to its distribution, or
    their mix (`spec.loss`), with `spec.label_smoothing`. Early stopping validates on
    `val_texts`/`val_targets` when given, else on a seeded slice of the rows held out from
    training, by `spec.select_metric`; the best weights are kept.

    The saved student also carries its training rows' features (`neighbours.safetensors`: the
    distance of a new input to them is a confidence feature) and, with `catch_all` (a label
    that stands for "none of the others", e.g. out of scope), the distance beyond which an
    input gets that label, chosen on the validation rows (see `training.neighbours`).
    Works in one process or under `accelerate launch` (DDP); the main process writes the
    folder. `options` go to `training.loop.fit`: checkpoint_dir, resume, run_name, progress,
    log, on_step.
    """
    spec = spec or TrainSpec()
    if len(texts) != len(targets):
        raise ValueError("texts and targets must have the same length")
    if len(texts) == 0:
        raise ValueError("no training rows")
    if teacher_probs is not None and len(teacher_probs) != len(texts):
        raise ValueError("teacher_probs must have one entry per text")
    if (val_texts is None) != (val_targets is None) or len(val_texts or ()) != len(
        val_targets or ()
    ):
        raise ValueError("val_texts and val_targets go together, one target per text")
    if catch_all is not None and catch_all not in label_names:
        raise ValueError(f"catch_all label {catch_all!r} is not in the label set")
    from accelerate.utils import set_seed

    accelerator = make_accelerator(spec, log_dir)
    set_seed(spec.seed)
    model, tokenizer = build_classifier(
        base_path, label_names, lora, trust_remote_code, allow_pickle
    )

    if val_texts is None:
        train_idx, val_idx = validation_split(len(texts), spec.val_fraction, spec.seed)
        all_texts, all_targets = list(texts), list(targets)
    else:  # given: appended after the training rows
        train_idx = list(range(len(texts)))
        val_idx = list(range(len(texts), len(texts) + len(val_texts)))
        all_texts, all_targets = [*texts, *val_texts], [*targets, *(val_targets or ())]
    labels = torch.tensor(all_targets, dtype=torch.long)
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

    held_texts = [all_texts[i] for i in val_idx]
    held_targets = labels[val_idx].numpy() if val_idx else None

    def validate(model) -> dict[str, float]:
        probs = predict_proba(model, tokenizer, held_texts, 128, spec.max_length)
        return validation_scores(probs, held_targets, spec.select_metric)

    head = list(model.head.parameters())
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [
        {"params": encoder, "lr": spec.learning_rate},
        {"params": head, "lr": spec.head_learning_rate},
    ]
    soft_digest = hashlib.sha256(soft.numpy().tobytes() + has_soft.numpy().tobytes()).hexdigest()
    fingerprint = run_fingerprint(
        "classifier/2", base_path, all_texts, all_targets, list(label_names), asdict(spec),
        asdict(lora) if lora else "full", accelerator.num_processes, soft_digest, len(texts),
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
        from training.neighbours import fit_student_neighbours

        model.eval()
        neighbours, rule = fit_student_neighbours(
            lambda rows: predict(model, tokenizer, rows, 128, spec.max_length),
            [all_texts[i] for i in train_idx],
            labels[train_idx].numpy(),
            held_texts,
            held_targets,
            list(label_names).index(catch_all) if catch_all else None,
            seed=spec.seed,
        )
        meta = {**(extra_meta or {}), "catch_all": catch_all, **rule}
        save_classifier(model, tokenizer, label_names, out_dir, result, meta)
        neighbours.save(out_dir)
    accelerator.wait_for_everyone()
    return result


def validation_scores(probs: np.ndarray, targets: np.ndarray, select: str) -> dict[str, float]:
    """Loss, accuracy and the area under the risk-coverage curve (max-prob ranking) on the
    validation rows; `metric` (higher is better) is what model selection follows: accuracy,
    or minus that area (`select="aurc"`: a student whose confident answers are right)."""
    picked = np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0)
    right = probs.argmax(axis=1) == targets
    accuracy = float(np.mean(right))
    loss = float(-np.mean(np.log(picked)))
    order = np.argsort(-probs.max(axis=1), kind="stable")
    errors = np.cumsum(~right[order]) / np.arange(1, len(order) + 1)  # risk at each coverage
    aurc = float(np.mean(errors))
    metric = accuracy - 1e-3 * loss if select == "accuracy" else -aurc - 1e-4 * loss
    return {"loss": loss, "accuracy": accuracy, "aurc": aurc, "metric": metric}


def save_classifier(
    model: EncoderClassifier,
    tokenizer,
    label_names: Sequence[str],
    out_dir: Path,
    result: FitResult | None = None,
    extra_meta: dict | None = None,
) -> None:
    """The encoder's PEFT folder (or, fully fine-tuned, encoder.safetensors), head.safetensors,
    the tokenizer, labels.json and training_metrics.json."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    full = not hasattr(model.encoder, "peft_config")
    if full:
        state = {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}
        save_file(state, str(out_dir / ENCODER_FILE), metadata={"format": "pt"})
    else:
        model.encoder.save_pretrained(out_dir, safe_serialization=True)
    head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(out_dir / HEAD_FILE), metadata={"format": "pt"})
    meta = {
        "format": CLASSIFIER_FORMAT,
        "labels": list(label_names),
        "num_labels": len(label_names),
        "finetune": "full" if full else "lora",
        "pooling": "mean",
        **(extra_meta or {}),
    }
    write_meta(tokenizer, out_dir, LABELS_FILE, meta, result)


def save_adapter(model, tokenizer, out_dir: Path, meta_file: str, meta: dict, result=None):
    """The PEFT folder (safetensors), the tokenizer, `meta_file` and training_metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    write_meta(tokenizer, out_dir, meta_file, meta, result)


def write_meta(tokenizer, out_dir: Path, meta_file: str, meta: dict, result=None) -> None:
    """The tokenizer, `meta_file` (JSON) and training_metrics.json beside a student."""
    tokenizer.save_pretrained(out_dir)
    (out_dir / meta_file).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if result is not None:
        (out_dir / METRICS_FILE).write_text(
            json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8"
        )


def read_meta(adapter_dir: Path) -> dict:
    """labels.json of a classification student (labels, catch-all rule, how it trained)."""
    meta = json.loads((Path(adapter_dir) / LABELS_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(
            f"{adapter_dir}: a classification student of another format "
            f"({meta.get('format', 'cascadekit 0.1, a sequence-classification head')}); "
            "train it again with this version"
        )
    return meta


def read_labels(adapter_dir: Path) -> list[str]:
    return read_meta(adapter_dir)["labels"]


def is_full_finetune(adapter_dir: Path) -> bool:
    return read_meta(adapter_dir).get("finetune") == "full"


def load_head(adapter_dir: Path, n_labels: int) -> torch.nn.Linear:
    """The student's linear head from head.safetensors."""
    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / HEAD_FILE))
    head = torch.nn.Linear(state["weight"].shape[1], n_labels)
    if tuple(state["weight"].shape) != (n_labels, head.in_features):
        raise ValueError(f"{adapter_dir}: head.safetensors does not have {n_labels} outputs")
    head.load_state_dict(state)
    return head


def load_classifier(
    base_path: str, adapter_dir: Path, trust_remote_code: bool = False, allow_pickle: bool = False
):
    """Base + saved adapter (or fine-tuned encoder) and head, in eval mode; returns (model,
    tokenizer, label names). Weights load from safetensors only; the student's folder never
    runs code of its own."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from training.bases import require_safetensors_adapter

    adapter_dir = Path(adapter_dir)
    label_names = read_labels(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False)
    encoder = load_encoder(base_path, tokenizer, trust_remote_code, allow_pickle)
    if is_full_finetune(adapter_dir):
        encoder.load_state_dict(load_file(str(adapter_dir / ENCODER_FILE)))
    else:
        require_safetensors_adapter(adapter_dir)
        encoder = PeftModel.from_pretrained(encoder, adapter_dir)
    model = EncoderClassifier(encoder, len(label_names))
    model.head = load_head(adapter_dir, len(label_names))
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, label_names


def length_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int):
    """(row indices, tokenised batch) for batches of texts of similar length, shortest first,
    each padded only to its own longest row."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield idx, batch


@torch.inference_mode()
def predict(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = False,
    adapter_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (n, n_labels) float64, pooled features (n, hidden) float32);
    batches are formed by length for speed. `adapter_names` (one per text) mixes several
    loaded adapters in a batch."""
    probs_out: np.ndarray | None = None
    features_out: np.ndarray | None = None
    batches = length_batches(tokenizer, texts, batch_size, max_length)
    total = -(-len(texts) // batch_size)
    for idx, batch in tqdm(
        batches, desc="predict", unit="batch", total=total, disable=not progress
    ):
        inputs = {key: batch[key].to(model.device) for key in ("input_ids", "attention_mask")}
        if adapter_names is not None:
            inputs["adapter_names"] = [adapter_names[i] for i in idx]
        output = model(**inputs)
        probs = torch.softmax(output.logits.float(), dim=-1).double().cpu().numpy()
        if probs_out is None:
            probs_out = np.zeros((len(texts), probs.shape[1]))
            features_out = np.zeros((len(texts), output.pooled.shape[1]), dtype=np.float32)
        probs_out[idx] = probs
        features_out[idx] = output.pooled.float().cpu().numpy()  # type: ignore[index]
    if probs_out is None or features_out is None:
        raise ValueError("no texts to predict")
    return probs_out, features_out


def predict_proba(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = False,
    adapter_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Class probabilities, (n, n_labels) float64 (see `predict`)."""
    return predict(model, tokenizer, texts, batch_size, max_length, progress, adapter_names)[0]


def footprint(
    model, tokenizer, texts: Sequence[str], max_length: int, n_alone: int = 32
) -> dict[str, float]:
    """What the student costs to hold and to ask alone: ms per input one at a time (the median
    over `n_alone` of `texts`, as a lone request sees it), its parameters and weight memory,
    and the process's peak resident memory so far."""
    import resource
    import time

    alone = []
    for text in list(texts)[:n_alone]:
        started = time.perf_counter()
        predict(model, tokenizer, [text], 1, max_length)
        alone.append(time.perf_counter() - started)
    params = list(model.parameters())
    return {
        "ms_per_input_alone": 1000 * float(np.median(alone)) if alone else float("nan"),
        "parameters": int(sum(p.numel() for p in params)),
        "weights_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def count_tokens(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Input tokens the student reads per text (after truncation), for the cost model."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def check_lora_targets(base_path: str, causal_lm: bool, target_modules, trust_remote_code=False):
    """Raise LoraTargetError when the targets are not in the base (built on the meta device:
    no weights are read, it takes a moment)."""
    from accelerate import init_empty_weights
    from peft import LoraConfig, TaskType
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    with init_empty_weights():
        base = auto.from_config(config, trust_remote_code=trust_remote_code)
    if not causal_lm and getattr(base, "pooler", None) is not None:
        base.pooler = None  # as load_encoder: mean pooling replaces it
    task = TaskType.CAUSAL_LM if causal_lm else TaskType.FEATURE_EXTRACTION
    wrap_lora(base, LoraConfig(task_type=task, r=1, target_modules=target_modules))
