"""Serving the student path: cascadekit's micro-batching server against a naive per-request
server, and the memory of one base with N adapters against N separate models.

    python scripts/bench_serve.py [--run runs/quickstart] [--clients 32] [--requests 640]

1. Throughput and latency. All three servers are real uvicorn processes on 127.0.0.1
   serving the same MiniLM adapter of the run (`intent`):
     cascadekit   `cascadekit serve RUN`: requests queue up and share forward passes
                  (it takes up to `--max-batch` queued inputs, default 16, waiting at most
                  5 ms, and runs them sorted by length in passes of `--forward-batch`, 8);
                  also with `--precision bf16`
     pipeline     the baseline: a FastAPI app that runs a transformers feature-extraction
                  `pipeline` over the same base with the adapter merged into it, then the
                  student's mean pooling and head, on each request's input on its own, one
                  request at a time
     lean         the same per-request server calling the model directly (cascadekit's own
                  tokenise + forward + softmax, no pipeline), a stronger per-request baseline
   `--clients` concurrent clients send `--requests` single-input requests in all (texts from the
   quickstart data), in `--rounds` alternating rounds (3). Reported per server: the median
   round's requests/s, p50 and p99 latency.
2. Memory. Peak RSS of a process that loads N copies of the adapter (N = 1, 4, 16) on one
   base (PEFT, as `cascadekit serve` does) against one that loads N separate base + adapter
   models.

3. Precision. `--precision bf16` recalibrates the threshold on the run's calib rows; its
   deferral and risk on the test split beside fp32's.

The last line is the throughput ratio of `cascadekit serve --precision bf16` over the
per-request transformers pipeline; the lines before it give both precisions against both
baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

NAIVE_APP = textwrap.dedent(
    """
    import json, socket, sys, asyncio, threading
    import uvicorn
    from fastapi import FastAPI, Request
    from distill.serve import _no_delay_protocol
    from training.bases import resolve_model
    from training.classifier import load_classifier, predict_proba

    adapter, max_length, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    base = resolve_model("embedded:all-minilm-l6-v2", log=lambda _: None)
    model, tokenizer, names = load_classifier(base, __import__("pathlib").Path(adapter))
    lock = threading.Lock()
    app = FastAPI()
    if mode == "pipeline":  # a transformers pipeline, as most people do: the adapter merged
        import torch
        from transformers import pipeline
        extract = pipeline("feature-extraction", model=model.encoder.merge_and_unload(),
                           tokenizer=tokenizer, device=-1, truncation=True,
                           max_length=max_length, return_tensors=True)

    def run(text):
        with lock:  # one model: one request at a time
            if mode == "pipeline":
                with torch.inference_mode():
                    hidden = extract(text)[0]  # (tokens, hidden): one input, no padding
                    probs = torch.softmax(model.head(hidden.mean(0)), -1).numpy()
            else:
                probs = predict_proba(model, tokenizer, [text], 1, max_length)[0]
        return names[int(probs.argmax())], float(probs.max())

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await request.json()
        loop = asyncio.get_running_loop()
        label, score = await loop.run_in_executor(None, run, body["inputs"][0])
        return {"results": [{"answer": label, "score": score}]}

    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(2048)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=_no_delay_protocol()))
    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        print(f"READY http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await task
    asyncio.run(main())
    """
)

MEMORY = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from training.bases import resolve_model
    n, mode, adapter = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    base = resolve_model("embedded:all-minilm-l6-v2", log=lambda _: None)
    if mode == "shared":
        from training.multitask import load_classifiers
        models = load_classifiers(base, {f"task{i}": adapter for i in range(n)})
    else:
        from training.classifier import load_classifier
        models = [load_classifier(base, adapter) for _ in range(n)]
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """
)


def start(command: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    handle = log.open("w")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=handle,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("READY "):
            return process, line.split()[1]
        if not line and process.poll() is not None:
            break
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def load(url: str, texts: list[str], clients: int) -> dict:
    """`clients` concurrent clients (one asyncio loop, aiohttp: a light load generator, so
    the 2 cores go to the server) send one single-input request per text."""
    import asyncio

    import aiohttp

    async def run() -> tuple[float, np.ndarray]:
        gate = asyncio.Semaphore(clients)
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(text: str) -> float:
                async with gate:
                    started = time.perf_counter()
                    async with session.post(
                        url + "/v1/classify", json={"task": "intent", "inputs": [text]}
                    ) as reply:
                        await reply.read()
                        if reply.status != 200:
                            raise SystemExit(f"{url}: HTTP {reply.status}")
                    return time.perf_counter() - started

            for text in texts[:8]:  # warm up
                await one(text)
            started = time.perf_counter()
            latencies = await asyncio.gather(*(one(text) for text in texts))
            return time.perf_counter() - started, np.array(latencies)

    elapsed, latencies = asyncio.run(run())
    return {
        "requests_per_s": len(texts) / elapsed,
        "p50_ms": 1000 * np.percentile(latencies, 50),
        "p99_ms": 1000 * np.percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs/quickstart")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--memory", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    parser.add_argument("--max-batch", type=int, default=16, help="cascadekit serve --max-batch")
    parser.add_argument("--forward-batch", type=int, default=8, help="serve --forward-batch")
    args = parser.parse_args()
    cascade = json.loads((args.run / "cascade.json").read_text())["tasks"]["intent"]
    adapter = args.run / cascade["adapter"]
    max_length = cascade["max_length"]
    rows = (ROOT / "configs/quickstart/data/messages.jsonl").read_text().splitlines()
    texts = [json.loads(r)["text"] for r in rows][: args.requests]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        app = tmp / "naive_app.py"
        app.write_text(NAIVE_APP)
        serve = [sys.executable, "-m", "distill.cli", "serve", str(args.run), "--port", "0"]
        serve += ["--config", "/nonexistent", "--max-batch", str(args.max_batch)]
        serve += ["--forward-batch", str(args.forward_batch)]
        servers = {
            "cascadekit": serve,
            "cascadekit bf16": [*serve, "--precision", "bf16"],
            "pipeline": [sys.executable, str(app), str(adapter), str(max_length), "pipeline"],
            "lean": [sys.executable, str(app), str(adapter), str(max_length), "predict"],
        }
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        for round_no in range(args.rounds):  # alternating: a slow minute hits every server
            for name, command in servers.items():
                process, url = start(command, tmp / f"{name}.log")
                try:
                    r = load(url, texts, args.clients)
                finally:
                    stop(process)
                rounds[name].append(r)
                print(
                    f"round {round_no + 1} {name:15s}: {r['requests_per_s']:7.1f} requests/s, "
                    f"p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms",
                    flush=True,
                )
        for name, runs in rounds.items():  # the median round by throughput
            results[name] = sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]
            r = results[name]
            print(
                f"{name:15s}: {r['requests_per_s']:7.1f} requests/s, p50 {r['p50_ms']:7.1f} ms, "
                f"p99 {r['p99_ms']:7.1f} ms (median of {len(runs)} rounds; {args.clients} "
                f"clients, {len(texts)} requests)",
                flush=True,
            )
        script = tmp / "memory.py"
        script.write_text(MEMORY)
        for n in (int(x) for x in args.memory.split(",")):
            mib = {}
            for mode in ("shared", "separate"):
                out = subprocess.run(
                    [sys.executable, str(script), str(n), mode, str(adapter)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                mib[mode] = float(out.stdout.strip().splitlines()[-1])
            print(
                f"{n:2d} adapters: one base {mib['shared']:6.0f} MiB, {n} models "
                f"{mib['separate']:6.0f} MiB ({mib['separate'] / mib['shared']:.2f}x)",
                flush=True,
            )
    check_precision(args.run)
    pipeline = results["pipeline"]["requests_per_s"]
    for name in ("cascadekit", "cascadekit bf16"):
        ours = results[name]["requests_per_s"]
        print(
            f"{name}: {ours / pipeline:.2f}x the pipeline, "
            f"{ours / results['lean']['requests_per_s']:.2f}x the lean server (requests/s)"
        )
    ratio = results["cascadekit bf16"]["requests_per_s"] / pipeline
    print(
        f"ratio: {ratio:.2f} (requests/s, micro-batching cascadekit serve --precision bf16 over "
        "a per-request transformers pipeline)"
    )


def check_precision(run: Path) -> None:
    """What bf16 costs in quality: the recalibrated cascade against the fp32 one on the run's
    test split (deferral, and risk: the share answered by the student against the teacher)."""
    from distill.cascade import Cascade
    from distill.pipeline import load_scores
    from distill.serve import recalibrate

    test = load_scores(run, "intent", "test")
    for precision in ("fp32", "bf16"):
        cascade = Cascade.load(run)
        if precision == "bf16":
            recalibrate(cascade, run, "bf16", lambda _: None)
        predictions = cascade.predict(list(test["text"]), task="intent")
        accepted = np.array([p.source == "student" for p in predictions])
        wrong = np.array(
            [p.student_answer != t for p, t in zip(predictions, test["teacher_label"], strict=True)]
        )
        tau = cascade.entry("intent")["threshold"]
        print(
            f"{precision} on {len(wrong)} test rows: threshold {tau:.4f}, deferral "
            f"{np.mean(~accepted):.1%}, risk {np.mean(wrong & accepted):.1%} (alpha "
            f"{cascade.entry('intent')['alpha']})",
            flush=True,
        )


if __name__ == "__main__":
    main()
