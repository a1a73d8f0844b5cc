"""cascadekit's `token_f1` as a Hugging Face `evaluate` module, loaded offline from its folder:

import evaluate
from distill.metrics import evaluate_module_path

metric = evaluate.load(evaluate_module_path("token_f1"))
metric.compute(predictions=["refund"], references=["refund"])
"""

from distill.metrics import label_metric

CascadekitMetric = label_metric("token_f1")
