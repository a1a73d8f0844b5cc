"""Generation students on a tiny Llama: answer-only loss, plain PEFT folders, mixed batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests import tiny
from training.classifier import LoraSpec, train_classifier
from training.generator import (
    PromptSpec,
    answer_ids,
    answer_loss,
    generate,
    load_generator,
    prompt_ids,
    train_generator,
)
from training.loop import TrainSpec
from training.multitask import (
    load_classifiers,
    load_generators,
    predict_proba_mixed,
)

PROMPT = PromptSpec("Say the intent.", max_input_tokens=32, max_new_tokens=6)
SPEC = TrainSpec(batch_size=8, learning_rate=2e-2, target_steps=40, tracker="none",
                 precision="fp32")  # fmt: skip


def _rows(n=80):
    rows = tiny.make_rows(n)
    return [r["text"] for r in rows], [r["intent"].replace("_", " ") for r in rows]


def test_loss_is_on_the_answer_tokens_only(tiny_teacher):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    context, target = prompt_ids(tok, PROMPT, "i lost my card"), answer_ids(tok, PROMPT, "refund")
    assert target[-1] == tok.eos_token_id
    ids = torch.tensor([context + target])
    labels = torch.tensor([[-100] * len(context) + target])
    vocab = len(tok)
    logits = torch.randn(1, ids.shape[1], vocab)
    logits[0, len(context) - 1 :, :] = 0.0  # uniform over the answer positions only
    assert answer_loss(logits, labels).item() == pytest.approx(np.log(vocab), rel=1e-5)


def test_generation_student_learns_and_is_a_plain_peft_folder(tiny_teacher, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    texts, answers = _rows()
    result = train_generator(str(tiny_teacher), texts, answers, PROMPT, tmp_path / "a", SPEC,
                             LoraSpec(r=8, alpha=16), progress=False)  # fmt: skip
    assert result.final_loss < result.first_loss and result.n_val == 8
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "generation.json",
            "training_metrics.json"} <= files  # fmt: skip
    model, tok, prompt = load_generator(str(tiny_teacher), tmp_path / "a")
    assert prompt == PROMPT
    ours = generate(model, tok, prompt, texts[:12], batch_size=5)
    assert (ours.mean_logprob <= 0).all() and (ours.min_logprob <= ours.mean_logprob + 1e-9).all()
    assert (ours.output_tokens >= 1).all() and (ours.output_tokens <= 6).all()
    # without cascadekit: the base + PeftModel.from_pretrained, greedy decoding
    base = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    plain = PeftModel.from_pretrained(base, tmp_path / "a").eval()
    ids = torch.tensor([prompt_ids(tok, PROMPT, texts[0])])
    out = plain.generate(input_ids=ids, max_new_tokens=6, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    text = tok.decode([t for t in out[0, ids.shape[1] :].tolist() if t != tok.eos_token_id],
                      skip_special_tokens=True).strip()  # fmt: skip
    assert text == ours.texts[0]


def test_one_base_serves_every_generation_adapter_in_mixed_batches(tiny_teacher, tmp_path):
    texts, answers = _rows(48)
    spec = TrainSpec(batch_size=8, learning_rate=2e-2, epochs=2, tracker="none",
                     precision="fp32", val_fraction=0)  # fmt: skip
    train_generator(str(tiny_teacher), texts, answers, PROMPT, tmp_path / "x", spec,
                    LoraSpec(r=4, alpha=8), progress=False)  # fmt: skip
    upper = ["refund" if a != "refund" else "other" for a in answers]
    train_generator(str(tiny_teacher), texts, upper, PROMPT, tmp_path / "y", spec,
                    LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
                    progress=False)  # fmt: skip
    model, tok = load_generators(str(tiny_teacher), {"x": tmp_path / "x", "y": tmp_path / "y"})
    owners = ["x", "y"] * 5
    mixed = generate(model, tok, PROMPT, texts[:10], batch_size=10, adapter_names=owners)
    for name in ("x", "y"):
        single, tok1, _ = load_generator(str(tiny_teacher), tmp_path / name)
        rows = [i for i, o in enumerate(owners) if o == name]
        alone = generate(single, tok1, PROMPT, [texts[i] for i in rows], batch_size=5)
        assert [mixed.texts[i] for i in rows] == alone.texts
        assert np.allclose([mixed.mean_logprob[i] for i in rows], alone.mean_logprob, atol=1e-4)


def test_one_base_serves_classifiers_with_different_label_sets(tiny_student, tmp_path):
    from training.classifier import load_classifier, predict_proba

    rows = tiny.make_rows(64)
    texts = [r["text"] for r in rows]
    spec = TrainSpec(epochs=2, batch_size=16, max_length=32, tracker="none", val_fraction=0)
    train_classifier(str(tiny_student), texts, [tiny.LABELS.index(r["intent"]) for r in rows],
                     tiny.LABELS, tmp_path / "four", spec, LoraSpec(r=4, alpha=8),
                     progress=False)  # fmt: skip
    binary = ["card", "other"]
    targets = [0 if r["intent"].startswith("card") else 1 for r in rows]
    train_classifier(str(tiny_student), texts, targets, binary, tmp_path / "two", spec,
                     LoraSpec(r=4, alpha=8), progress=False)  # fmt: skip
    model, tok, labels = load_classifiers(
        str(tiny_student), {"four": tmp_path / "four", "two": tmp_path / "two"}
    )
    assert labels == {"four": tiny.LABELS, "two": binary}
    owners = ["four", "two", "two", "four", "two", "four"]
    mixed = predict_proba_mixed(model, tok, labels, texts[:6], owners, max_length=32)
    for name in ("four", "two"):
        single, tok1, _ = load_classifier(str(tiny_student), tmp_path / name)
        rows_ = [i for i, o in enumerate(owners) if o == name]
        alone = predict_proba(single, tok1, [texts[i] for i in rows_], max_length=32)
        for k, i in enumerate(rows_):
            assert mixed[i].shape == (len(labels[name]),)
            assert np.allclose(mixed[i], alone[k], atol=1e-5)


def test_rationales_add_explanation_examples_to_training_only(tiny_teacher, tmp_path):
    texts, answers = _rows(100)
    rationales = [f"it says {t.split()[0]}" if i % 2 else None for i, t in enumerate(texts)]
    spec = TrainSpec(batch_size=8, epochs=1, tracker="none", precision="fp32")
    plain = train_generator(str(tiny_teacher), texts, answers, PROMPT, tmp_path / "a", spec,
                            LoraSpec(r=4, alpha=8), progress=False)  # fmt: skip
    taught = train_generator(str(tiny_teacher), texts, answers, PROMPT, tmp_path / "b", spec,
                             LoraSpec(r=4, alpha=8), progress=False,
                             rationales=rationales)  # fmt: skip
    assert plain.n_val == taught.n_val == 10
    held_out = plain.n_train + plain.n_val
    extra = taught.n_train - plain.n_train
    assert 0 < extra <= sum(r is not None for r in rationales) < held_out
    assert json.loads((tmp_path / "b/generation.json").read_text())["instruction"] == (
        PROMPT.instruction
    )  # answering never asks for the explanation
