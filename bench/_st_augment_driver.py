"""Runs ST's own 2.0 training augmentation (``data_aug`` of the stm32ai-modelzoo object_detection
sources) for ``bench/augment_parity.py``. Run it with a Python that has imgaug 0.4.0 + opencv (see
the bench's docstring); it imports ST's code only from ``--st-src`` given at run time.

    python _st_augment_driver.py --st-src DIR --inp IN.npz --out OUT.npz

``IN.npz`` holds ``mode`` and the arrays of that mode:

* ``full``: ``images`` (U, S, S, 3) uint8, ``boxes`` (B, 4) pixels xyxy with ``box_image`` (B,)
  their image, ``sequence`` (N,) image ids in loader order, ``batch_size``, ``seed``. Calls
  ``data_aug`` once per batch, like ST's ``generate``. Every box carries a unique id as its imgaug
  label (ST passes labels through untouched), so the output says which input each result is.
* ``probe``: ``images`` (N, S, S, 3), ``boxes`` (N, K, 4), ``op`` (index in ST's list), ``seed``:
  runs that single op of the ``Sequential`` that ``data_aug`` builds, on its own, and returns its
  images and boxes before any clipping.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path


def _numpy_shims():
    """imgaug 0.4.0 and ST's code were written for numpy < 1.24 (ST pins 1.23.4)."""
    import numpy as np

    for name, value in (("bool", bool), ("float", float), ("int", int), ("complex", complex),
                        ("object", object), ("str", str)):
        if name not in np.__dict__:
            setattr(np, name, value)
    return np


class _Np123:
    """numpy as ST's module saw it under numpy 1.23: ``asarray`` of a ragged list of per-image box
    arrays gives an object array (numpy >= 1.24 raises instead)."""

    def __init__(self, np):
        self._np = np

    def __getattr__(self, name):
        return getattr(self._np, name)

    def asarray(self, a, *args, **kwargs):
        try:
            return self._np.asarray(a, *args, **kwargs)
        except ValueError:
            out = self._np.empty(len(a), dtype=object)
            for i, item in enumerate(a):
                out[i] = item
            return out


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules.setdefault(name, mod)


def load_st(st_src: Path):
    """Import ST's ``data_augment`` from the given sources; its training-only imports that
    ``data_aug`` does not use (TensorFlow, anchor matching, pandas, tqdm) are stubbed."""
    np = _numpy_shims()
    folder = st_src / "object_detection" / "src" / "data_augmentation"
    if not (folder / "data_augment.py").is_file():
        raise SystemExit(f"{folder}/data_augment.py not found: --st-src must be the model-zoo root")
    unused = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not used by data_aug"))  # noqa: E731
    for name in ("pandas", "tqdm"):
        try:
            __import__(name)
        except ImportError:
            _stub(name)
    _stub("anchor_boxes_utils", match_gt_anchors=unused)
    for name in ("tensorflow", "tensorflow.keras", "tensorflow.keras.applications"):
        _stub(name)
    _stub("tensorflow.keras.applications.mobilenet", preprocess_input=unused)
    sys.path.insert(0, str(folder))
    import data_augment  # ST's module

    data_augment.np = _Np123(np)
    return data_augment


def st_config():
    """The ``data_augmentation`` section of ST's pretrained st_ssd_mobilenet_v1 configs."""
    ns = types.SimpleNamespace
    return ns(data_augmentation=ns(horizontal_flip=0.2, vertical_flip=0.5, translation=0.1, rotation=30,
                                   shearing=15, gaussian_blur=3.0, linear_contrast=[0.75, 1.5]))


def capture_sequential(data_augment, cfg, size):
    """The ``iaa.Sequential`` that ST's ``data_aug`` builds (recorded while it runs once)."""
    import imgaug.augmenters as iaa
    import numpy as np

    made = []

    class _Recorder:
        def __getattr__(self, name):
            return getattr(iaa, name)

        @staticmethod
        def Sequential(*args, **kwargs):
            seq = iaa.Sequential(*args, **kwargs)
            made.append(seq)
            return seq

    real = data_augment.iaa
    data_augment.iaa = _Recorder()
    try:
        data_augment.data_aug(cfg, [np.zeros((size, size, 3), np.uint8)], [np.array([[1, 1, 1, 5, 5]], float)])
    finally:
        data_augment.iaa = real
    return made[-1]


def run_full(data_augment, cfg, inp):
    import numpy as np

    images, boxes, box_image = inp["images"], inp["boxes"], inp["box_image"]
    sequence, bs = inp["sequence"], int(inp["batch_size"])
    per_image = [np.flatnonzero(box_image == u) for u in range(len(images))]
    out_pos, out_mean, out_std, out_chmean = [], [], [], []
    box_id, box_xyxy = [], []
    for start in range(0, len(sequence) - bs + 1, bs):
        batch = sequence[start:start + bs]
        imgs, labels = [], []
        for j, u in enumerate(batch):
            idx = per_image[u]
            ids = (start + j) * 1000 + np.arange(len(idx))  # unique id: position * 1000 + box
            imgs.append(images[u].copy())
            labels.append(np.concatenate([ids[:, None], boxes[idx]], axis=1).astype(float))
        aug_images, aug_labels = data_augment.data_aug(cfg, imgs, labels)
        for img, lab in zip(aug_images, aug_labels):
            lab = np.asarray(lab, float).reshape(-1, 5)
            pos = int(lab[0, 0]) // 1000
            px = np.asarray(img, np.float64)
            out_pos.append(pos)
            out_mean.append(px.mean())
            out_std.append(px.std())
            out_chmean.append(px.reshape(-1, 3).mean(0))
            box_id.append(lab[:, 0].astype(np.int64))
            box_xyxy.append(lab[:, 1:])
    n_in = (len(sequence) // bs) * bs
    return {"n_in": n_in, "pos": np.array(out_pos), "pix_mean": np.array(out_mean), "pix_std": np.array(out_std),
            "pix_chmean": np.array(out_chmean).reshape(-1, 3),
            "box_id": np.concatenate(box_id) if box_id else np.zeros(0, np.int64),
            "box_xyxy": np.concatenate(box_xyxy) if box_xyxy else np.zeros((0, 4))}


def run_probe(seq, inp):
    import numpy as np
    from imgaug.augmentables.bbs import BoundingBox, BoundingBoxesOnImage

    op = seq[int(inp["op"])]
    images = [im for im in inp["images"]]
    boxes = inp["boxes"]
    bbs = [BoundingBoxesOnImage([BoundingBox(*b) for b in bx], shape=im.shape) for im, bx in zip(images, boxes)]
    out_images, out_bbs = op(images=images, bounding_boxes=bbs)
    xyxy = np.array([[[b.x1, b.y1, b.x2, b.y2] for b in o.bounding_boxes] for o in out_bbs], float)
    return {"images": np.stack(out_images), "boxes": xyxy, "op_name": repr(op)[:300]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--st-src", type=Path, required=True)
    ap.add_argument("--inp", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import random

    import imgaug
    import numpy as np

    data_augment = load_st(args.st_src)
    cfg = st_config()
    inp = np.load(args.inp, allow_pickle=False)
    seed = int(inp["seed"])
    imgaug.seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    mode = str(inp["mode"])
    if mode == "full":
        out = run_full(data_augment, cfg, inp)
    elif mode == "probe":
        seq = capture_sequential(data_augment, cfg, inp["images"].shape[1])
        imgaug.seed(seed)
        out = run_probe(seq, inp)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    out["versions"] = f"imgaug {imgaug.__version__}, numpy {np.__version__}"
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
