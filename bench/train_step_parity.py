"""One training step of our trainer against one step of ST's own 2.0 Keras training code.

    python bench/train_step_parity.py --vectors ../shared/reference/train_step/batchA_224.npz \
        --weights ST_224.h5

ST_224.h5 is ST's released 224 ``.h5`` (``ssd_mnv1.zoo.st_files(DIR, 224).h5``).

The vectors (``../shared/reference/train_step/README.md``) hold ST's input batch, the boxes as ST's
matcher receives them, ST's targets, losses, gradients and the variables after one Adam step from the
shipped ``.h5``. This script runs :func:`ssd_mnv1.training.step_parity.train_step_parity` (the ``.h5``
loaded with our importer into ``SSDLightningModule``, ST's recipe being its default configuration,
and the trainer's own ``training_loss``, ``backward`` and optimizer; that module's docstring says
how each quantity is compared). It prints a table, then, as its last line, one JSON object; it exits
1 when a threshold is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1.training.step_parity import VECTOR_KEYS, parity_failures, parity_table, train_step_parity
from ssd_mnv1.weights import KerasImportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=Path, required=True, help="batch*_<S>.npz from ST's train_step vectors")
    parser.add_argument("--weights", type=Path, required=True, help="ST's .h5 of the same input size")
    parser.add_argument("--match-variant", default="st20", choices=("st20", "st25", "st20_exact"))
    args = parser.parse_args(argv)
    for path, option in ((args.vectors, "--vectors"), (args.weights, "--weights")):
        if not path.is_file():
            parser.error(f"{option} {path}: no such file")
    try:
        missing = [k for k in VECTOR_KEYS if k not in np.load(args.vectors, allow_pickle=False)]
    except (OSError, ValueError) as exc:
        parser.error(f"--vectors {args.vectors}: not a .npz file ({exc})")
    if missing:
        parser.error(f"--vectors {args.vectors}: not ST's train-step vectors (no {', '.join(missing)})")
    torch.manual_seed(0)
    try:
        result = train_step_parity(args.vectors, args.weights, args.match_variant)
    except KerasImportError as exc:
        parser.error(f"--weights {exc}")
    result["pass"] = not parity_failures(result)
    v = np.load(args.vectors)
    print("\n".join(parity_table(result, v, f"train-step parity, S={result['input_size']}, {len(v['files'])} "
                                           f"images ({args.vectors.name}), our trainer vs ST's Keras step, "
                                           f"matcher {args.match_variant}")))
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
