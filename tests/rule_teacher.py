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
