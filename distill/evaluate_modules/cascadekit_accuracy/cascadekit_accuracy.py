"""cascadekit's `accuracy` as a Hugging Face `evaluate` module, loaded offline from its folder:

import evaluate
from distill.metrics import evaluate_module_path

metric = evaluate.load(evaluate_module_path("accuracy"))
metric.compute(predictions=["refund"], references=["refund"])
"""

import datasets
import evaluate

from eval import metrics


class CascadekitMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=metrics.accuracy.__doc__,
            citation="",
            inputs_description="predictions and references: lists of strings",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"accuracy": metrics.accuracy(predictions, references)}
