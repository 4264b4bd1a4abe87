"""``python -m ssd_mnv1.prepare_data``: COCO 2017 -> ST's person set or any categories (see :mod:`ssd_mnv1.data.prepare`)."""

from .cli import run
from .data.prepare import main

if __name__ == "__main__":
    run(main)
