"""Several task adapters on one base model in memory; one batch may mix tasks.

Generation students share a causal LM: every task's LoRA adapter is loaded into it under the
task's name, and `generate(..., adapter_names=[task per row])` runs PEFT's mixed-batch
inference (the base weights are computed once for the whole batch).

Classification students share an encoder, but each has its own head with its own number of
labels. PEFT stacks the per-row head outputs of a mixed batch, so each head is wrapped to pad
its logits to the widest head with -inf; `predict_proba_mixed` then cuts each row back to its
task's labels (the padding gets probability 0).
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


class PaddedHead(torch.nn.Module):
    """A classification head whose logits are padded with -inf to `width` columns."""

    def __init__(self, head: torch.nn.Module, n_labels: int, width: int) -> None:
        super().__init__()
        self.head = head
        self.n_labels = n_labels
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        pad = logits.new_full((*logits.shape[:-1], self.width - self.n_labels), float("-inf"))
        return torch.cat([logits, pad], dim=-1)


def load_classifiers(
    base_path: str,
    adapters: Mapping[str, Path],
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """(model, tokenizer, {task: label names}): one encoder carrying every task's adapter and
    head; heads of different widths are padded so that a batch may mix tasks. Adapters load
    from safetensors only and never run code of their own."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    from peft.utils import ModulesToSaveWrapper
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.bases import require_safetensors_adapter, use_safetensors
    from training.classifier import read_labels

    if not adapters:
        raise ValueError("no adapters to load")
    for folder in adapters.values():
        require_safetensors_adapter(folder)
    names = list(adapters)
    labels = {name: read_labels(Path(adapters[name])) for name in names}
    width = max(len(v) for v in labels.values())
    tokenizer = AutoTokenizer.from_pretrained(adapters[names[0]], trust_remote_code=False)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_path,
        num_labels=width,
        trust_remote_code=trust_remote_code,
        use_safetensors=use_safetensors(allow_pickle),
    )
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    model: PeftModel | None = None
    for name in names:
        config = LoraConfig.from_pretrained(str(adapters[name]))
        if model is None:
            from peft import get_peft_model

            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        weights = load_file(str(Path(adapters[name]) / "adapter_model.safetensors"))
        for module in model.modules():  # give this task's head copy its own width first
            if isinstance(module, ModulesToSaveWrapper) and name in module.modules_to_save:
                old = module.modules_to_save[name]
                if not isinstance(old, torch.nn.Linear):
                    raise ValueError(
                        f"{base_path}: its classification head is a {type(old).__name__}; "
                        "mixed-task batches need a single linear head (BERT-style bases)"
                    )
                width_of = len(labels[name])
                fresh = torch.nn.Linear(old.in_features, width_of, old.bias is not None)
                module.modules_to_save[name] = fresh
        set_peft_model_state_dict(model, weights, adapter_name=name)
    assert model is not None
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for name in names:
                head = module.modules_to_save[name]
                module.modules_to_save[name] = PaddedHead(head, len(labels[name]), width)
    if len(names) == 1:  # nothing to mix: fold the LoRA weights into the base (a faster forward)
        model.merge_adapter()
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, labels


def predict_proba_mixed(
    model,
    tokenizer,
    labels: Mapping[str, Sequence[str]],
    texts: Sequence[str],
    tasks: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
) -> list[np.ndarray]:
    """Per text, the probabilities over its own task's labels; tasks mix within a batch
    (the padded columns of narrower heads get probability 0 and are cut off). A batch of one
    task runs that adapter alone, without PEFT's per-row mixing (about a quarter faster)."""
    from training.classifier import predict_proba

    unique = set(tasks)
    if len(unique) == 1:
        (task,) = unique
        if task not in model.active_adapters:
            model.set_adapter(task, inference_mode=True)
        probs = predict_proba(model, tokenizer, texts, batch_size, max_length)
    else:
        probs = predict_proba(model, tokenizer, texts, batch_size, max_length, adapter_names=tasks)
    return [row[: len(labels[task])] for row, task in zip(probs, tasks, strict=True)]
