"""Teachers: the hf backend's one-pass option scoring equals brute force; the dataset backend
keeps answers outside the label set as errors; the cache makes repeated questions free."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.cache import AnswerCache
from distill.config import ClassificationTask, DatasetTeacherConfig, HFTeacherConfig
from distill.data import Record
from distill.errors import ConfigError
from distill.teachers import make_teacher
from distill.teachers.base import TeacherAnswer
from distill.teachers.hf import HFTeacher, build_label_trie
from tests import tiny

TASK = ClassificationTask(
    name="intent",
    instruction="Label the message.",
    labels=[{"name": n, "description": n.replace("_", " ")} for n in tiny.LABELS],
    examples=[{"text": "i lost my card", "label": "card_lost"}],
)
TEXTS = ["my card was declined today", "where is my refund", "tell me a joke please", "i lost"]


def test_label_trie_marks_only_real_choices():
    # a b END / a c END / d END: the model chooses at the root and after "a"
    trie = build_label_trie([[1, 2, 9], [1, 3, 9], [4, 9]])
    assert list(trie.tree_tokens) == [1]
    assert [kids for _, kids in trie.choices] == [[1, 4], [2, 3]]
    assert trie.label_steps == [[(0, 0), (1, 0)], [(0, 0), (1, 1)], [(0, 1)]]
    with pytest.raises(ConfigError, match="same sequence"):
        build_label_trie([[1, 9], [1, 9]])


def _brute_force(teacher: HFTeacher, text: str) -> np.ndarray:
    """Constrained label probabilities from plain full forward passes, one per label."""
    tok, lm = teacher.tokenizer, teacher.lm
    prompt = teacher._prompt(TASK)
    state = teacher._task_state(TASK)
    trie = state.trie
    prefix = state.prefix_ids + tok(text, add_special_tokens=False).input_ids + state.suffix_ids
    sequences = state.sequences
    assert prompt.answer_end and all(len(s) >= 2 for s in sequences)
    scores = []
    lm.set_attn_implementation("eager")
    try:
        for seq in sequences:
            ids = torch.tensor([prefix + seq])
            with torch.no_grad():
                logits = lm(ids).logits[0].float()  # (len, vocab)
            total = 0.0
            for k in range(len(seq)):
                options = sorted({s[k] for s in sequences if s[:k] == seq[:k]})
                if len(options) > 1:  # a real choice between labels at this step
                    row = logits[len(prefix) + k - 1, options]
                    total += torch.log_softmax(row, -1)[options.index(seq[k])].item()
            scores.append(total)
    finally:
        from distill.teachers import prefix_attention

        lm.set_attn_implementation(prefix_attention.NAME)
    assert len(trie.choices) >= 2  # the tiny labels share "card _", so the trie branches
    return np.exp(scores)


@pytest.mark.parametrize("fixture", ["tiny_teacher", "tiny_teacher_plain"])
def test_one_pass_scoring_equals_brute_force(fixture, request):
    folder = request.getfixturevalue(fixture)
    teacher = HFTeacher(HFTeacherConfig(kind="hf", model=str(folder), dtype="float32"))
    records = [Record(id=str(i), text=t) for i, t in enumerate(TEXTS)]
    answers = teacher.label_batch(TASK, records)  # one padded batch of different lengths
    for record, answer in zip(records, answers, strict=True):
        probs = np.array([answer.probs[n] for n in TASK.label_names])
        assert probs.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.allclose(probs, _brute_force(teacher, record.text), atol=1e-5)
        assert answer.label == TASK.label_names[int(np.argmax(probs))]
        assert answer.input_tokens > len(teacher._task_state(TASK).prefix_ids)
        assert answer.output_tokens >= 2
    # batch composition does not change an answer
    alone = teacher.label_batch(TASK, records[:1])[0]
    assert np.allclose(list(alone.probs.values()), list(answers[0].probs.values()), atol=1e-5)


def test_cache_key_depends_on_prompt_and_teacher(tiny_teacher, tiny_teacher_plain):
    chat = HFTeacher(HFTeacherConfig(kind="hf", model=str(tiny_teacher)))
    plain = HFTeacher(HFTeacherConfig(kind="hf", model=str(tiny_teacher_plain)))
    record = Record(id="1", text="where is my refund")
    assert chat.cache_key(TASK, record) == chat.cache_key(TASK, Record(id="2", text=record.text))
    assert chat.cache_key(TASK, record) != chat.cache_key(TASK, Record(id="1", text="other"))
    assert chat.cache_key(TASK, record) != plain.cache_key(TASK, record)
    other_task = TASK.model_copy(update={"instruction": "Label it differently."})
    assert chat.cache_key(TASK, record) != chat.cache_key(other_task, record)


def test_dataset_teacher_keeps_outside_answers_as_errors():
    teacher = make_teacher(DatasetTeacherConfig(kind="dataset", label_field="rec"))
    records = [
        Record(id="1", text="x", fields={"rec": "refund"}),
        Record(id="2", text="y", fields={"rec": "Refund!"}),
        Record(id="3", text="z", fields={"rec": None}),
    ]
    answers = teacher.label_batch(TASK, records)
    assert answers[0].label == "refund" and answers[0].error is None
    assert answers[1].label is None and "'Refund!' is not in the label set" in answers[1].error
    assert answers[2].label is None and answers[2].error == "no answer recorded"


def test_answer_cache_round_trip_and_persistence(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = AnswerCache(path)
    answer = TeacherAnswer(label="a", probs={"a": 0.9, "b": 0.1}, input_tokens=10, output_tokens=2)
    cache.put_many("t", [("k1", answer)])
    cache.close()
    again = AnswerCache(path)
    assert again.get_many(["k1", "k2"]) == {"k1": answer}
    assert len(again) == 1


def test_labels_end_with_the_templates_end_of_turn(tiny_teacher, tiny_teacher_plain):
    from distill.teachers.hf import label_sequences

    chat = HFTeacher(HFTeacherConfig(kind="hf", model=str(tiny_teacher)))
    tok = chat.tokenizer
    sequences = label_sequences(tok, chat._prompt(TASK), ["other", "card_lost"])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert [s[-1] for s in sequences] == [end, end]
    assert sequences[1][:3] == tok("card_lost", add_special_tokens=False).input_ids
    # a label that is a prefix of another is still a distinct answer thanks to the end mark
    prefixed = label_sequences(tok, chat._prompt(TASK), ["card", "card_lost"])
    assert prefixed[0] != prefixed[1][: len(prefixed[0])]
    plain = HFTeacher(HFTeacherConfig(kind="hf", model=str(tiny_teacher_plain)))
    assert plain._prompt(TASK).prefix.endswith("Message:\n")


def test_prompt_splits_around_the_input(tiny_teacher):
    teacher = HFTeacher(HFTeacherConfig(kind="hf", model=str(tiny_teacher)))
    prompt = teacher._prompt(TASK)
    full = teacher.tokenizer.apply_chat_template(
        [
            {
                "role": "system",
                "content": prompt.prefix.split("<|im_start|>system\n")[1].split("<|im_end|>")[0],
            },
            {"role": "user", "content": "i lost my card"},
            {"role": "assistant", "content": "card_lost"},
            {"role": "user", "content": "where is my refund"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.render("where is my refund") == full


def test_batched_replies_equal_one_at_a_time(tiny_teacher):
    """complete_many left-pads conversations of different lengths into one generate call;
    greedy replies must be those of each conversation alone."""
    teacher = HFTeacher(HFTeacherConfig(kind="hf", model=str(tiny_teacher), dtype="float32"))
    conversations = [
        [{"role": "user", "content": "my card was declined"}],
        [
            {"role": "system", "content": "You write example inputs."},
            {"role": "user", "content": "write three messages about a refund that never came"},
        ],
    ]
    batched = teacher.complete_many(conversations, max_tokens=12, temperature=0.0)
    alone = [teacher.complete(c, max_tokens=12, temperature=0.0) for c in conversations]
    assert batched == alone
    assert all(isinstance(text, str) and text for text in batched)
