"""cascadekit's cascade curve summary as a Hugging Face `evaluate` module (loads offline):

    metric = evaluate.load(evaluate_module_path("cascade_curve"))
    metric.compute(scores=[...], predictions=[student answers], references=[teacher answers])

Quality is agreement with the teacher; every request costs 1 at the teacher and 0 at the
student, so savings are the share of traffic the student keeps.
"""

import datasets
import evaluate
import numpy as np

from eval.curves import cascade_curve, summarize_curve


class CascadekitCascadeCurve(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="scores (student confidence), predictions (student answers), "
            "references (teacher answers)",
            features=datasets.Features(
                {
                    "scores": datasets.Value("float64"),
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, scores, predictions, references):
        n = len(scores)
        curve = cascade_curve(
            np.asarray(scores, dtype=float),
            np.asarray(predictions, dtype=object),
            np.asarray(references, dtype=object),
            np.zeros(n),
            np.ones(n),
        )
        summary = summarize_curve(curve, "agreement", 1.0)
        return {
            "auc": summary.auc,
            "apgr": summary.apgr,
            **{f"cpt_{level}": value for level, value in summary.cpt.items()},
            "savings_at_matched_quality": summary.savings_at_matched_quality,
        }
