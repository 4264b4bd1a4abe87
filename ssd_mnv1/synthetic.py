"""``python -m ssd_mnv1.synthetic``: write a multi-class synthetic detection dataset to disk.

    python -m ssd_mnv1.synthetic --out DIR --classes person sign crate --images 300
                                 [--seed 0] [--size 320] [--layout coco|yolo|both]
                                 [--max-objects 4] [--overwrite] [--quiet]

Shapes (any subset, in label order): person (an upright figure), sign (a triangle with a border),
crate (a square with a border and a cross), wheel (a ring with a hub), on noisy backgrounds with
blob and bar clutter; see :mod:`ssd_mnv1.training.synthetic`. The output is an ordinary dataset:
``ssd_mnv1.data.open_dataset(DIR, class_names=[...])``, ``evaluate --data DIR --classes ...`` and
the training data module (``data.train: DIR``, ``data.class_names``) read it like any COCO or ST
YOLO-layout set, so a multi-class detector can be trained from it in minutes on a CPU without a
download.
"""

from __future__ import annotations

import argparse
import time

from .cli import run, split_names
from .training.synthetic import LAYOUTS, SHAPES, box_counts, write_synthetic_dataset

#: write_synthetic_dataset's parameters as this command's errors name them.
OPTIONS = {"out": "--out", "class_names": "--classes", "num_images": "--images", "size": "--size",
           "max_objects": "--max-objects"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_mnv1.synthetic",
        description="Write a synthetic multi-class detection dataset (COCO and/or ST YOLO layout).")
    parser.add_argument("--out", required=True, help="output folder (must be absent or empty, or use --overwrite)")
    parser.add_argument("--classes", nargs="+", required=True, metavar="SHAPE",
                        help=f"shapes to draw, in label order; available: {', '.join(SHAPES)}")
    parser.add_argument("--images", type=int, required=True, help="number of images (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same files (default 0)")
    parser.add_argument("--size", type=int, default=320, help="image side in pixels, >= 64 (default 320)")
    parser.add_argument("--layout", default="coco", choices=LAYOUTS,
                        help="coco: DIR/annotations.json + DIR/images; yolo: DIR/images + DIR/labels; "
                             "both: DIR/coco and DIR/yolo (default coco)")
    parser.add_argument("--max-objects", type=int, default=4, help="objects per image, 1..N (default 4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR if it holds an earlier synthetic dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    classes = split_names(args.classes)
    start = time.perf_counter()
    roots = write_synthetic_dataset(args.out, classes, args.images, seed=args.seed, size=args.size,
                                    layout=args.layout, max_objects=args.max_objects, overwrite=args.overwrite,
                                    progress=not args.quiet, names=OPTIONS)
    counts = box_counts(next(iter(roots.values())), classes)
    print(f"wrote {args.images} images {args.size}x{args.size}, {sum(counts.values())} boxes "
          f"({', '.join(f'{n} {counts[n]}' for n in classes)}) in {time.perf_counter() - start:.1f} s")
    for layout, root in roots.items():
        print(f"  {layout}: {root}")
    print(f"open with ssd_mnv1.data.open_dataset(PATH, class_names={classes!r})")
    return 0


if __name__ == "__main__":
    run(main)
