"""cascadekit's `exact_match` as a Hugging Face `evaluate` module, loaded offline from its folder:

import evaluate
from distill.metrics import evaluate_module_path

metric = evaluate.load(evaluate_module_path("exact_match"))
metric.compute(predictions=["refund"], references=["refund"])
"""

from distill.metrics import label_metric

CascadekitMetric = label_metric("exact_match")
