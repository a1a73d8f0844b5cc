"""Train the run's students: `accelerate launch scripts/train.py CONFIG [key.sub=value ...]`.

The same stage as `cascadekit train CONFIG`, with the same artifacts; under `accelerate launch`
each process trains its shard of every batch and the main process writes the adapters.
"""

import sys

from distill.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
