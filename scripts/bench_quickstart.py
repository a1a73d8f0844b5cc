"""Wall time of the quickstart: first run (teacher conversion and labelling included, with an
empty model cache) against a re-run of the same run directory and a run into a new one.

    python scripts/bench_quickstart.py [--limit N]

Installation is not included (see the README for the measured end-to-end first command).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart" / "config.yaml"


def timed_run(run_dir: Path, cache: Path, limit: int | None) -> float:
    command = [sys.executable, "-m", "distill.cli", "run", str(CONFIG), f"run_dir={run_dir}"]
    command += [f"data.limit={limit}"] if limit else []
    env = {**os.environ, "CASCADEKIT_CACHE": str(cache)}
    started = time.perf_counter()
    subprocess.run([*command, "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N messages")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = timed_run(root / "run", root / "cache", args.limit)
        again = timed_run(root / "run", root / "cache", args.limit)
        fresh_dir = timed_run(root / "run2", root / "cache", args.limit)
    print("| run | wall s | budget s |")
    print("|---|---|---|")
    print(f"| first (empty cache: convert, label, train) | {first:.0f} | 900 incl. install |")
    print(f"| re-run, same run directory | {again:.0f} | 180 |")
    print(f"| re-run, new run directory (teacher cache) | {fresh_dir:.0f} | 180 |")
    print(f"ratio: {fresh_dir / first:.2f} (re-run into a new run directory over first run)")


if __name__ == "__main__":
    main()
