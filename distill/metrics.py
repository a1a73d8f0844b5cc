"""Where cascadekit's Hugging Face `evaluate` modules live, so that they load offline:
`evaluate.load(evaluate_module_path("macro_f1"))` (`evaluate.load("accuracy")` needs a hub)."""

from __future__ import annotations

from pathlib import Path

MODULES = ("accuracy", "macro_f1", "exact_match", "token_f1", "cascade_curve")


def evaluate_module_path(name: str) -> str:
    """The folder of the module `name` (one of MODULES)."""
    if name not in MODULES:
        raise ValueError(f"unknown metric {name!r}; cascadekit ships {', '.join(MODULES)}")
    return str(Path(__file__).parent / "evaluate_modules" / f"cascadekit_{name}")


def label_metric(name: str):
    """An `evaluate.Metric` class computing `eval.metrics.<name>` on string predictions and
    references: the whole body of each label metric's module script."""
    import datasets
    import evaluate

    from eval import metrics

    function = getattr(metrics, name)

    class LabelMetric(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description=function.__doc__,
                citation="",
                inputs_description="predictions and references: lists of strings",
                features=datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Value("string"),
                    }
                ),
            )

        def _compute(self, predictions, references):
            return {name: function(predictions, references)}

    LabelMetric.__name__ = LabelMetric.__qualname__ = f"Cascadekit_{name}"
    return LabelMetric
