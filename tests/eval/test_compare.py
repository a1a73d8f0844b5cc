"""`cascadekit compare`: report folders written by the real evaluate code (evaluate_cascade +
write_report on synthetic arrays, no models), compared through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.cli import main
from eval.compare import CompareError, run_names
from eval.report import write_report
from eval.summary import Guarantee, evaluate_cascade

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = np.array(["refund", "card_lost", "balance"], dtype=object)


def _evaluation(task: str, n: int, skill: float, with_gold: bool, seed: int, score: str):
    """One task's evaluation: a teacher right 90% of the time, a student agreeing with it
    `skill` of the time, a score that is higher where it agrees."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(LABELS, n)
    teacher = np.where(rng.random(n) < 0.9, gold, rng.choice(LABELS, n))
    student = np.where(rng.random(n) < skill, teacher, rng.choice(LABELS, n))
    scores = np.clip(np.where(student == teacher, 0.7, 0.4) + rng.normal(0, 0.2, n), 0, 1)
    return evaluate_cascade(
        task=task,
        scores=scores,
        student_pred=student,
        teacher_pred=teacher,
        gold=gold if with_gold else None,
        student_cost_usd=np.full(n, 2e-7),
        teacher_cost_usd=rng.uniform(1e-3, 3e-3, n),
        teacher_input_tokens=np.full(n, 120.0),
        guarantee=Guarantee(
            method="learn-then-test/fixed-sequence/binomial",
            score=score,
            alpha=0.1,
            delta=0.1,
            n_calib=150,
            threshold=0.6,
        ),
    )


def _write_run(run_dir: Path, teacher: str, *evaluations) -> Path:
    report = run_dir / "report"
    report.mkdir(parents=True)
    meta = {
        "run_dir": str(run_dir),
        "config_digest": "ab" * 32,
        "teacher": teacher,
        "student": "embedded:all-minilm-l6-v2",
        "tolerance": 0.01,
    }
    write_report(list(evaluations), report, meta)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """alpha: intent and topic; beta: intent (weaker student); gamma: topic without gold, a
    smaller test set and another teacher. beta and gamma share no task."""
    root = tmp_path_factory.mktemp("runs")
    teacher = "recorded:annotators"
    return {
        "alpha": _write_run(
            root / "alpha",
            teacher,
            _evaluation("intent", 200, 0.8, True, 1, "max_prob"),
            _evaluation("topic", 150, 0.7, True, 2, "max_prob"),
        ),
        "beta": _write_run(
            root / "beta", teacher, _evaluation("intent", 200, 0.6, True, 3, "margin")
        ),
        "gamma": _write_run(
            root / "gamma", "hf:other", _evaluation("topic", 90, 0.75, False, 4, "max_prob")
        ),
    }


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))


def _row(markdown: str, label: str, task: str = "intent") -> str:
    """The row of `label` in the table of `task` (compare.md opens with a table of runs)."""
    section = markdown.split(f"## Task `{task}`")[-1].split("## Task")[0]
    (line,) = [line for line in section.splitlines() if line.startswith(f"| {label} |")]
    return line


def _rate(value: float) -> str:
    return f"{value:.1%}"


def test_two_runs_tables_json_plots_and_page(runs, tmp_path, capsys):
    out = tmp_path / "alpha-vs-beta"
    assert main(["compare", str(runs["alpha"]), str(runs["beta"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.html",
        "compare.json",
        "compare.md",
        "compare_intent.png",
    ]
    assert (out / "compare_intent.png").read_bytes().startswith(PNG_MAGIC)
    markdown = (out / "compare.md").read_text(encoding="utf-8")
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in data["runs"]] == ["alpha", "beta"]
    assert data["notes"] == ["Task `topic` is only in alpha: not compared."]
    assert "Task `topic` is only in alpha" in markdown
    intent = data["tasks"]["intent"]
    assert intent["missing"] == [] and intent["plot_quality"] == "accuracy"
    assert [(r["run"], r["kind"]) for r in intent["rows"]] == [
        ("alpha", "cascade"),
        ("alpha", "oracle"),
        ("alpha", "random"),
        ("beta", "cascade"),
        ("beta", "oracle"),
        ("beta", "random"),
    ]
    for name in ("alpha", "beta"):
        entry = _summary(runs[name])["tasks"]["intent"]
        cascade, curve = entry["cascade"], entry["curve"]
        row, oracle, random = [r for r in intent["rows"] if r["run"] == name]
        assert row["deferral_rate"] == cascade["deferral_rate"]
        assert row["risk"] == cascade["risk"]
        assert row["savings_rate"] == cascade["savings_rate"]
        assert row["auc"] == curve["auc"] and row["apgr"] == curve["apgr"]
        assert row["cpt"] == curve["cpt"]
        assert row["student_accuracy"] == entry["student"]["accuracy"]
        assert oracle["auc"] == curve["oracle_auc"] and oracle["cpt"] == curve["oracle_cpt"]
        assert random["auc"] == curve["random_auc"] and random["apgr"] == 0.5
        line = _row(markdown, name)
        for shown in (
            entry["quality_metric"],
            cascade["score"],
            f"{cascade['threshold']:.3f}",
            _rate(entry["teacher"]["accuracy"]),
            _rate(entry["student"]["accuracy"]),
            _rate(cascade["deferral_rate"]),
            f"{_rate(cascade['risk'])} (0.1)",
            _rate(cascade["accuracy"]),
            _rate(cascade["agreement"]),
            _rate(cascade["savings_rate"]),
            f"{curve['auc']:.3f}",
            f"{curve['apgr']:.3f}",
            *(_rate(v) for v in curve["cpt"].values()),
        ):
            assert f"| {shown} |" in line, (shown, line)
        assert f"| {curve['oracle_auc']:.3f} |" in _row(markdown, f"{name} (oracle)")
        assert f"| {curve['random_auc']:.3f} | 0.500 |" in _row(markdown, f"{name} (random)")
    table = markdown.split("## Task `intent`")[1]
    widths = {line.count("|") for line in table.splitlines() if line.startswith("|")}
    assert len(widths) == 1  # every row of the table has as many cells as its head
    assert "![intent](compare_intent.png)" in markdown
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page and "<table>" in page
    assert "http://" not in page and "https://" not in page
    printed = capsys.readouterr().out
    assert _row(markdown, "alpha") in printed and _row(markdown, "beta") in printed
    assert str(out / "compare.md") in printed and str(out / "compare_intent.png") in printed
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".trash-*"))


def test_three_runs_compare_each_task_among_the_runs_that_have_it(runs, tmp_path):
    out = tmp_path / "all"
    args = [str(runs[name]) for name in ("alpha", "beta", "gamma")]
    assert main(["compare", *args, "--out", str(out), "--names", "a, b ,c"]) == 0
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["notes"] == []
    intent, topic = data["tasks"]["intent"], data["tasks"]["topic"]
    assert (intent["runs"], intent["missing"]) == (["a", "b"], ["c"])
    assert (topic["runs"], topic["missing"]) == (["a", "c"], ["b"])
    assert topic["plot_quality"] == "agreement"  # gamma has no gold
    notes = " ".join(topic["notes"])
    assert "Not in b" in notes and "measure quality differently" in notes
    assert "different numbers of rows (a: 150, c: 90)" in notes and "different teachers" in notes
    for task in ("intent", "topic"):
        assert (out / f"compare_{task}.png").read_bytes().startswith(PNG_MAGIC)
    markdown = (out / "compare.md").read_text(encoding="utf-8")
    assert (
        "| c | agreement | 90 |" in markdown and "Not in c: compared between a, b only." in markdown
    )


def test_a_summary_without_oracle_figures_has_no_oracle_row(runs, tmp_path):
    old = shutil.copytree(runs["beta"], tmp_path / "old")
    summary = _summary(old)
    for key in ("oracle_auc", "oracle_apgr", "oracle_cpt"):
        del summary["tasks"]["intent"]["curve"][key]
    (old / "report" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    csv_path = old / "report" / "curve.csv"
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    csv_path.write_text("\n".join(x for x in lines if ",oracle," not in x) + "\n", "utf-8")
    out = tmp_path / "out"
    assert main(["compare", str(runs["alpha"]), str(old), "--out", str(out)]) == 0
    markdown = (out / "compare.md").read_text(encoding="utf-8")
    assert "| old (oracle) |" not in markdown and "| alpha (oracle) |" in markdown
    assert "| old (random) |" in markdown


def test_default_names_are_folder_names_told_apart_by_their_parents(tmp_path):
    assert run_names([tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z"]) == [
        "x/run",
        "y/run",
        "z",
    ]
    assert run_names([tmp_path / "run", tmp_path / "run"]) == ["run", "run (2)"]
    assert run_names([tmp_path / "a", tmp_path / "b"], ["first", " second "]) == [
        "first",
        "second",
    ]
    with pytest.raises(CompareError, match="3 runs"):
        run_names([tmp_path / "a", tmp_path / "b", tmp_path / "c"], ["x", "y"])


def test_equal_folder_names_get_their_parent(runs, tmp_path):
    copy = shutil.copytree(runs["alpha"], tmp_path / "other" / "alpha")
    out = tmp_path / "out"
    assert main(["compare", str(runs["alpha"]), str(copy), "--out", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    parent = runs["alpha"].parent.name
    assert [r["name"] for r in data["runs"]] == [f"{parent}/alpha", "other/alpha"]
    assert sorted(data["tasks"]) == ["intent", "topic"]


def test_an_earlier_comparison_is_replaced_whole(runs, tmp_path):
    out = tmp_path / "out"
    assert main(["compare", str(runs["alpha"]), str(runs["gamma"]), "--out", str(out)]) == 0
    assert (out / "compare_topic.png").is_file()
    assert main(["compare", str(runs["alpha"]), str(runs["beta"]), "--out", str(out)]) == 0
    assert not (out / "compare_topic.png").exists() and (out / "compare_intent.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _no_summary(runs, tmp_path):
    (tmp_path / "unfinished" / "report").mkdir(parents=True)
    return [str(runs["alpha"]), str(tmp_path / "unfinished")]


def _bad_json(runs, tmp_path):
    broken = shutil.copytree(runs["beta"], tmp_path / "broken")
    (broken / "report" / "summary.json").write_text("{not json", encoding="utf-8")
    return [str(runs["alpha"]), str(broken)]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda runs, _: [str(runs["alpha"])], "at least two runs, got 1"),
        (_no_summary, "unfinished: no report/summary.json"),
        (_bad_json, "summary.json: not valid JSON"),
        (
            lambda runs, _: [str(runs["beta"]), str(runs["gamma"])],
            "no task is in two or more of the runs, nothing to compare "
            "(beta has intent; gamma has topic)",
        ),
        (
            lambda runs, _: [str(runs["alpha"]), str(runs["beta"]), "--names", "a,b,c"],
            "--names gives 3 name(s) for 2 runs",
        ),
        (
            lambda runs, _: [str(runs["alpha"]), str(runs["beta"]), "--names", "a,a"],
            "--names: a given more than once",
        ),
        (
            lambda runs, _: [str(runs["alpha"]), str(runs["beta"]), "--names", "a|x,b"],
            "is not a usable name",
        ),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(runs, tmp_path, capsys, make_args, message):
    out = tmp_path / "out"
    assert main(["compare", *make_args(runs, tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_out_folder_with_other_files_is_refused_and_left_alone(runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["compare", str(runs["alpha"]), str(runs["beta"]), "--out", str(out)]) == 2
    assert "already holds other files" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_failure_while_writing_leaves_no_out_folder(runs, tmp_path, monkeypatch, capsys):
    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("eval.compare.plot_comparison", broken_plot)
    out = tmp_path / "out"
    assert main(["compare", str(runs["alpha"]), str(runs["beta"]), "--out", str(out)]) == 1
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
