"""Several task adapters on one base model in memory; one batch may mix tasks.

Generation students share a causal LM: every task's LoRA adapter is loaded into it under the
task's name, and `generate(..., adapter_names=[task per row])` runs PEFT's mixed-batch
inference (the base weights are computed once for the whole batch).

Classification students share an encoder too: each task's LoRA adapter is loaded into it, the
rows of a mixed batch go through their own task's adapter, and each row's pooled features go
to its own task's head (heads differ in their number of labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


def load_generators(
    base_path: str,
    adapters: Mapping[str, Path],
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """(model, tokenizer): one causal LM carrying every adapter under its task's name
    (adapters from safetensors only)."""
    from peft import PeftModel

    from training.bases import require_safetensors_adapter
    from training.generator import load_base

    if not adapters:
        raise ValueError("no adapters to load")
    for folder in adapters.values():
        require_safetensors_adapter(folder)
    base, tokenizer = load_base(base_path, trust_remote_code, allow_pickle)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer


class MultiTaskClassifier(torch.nn.Module):
    """One encoder carrying every task's LoRA adapter, and one linear head per task.

    A batch may mix tasks: the encoder runs each row through its task's adapter (PEFT's
    mixed-batch inference), the pooled features go to each row's own head."""

    def __init__(self, encoder: torch.nn.Module, heads: Mapping[str, torch.nn.Linear]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = torch.nn.ModuleDict(dict(heads))

    @property
    def device(self) -> torch.device:
        return next(iter(self.heads.values())).weight.device

    def embed(self, input_ids, attention_mask, tasks: Sequence[str]) -> torch.Tensor:
        """(batch, hidden) pooled features, each row through its task's adapter."""
        from training.classifier import mean_pooled

        kwargs = {}
        if len(self.heads) > 1:
            unique = set(tasks)
            if len(unique) == 1:  # one task: that adapter alone (about a quarter faster)
                (task,) = unique
                if task not in self.encoder.active_adapters:
                    self.encoder.set_adapter(task, inference_mode=True)
            else:
                kwargs["adapter_names"] = list(tasks)
        return mean_pooled(self.encoder, input_ids, attention_mask, **kwargs)


def load_classifiers(
    base_path: str,
    adapters: Mapping[str, Path],
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """(model, tokenizer, {task: label names}): one encoder carrying every task's LoRA
    adapter, and every task's head. Adapters load from safetensors only and never run code
    of their own. Fully fine-tuned students cannot share an encoder: load them one by one
    with `training.classifier.load_classifier`."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from training.bases import require_safetensors_adapter
    from training.classifier import is_full_finetune, load_encoder, load_head, read_labels

    if not adapters:
        raise ValueError("no adapters to load")
    names = list(adapters)
    for name in names:
        if is_full_finetune(adapters[name]):
            raise ValueError(f"{adapters[name]}: a fully fine-tuned student shares no encoder")
        require_safetensors_adapter(adapters[name])
    labels = {name: read_labels(Path(adapters[name])) for name in names}
    tokenizer = AutoTokenizer.from_pretrained(adapters[names[0]], trust_remote_code=False)
    encoder = load_encoder(base_path, tokenizer, trust_remote_code, allow_pickle)
    model = PeftModel.from_pretrained(encoder, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    if len(names) == 1:  # nothing to mix: fold the LoRA weights into the base (a faster forward)
        model.merge_adapter()
    heads = {name: load_head(adapters[name], len(labels[name])) for name in names}
    classifier = MultiTaskClassifier(model, heads)
    if torch.cuda.is_available():
        classifier.to("cuda")
    classifier.eval()
    return classifier, tokenizer, labels


@torch.inference_mode()
def predict_mixed(
    model: MultiTaskClassifier,
    tokenizer,
    texts: Sequence[str],
    tasks: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
) -> tuple[list[np.ndarray], np.ndarray]:
    """(per text the probabilities over its own task's labels, pooled features (n, hidden));
    tasks mix within a batch, batches are formed by length."""
    from training.classifier import length_batches

    probs: list[np.ndarray] = [np.zeros(0)] * len(texts)
    features: np.ndarray | None = None
    for idx, batch in length_batches(tokenizer, texts, batch_size, max_length):
        pooled = model.embed(
            batch["input_ids"].to(model.device),
            batch["attention_mask"].to(model.device),
            [tasks[i] for i in idx],
        )  # (batch, hidden)
        if features is None:
            features = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        features[idx] = pooled.float().cpu().numpy()
        for task in dict.fromkeys(tasks[i] for i in idx):
            rows = [j for j, i in enumerate(idx) if tasks[i] == task]
            logits = model.heads[task](pooled[rows].to(model.heads[task].weight.dtype))
            task_probs = torch.softmax(logits.float(), dim=-1).double().cpu().numpy()
            for j, row in zip(rows, task_probs, strict=True):
                probs[idx[j]] = row
    if features is None:
        raise ValueError("no texts to predict")
    return probs, features


def predict_proba_mixed(
    model: MultiTaskClassifier,
    tokenizer,
    labels: Mapping[str, Sequence[str]],
    texts: Sequence[str],
    tasks: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
) -> list[np.ndarray]:
    """Per text, the probabilities over its own task's labels (see `predict_mixed`)."""
    probs, _ = predict_mixed(model, tokenizer, texts, tasks, batch_size, max_length)
    for row, task in zip(probs, tasks, strict=True):
        assert len(row) == len(labels[task])
    return probs
