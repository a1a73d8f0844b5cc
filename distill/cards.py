"""The model card (README.md) of a published cascade task: Hub-convention YAML metadata and a
body that states the guarantee in plain words, the curve, the costs and how to load it."""

from __future__ import annotations

import math
from typing import Any

import yaml

LICENSES = {  # embedded bases' licences
    "embedded:all-minilm-l6-v2": "apache-2.0",
    "embedded:smollm2-135m-instruct": "apache-2.0",
    "embedded:qwen2.5-coder-1.5b-instruct": "apache-2.0",
    "embedded:qwen2.5-coder-0.5b-instruct": "apache-2.0",
}


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def metadata(task: str, entry: dict, result: dict) -> dict[str, Any]:
    """The card's YAML front matter (base_model, library_name, pipeline_tag, tags, license,
    model-index with the cascade's test metrics)."""
    from training.bases import hub_id

    cascade, curve = result["cascade"], result["curve"]
    classification = entry["kind"] == "classification"
    quality = result.get("quality_metric", "accuracy")
    metrics = [
        {"type": "deferral_rate", "name": "Deferral rate", "value": cascade["deferral_rate"]},
        {"type": "risk", "name": "Departure from teacher (risk)", "value": cascade["risk"]},
        {"type": "savings", "name": "Savings vs teacher alone", "value": cascade["savings_rate"]},
        {"type": "apgr", "name": "APGR", "value": curve.get("apgr")},
    ]
    if cascade.get("accuracy") is not None:
        metrics.insert(
            0, {"type": "accuracy", "name": "Cascade accuracy", "value": cascade["accuracy"]}
        )
    data: dict[str, Any] = {
        "library_name": "peft",
        "pipeline_tag": "text-classification" if classification else "text-generation",
        "license": LICENSES.get(entry["base_model"], "other"),
        "tags": ["cascadekit", "model-cascade", "lora", "learn-then-test", entry["kind"]],
        "model-index": [
            {
                "name": task,
                "results": [
                    {
                        "task": {
                            "type": "text-classification" if classification else "text-generation",
                            "name": task,
                        },
                        "dataset": {
                            "type": "cascadekit-test-split",
                            "name": f"{task} test split",
                            "split": "test",
                        },
                        "metrics": [m for m in metrics if m["value"] is not None],
                    }
                ],
            }
        ],
    }
    base = hub_id(entry["base_model"])
    if base:
        data["base_model"] = base
    data["model-index"][0]["results"][0]["metrics"].append(
        {
            "type": quality,
            "name": f"Student alone ({quality})",
            "value": result["student"]["accuracy"]
            if quality == "accuracy"
            else result["student"]["agreement"],
        }
    )
    return data


def guarantee_text(entry: dict) -> str:
    alpha, delta, n = entry["alpha"], entry["delta"], entry["n_calib"]
    score = entry["score"]
    if entry.get("per_label"):
        return (
            f"The student answers when its `{score}` score reaches the threshold of the label it "
            f"predicts; otherwise the request goes to the teacher. With probability at least "
            f"{1 - delta:.4g} over the draw of the {n} calibration examples, for every label at "
            f"once, the cascade departs from the teacher on at most {alpha:g} of that label's "
            "traffic (Learn-then-Test per label, δ split between the labels)."
        )
    if entry.get("guarantee") is None:
        return (
            f"The student answers when its `{score}` score is at least {entry['threshold']}; "
            f"the threshold was chosen by `{entry['method']}` and carries no risk guarantee."
        )
    if entry.get("threshold") is None:
        return (
            f"No threshold could be certified at α={alpha:g}, δ={delta:g}: every request goes "
            "to the teacher."
        )
    return (
        f"The student answers when its `{score}` score is at least {entry['threshold']:.4f}; "
        f"otherwise the request goes to the teacher. With probability at least {1 - delta:.4g} "
        f"over the draw of the {n} calibration examples, the cascade departs from the teacher "
        f"on at most {alpha:g} of all traffic (Learn-then-Test, fixed sequence). This holds for "
        "traffic like the calibration data; audit it on yours."
    )


def model_card(task: str, entry: dict, result: dict, tiers: dict | None = None) -> str:
    """README.md of one published task."""
    cascade, curve, teacher = result["cascade"], result["curve"], result["teacher"]
    student = result["student"]
    projection = result.get("projection")
    front = yaml.safe_dump(metadata(task, entry, result), sort_keys=False, allow_unicode=True)
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# Cascade `{task}`: a LoRA student with a calibrated threshold",
        "",
        f"Built with cascadekit from `{entry['base_model']}` and the teacher "
        f"`{entry.get('teacher') or 'unknown'}`.",
        "",
        "## Guarantee",
        "",
        guarantee_text(entry),
        "",
        "## On the test split",
        "",
        "| | accuracy | agreement with teacher | deferral | risk | USD / 1,000 requests |",
        "|---|---|---|---|---|---|",
        f"| teacher alone | {_pct(teacher.get('accuracy'))} | 100.0% | 100.0% | 0.0% | "
        f"{teacher['cost_usd_per_request'] * 1000:.4f} |",
        f"| student alone | {_pct(student.get('accuracy'))} | {_pct(student['agreement'])} | 0.0% "
        f"| {_pct(1 - student['agreement'])} | {student['cost_usd_per_request'] * 1000:.4f} |",
        f"| cascade | {_pct(cascade.get('accuracy'))} | {_pct(cascade['agreement'])} | "
        f"{_pct(cascade['deferral_rate'])} | {_pct(cascade['risk'])} | "
        f"{cascade['cost_usd_per_request'] * 1000:.4f} |",
        "",
        f"Savings against the teacher alone: {_pct(cascade['savings_rate'])}. Curve: AUC "
        f"{curve['auc']:.3f} (oracle {curve['oracle_auc']:.3f}, random {curve['random_auc']:.3f})"
        f", APGR {curve['apgr'] if curve['apgr'] is None else round(curve['apgr'], 3)}; savings "
        f"at matched quality {_pct(curve.get('savings_at_matched_quality'))}.",
        "",
        "![quality against deferral rate and cost](report/curves.png)",
        "",
    ]
    if projection:
        lines += [
            f"At {projection['tokens_per_day']:.3g} teacher tokens a day: teacher only "
            f"${projection['teacher_only_usd_per_day']:,.0f}/day, cascade "
            f"${projection['cascade_usd_per_day']:,.0f}/day.",
            "",
        ]
    if tiers:
        lines += [
            f"The run also calibrated tiers ({' → '.join([*tiers['names'], 'teacher'])}); "
            "only this run's student is published here.",
            "",
        ]
    lines += [
        "## Load it",
        "",
        "```python",
        "from distill.cascade import Cascade",
        "",
        'cascade = Cascade.from_hub("REPO_ID", revision="COMMIT")  # verified against cascade.json',
        f'cascade.predict(["an input"], task="{task}")',
        "```",
        "",
        "The adapter is a plain PEFT folder: `PeftModel.from_pretrained(base, ...)` loads it "
        "on its base (for classification `AutoModel` of the base, whose last hidden states are "
        "mean-pooled into the linear head of `head.safetensors`; labels in `labels.json`; the "
        "training rows' features in `neighbours.safetensors`).",
        "",
        "Files: `cascade.json` (threshold, score, labels or prompt, digests of every file), the "
        "adapter, `report/` (summary.json, curve.csv, plots).",
        "",
    ]
    return "\n".join(lines)
