"""The classification student on a tiny BERT: it learns (LoRA or every weight), saves, and
reloads anywhere; its catch-all rule and its speed figures."""

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
    predict,
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
        name for name, param in before.named_parameters() if not torch.equal(param, trained[name])
    }
    trainable = {name for name, param in before.named_parameters() if param.requires_grad}
    assert changed <= trainable, "frozen base weights moved"
    for part in ("lora_A", "lora_B", "head."):
        assert any(part in name for name in changed), f"{part} did not move"
    probs = predict_proba(model, tokenizer, texts, batch_size=7, max_length=32)
    assert probs.shape == (len(texts), len(tiny.LABELS))
    assert np.allclose(probs.sum(axis=1), 1.0)
    accuracy = np.mean(probs.argmax(axis=1) == np.array(targets))
    assert accuracy > 0.6  # it learned the templates (chance is 0.25)


def test_saved_adapter_is_plain_peft_and_round_trips(tiny_student, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    texts, targets = _training_data()
    out = tmp_path / "adapter"
    spec = TrainSpec(epochs=1, batch_size=32, max_length=32)
    train_classifier(str(tiny_student), texts, targets, tiny.LABELS, out, spec, progress=False)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors",
            "labels.json", "neighbours.safetensors"} <= files  # fmt: skip
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)  # no pickles
    assert json.loads((out / "labels.json").read_text())["labels"] == tiny.LABELS
    model, tokenizer, _ = load_classifier(str(tiny_student), out)
    ours = predict_proba(model, tokenizer, texts[:10], max_length=32)
    # without cascadekit: AutoModel of the base + PeftModel.from_pretrained, mean pooling, head
    encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_student), out).eval()
    head = load_file(str(out / "head.safetensors"))
    with torch.no_grad():
        batch = tokenizer(
            texts[:10], padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        hidden = encoder(**batch).last_hidden_state  # (batch, seq, hidden)
        mask = batch["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        theirs = torch.softmax(pooled @ head["weight"].T + head["bias"], -1).numpy()
    assert np.allclose(ours, theirs, atol=1e-5)


def test_full_fine_tuning_trains_every_encoder_weight(tiny_student, tmp_path):
    texts, targets = _training_data()
    spec = TrainSpec(epochs=8, batch_size=16, learning_rate=1e-3, head_learning_rate=3e-2,
                     max_length=32)  # fmt: skip
    out = tmp_path / "full"
    result = train_classifier(str(tiny_student), texts, targets, tiny.LABELS, out, spec,
                              lora=None, progress=False)  # fmt: skip
    assert result.trainable_params == result.total_params
    assert (out / "encoder.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "labels.json").read_text())["finetune"] == "full"
    model, tokenizer, _ = load_classifier(str(tiny_student), out)
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_student)
    moved = [
        name for name, param in base.named_parameters()
        if "pooler" not in name
        and not torch.equal(param, dict(model.encoder.named_parameters())[name])
    ]  # fmt: skip
    assert any("embeddings" in n for n in moved) and any("attention" in n for n in moved)
    probs = predict_proba(model, tokenizer, texts, max_length=32)
    assert np.mean(probs.argmax(axis=1) == np.array(targets)) > 0.6


def test_a_catch_all_label_goes_to_inputs_far_from_the_training_rows(tiny_student, tmp_path):
    from training.neighbours import answer, fit_catch_all_distance
    from training.student import StudentRule

    texts, targets = _training_data()
    other = tiny.LABELS.index("other")
    keep = [i for i, t in enumerate(targets) if t != other]  # "other" never seen in training
    val = ["what is the weather ref3", "tell me a joke please ref5", "who won the game ref1"] * 5
    val += [texts[i] for i in keep[:15]]
    val_targets = [other] * 15 + [targets[i] for i in keep[:15]]
    spec = TrainSpec(epochs=15, batch_size=16, learning_rate=1e-2, head_learning_rate=3e-2,
                     max_length=32)  # fmt: skip
    out = tmp_path / "open"
    train_classifier(
        str(tiny_student), [texts[i] for i in keep], [targets[i] for i in keep], tiny.LABELS, out,
        spec, LoraSpec(r=4, alpha=8), val_texts=val, val_targets=val_targets,
        catch_all="other", progress=False,
    )  # fmt: skip
    meta = json.loads((out / "labels.json").read_text())
    assert meta["catch_all"] == "other" and meta["catch_all_distance"] is not None
    model, tokenizer, _ = load_classifier(str(tiny_student), out)
    rule = StudentRule.load(out)
    columns = rule.columns(*predict(model, tokenizer, val, max_length=32))
    answered = np.array([tiny.LABELS.index(label) for label in columns["student_label"]])
    assert np.mean(answered == np.array(val_targets)) > 0.8  # the unseen label is answered
    assert columns["catch_all_answer"] == [label == "other" for label in columns["student_label"]]
    # the rule itself: the distance that makes the validation rows most accurate
    probs = np.eye(3)[[0, 0, 1, 1, 0, 0]] * 0.9 + 0.03
    distance = np.array([0.1, 0.2, 0.15, 0.9, 0.8, 0.7])
    truth = np.array([0, 0, 1, 2, 2, 2])
    threshold = fit_catch_all_distance(distance, probs, truth, catch_all=2)
    assert threshold is None  # fewer than 10 validation rows of the label: no rule
    big = np.repeat(np.arange(6), 4)
    threshold = fit_catch_all_distance(distance[big], probs[big], truth[big], catch_all=2)
    assert 0.2 < threshold < 0.7
    assert answer(probs, distance, 2, threshold).tolist() == [0, 0, 1, 2, 2, 2]


def test_validation_can_select_on_the_risk_coverage_curve():
    from training.classifier import validation_scores

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    targets = np.array([0, 0, 1, 1])
    scores = validation_scores(probs, targets, "aurc")
    assert scores["accuracy"] == 0.75
    # ranked by confidence: right, right, right, wrong -> risks 0, 0, 0, 1/4
    assert scores["aurc"] == pytest.approx(0.0625)
    assert scores["metric"] == pytest.approx(-0.0625 - 1e-4 * scores["loss"])


def test_footprint_of_a_student(tiny_student):
    from training.classifier import footprint

    model, tokenizer = build_classifier(str(tiny_student), tiny.LABELS, LoraSpec(r=4, alpha=8))
    model.eval()
    figures = footprint(model, tokenizer, _training_data()[0][:20], 32, n_alone=5)
    assert figures["ms_per_input_alone"] > 0
    assert figures["parameters"] == sum(p.numel() for p in model.parameters())
    assert figures["peak_rss_mb"] > figures["weights_mb"] > 0


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
