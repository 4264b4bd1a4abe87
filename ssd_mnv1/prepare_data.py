"""Build ST's COCO person set, or any COCO categories, in COCO and YOLO layouts from a COCO 2017 download.

    python -m ssd_mnv1.prepare_data --coco DIR_OR_ZIPS [...] --split val2017|train2017 --out OUT
                                    [--classes person] [--layout coco|yolo|both]
                                    [--download [--base-url URL] [--checksums FILE]]

Input (``--coco``, one or more paths): an extracted COCO 2017 download (a folder with
``annotations/instances_<split>.json`` and ``<split>/``), the official zips
(``annotations_trainval2017.zip`` and ``<split>.zip``, or a folder holding them), or a mix.
With ``--download`` the zips are first fetched into ``--coco DIR`` (the cache; default
``~/.cache/ssd_mnv1/coco2017``) from ``--base-url`` with HTTP Range resume and md5/size checks
(:mod:`ssd_mnv1.download`). The conversion rules (ST's ``dataset_converter``, and the
decisions beyond it) are those of :mod:`ssd_mnv1.data.prepare`.
"""

from __future__ import annotations

import argparse
import sys

from .cli import run, split_names
from .download import load_checksums
from .data.prepare import (ANNOTATIONS_ZIP, DEFAULT_BASE_URL, DEFAULT_CACHE, SPLITS, CocoSource, download_coco,
                           prepare_coco)
from .fileio import output_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ssd_mnv1.prepare_data",
        description="Build ST's COCO person set, or a subset of any COCO categories (--classes), in COCO and "
                    "YOLO-Darknet layouts from a COCO 2017 download.")
    parser.add_argument("--coco", nargs="+", metavar="DIR_OR_ZIP",
                        help="extracted COCO 2017 folder (annotations/ + <split>/), the official zips or a "
                             "folder with them; with --download: the download cache folder "
                             f"(default {DEFAULT_CACHE})")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, help="output folder (gets coco/ and/or yolo/)")
    parser.add_argument("--classes", nargs="+", default=["person"],
                        help="COCO category names to keep, in label order: YOLO class 0 is the first "
                             "(default: person; quote names with spaces, e.g. 'traffic light')")
    parser.add_argument("--layout", default="both", choices=("coco", "yolo", "both"))
    parser.add_argument("--download", action="store_true",
                        help="download the official archives into the --coco folder first (resumable)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help=f"download server (default {DEFAULT_BASE_URL}; files annotations/{ANNOTATIONS_ZIP} "
                             "and zips/<split>.zip)")
    parser.add_argument("--checksums", help="JSON {filename: md5} overriding the built-in table")
    parser.add_argument("--timeout", type=float, default=60.0, help="download socket timeout, seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    out = output_folder(args.out, "--out")
    classes = split_names(args.classes)
    layouts = ["coco", "yolo"] if args.layout == "both" else [args.layout]
    progress = not args.quiet and sys.stderr.isatty()
    if args.download:
        if args.coco and len(args.coco) > 1:
            raise ValueError("--download takes a single --coco folder (the download cache)")
        cache = output_folder(args.coco[0] if args.coco else DEFAULT_CACHE, "--coco")
        checksums = load_checksums(args.checksums) if args.checksums else None
        download_coco(cache, args.split, base_url=args.base_url, checksums=checksums, progress=progress,
                      timeout=args.timeout)
        sources = [cache]
    else:
        if not args.coco:
            raise ValueError("give --coco DIR_OR_ZIP (or --download)")
        if args.checksums:
            raise ValueError("--checksums applies to --download only")
        sources = args.coco
    with CocoSource(sources, args.split) as source:
        print(f"source: {source.describe()}")
        stats = prepare_coco(source, args.split, out, classes, layouts, progress=progress)
    print(stats.summary())
    return 0


if __name__ == "__main__":
    run(main)
