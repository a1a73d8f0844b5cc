"""The `cascadekit` command line.

    cascadekit run CONFIG [key.sub=value ...]     every stage, skipping the ones up to date
    cascadekit validate CONFIG                    check the config and its data, write nothing
    cascadekit label|split|train|score|calibrate|evaluate CONFIG   one stage
    cascadekit compare RUN RUN [...] --out DIR [--names a,b]   finished runs side by side
    cascadekit plan RUN --tokens-per-day N [--json]   requests, teacher calls, hours, USD a day

Exit codes: 0 success, 2 bad input (config, data, missing upstream stage), 1 anything else,
130 interrupted. Errors are one paragraph; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path

from distill.errors import UserError

STAGE_HELP = {
    "label": "ask the teacher about every input (cached, resumable)",
    "split": "stable hash split of the labelled rows into train / calib / test",
    "train": "train one LoRA student per task on the teacher's labels",
    "score": "student predictions and confidence scores on calib and test",
    "calibrate": "choose each task's threshold on calib (Learn-then-Test guarantee)",
    "evaluate": "curves, summaries and plots on test; writes RUN/report/",
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet_libraries(debug: bool) -> None:
    """Offline by default; keep third-party chatter out of the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if debug:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("ACCELERATE_LOG_LEVEL", "error")
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def build_parser() -> argparse.ArgumentParser:
    from distill.teachers import BACKENDS

    parser = argparse.ArgumentParser(
        prog="cascadekit",
        description=(
            "Teacher -> LoRA students -> calibrated cascade. Teacher backends: "
            + ", ".join(sorted(BACKENDS))
            + ". Every command takes key.sub=value overrides after the config."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("config", type=Path, help="the run's YAML config")
    common.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override config fields"
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "validate", parents=[common], help="check a config and its data; writes nothing"
    )
    run = commands.add_parser("run", parents=[common], help="run every stage, in order")
    run.add_argument("--force", action="store_true", help="re-run stages that are up to date")
    run.add_argument(
        "--resume", action="store_true", help="train: continue from the last checkpoint"
    )
    volume_help = (
        "project daily USD, teacher-only against the cascade, at this many teacher input "
        "tokens a day (e.g. 8e9); the same as cost.tokens_per_day=N"
    )
    run.add_argument("--tokens-per-day", type=float, metavar="N", help=volume_help)
    for stage, text in STAGE_HELP.items():
        sub = commands.add_parser(stage, parents=[common], help=text)
        sub.add_argument("--force", action="store_true", help="re-run even if up to date")
        if stage == "evaluate":
            sub.add_argument("--tokens-per-day", type=float, metavar="N", help=volume_help)
        if stage == "train":
            sub.add_argument(
                "--resume",
                action="store_true",
                help="continue an interrupted training run from its last checkpoint "
                "(RUN/checkpoints/TASK/); same result as an uninterrupted run",
            )
    srv = commands.add_parser(
        "serve",
        help="serve a cascade over HTTP: /v1/classify, OpenAI-compatible /v1/chat/completions, "
        "/healthz, /metrics",
    )
    srv.add_argument("path", type=Path, metavar="RUN|FOLDER", help="a run or a pulled cascade")
    srv.add_argument(
        "--config",
        type=Path,
        help="config whose teacher answers deferred requests (default RUN/config.resolved.yaml)",
    )
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    srv.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="inputs the worker takes from the queue at once (GPU: 256+)",
    )
    srv.add_argument(
        "--forward-batch",
        type=int,
        default=8,
        help="inputs per forward pass; the worker's inputs are sorted by length first (GPU: 64+)",
    )
    srv.add_argument("--max-wait-ms", type=float, default=5.0, help="wait to fill a batch")
    srv.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: classifiers in bfloat16 (faster), each threshold recalibrated on the run's "
        "calib split at start so the guarantee holds for the scores served",
    )
    srv.add_argument("--queue", type=int, default=256, help="waiting inputs before 503")
    srv.add_argument("--max-inputs", type=int, default=64, help="inputs per request")
    srv.add_argument("--max-body-bytes", type=int, default=1_000_000)
    srv.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="a request body must arrive whole within this many seconds (else 408)",
    )
    srv.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections at once; a new one beyond this gets 503",
    )
    srv.add_argument(
        "--api-key-env", metavar="VAR", help="require this variable's value as a bearer key"
    )
    srv.add_argument(
        "--audit-share",
        type=float,
        default=0.0,
        help="share of student answers also sent to the teacher to watch for drift (0 to 1)",
    )
    srv.add_argument("--audit-log", type=Path, help="append audited pairs here (JSONL)")
    srv.add_argument(
        "--router",
        metavar="TASK",
        help="enable POST /v1/route: this task's answer names the task that answers",
    )
    srv.add_argument(
        "--drift-limit",
        type=float,
        help="alarm when disagreement among student answers is surely above this "
        "(default per task: alpha / the calibrated share the student answers)",
    )
    srv.add_argument("--debug", action="store_true", help="show tracebacks")
    synth = commands.add_parser(
        "synthesize",
        parents=[common],
        help="have the teacher write new inputs per label (de-duplicated, marked synthetic)",
    )
    synth.add_argument("--per-label", type=int, required=True, help="new inputs per label")
    synth.add_argument("--task", help="the classification task (default: the first)")
    synth.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    synth.add_argument("--seeds", type=int, default=5, help="examples shown per label")
    synth.add_argument(
        "--near", type=float, default=0.7, help="5-gram Jaccard at which a text is a near duplicate"
    )
    plan = commands.add_parser(
        "plan",
        help="daily requests, teacher calls and tokens, student and teacher hours and USD of a "
        "finished run at N teacher tokens a day, from throughput measured on this machine",
        description="Scale a finished run to a daily volume: the student is timed here on up "
        "to --measure-rows test rows, a local teacher's speed comes from the label stage, "
        "deferral and prices from report/summary.json. Formulas: distill/plan.py.",
    )
    plan.add_argument("run", type=Path, metavar="RUN", help="a finished run directory")
    plan.add_argument(
        "--tokens-per-day",
        type=float,
        required=True,
        metavar="N",
        help="teacher input tokens a day if the teacher took all traffic (e.g. 8e9)",
    )
    plan.add_argument(
        "--measure-rows", type=int, default=128, metavar="K", help="test rows to time per task"
    )
    plan.add_argument(
        "--batch", type=int, default=8, help="student batch size (serve's --forward-batch)"
    )
    plan.add_argument(
        "--hardware-usd-per-hour",
        "--gpu-usd-per-hour",
        type=float,
        metavar="USD",
        help="price of an hour of the hardware the throughputs were measured on, to turn "
        "hours into USD (default cost.training_usd_per_hour when set)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--debug", action="store_true", help="show tracebacks")
    compare = commands.add_parser(
        "compare",
        help="overlay finished runs' curves and tables (students, scores or teachers side by "
        "side); writes DIR/compare.md, .json, .html and compare_TASK.png",
        description="Compare finished runs (each with RUN/report/ from `evaluate`) on every "
        "task two or more of them share: one table per task with each run's oracle and random "
        "baselines, and one plot per task with the runs' curves overlaid.",
    )
    compare.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run directories (at least two)"
    )
    compare.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder to write: new, empty or an earlier comparison (replaced whole)",
    )
    compare.add_argument(
        "--names",
        metavar="a,b,...",
        help="comma-separated names for the runs, in order (default: their folder names)",
    )
    compare.add_argument("--debug", action="store_true", help="show tracebacks")
    hub = argparse.ArgumentParser(add_help=False)
    hub.add_argument("--endpoint", help="hub URL (default $HF_ENDPOINT or huggingface.co)")
    hub.add_argument(
        "--token-env",
        default="HF_TOKEN",
        metavar="VAR",
        help="environment variable holding the hub token (default HF_TOKEN); tokens are never "
        "taken on the command line, where other users could read them",
    )
    hub.add_argument("--debug", action="store_true", help="show tracebacks")
    publish = commands.add_parser(
        "publish",
        parents=[hub],
        help="publish a finished run's cascades to a model hub or an MLflow registry",
        description="Publish each task's adapter, cascade.json (with file digests), report and "
        "model card: one commit per repo, none when nothing changed.",
    )
    publish.add_argument("run", type=Path, metavar="RUN", help="a finished run directory")
    publish.add_argument("--to", choices=["hub", "mlflow"], default="hub", help="where to")
    publish.add_argument("--repo-id", metavar="ORG/NAME", help="hub: the repo (or its prefix)")
    publish.add_argument(
        "--layout",
        choices=["folders", "repos"],
        default="folders",
        help="hub: one repo with a folder per task, or one repo per task (ORG/NAME-TASK)",
    )
    publish.add_argument("--private", action="store_true", help="hub: create private repos")
    publish.add_argument("--revision", help="hub: branch to commit to (created if missing)")
    publish.add_argument("--tracking-uri", help="mlflow: the tracking server's URI")
    publish.add_argument("--model-name", help="mlflow: the registered model's name")
    publish.add_argument("--alias", default="candidate", help="mlflow: alias to set")
    pull = commands.add_parser(
        "pull",
        parents=[hub],
        help="download a published cascade pinned to one commit and verify every file",
    )
    pull.add_argument(
        "source", metavar="REPO_ID|models:/NAME@ALIAS", help="a hub repo or an MLflow model URI"
    )
    pull.add_argument("--revision", help="hub: branch, tag or commit (default main)")
    pull.add_argument("--tracking-uri", help="mlflow: the tracking server's URI")
    pull.add_argument("--out", type=Path, required=True, help="folder to write (must be new)")
    return parser


def _compare(args: argparse.Namespace) -> int:
    """Read the runs' reports, write the comparison, print its tables and where it went."""
    from eval.compare import (
        CompareError,
        compare_runs,
        comparison_tables,
        load_runs,
        write_comparison,
    )

    names = None if args.names is None else args.names.split(",")
    try:
        comparison = compare_runs(load_runs(args.runs, names))
        files = write_comparison(comparison, args.out)
    except CompareError as exc:
        raise UserError(str(exc)) from exc
    print(comparison_tables(comparison))
    plots = ", ".join(str(path) for name, path in files.items() if name.endswith(".png"))
    print(
        f"comparison: {files['compare.md']} (self-contained page: {files['compare.html']}; "
        f"numbers: {files['compare.json']}; plots: {plots})"
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    """Time the run's students here, scale the run to the volume, print table or JSON."""
    import json

    from distill.plan import format_plan, plan_dict, plan_run

    plan = plan_run(
        args.run, args.tokens_per_day, args.measure_rows, args.batch, args.hardware_usd_per_hour
    )
    print(json.dumps(plan_dict(plan), indent=2) if args.json else format_plan(plan))
    return 0


def _validate(config) -> None:
    from distill.pipeline import Context, check_inputs, check_students

    n_rows = check_inputs(config)
    check_students(Context(config=config, log=lambda _: None, progress=False))
    tasks = ", ".join(
        f"{t.name} ({len(t.label_names)} labels)"
        if t.kind == "classification"
        else f"{t.name} ({t.kind})"
        for t in config.tasks
    )
    print(
        f"valid: {n_rows} rows from {config.data.path}; tasks: {tasks}; "
        f"teacher: {config.teacher.kind}; run_dir: {config.run_dir}"
    )


def _print_report(result: dict, run_dir: Path) -> None:
    table = result.get("table")
    if table:
        print(table)
    print(
        f"\nreport: {run_dir / 'report' / 'report.md'} (self-contained page: "
        f"{run_dir / 'report' / 'report.html'}; plot: {run_dir / 'report' / 'curves.png'})"
    )


def _main(args: argparse.Namespace) -> int:
    if args.command == "compare":
        return _compare(args)
    if args.command == "plan":
        return _plan(args)
    if args.command in ("publish", "pull"):
        return _publish(args) if args.command == "publish" else _pull(args)
    if args.command == "serve":
        return _serve(args)
    from distill.config import load_config
    from distill.pipeline import Context, run_all, run_stage

    overrides = list(args.overrides)
    if getattr(args, "tokens_per_day", None) is not None:
        overrides.append(f"cost.tokens_per_day={args.tokens_per_day!r}")
    config = load_config(args.config, overrides)
    if args.command == "validate":
        _validate(config)
        return 0
    if args.command == "synthesize":
        return _synthesize(config, args)
    ctx = Context(
        config=config,
        log=_log,
        progress=not args.quiet,
        force=args.force,
        resume=getattr(args, "resume", False),
    )
    if args.command == "run":
        results = run_all(ctx)
        _print_report(_table_of(results["evaluate"], config.run_dir), config.run_dir)
        return 0
    result = run_stage(ctx, args.command)
    if args.command == "evaluate":
        _print_report(_table_of(result, config.run_dir), config.run_dir)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    from distill.cascade import read_documents

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise UserError("cascadekit serve needs pip install 'cascadekit[serve]'")
    from distill.config import load_config
    from distill.serve import ServeSettings, serve

    if not 0 <= args.audit_share <= 1:
        raise UserError("--audit-share must be in [0, 1]")
    documents = read_documents(args.path)
    config_path = args.config or (args.path / "config.resolved.yaml")
    config = load_config(config_path) if config_path.is_file() else None
    if args.audit_share > 0 and (config is None or config.teacher.kind == "dataset"):
        raise UserError("--audit-share needs a teacher that can answer (--config with one)")
    limits = {}
    for task, (_, entry) in documents.items():
        accepted = 1.0 - float(entry.get("calib_deferral_rate") or 0.0)
        limits[task] = args.drift_limit or min(0.99, entry["alpha"] / max(accepted, 1e-3))
    if args.router is not None and args.router not in documents:
        raise UserError(f"--router {args.router!r} is not a task of {args.path}")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise UserError(f"--api-key-env {args.api_key_env}: that variable is not set")
    if args.max_batch < 1 or args.forward_batch < 1:
        raise UserError("--max-batch and --forward-batch must be at least 1")
    if not args.body_timeout_s > 0 or args.max_connections < 1:
        raise UserError("--body-timeout-s must be above 0 and --max-connections at least 1")
    settings = ServeSettings(
        max_batch=args.max_batch,
        forward_batch=args.forward_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout_s,
        max_connections=args.max_connections,
        api_key=key,
        audit_share=args.audit_share,
        audit_log=args.audit_log,
        drift_limit=limits,
        router=args.router,
        precision=args.precision,
    )
    serve(args.path, args.host, args.port, settings, config, log=_log)
    return 0


def _synthesize(config, args: argparse.Namespace) -> int:
    from distill.pipeline import check_inputs, iter_inputs, split_name
    from distill.synthesize import synthesize, write_jsonl
    from distill.teachers import make_teacher

    if args.per_label < 1 or not 0 < args.near <= 1:
        raise UserError("--per-label must be >= 1 and --near in (0, 1]")
    if args.out.exists():
        raise UserError(f"--out {args.out} exists; give a new file")
    task = (
        config.tasks[0]
        if args.task is None
        else next((t for t in config.tasks if t.name == args.task), None)
    )
    if task is None:
        raise UserError(f"--task {args.task!r} is not a task of this config")
    check_inputs(config)
    column = config.gold_column(task) or getattr(config.teacher, "label_field", None)
    column = column.get(task.name) if isinstance(column, dict) else column
    # Every row is a duplicate to avoid, but only train rows may be shown as examples: a
    # calib or test row in the prompt would leak into training through its paraphrases.
    existing = (
        (r.text, r.fields.get(column) if column and split_name(config, r) == "train" else None)
        for r in iter_inputs(config)
    )
    teacher = make_teacher(config.teacher, log=_log)
    rows, counts = synthesize(
        config, teacher, task, args.per_label, existing, args.seeds, args.near, log=_log
    )
    write_jsonl(rows, args.out)
    dropped = counts["dropped_duplicates"]
    print(
        f"wrote {counts['written']} synthetic inputs to {args.out} (dropped {dropped['exact']} "
        f"exact and {dropped['near']} near duplicates)"
    )
    return 0


def _token(args: argparse.Namespace) -> str | None:
    return os.environ.get(args.token_env) or None


def _publish(args: argparse.Namespace) -> int:
    if args.to == "mlflow":
        from distill.registry import publish_mlflow

        if not args.tracking_uri or not args.model_name:
            raise UserError("--to mlflow needs --tracking-uri and --model-name")
        record = publish_mlflow(args.run, args.tracking_uri, args.model_name, args.alias, _log)
        print(f"registered {record['model_uri']} (version {record['version']})")
        return 0
    from distill.publish import publish_hub

    if not args.repo_id:
        raise UserError("publish to a hub needs --repo-id ORG/NAME")
    records = publish_hub(
        args.run,
        args.repo_id,
        args.layout,
        args.endpoint,
        _token(args),
        args.private,
        args.revision,
        _log,
    )
    for record in records:
        state = "new commit" if record["new_commit"] else "unchanged"
        print(f"{record['repo_id']}@{record['revision']}: {record['commit']} ({state})")
    print(f"recorded in {args.run / 'published.json'}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    """Download into a scratch folder beside --out, verify, then move into place."""
    import shutil
    import tempfile

    if args.out.exists() or args.out.is_symlink():  # a dangling link would lead elsewhere
        raise UserError(f"--out {args.out} exists; give a new folder")
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if args.source.startswith("models:/"):
            from distill.registry import pull_mlflow

            if not args.tracking_uri:
                raise UserError("pulling models:/... needs --tracking-uri")
            folder = pull_mlflow(args.source, args.tracking_uri, scratch / "download")
        else:
            from distill.publish import pull

            folder = pull(
                args.source, args.revision, args.endpoint, _token(args), cache_dir=scratch / "cache"
            )
        shutil.copytree(folder, scratch / "verified")
        (scratch / "verified").rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.source}: verified, in {args.out}")
    return 0


def _table_of(result: dict, run_dir: Path) -> dict:
    """The summary table, rebuilt from summary.json when the stage was skipped."""
    if result.get("table") or not result.get("summary"):
        return result
    from eval.report import summary_table

    return {"table": summary_table(result["summary"])}


def _disk_full(exc: BaseException) -> str | None:
    """The one-paragraph message for a write that ran out of space, anywhere in the chain of
    causes (libraries wrap the OSError); None for any other error."""
    from distill.runs import DISK_FULL

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            where = f" writing {exc.filename}" if exc.filename else ""
            return (
                f"{DISK_FULL[exc.errno]}{where}. Finished stages and every teacher answer "
                "already cached are kept; free some space (or move run_dir / $CASCADEKIT_CACHE) "
                "and run the same command again"
            )
        exc = exc.__cause__ or exc.__context__
    return None


def _interrupted(command: str) -> str:
    """What a Ctrl-C left behind, for the command it stopped."""
    if command in ("run", *STAGE_HELP):
        return (
            "finished stages are kept; run the same command again to go on (training "
            "continues from its last checkpoint with --resume)"
        )
    return {
        "synthesize": "nothing was written to --out; run the same command again",
        "pull": "nothing was written to --out; run the same command again",
        "publish": (
            "the publication may be incomplete and is not recorded in the run; run the same "
            "command again"
        ),
        "compare": "--out may hold part of the comparison; run the same command again",
        "serve": "the server stopped",
    }.get(command, "nothing was written")  # validate, plan


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("compare", "publish", "pull"):  # no model libraries needed
        _quiet_libraries(args.debug)
    try:
        return _main(args)
    except UserError as exc:
        _log(f"error: {exc}")
        if args.debug:
            traceback.print_exc()
        return 2
    except KeyboardInterrupt:
        _log(f"interrupted: {_interrupted(args.command)}")
        return 130
    except Exception as exc:  # the last line of defence: one paragraph, no traceback
        from training.bases import ModelIntegrityError, ModelNotFoundError

        full = _disk_full(exc)
        if full is not None:
            _log(f"error: {full}")
            if args.debug:
                traceback.print_exc()
            return 1

        kind = (
            ""
            if isinstance(exc, ModelNotFoundError | ModelIntegrityError)
            else (f"{type(exc).__name__}: ")
        )
        _log(f"error: {kind}{exc}")
        if args.debug:
            traceback.print_exc()
        else:
            _log("(run again with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
