"""Labelling at scale: throughput against an endpoint with 200 ms latency, and peak memory.

    python scripts/bench_labeling.py [--latency-ms 200] [--seconds 4] [--rss-rows 10000,1000000]

1. Throughput. The OpenAI-compatible test server (tests/openai_server.py, FastAPI + uvicorn on
   127.0.0.1) answers every request after `--latency-ms`. `cascadekit label` runs with
   `teacher.max_in_flight` 1, 16 and 64 over enough short inputs to take about `--seconds` at
   the ideal rate, in-flight / latency. Reported: items/s and the share of the ideal, timed
   inside the label stage (Python start-up and imports excluded).
2. Memory. `cascadekit label` runs in a fresh process over 10,000 and over 1,000,000 short
   inputs with a `python` teacher (a keyword rule: the stage's own memory, not a model's);
   peak RSS of each process from the kernel (wait4). The stage streams: inputs, answers and
   the output table go through in chunks of 4,096 rows.

The last line is the ratio of the throughput at 64 in flight to its ideal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.openai_fixture import running_openai_server  # noqa: E402

LABELS = ["card_lost", "card_declined", "refund", "other"]
WORDS = ["my", "card", "was", "declined", "lost", "refund", "please", "help", "money", "back"]


def write_rows(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(6)) + f" #{i}"
            handle.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
    return path


def write_config(folder: Path, data: Path, teacher: dict) -> Path:
    config = {
        "run_dir": str(folder / "run"),
        "teacher_cache": str(folder / "cache.sqlite"),
        "data": {"path": str(data), "split": {"train": 0.6, "calib": 0.2, "test": 0.2}},
        "tasks": [
            {
                "name": "intent",
                "kind": "classification",
                "instruction": "Label it.",
                "labels": LABELS,
            }
        ],
        "teacher": teacher,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def throughput(in_flight: int, latency_ms: int, seconds: float, folder: Path) -> dict:
    """Items per second of the label stage (timed in-process) at `in_flight`."""
    from distill.config import load_config
    from distill.pipeline import Context, label

    ideal = in_flight / (latency_ms / 1000)
    n = max(int(ideal * seconds), 10)
    work = folder / f"inflight-{in_flight}"
    work.mkdir()
    with running_openai_server(work / "server", latency_ms=latency_ms) as server:
        teacher = {
            "kind": "openai",
            "model": "rule-teacher",
            "base_url": server.base_url,
            "max_in_flight": in_flight,
            "logprobs": True,
        }
        config = load_config(write_config(work, write_rows(work / "rows.jsonl", n), teacher))
        ctx = Context(config=config, log=lambda _: None, progress=False)
        started = time.perf_counter()
        label(ctx)
        elapsed = time.perf_counter() - started
        stats = server.stats()
    rate = n / elapsed
    return {
        "in_flight": in_flight,
        "items": n,
        "seconds": elapsed,
        "items_per_s": rate,
        "ideal_items_per_s": ideal,
        "share_of_ideal": rate / ideal,
        "server_in_flight_max": stats["in_flight_max"],
    }


def peak_rss(rows: int, folder: Path) -> dict:
    """Peak RSS (MiB) of `cascadekit label` over `rows` inputs with a python teacher."""
    work = folder / f"rss-{rows}"
    work.mkdir()
    data = write_rows(work / "rows.jsonl", rows)
    config = write_config(
        work,
        data,
        {"kind": "python", "function": "tests.rule_teacher:by_keyword", "batch_size": 1024},
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "label", str(config), "--quiet"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"label over {rows} rows failed")
    return {
        "rows": rows,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rss-rows", default="10000,1000000")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    results: dict = {"throughput": [], "memory": []}
    with tempfile.TemporaryDirectory(prefix="bench-labeling-") as tmp:
        folder = Path(tmp)
        for in_flight in (1, 16, 64):
            r = throughput(in_flight, args.latency_ms, args.seconds, folder)
            results["throughput"].append(r)
            print(
                f"in flight {in_flight:3d}: {r['items']:5d} items in {r['seconds']:.2f} s = "
                f"{r['items_per_s']:7.1f} items/s, ideal {r['ideal_items_per_s']:.0f} "
                f"({r['share_of_ideal']:.1%}; server saw {r['server_in_flight_max']} at once)",
                flush=True,
            )
        for rows in (int(x) for x in args.rss_rows.split(",")):
            m = peak_rss(rows, folder)
            results["memory"].append(m)
            print(
                f"label {rows:9,d} rows: peak RSS {m['peak_rss_mib']:.0f} MiB "
                f"({m['seconds']:.0f} s)",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if len(results["memory"]) >= 2:
        small, large = results["memory"][0], results["memory"][-1]
        print(
            f"memory: {large['peak_rss_mib']:.0f} MiB for {large['rows']:,} rows vs "
            f"{small['peak_rss_mib']:.0f} MiB for {small['rows']:,} "
            f"({large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x)"
        )
    top = results["throughput"][-1]
    print(f"ratio: {top['share_of_ideal']:.2f} (items/s at 64 in flight over in-flight/latency)")


if __name__ == "__main__":
    main()
