"""Convert ST's detector .h5 to a project checkpoint (an ImageNet backbone .h5 is used as is: --model.backbone_weights).

    python -m ssd_mnv1.convert ST_224.h5 st_224.ckpt
"""

from __future__ import annotations

import argparse

from .checkpoint import save_checkpoint
from .cli import run
from .fileio import output_file
from .loading import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssd_mnv1.convert", description=__doc__.split("\n")[0])
    parser.add_argument("h5", help="ST detector .h5 file, or its model zoo name (st_ssd_mobilenet_v1_025_224, ...)")
    parser.add_argument("out", help="output checkpoint path (.ckpt)")
    args = parser.parse_args(argv)
    output_file(args.out, "output checkpoint")
    model = load_model(args.h5)
    path = save_checkpoint(model, args.out, source=str(args.h5))
    hp = model.architecture()
    print(f"wrote {path}: alpha {hp['alpha']}, input {hp['input_size']}, {hp['num_classes']} class(es), "
          f"{model.num_anchors} anchors, {sum(p.numel() for p in model.parameters()):,} parameters")
    return 0


if __name__ == "__main__":
    run(main)
