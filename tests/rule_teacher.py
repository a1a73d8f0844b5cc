"""Teachers for tests of the `python` backend: deterministic rules over the tiny data."""

from __future__ import annotations

CALLS: list[int] = []  # texts per call, for tests that count


def by_keyword(task, texts):
    """card_lost / card_declined / refund / other, by keyword; with token counts."""
    CALLS.append(len(texts))
    answers = []
    for text in texts:
        lowered = text.lower()
        if "refund" in lowered or "money back" in lowered:
            label = "refund"
        elif "declin" in lowered or "refused" in lowered:
            label = "card_declined"
        elif "card" in lowered:
            label = "card_lost"
        else:
            label = "other"
        answers.append({"label": label, "input_tokens": len(text.split()), "output_tokens": 1})
    return answers


def always_other(task, texts):
    return ["other" for _ in texts]


def broken(task, texts):
    raise RuntimeError("the rules engine is down")


def write_inputs(messages, max_tokens, temperature):
    """A deterministic writer of inputs: the label's words in new sentences, with some
    repeats and near repeats (which the de-duplication must drop)."""
    text = messages[-1]["content"]
    label = text.split("Label: ", 1)[1].split()[0].replace("_", " ")
    lines = [
        f"1. hello, something about {label} happened to me today",
        f"2. hello, something about {label} happened to me today",  # exact repeat
        f"- Hello, something about {label} happened to me today!",  # near repeat
        f"I need help: {label}, number {len(text) % 7}",
        f'"{label} again, what do I do now?"',
        "i lost my card",  # already in the data
    ]
    return "Here are some examples:\n" + "\n".join(lines)


def write_inputs_recording(messages, max_tokens, temperature):
    """`write_inputs` that also appends each prompt to the file named by RULE_TEACHER_PROMPTS."""
    import os

    with open(os.environ["RULE_TEACHER_PROMPTS"], "a", encoding="utf-8") as handle:
        handle.write(messages[-1]["content"] + "\n")
    return write_inputs(messages, max_tokens, temperature)
