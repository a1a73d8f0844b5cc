"""The project's metrics, and the same metrics as Hugging Face `evaluate` modules loaded
offline from their folders (no hub: HF_HUB_OFFLINE is set for the test session)."""

from __future__ import annotations

import pytest

from eval import metrics

evaluate = pytest.importorskip("evaluate")


def test_metrics():
    assert metrics.macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(
        (2 / 3 + 0.8) / 2
    )
    assert metrics.exact_match(["The Refund!", "x"], ["refund", "y"]) == 0.5
    assert metrics.token_f1(["the card was declined"], ["card declined today"]) == pytest.approx(
        2 * (2 / 3) * (2 / 3) / (4 / 3)
    )
    assert metrics.macro_f1(["a"], [None]) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [("accuracy", 0.5), ("macro_f1", metrics.macro_f1(["a", "b"], ["a", "a"])),
     ("exact_match", 0.5), ("token_f1", 0.5)],
)  # fmt: skip
def test_evaluate_modules_load_offline_and_agree(name, expected):
    from distill.metrics import evaluate_module_path

    metric = evaluate.load(evaluate_module_path(name))
    got = metric.compute(predictions=["a", "b"], references=["a", "a"])
    assert got[name] == pytest.approx(expected)


def test_cascade_curve_module():
    from distill.metrics import evaluate_module_path

    metric = evaluate.load(evaluate_module_path("cascade_curve"))
    scores = [0.9, 0.8, 0.3, 0.2]
    got = metric.compute(scores=scores, predictions=["a", "b", "x", "y"],
                         references=["a", "b", "c", "d"])  # fmt: skip
    # confident rows agree, unsure ones do not: well above random deferral
    assert got["apgr"] > 0.7 and got["savings_at_matched_quality"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_module_path("bleu")
