"""Print the observed violation rate of every guaranteed mode on the real scored populations
in tests/data (500 resampled calibration sets each); the last line is the worst mode's
rate over its δ.

    python scripts/guarantee_rates.py
"""

from __future__ import annotations

from pathlib import Path

from eval.real_checks import (
    check_learned,
    check_learned_catch_all,
    check_ltt,
    check_per_label,
    check_tiers,
    read_population,
)

DATA = Path(__file__).resolve().parents[1] / "tests/data"


def main() -> None:
    quickstart = read_population(DATA / "quickstart_scored.csv")
    bbc = read_population(DATA / "bbc_scored.csv")
    clinc = read_population(DATA / "clinc150_scored.csv")
    checks = {
        "quickstart LTT binomial (α 0.1, δ 0.1)": check_ltt(
            quickstart, "minilm", 0.1, 0.1, "binomial", 275
        ),
        "quickstart LTT Hoeffding–Bentkus": check_ltt(
            quickstart, "minilm", 0.1, 0.1, "hoeffding_bentkus", 275
        ),
        "bbc LTT binomial (α 0.02, δ 0.05)": check_ltt(bbc, "minilm", 0.02, 0.05, "binomial", 780),
        "bbc LTT Hoeffding–Bentkus": check_ltt(bbc, "minilm", 0.02, 0.05, "hoeffding_bentkus", 780),
        "bbc per-label (α 0.05, δ 0.1)": check_per_label(bbc, "minilm", 0.05, 0.1, 780, 100),
        "bbc learned score (α 0.02, δ 0.05)": check_learned(bbc, "minilm", 0.02, 0.05, 780),
        "quickstart learned score": check_learned(quickstart, "minilm", 0.1, 0.1, 275),
        "quickstart tiers minilm → smollm2 → teacher": check_tiers(
            quickstart, ["minilm", "smollm2"], [0.01, 0.05], 2.5, 0.1, 0.1, 275
        ),
        "clinc150 LTT binomial (α 0.02, δ 0.05)": check_ltt(
            clinc, "mpnet", 0.02, 0.05, "binomial", 2735
        ),
        "clinc150 learned score, catch-all (default)": check_learned_catch_all(
            clinc, "mpnet", 0.02, 0.05, 2735
        ),
    }
    worst = 0.0
    print(f"{'mode':48s} {'n':>5s} {'violations':>10s} {'rate':>7s} {'δ':>6s} {'median risk':>11s}")
    for name, c in checks.items():
        print(
            f"{name:48s} {c.n_calib:5d} {c.violations:4d}/{c.trials:<5d} "
            f"{c.violation_rate:7.3f} {c.delta:6.3f} {c.median_risk:11.4f}"
        )
        worst = max(worst, c.violation_rate / c.delta)
    print(f"ratio: {worst:.2f} (worst violation rate over its δ; at most 1 plus slack)")


if __name__ == "__main__":
    main()
