"""Tiny models and data built in-process for tests: milliseconds, no downloads.

A WordLevel tokenizer is trained on the test strings; the student is a 2-layer BERT with hidden
size 32, the teacher a 2-layer Llama with a ChatML-style chat template. Both are saved to a
folder because the pipeline loads bases from folders, exactly as it loads real ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LABELS = ["card_lost", "card_declined", "refund", "other"]

TEMPLATES = {
    "card_lost": ["i lost my card", "my card was stolen yesterday", "cannot find my card at all"],
    "card_declined": ["my card was declined", "the shop refused my card", "card not working today"],
    "refund": ["where is my refund", "the refund never arrived", "waiting for a refund still"],
    "other": ["what is the weather", "tell me a joke please", "who won the game"],
}
FILLERS = ["", " please help", " thanks", " now", " urgently", " again", " today", " sir"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_rows(n: int = 160, seed: int = 0) -> list[dict]:
    """Labelled support-like messages: id, text, intent (gold) and a recorded label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        intent = LABELS[i % len(LABELS)]
        text = rng.choice(TEMPLATES[intent]) + rng.choice(FILLERS) + f" ref{i % 17}"
        rows.append({"id": f"r{i:04d}", "text": text, "intent": intent, "recorded": intent})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _vocabulary() -> list[str]:
    words = set()
    for texts in TEMPLATES.values():
        for text in texts:
            words.update(text.split())
    for filler in FILLERS:
        words.update(filler.split())
    words.update(f"ref{i}" for i in range(17))
    for label in LABELS:
        words.update(label.replace("_", " _ ").split())
    words.update(["labels", "label", "message", ":", "-", "reply", "the", "with", "one", "_"])
    return sorted(words)


def make_tokenizer(kind: str):
    """A WordLevel fast tokenizer; `kind` is "bert" (CLS/SEP) or "chat" (ChatML specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + _vocabulary())}
    vocab.update({w: len(vocab) + i for i, w in enumerate(["system", "user", "assistant", "\n"])})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    if kind == "bert":
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_student(folder: Path) -> Path:
    """A 2-layer BERT base (hidden 32) and its tokenizer, saved like any HF model folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = make_tokenizer("bert")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_teacher(folder: Path, chat: bool = True) -> Path:
    """A 2-layer Llama (hidden 32, grouped-query attention) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = make_tokenizer("chat")
    if not chat:
        tokenizer.chat_template = None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(
    folder: Path,
    data: Path,
    student: Path,
    teacher: Path | None = None,
    run_dir: str = "run",
    epochs: int = 8,
) -> Path:
    """A complete run config over the tiny models; the dataset teacher when teacher is None."""
    teacher_block = (
        {"kind": "dataset", "label_field": "recorded"}
        if teacher is None
        else {"kind": "hf", "model": str(teacher), "dtype": "float32", "batch_size": 8}
    )
    config = {
        "run_dir": run_dir,
        "teacher_cache": "cache/teacher.sqlite",
        "data": {"path": str(data), "gold_field": "intent", "seed": 0},
        "tasks": [
            {
                "name": "intent",
                "kind": "classification",
                "instruction": "Label the message.",
                "labels": [{"name": n, "description": n.replace("_", " ")} for n in LABELS],
                "examples": [{"text": "i lost my card", "label": "card_lost"}],
            }
        ],
        "teacher": teacher_block,
        "student": {
            "base_model": str(student),
            "training": {
                "epochs": epochs,
                "batch_size": 16,
                "learning_rate": 5e-3,
                "head_learning_rate": 1e-2,
                "max_length": 32,
            },
        },
        "cascade": {"alpha": 0.2, "delta": 0.2},
        "cost": {
            "teacher": {"usd_per_million_input_tokens": 3.0, "usd_per_million_output_tokens": 15.0},
            "student": {"usd_per_million_input_tokens": 0.02},
            "tokens_per_day": 8e9,
        },
    }
    import yaml

    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
