"""The LoRA classification student on a tiny BERT: it learns, saves, and reloads anywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests import tiny
from training.classifier import (
    LoraSpec,
    TrainSpec,
    build_classifier,
    count_tokens,
    load_classifier,
    predict_proba,
    train_classifier,
)
from training.scores import SCORES, margin, max_prob, neg_entropy


def _training_data():
    rows = tiny.make_rows(96)
    texts = [r["text"] for r in rows]
    targets = [tiny.LABELS.index(r["intent"]) for r in rows]
    return texts, targets


def test_training_changes_the_adapters_and_head_and_lowers_the_loss(tiny_student, tmp_path):
    from accelerate.utils import set_seed

    texts, targets = _training_data()
    lora = LoraSpec(r=4, alpha=8)
    spec = TrainSpec(
        epochs=20, batch_size=16, learning_rate=1e-2, head_learning_rate=3e-2, max_length=32
    )
    set_seed(spec.seed)  # the same initial weights as training starts from
    before, _ = build_classifier(str(tiny_student), tiny.LABELS, lora)
    set_seed(spec.seed)
    again, _ = build_classifier(str(tiny_student), tiny.LABELS, lora)
    initial = dict(again.named_parameters())
    assert all(torch.equal(p, initial[n]) for n, p in before.named_parameters()), "seeding"
    result = train_classifier(
        str(tiny_student), texts, targets, tiny.LABELS, tmp_path / "adapter", spec, lora,
        progress=False,
    )  # fmt: skip
    assert result.steps == 20 * 6
    assert result.final_loss < result.first_loss
    assert 0 < result.trainable_params < result.total_params
    model, tokenizer, names = load_classifier(str(tiny_student), tmp_path / "adapter")
    assert names == tiny.LABELS
    trained = dict(model.named_parameters())
    changed = {
        name
        for name, param in before.named_parameters()
        # the head's untrained original is re-drawn when a base loads; PEFT never uses it
        if "original_module" not in name and not torch.equal(param, trained[name])
    }
    trainable = {name for name, param in before.named_parameters() if param.requires_grad}
    assert changed <= trainable, "frozen base weights moved"
    for part in ("lora_A", "lora_B", "modules_to_save"):
        assert any(part in name for name in changed), f"{part} did not move"
    probs = predict_proba(model, tokenizer, texts, batch_size=7, max_length=32)
    assert probs.shape == (len(texts), len(tiny.LABELS))
    assert np.allclose(probs.sum(axis=1), 1.0)
    accuracy = np.mean(probs.argmax(axis=1) == np.array(targets))
    assert accuracy > 0.6  # it learned the templates (chance is 0.25)


def test_saved_adapter_is_plain_peft_and_round_trips(tiny_student, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    texts, targets = _training_data()
    out = tmp_path / "adapter"
    spec = TrainSpec(epochs=1, batch_size=32, max_length=32)
    train_classifier(str(tiny_student), texts, targets, tiny.LABELS, out, spec, progress=False)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)  # no pickles
    assert json.loads((out / "labels.json").read_text())["labels"] == tiny.LABELS
    model, tokenizer, _ = load_classifier(str(tiny_student), out)
    ours = predict_proba(model, tokenizer, texts[:10], max_length=32)
    # without cascadekit: the base with N labels + PeftModel.from_pretrained
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_student, num_labels=len(tiny.LABELS)
    )
    plain = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        batch = tokenizer(
            texts[:10], padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        theirs = torch.softmax(plain(**batch).logits, -1).numpy()
    assert np.allclose(ours, theirs, atol=1e-5)


def test_training_is_reproducible_with_a_seed(tiny_student, tmp_path):
    texts, targets = _training_data()
    spec = TrainSpec(epochs=2, batch_size=16, max_length=32, seed=7)
    a = train_classifier(str(tiny_student), texts, targets, tiny.LABELS, tmp_path / "a", spec,
                         progress=False)  # fmt: skip
    b = train_classifier(str(tiny_student), texts, targets, tiny.LABELS, tmp_path / "b", spec,
                         progress=False)  # fmt: skip
    assert a.step_losses == pytest.approx(b.step_losses, rel=1e-5)


def test_count_tokens_truncates(tiny_student):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_student)
    counts = count_tokens(tokenizer, ["i lost my card", "i lost my card " * 40], max_length=16)
    assert counts[0] == 6  # [CLS] + 4 words + [SEP]
    assert counts[1] == 16


def test_score_functions():
    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    assert max_prob(probs) == pytest.approx([0.7, 1 / 3, 1.0])
    assert margin(probs) == pytest.approx([0.5, 0.0, 1.0])
    entropy = neg_entropy(probs)
    assert entropy[2] == pytest.approx(0.0)
    assert entropy[1] == pytest.approx(-np.log(3))
    assert entropy[0] < entropy[2] and entropy[1] < entropy[0]
    assert set(SCORES) == {"max_prob", "margin", "neg_entropy"}
