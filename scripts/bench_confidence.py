"""Sharper confidence on CLINC150: MC dropout, a two-seed ensemble and per-class Mahalanobis
distance, each added to the learned deferral score of cascadekit's defaults, measured.

    python scripts/bench_confidence.py [--runs runs/bench_cascade] [--passes 3]

It reads two finished runs of `scripts/bench_cascade.py` (`defaults_s0`, `defaults_s1`: the
same config, training seeds 0 and 1) and scores their calib and test rows again:

- learned: the run's own score, refitted here the way calibrate fits it (its features, the
  same 30% hash share of calib; the threshold from the other 70%), as the reference;
- + mahalanobis: the minimum over labels of the Mahalanobis distance of the input's pooled
  features to the label's training rows (class means, one shared covariance with shrinkage,
  from the training features kept beside the student), and the distance to the answered
  label;
- + mc_dropout: `--passes` forward passes with dropout on; the mean and standard deviation of
  the answered label's probability over them and the share of passes that agree with it
  (inference costs 1 + passes forward passes);
- ensemble: seed 0 and seed 1 students averaged (their mean probabilities give the answer,
  with seed 0's catch-all rule), the learned score on the averaged scores plus whether the
  two seeds agree and seed 1's distance to its training rows (inference costs 2 passes);
- all: the ensemble with every feature above.

Each row: student accuracy, AUROC, savings at α = 0.02 (Learn-then-Test, δ = 0.05, on the
held-out calib share), realised test risk, APGR and the oracle's, APGR over the oracle's, and
forward passes per input. The forward passes are cached in `--runs/confidence/` (re-running
only refits). Last line: `ratio: X.XX (APGR over oracle APGR, best variant over learned)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cascade import measure  # noqa: E402

SPLITS = ("calib", "test")


def forward(run_dir: Path, cache: Path, passes: int) -> dict[str, np.ndarray]:
    """Probabilities and pooled features of the run's student on calib + test (one pass with
    dropout off), and `passes` probabilities with dropout on; cached in `cache`."""
    if cache.is_file():
        with np.load(cache) as saved:
            if saved["mc"].shape[0] == passes:
                return dict(saved)
    import torch
    import yaml

    from distill.pipeline import load_scores
    from training.bases import resolve_model
    from training.classifier import load_classifier, predict

    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    model, tokenizer, _ = load_classifier(
        resolve_model(resolved["student"]["base_model"]), run_dir / "adapters/intent"
    )
    texts = [str(t) for name in SPLITS for t in load_scores(run_dir, "intent", name)["text"]]
    max_length = resolved["student"]["training"]["max_length"]
    batch = resolved["student"]["inference_batch_size"]
    probs, features = predict(model, tokenizer, texts, batch, max_length, progress=True)
    mc = []
    model.train()  # dropout on; predict still runs without gradients
    for seed in range(passes):
        torch.manual_seed(seed)
        mc.append(predict(model, tokenizer, texts, batch, max_length, progress=True)[0])
    mc_probs = np.stack(mc) if mc else np.zeros((0, *probs.shape))
    out = {"probs": probs, "features": features, "mc": mc_probs.astype(np.float32)}
    np.savez(cache, **out)
    return out


def mahalanobis(run_dir: Path, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
    """(n, 2): minimum distance over labels, distance to the answered label (tied covariance,
    shrunk towards its mean variance; the features unit-normalised as the kept ones are)."""
    from training.neighbours import Neighbours

    kept = Neighbours.load(run_dir / "adapters/intent")
    train = kept.features.double().numpy()
    labels = kept.labels.numpy()
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(train)
    shrink = 0.1
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    # (x - m)^T P (x - m) = x^T P x - 2 x^T P m + m^T P m, for every label at once
    xp = x @ precision
    d = (
        np.sum(xp * x, axis=1)[:, None]
        - 2 * xp @ means.T
        + np.sum((means @ precision) * means, axis=1)[None, :]
    )
    d = np.sqrt(np.maximum(d, 0.0))
    full = np.full((len(x), int(labels.max()) + 1), np.inf)
    full[:, classes] = d
    return np.c_[d.min(axis=1), full[np.arange(len(x)), answered]]


def with_catch_all(columns: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Extra features split by catch-all answer, as `deferral_features` splits its own."""
    return np.c_[columns * flag[:, None], columns * (1 - flag)[:, None]]


def evaluate(name, features, agree, fit, held_calib, cost) -> dict:
    from eval.learned import LearnedDeferral

    model = LearnedDeferral().fit(features["calib"][fit], agree["calib"][fit])
    s_calib, s_test = model.predict(features["calib"]), model.predict(features["test"])
    figures = measure(s_calib[held_calib], ~agree["calib"][held_calib], s_test, ~agree["test"])
    return {"variant": name, "passes": cost} | figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/bench_cascade")
    parser.add_argument("--passes", type=int, default=3, help="MC dropout passes")
    args = parser.parse_args()

    import yaml

    from distill.deferral import fit_share, learned_features, read_vocab
    from distill.pipeline import load_scores
    from training.student import StudentRule

    runs = [args.runs / "defaults_s0", args.runs / "defaults_s1"]
    cache = args.runs / "confidence"
    cache.mkdir(exist_ok=True)
    passes = [  # dropout passes for seed 0's student only
        forward(run, cache / f"{run.name}.npz", args.passes if i == 0 else 0)
        for i, run in enumerate(runs)
    ]

    run = runs[0]
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    entry = json.loads((run / "cascade.json").read_text())["tasks"]["intent"]
    vocab = read_vocab(run, entry["learned"])
    tables = {name: load_scores(run, "intent", name) for name in SPLITS}
    sizes = [len(tables[name]["id"]) for name in SPLITS]
    cut = sizes[0]
    fit = fit_share(tables["calib"]["id"], resolved["data"]["seed"],
                    resolved["cascade"]["learned_fit_fraction"])  # fmt: skip
    held = ~fit
    rules = [StudentRule.load(r / "adapters/intent") for r in runs]
    gold = {name: np.asarray(tables[name]["teacher_label"]) for name in SPLITS}

    def split(array: np.ndarray) -> dict[str, np.ndarray]:
        return {"calib": array[:cut], "test": array[cut:]}

    def scored(probs: np.ndarray, rule: StudentRule, feats: np.ndarray):
        """Score-table columns, features and agreement of a student answering with `probs`."""
        columns = rule.columns(probs, feats)
        out_features, out_agree, out_flag = {}, {}, {}
        for name, part in split(np.arange(len(probs))).items():
            table = dict(tables[name])
            for key, values in columns.items():
                table[key] = np.asarray(values, dtype=object)[part]
            x, _ = learned_features(table, "classification", vocab, catch_all=True)
            out_features[name] = x
            out_agree[name] = np.asarray(table["student_label"]) == gold[name]
            out_flag[name] = np.asarray(table["catch_all_answer"], dtype=float)
        answered = np.array([rule.labels.index(label) for label in columns["student_label"]])
        return out_features, out_agree, out_flag, answered

    s0, s1 = passes
    base, agree, flag, answered = scored(s0["probs"], rules[0], s0["features"])

    def extend(features: dict, extra: np.ndarray, flags: dict) -> dict:
        parts = split(extra)
        return {n: np.c_[features[n], with_catch_all(parts[n], flags[n])] for n in SPLITS}

    rows = [evaluate("learned (the defaults' score)", base, agree, fit, held, 1)]
    maha = mahalanobis(run, s0["features"], answered)
    rows.append(evaluate("+ mahalanobis", extend(base, maha, flag), agree, fit, held, 1))
    mc_answer = s0["mc"][:, np.arange(len(answered)), answered]  # (passes, n)
    mc_vote = (s0["mc"].argmax(axis=2) == answered[None, :]).mean(axis=0)
    mc = np.c_[mc_answer.mean(axis=0), mc_answer.std(axis=0), mc_vote]
    mc_features = extend(base, mc, flag)
    name = f"+ mc_dropout ({args.passes} passes)"
    rows.append(evaluate(name, mc_features, agree, fit, held, 1 + args.passes))

    mean_probs = (s0["probs"] + s1["probs"]) / 2
    e_base, e_agree, e_flag, e_answered = scored(mean_probs, rules[0], s0["features"])
    seeds_agree = (s0["probs"].argmax(1) == s1["probs"].argmax(1)).astype(float)
    s1_distance = rules[1].neighbours.distance(s1["features"])
    ensemble = np.c_[seeds_agree, s1_distance]
    e_features = extend(e_base, ensemble, e_flag)
    rows.append(evaluate("ensemble of 2 seeds", e_features, e_agree, fit, held, 2))
    e_maha = mahalanobis(run, s0["features"], e_answered)
    all_features = extend(extend(e_features, e_maha, e_flag), mc, e_flag)
    name = "ensemble + mahalanobis + mc_dropout"
    rows.append(evaluate(name, all_features, e_agree, fit, held, 2 + args.passes))

    print(f"{'variant':38} {'acc':>6} {'AUROC':>6} {'savings':>8} {'risk':>6} "
          f"{'APGR':>6} {'oracle':>7} {'ratio':>6} {'passes':>6}")  # fmt: skip
    for row in rows:
        row["apgr_over_oracle"] = row["apgr"] / row["oracle_apgr"]
        print(
            f"{row['variant']:38} {row['accuracy']:6.3f} {row['auroc']:6.3f} "
            f"{row['savings']:8.3f} {row['risk']:6.4f} {row['apgr']:6.3f} "
            f"{row['oracle_apgr']:7.3f} {row['apgr_over_oracle']:6.3f} {row['passes']:6d}"
        )
    (cache / "bench.json").write_text(json.dumps(rows, indent=2))
    best = max(rows[1:], key=lambda r: r["apgr_over_oracle"])
    print(
        f"ratio: {best['apgr_over_oracle'] / rows[0]['apgr_over_oracle']:.2f} "
        f"(APGR over oracle APGR, best variant ({best['variant']}) over learned)"
    )


if __name__ == "__main__":
    main()
