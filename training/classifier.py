"""LoRA classification students: build, train (through accelerate), save, load, predict.

A student is `AutoModelForSequenceClassification` on a shared base, with LoRA adapters and a
trained head. It is saved as a plain PEFT folder (adapter_config.json, adapter_model.safetensors
with the head inside, the tokenizer) plus `labels.json`, so that

    base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N)
    model = PeftModel.from_pretrained(base, ADAPTER_DIR)

reloads it without cascadekit. Run under `accelerate launch` for several processes or GPUs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

LABELS_FILE = "labels.json"
METRICS_FILE = "train_metrics.json"


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 2e-3  # peak LR of the LoRA weights
    head_learning_rate: float = 5e-3  # peak LR of the new classification head
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 128
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    group_by_length: bool = True  # batches of similar lengths: less padding, same data


@dataclass(frozen=True)
class TrainResult:
    n_train: int
    steps: int
    epochs: int
    duration_s: float
    precision: str
    trainable_params: int
    total_params: int
    first_loss: float
    final_loss: float  # mean loss of the last epoch
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)


def _load_base(base_path: str, label_names: Sequence[str], tokenizer, trust_remote_code: bool):
    """The base with a fresh head of len(label_names) outputs (safetensors only)."""
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        base_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    if base.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        base.config.pad_token_id = tokenizer.pad_token_id
    return base


def build_classifier(
    base_path: str,
    label_names: Sequence[str],
    lora: LoraSpec,
    trust_remote_code: bool = False,
):
    """A PEFT-wrapped sequence classifier with fresh LoRA weights and head, and its tokenizer."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    base = _load_base(base_path, label_names, tokenizer, trust_remote_code)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    return get_peft_model(base, config), tokenizer


def bf16_available(device_type: str) -> bool:
    """Whether bf16 matmuls are native here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Random batches of similar lengths: shuffle, sort within windows of 16 batches, shuffle
    the batches. Every example is seen once per epoch; padding shrinks several-fold."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        window = self.batch_size * 16
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [
                chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)
            ]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        remaining = max(1, total_steps - warmup_steps)
        return max(0.0, (total_steps - step) / remaining)

    return factor


def train_classifier(
    base_path: str,
    texts: Sequence[str],
    targets: Sequence[int],
    label_names: Sequence[str],
    out_dir: Path,
    spec: TrainSpec = TrainSpec(),
    lora: LoraSpec = LoraSpec(),
    trust_remote_code: bool = False,
    progress: bool = True,
    extra_meta: dict | None = None,
) -> TrainResult:
    """Train a LoRA classifier on (text, label id) pairs and save it to `out_dir`.

    Cross-entropy on the teacher's labels; AdamW with a higher LR for the new head; linear
    warm-up then linear decay. Works in one process or under `accelerate launch` (DDP).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if len(texts) != len(targets):
        raise ValueError("texts and targets must have the same length")
    if len(texts) == 0:
        raise ValueError("no training rows")
    accelerator = Accelerator()
    set_seed(spec.seed)
    model, tokenizer = build_classifier(base_path, label_names, lora, trust_remote_code)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    texts = list(texts)
    labels = torch.tensor(list(targets), dtype=torch.long)

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        batch = tokenizer(
            [texts[i] for i in indices],
            padding=True,
            truncation=True,
            max_length=spec.max_length,
            return_tensors="pt",
        )
        batch["labels"] = labels[indices]
        return dict(batch)

    if spec.group_by_length:
        lengths = [
            len(ids)
            for ids in tokenizer(texts, truncation=True, max_length=spec.max_length)["input_ids"]
        ]
        sampler = LengthGroupedBatches(lengths, spec.batch_size, spec.seed)
        loader = torch.utils.data.DataLoader(
            list(range(len(texts))), batch_sampler=sampler, collate_fn=collate
        )
    else:
        loader = torch.utils.data.DataLoader(
            list(range(len(texts))),
            batch_size=spec.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(spec.seed),
            collate_fn=collate,
        )
    head, adapters = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if "modules_to_save" in name else adapters).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": adapters, "lr": spec.learning_rate},
            {"params": head, "lr": spec.head_learning_rate},
        ],
        weight_decay=spec.weight_decay,
    )
    # accelerate steps a prepared scheduler once per process per optimiser step, so the
    # schedule is laid out in single-process steps whatever the number of processes
    schedule_steps = math.ceil(len(texts) / spec.batch_size) * spec.epochs
    warmup_steps = int(spec.warmup_ratio * schedule_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(schedule_steps, warmup_steps)
    )
    total_steps = (
        math.ceil(len(texts) / (spec.batch_size * accelerator.num_processes)) * spec.epochs
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if spec.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {spec.precision!r}")
    device_type = accelerator.device.type
    use_bf16 = spec.precision == "bf16" or (
        spec.precision == "auto" and bf16_available(device_type)
    )

    started = time.perf_counter()
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    bar = tqdm(
        total=total_steps,
        desc="train",
        unit="step",
        disable=not progress or not accelerator.is_main_process,
    )
    model.train()
    for _epoch in range(spec.epochs):
        running = []
        for batch in loader:
            targets_batch = batch.pop("labels")
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(**batch).logits  # (batch, n_labels)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets_batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            value = accelerator.gather(loss.detach()[None]).mean().item()
            step_losses.append(value)
            running.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
        epoch_losses.append(float(np.mean(running)))
    bar.close()
    accelerator.wait_for_everyone()
    result = TrainResult(
        n_train=len(texts),
        steps=len(step_losses),
        epochs=spec.epochs,
        duration_s=time.perf_counter() - started,
        precision="bf16" if use_bf16 else "fp32",
        trainable_params=trainable,
        total_params=total,
        first_loss=step_losses[0],
        final_loss=epoch_losses[-1],
        epoch_losses=epoch_losses,
        step_losses=step_losses,
    )
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_classifier(unwrapped, tokenizer, label_names, out_dir, result, extra_meta or {})
    accelerator.wait_for_everyone()
    return result


def save_classifier(
    model,
    tokenizer,
    label_names: Sequence[str],
    out_dir: Path,
    result: TrainResult | None = None,
    extra_meta: dict | None = None,
) -> None:
    """A plain PEFT folder (safetensors, head included) + tokenizer + labels.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    labels = {"labels": list(label_names), "num_labels": len(label_names), **(extra_meta or {})}
    (out_dir / LABELS_FILE).write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
    if result is not None:
        (out_dir / METRICS_FILE).write_text(
            json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8"
        )


def read_labels(adapter_dir: Path) -> list[str]:
    return json.loads((adapter_dir / LABELS_FILE).read_text(encoding="utf-8"))["labels"]


def load_classifier(base_path: str, adapter_dir: Path, trust_remote_code: bool = False):
    """Base + saved adapter and head, in eval mode; returns (model, tokenizer, label names)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    label_names = read_labels(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = _load_base(base_path, label_names, tokenizer, trust_remote_code)
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
) -> np.ndarray:
    """Class probabilities, (n, n_labels) float64; batches are formed by length for speed."""
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
