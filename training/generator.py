"""LoRA generation and extraction students on a causal LM (default: SmolLM2-135M-Instruct).

The prompt is the tokenizer's chat template with the task's instruction as the system turn and
the input as the user turn; the student learns the teacher's answer, with the loss on the
answer tokens only. Inference is batched greedy generation (left padding); the confidence of an
answer is the mean and the minimum log-probability of its tokens (the end-of-turn token
included: knowing when to stop is part of the answer).

A student is saved as a plain PEFT folder (adapter_config.json, adapter_model.safetensors, the
tokenizer) plus `generation.json` (task kind, instruction, token limits), so that

    base = AutoModelForCausalLM.from_pretrained(BASE)
    model = PeftModel.from_pretrained(base, ADAPTER_DIR)

reloads it without cascadekit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from training.classifier import (
    LoraSpec,
    make_accelerator,
    run_fingerprint,
    save_adapter,
    validation_split,
    wrap_lora,
)
from training.loop import FitResult, TrainSpec, fit, pad_batch

GENERATION_FILE = "generation.json"
RATIONALE_SUFFIX = "\nInstead of the answer, explain step by step how to reach it."
RATIONALE_TOKENS = 128
DEFAULT_LORA = LoraSpec()


@dataclass(frozen=True)
class PromptSpec:
    instruction: str
    max_input_tokens: int = 256  # the input text is cut to this many tokens
    max_new_tokens: int = 64  # answers are cut to this many tokens (training and inference)


def _ids(encoded) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def prompt_ids(tokenizer, prompt: PromptSpec, text: str) -> list[int]:
    """The tokens the model reads before answering: chat template (system = instruction,
    user = the input, cut to `max_input_tokens`), or a plain layout without a template."""
    cut = tokenizer(text, add_special_tokens=False)["input_ids"][: prompt.max_input_tokens]
    text = tokenizer.decode(cut)
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": prompt.instruction},
            {"role": "user", "content": text},
        ]
        return _ids(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        )
    plain = f"{prompt.instruction}\nInput: {text}\nOutput:"
    return tokenizer(plain, add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer, prompt: PromptSpec, answer: str) -> list[int]:
    """The answer's tokens plus the end-of-turn token, cut to `max_new_tokens`."""
    if not getattr(tokenizer, "chat_template", None):
        answer = " " + answer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"][: prompt.max_new_tokens - 1]
    return [*ids, tokenizer.eos_token_id]


def _example(
    tokenizer, prompt: PromptSpec, text: str, answer: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one training example, at most `max_length` tokens: the answer is
    kept whole (up to max_new_tokens) and the input text is cut further when it must be."""
    target = answer_ids(tokenizer, prompt, answer)
    context = prompt_ids(tokenizer, prompt, text)
    overflow = len(context) + len(target) - max_length
    if overflow > 0:
        budget = max(1, prompt.max_input_tokens - overflow)
        context = prompt_ids(tokenizer, replace(prompt, max_input_tokens=budget), text)
    return context + target, [-100] * len(context) + target


def build_generator(
    base_path: str, lora: LoraSpec, trust_remote_code: bool = False, allow_pickle: bool = False
):
    """A PEFT-wrapped causal LM with fresh LoRA weights, and its tokenizer."""
    from peft import LoraConfig, TaskType

    base, tokenizer = load_base(base_path, trust_remote_code, allow_pickle)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    return wrap_lora(base, config), tokenizer


def load_base(base_path: str, trust_remote_code: bool = False, allow_pickle: bool = False):
    """The causal LM base in fp32 and its tokenizer (safetensors only unless `allow_pickle`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.bases import use_safetensors

    tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{base_path}: the tokenizer has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
        use_safetensors=use_safetensors(allow_pickle),
    )
    return base, tokenizer


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (labels -100 elsewhere), next-token shifted."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def train_generator(
    base_path: str,
    texts: Sequence[str],
    answers: Sequence[str],
    prompt: PromptSpec,
    out_dir: Path,
    spec: TrainSpec | None = None,
    lora: LoraSpec = DEFAULT_LORA,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    extra_meta: dict | None = None,
    log_dir: Path | None = None,
    rationales: Sequence[str | None] | None = None,
    val_texts: Sequence[str] | None = None,
    val_answers: Sequence[str] | None = None,
    **options,
) -> FitResult:
    """Train a LoRA generation student on (input, teacher answer) pairs; save to `out_dir`.

    Loss on the answer tokens only; a seeded slice held out for early stopping on its answer
    loss (the best weights are kept). With `rationales` (distilling step by step, Hsieh et al.
    2023), each training row that has one adds a second example whose instruction asks for the
    explanation and whose target is the rationale; the answer prompt stays unchanged, so
    inference never generates the explanation. Early stopping validates on `val_texts` /
    `val_answers` when given. `options` go to `training.loop.fit`: checkpoint_dir, resume,
    run_name, progress, log, on_step."""
    spec = spec or TrainSpec(batch_size=8, learning_rate=1e-3, max_length=256)
    if len(texts) != len(answers):
        raise ValueError("texts and answers must have the same length")
    if len(texts) == 0:
        raise ValueError("no training rows")
    from accelerate.utils import set_seed

    accelerator = make_accelerator(spec, log_dir)
    set_seed(spec.seed)
    model, tokenizer = build_generator(base_path, lora, trust_remote_code, allow_pickle)
    examples = [
        _example(tokenizer, prompt, text, answer, spec.max_length)
        for text, answer in zip(texts, answers, strict=True)
    ]
    if (val_texts is None) != (val_answers is None) or len(val_texts or ()) != len(
        val_answers or ()
    ):
        raise ValueError("val_texts and val_answers go together, one answer per text")
    if val_texts is None:
        train_idx, val_idx = validation_split(len(examples), spec.val_fraction, spec.seed)
    else:  # given: appended after the training rows
        train_idx = list(range(len(examples)))
        examples += [
            _example(tokenizer, prompt, text, answer, spec.max_length)
            for text, answer in zip(val_texts, val_answers or (), strict=True)
        ]
        val_idx = list(range(len(train_idx), len(examples)))
    if rationales is not None:
        if len(rationales) != len(texts):
            raise ValueError("rationales must have one entry per text")
        explain = PromptSpec(
            prompt.instruction + RATIONALE_SUFFIX,
            prompt.max_input_tokens,
            max(prompt.max_new_tokens, RATIONALE_TOKENS),
        )
        for i in list(train_idx):  # the validation slice keeps measuring answers only
            if rationales[i]:
                train_idx.append(len(examples))
                examples.append(
                    _example(tokenizer, explain, texts[i], rationales[i], spec.max_length)
                )

    def collate_rows(rows: list[int]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([examples[r][0] for r in rows], tokenizer.pad_token_id)
        labels, _ = pad_batch([examples[r][1] for r in rows], 0, value=-100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_rows([train_idx[i] for i in indices])

    def loss_fn(model, batch) -> torch.Tensor:
        labels = batch.pop("labels")
        return answer_loss(model(**batch).logits, labels)

    def validate(model) -> dict[str, float]:
        total, count = 0.0, 0
        ordered = sorted(val_idx, key=lambda r: len(examples[r][0]))
        for start in range(0, len(ordered), spec.batch_size):
            batch = collate_rows(ordered[start : start + spec.batch_size])
            labels = batch.pop("labels").to(model.device)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            n = int((labels[:, 1:] != -100).sum())
            total += float(answer_loss(model(**batch).logits, labels)) * n
            count += n
        loss = total / max(count, 1)
        return {"loss": loss, "metric": -loss}

    fingerprint = run_fingerprint(
        "generator", base_path, list(texts), list(answers), asdict(prompt), asdict(spec),
        asdict(lora), accelerator.num_processes, list(rationales or ()),
        list(val_texts or ()), list(val_answers or ()),
    )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    model, result = fit(
        model,
        [{"params": params, "lr": spec.learning_rate}],
        [len(examples[i][0]) for i in train_idx],
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
        save_generator(model, tokenizer, prompt, out_dir, result, extra_meta or {})
    accelerator.wait_for_everyone()
    return result


def save_generator(
    model, tokenizer, prompt: PromptSpec, out_dir: Path, result=None, extra_meta=None
) -> None:
    save_adapter(
        model, tokenizer, out_dir, GENERATION_FILE, {**asdict(prompt), **(extra_meta or {})}, result
    )


def read_prompt(adapter_dir: Path) -> PromptSpec:
    meta = json.loads((adapter_dir / GENERATION_FILE).read_text(encoding="utf-8"))
    return PromptSpec(
        instruction=meta["instruction"],
        max_input_tokens=meta["max_input_tokens"],
        max_new_tokens=meta["max_new_tokens"],
    )


def load_generator(
    base_path: str, adapter_dir: Path, trust_remote_code: bool = False, allow_pickle: bool = False
):
    """Base + saved adapter, in eval mode; returns (model, tokenizer, prompt spec)."""
    from peft import PeftModel

    from training.bases import require_safetensors_adapter

    require_safetensors_adapter(adapter_dir)
    base, tokenizer = load_base(base_path, trust_remote_code, allow_pickle)
    model = PeftModel.from_pretrained(base, adapter_dir)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, read_prompt(adapter_dir)


@dataclass
class Generations:
    texts: list[str]
    mean_logprob: np.ndarray  # per answer: mean log-probability of its tokens
    min_logprob: np.ndarray  # per answer: its least likely token's log-probability
    input_tokens: np.ndarray
    output_tokens: np.ndarray


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[PromptSpec] | PromptSpec,
    texts: Sequence[str],
    batch_size: int = 16,
    adapter_names: Sequence[str] | None = None,
    progress: bool = False,
) -> Generations:
    """Greedy answers with their token log-probabilities, in batches of similar length.

    `prompts` is one spec for all texts or one per text; `adapter_names` (one per text) mixes
    several loaded adapters in one batch (PEFT mixed-batch inference)."""
    n = len(texts)
    specs = [prompts] * n if isinstance(prompts, PromptSpec) else list(prompts)
    contexts = [prompt_ids(tokenizer, spec, text) for spec, text in zip(specs, texts, strict=True)]
    order = sorted(range(n), key=lambda i: len(contexts[i]))
    outputs: list[str] = [""] * n
    mean_lp, min_lp = np.zeros(n), np.zeros(n)
    n_out = np.zeros(n, dtype=np.int64)
    eos = tokenizer.eos_token_id
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([contexts[i] for i in idx], tokenizer.pad_token_id, side="left")
        extra = {}
        if adapter_names is not None:
            extra["adapter_names"] = [adapter_names[i] for i in idx]
        out = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max(specs[i].max_new_tokens for i in idx),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            output_logits=True,
            return_dict_in_generate=True,
            **extra,
        )
        new = out.sequences[:, ids.shape[1] :].cpu()  # (batch, steps)
        logits = torch.stack(out.logits, dim=1).float().cpu()  # (batch, steps, vocab)
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, new[..., None])[..., 0]
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            limit = min(len(tokens), specs[i].max_new_tokens)
            length = tokens.index(eos) + 1 if eos in tokens[:limit] else limit
            lp = token_lp[row, :length]
            outputs[i] = tokenizer.decode(
                [t for t in tokens[:length] if t != eos], skip_special_tokens=True
            ).strip()
            mean_lp[i] = float(lp.mean()) if length else float("-inf")
            min_lp[i] = float(lp.min()) if length else float("-inf")
            n_out[i] = length
    return Generations(
        texts=outputs,
        mean_logprob=mean_lp,
        min_logprob=min_lp,
        input_tokens=np.array([len(c) for c in contexts], dtype=np.int64),
        output_tokens=n_out,
    )
