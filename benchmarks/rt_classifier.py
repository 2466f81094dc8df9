"""Train (once, cached) and score the Rotten Tomatoes classifier of :mod:`optimum_prune.classifier`.

    .venv/bin/python benchmarks/rt_classifier.py            # train once (cached), print held-out accuracy
    .venv/bin/python benchmarks/rt_classifier.py --seed 1   # another seed, another cache folder

Other benchmark scripts import from here or from the package::

    from optimum_prune.classifier import ensure_classifier, heldout_split
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optimum_prune.classifier import (  # noqa: E402
    ID2LABEL,
    LABEL2ID,
    MARKER,
    TRAINING,
    _train,
    accuracy,
    accuracy_torch,
    cache_root,
    ensure_classifier,
    heldout_split,
    train_split,
)

__all__ = ["ID2LABEL", "LABEL2ID", "TRAINING", "accuracy", "accuracy_torch", "ensure_classifier",
           "heldout_split", "train_split"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--time-steps", type=int, default=0,
                        help="only measure: train this many steps into a scratch folder, print s/step")
    args = parser.parse_args(argv)
    if args.time_steps:
        with tempfile.TemporaryDirectory() as tmp:
            info = _train(Path(tmp) / "m", args.seed, cache_root(args.cache_dir), max_steps=args.time_steps)
        print(json.dumps(info, indent=1))
        return 0
    folder = ensure_classifier(args.cache_dir, seed=args.seed)
    info = json.loads((folder / MARKER).read_text())
    print(f"{folder}: held-out accuracy {info['heldout']['accuracy']:.3f} on {info['heldout']['n']} reviews "
          f"({info['steps']} steps, {info['seconds']:.0f} s, seed {info['seed']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
