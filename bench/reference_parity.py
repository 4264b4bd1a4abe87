"""Our port of ST's .h5 against ST's stored Keras outputs, and preprocess against ST's stored input.

    python bench/reference_parity.py [--reference-dir ../shared/reference]

For 192/224/256: max |Δscore|, max |Δoffset| and anchor equality of ``ssd_mnv1.load_model`` on ST's
stored resized test input (``tests/test_reference_parity.py`` asserts <= 1e-5), then how
``preprocess`` of ST's test JPEG compares with ST's stored input when decoded by PIL (the default)
and by TensorFlow (ST's decoder; needs the export extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1 import load_image, load_model
from ssd_mnv1.preprocess import resize, to_tensor
from ssd_mnv1.zoo import st_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "reference")
    args = parser.parse_args()
    ref_dir = args.reference_dir
    if not (ref_dir / "test_vectors").is_dir():
        raise SystemExit(f"error: {ref_dir}/test_vectors: not found (ST's reference files are needed)")
    jpeg = ref_dir / "test_vectors" / "people_826x547.jpg"
    try:
        tf_image = load_image(jpeg, decoder="tf")
    except ValueError:
        tf_image = None
    pil_image = load_image(jpeg)
    print("| S | max Δ scores | max Δ offsets | anchors equal | PIL decode: pixels differing (mean / max) | "
          "TF decode: equal to ST's input |")
    print("|---|---|---|---|---|---|")
    for size in (192, 224, 256):
        ref = np.load(ref_dir / "test_vectors" / f"ref_outputs_{size}.npz")
        model = load_model(st_files(ref_dir, size).h5)
        with torch.no_grad():
            scores, offsets, anchors = model.eval()(to_tensor(ref["input_uint8_hwc"])[None])
        stored = ref["input_uint8_hwc"].astype(int)
        pil = resize(pil_image, size).astype(int)
        tf_equal = "n/a (no tensorflow)" if tf_image is None else str(np.array_equal(resize(tf_image, size), stored))
        print(f"| {size} | {np.abs(scores[0].numpy() - ref['float_scores']).max():.1e} | "
              f"{np.abs(offsets[0].numpy() - ref['float_offsets']).max():.1e} | "
              f"{np.array_equal(anchors[0].numpy(), ref['float_anchors'])} | "
              f"{100 * (pil != stored).mean():.1f} % ({np.abs(pil - stored).mean():.2f} / {np.abs(pil - stored).max()}) | "
              f"{tf_equal} |")


if __name__ == "__main__":
    main()
