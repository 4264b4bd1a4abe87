"""Train with ST's own ModelZoo 2.0 Keras training code (for side-by-side runs against our trainer).

    ST_VENV/bin/python bench/st_keras_trainer.py --st-src ST_SRC --start finetune|imagenet \
        --weights FILE.h5 --data ../shared/data/coco2017_person_train --epochs E --save-every K \
        --seed S --lr LR --out DIR [--batch-size 64] [--threads 2] [--no-augmentation]

Runs in a separate environment (TF 2.19 + tf_keras 2.19, numpy 1.26, imgaug 0.4.0, opencv, pandas,
munch, omegaconf, hydra-core, tqdm), never in the project's venv. Set up (Python 3.11)::

    python3 -m venv ST_VENV
    ST_VENV/bin/pip install tensorflow==2.19.0 tf-keras==2.19.0 numpy==1.26.4 imgaug==0.4.0 \
        opencv-python-headless==4.11.0.86 h5py pandas munch omegaconf hydra-core scipy scikit-image \
        shapely matplotlib tqdm

ST's code is NOT part of this repository: ``--st-src`` is the root of a local copy of ST's stm32ai-modelzoo at ModelZoo 2.0.0
(commit ff424ea597aa) holding ``object_detection/src/{training/loss.py, utils/anchor_boxes_utils.py,
preprocessing/{preprocess.py,datasets.py}, data_augmentation/data_augment.py,
models/st_ssd_mobilenet_v1.py}`` and ``object_detection/datasets/dataset_converter/converter.py``;
it is imported at run time.

What runs is ST 2.0's own training path:

* data: ST's ``convert_coco_to_yolo`` (a COCO folder: ``annotations.json`` + ``images/``) or an
  existing YOLO folder, then ST's ``parse_data``/``load_data``;
* ST's ``generate()`` generator with ``shuffle=True`` and ST's ``data_aug`` augmentation with the
  pretrained config's parameters, batch 64, ``steps_per_epoch = int(N / batch)`` (the generator skips
  the last partial batch), float64 ``x/127.5 - 1`` and ST's float64 anchor matching;
* the model, as ST's ``train.py``: ``finetune`` = the "bring your own model" branch (``load_model(h5,
  compile=False)`` + ``Concatenate(axis=2, name='predictions')``); ``imagenet`` = ST's own builder
  ``st_ssd_mobilenet_v1(input_shape, class_names, model_alpha=0.25, pretrained_weights=...)``
  with the Keras-Applications ImageNet MobileNet weights (``--weights``: a local ImageNet .h5 is
  loaded by layer name into the backbone, which is what ``weights='imagenet'`` does when it can
  download Keras' no-top file); ``trainable=True`` with nothing frozen;
* ``compile(optimizer=Adam(lr), loss=ssd_focal_loss())`` with the legacy (OptimizerV2) Keras Adam,
  which is what Keras 2.8's ``tf.keras.optimizers.Adam`` was; the L2 terms come from the layers'
  ``kernel_regularizer``/``depthwise_regularizer`` (in the .h5 / set by ST's builder);
* ``Model.fit(generator, steps_per_epoch, epochs)``; no validation, LR schedule or early stopping
  (short comparison runs; ST's ReduceLROnPlateau/EarlyStopping would not trigger within them).

The inference model (3 outputs, as ST saves it) is written as ``st_ep{E:03d}.h5`` before training
(E = 0) and every ``--save-every`` epochs; our importer (``ssd_mnv1.weights.load_keras_h5``,
``python -m ssd_mnv1.evaluate FILE.h5``) reads these files. ``history.json`` in ``--out`` holds the
per-epoch loss and time.

Version-drift shims (ST 2.0 pinned TF 2.8.3 / numpy 1.23.4), applied at run time only:
numpy aliases removed in 1.24 (``np.bool``/``np.int``/``np.float``/...) for imgaug 0.4.0 and ST's
modules; inside ST's modules ``np.array``/``np.asarray`` give an object array for ragged per-image
box lists (numpy <= 1.23 did; newer numpy raises); empty stand-ins for ``load_models``/``models_mgt``
(imported by ``preprocess.py`` at module level but used only by ``preprocess()``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import types

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# numpy >= 1.24 removed these aliases; imgaug 0.4.0 and ST 2.0 still use them.
for _name, _value in (("bool", bool), ("int", int), ("float", float), ("complex", complex),
                      ("object", object), ("str", str)):
    if _name not in np.__dict__:
        setattr(np, _name, _value)

import tensorflow as tf  # noqa: E402

#: ST's preprocess(): fmap_sizes_dict['st_ssd_mobilenet_v1']
FMAP_SIZES = {192: [24, 12, 6, 3, 1], 224: [32, 16, 8, 4, 2, 1], 256: [32, 16, 8, 4, 2, 1]}
#: The parts of ST's parsed 2.0 config that generate()/data_aug() read. ``scale`` is the 2.0
#: user_config's "1/127.5" (evaluated by ST's config parser); augmentation values are those of the
#: pretrained configs (ST's ``<S>_config.yaml``, named in ``ssd_mnv1.zoo``).
ST_CONFIG = {
    "dataset": {"class_names": ["person"]},
    "preprocessing": {"rescaling": {"scale": 1 / 127.5, "offset": -1}},
    "data_augmentation": {"rotation": 30, "shearing": 15, "translation": 0.1, "vertical_flip": 0.5,
                          "horizontal_flip": 0.2, "gaussian_blur": 3.0, "linear_contrast": [0.75, 1.5]},
}


def _ragged_tolerant(fn):
    """numpy <= 1.23 behaviour for ragged nested sequences: an object array instead of an error."""
    def call(obj, *args, **kwargs):
        try:
            return fn(obj, *args, **kwargs)
        except ValueError as exc:
            if "inhomogeneous" not in str(exc) or args or "dtype" in kwargs:
                raise
            return fn(obj, dtype=object, **kwargs)
    return call


def numpy_for_st() -> types.ModuleType:
    """A numpy look-alike module for ST's namespaces (numpy itself is left unchanged)."""
    mod = types.ModuleType("numpy_for_st20")
    mod.__dict__.update(np.__dict__)
    mod.float, mod.int, mod.math = float, int, math
    mod.array = _ragged_tolerant(np.array)
    mod.asarray = _ragged_tolerant(np.asarray)
    return mod


def import_st(st_src: str) -> types.SimpleNamespace:
    root = os.path.join(os.path.abspath(st_src), "object_detection")
    for sub in ("src/utils", "src/training", "src/data_augmentation", "src/preprocessing", "src/models",
                "datasets/dataset_converter"):
        path = os.path.join(root, sub)
        if not os.path.isdir(path):
            raise SystemExit(f"--st-src {st_src}: {path} not found")
        sys.path.insert(0, path)
    for name, attr in (("load_models", "get_model"), ("models_mgt", "get_model_name_and_its_input_shape")):
        stand_in = types.ModuleType(name)

        def unused(*_a, _name=name, **_k):
            raise RuntimeError(f"{_name}: stand-in, not used by st_keras_trainer.py")
        setattr(stand_in, attr, unused)
        sys.modules[name] = stand_in
    import anchor_boxes_utils  # noqa: E401
    import converter
    import data_augment
    import datasets
    import loss
    import preprocess
    import st_ssd_mobilenet_v1
    shim = numpy_for_st()
    for mod in (anchor_boxes_utils, datasets, data_augment, preprocess, st_ssd_mobilenet_v1):
        mod.np = shim
    return types.SimpleNamespace(abu=anchor_boxes_utils, loss=loss, datasets=datasets, data_augment=data_augment,
                                 preprocess=preprocess, converter=converter, builder=st_ssd_mobilenet_v1)


def yolo_folder(st, data: str, work: str) -> str:
    """ST's YOLO layout of ``data``: used as is, or converted from COCO with ST's converter."""
    if any(f.endswith(".txt") for f in os.listdir(data)) and not os.path.isfile(os.path.join(data, "annotations.json")):
        return data
    ann = data if data.endswith(".json") else os.path.join(data, "annotations.json")
    images = os.path.join(os.path.dirname(ann), "images")
    out = os.path.join(work, "person_train_set")
    st.converter.convert_coco_to_yolo(ann, images, list(ST_CONFIG["dataset"]["class_names"]), out)
    return out


def build_model(st, start: str, weights: str, input_size: int, lr: float):
    """(inference_model, training_model) compiled as ST's train.py does."""
    if start == "finetune":
        inference = tf.keras.models.load_model(weights, compile=False)
        out = tf.keras.layers.Concatenate(axis=2, name="predictions")(inference.outputs)
        training = tf.keras.models.Model(inputs=inference.input, outputs=out)
    else:
        inference, training, _ = st.builder.st_ssd_mobilenet_v1(
            input_shape=(input_size, input_size, 3), class_names=list(ST_CONFIG["dataset"]["class_names"]),
            model_alpha=0.25, pretrained_weights=None)
        load_imagenet_backbone(training, weights)
    training.trainable = True
    training.compile(optimizer=tf.keras.optimizers.legacy.Adam(learning_rate=lr), loss=st.loss.ssd_focal_loss())
    return inference, training


def load_imagenet_backbone(model, path: str) -> None:
    """Keras-Applications ImageNet weights into the backbone layers (by name), checked layer by layer."""
    import h5py

    model.load_weights(path, by_name=True)
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = [n for n in group if len(group[n].attrs.get("weight_names", []))]
        checked = 0
        for name in names:
            try:
                layer = model.get_layer(name)
            except ValueError:
                continue  # the classifier top (conv_preds) is not part of the detector
            saved = [np.asarray(group[name][w]) for w in group[name].attrs["weight_names"]]
            for a, b in zip(layer.get_weights(), saved):
                if not np.array_equal(a, b):
                    raise SystemExit(f"{path}: layer {name} did not load")
            checked += 1
    if checked < 27:
        raise SystemExit(f"{path}: only {checked} backbone layers matched by name")
    print(f"ImageNet backbone: {checked} layers loaded from {path}", flush=True)


class SaveEvery(tf.keras.callbacks.Callback):
    def __init__(self, inference_model, out_dir: str, every: int, history: list):
        super().__init__()
        self.inference, self.out, self.every, self.history = inference_model, out_dir, every, history
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", float("nan"))),
                             "seconds": round(seconds, 3)})
        print(f"epoch {epoch + 1}: loss {self.history[-1]['loss']:.4f} ({seconds:.1f} s)", flush=True)
        if (epoch + 1) % self.every == 0:
            save(self.inference, self.out, epoch + 1)


def save(inference_model, out_dir: str, epoch: int) -> str:
    path = os.path.join(out_dir, f"st_ep{epoch:03d}.h5")
    inference_model.save(path, include_optimizer=False)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--st-src", required=True, help="root of a local copy of ST's stm32ai-modelzoo 2.0.0")
    ap.add_argument("--start", required=True, choices=("finetune", "imagenet"))
    ap.add_argument("--weights", required=True,
                    help="finetune: ST detector .h5; imagenet: Keras-Applications MobileNet 0.25 ImageNet .h5")
    ap.add_argument("--data", required=True, help="COCO folder (annotations.json + images/) or ST YOLO folder")
    ap.add_argument("--input-size", type=int, default=224, choices=sorted(FMAP_SIZES))
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--save-every", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=127)
    ap.add_argument("--threads", type=int, default=2, help="TF intra/inter-op threads")
    ap.add_argument("--no-augmentation", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    st = import_st(args.st_src)
    import imgaug
    from munch import DefaultMunch

    tf.keras.utils.set_random_seed(args.seed)  # python random (ST's shuffle), numpy, TF (head init)
    imgaug.seed(args.seed)                     # imgaug's own global RNG (augmentation)
    cfg = DefaultMunch.fromDict(ST_CONFIG)
    S = args.input_size

    with tempfile.TemporaryDirectory(prefix="st_yolo_") as work:
        yolo = yolo_folder(st, args.data, work)
        # parse_data lists os.listdir order (file-system dependent): sorted, for runs that repeat
        paths, labels, n = st.datasets.load_data(sorted(st.datasets.parse_data(yolo)))
        sizes, ratios = st.abu.get_sizes_ratios((S, S, 3))
        fm = np.array(FMAP_SIZES[S])
        gen = st.preprocess.generate(cfg=cfg, images_filename_list=paths, gt_labels_list=labels,
                                     batch_size=args.batch_size, shuffle=True,
                                     augmentation=not args.no_augmentation,
                                     fmap_sizes=np.stack([fm, fm], axis=-1), img_width=S, img_height=S,
                                     sizes=sizes, ratios=ratios, n_classes=len(cfg.dataset.class_names))
        inference, training = build_model(st, args.start, args.weights, S, args.lr)
        print(f"{args.start}: {len(training.trainable_variables)} trainable variables, "
              f"{len(training.losses)} L2 terms; {n} training images, batch {args.batch_size}, "
              f"{int(n / args.batch_size)} steps/epoch, lr {args.lr}, seed {args.seed}", flush=True)
        save(inference, args.out, 0)
        history: list = []
        t0 = time.perf_counter()
        if args.epochs > 0:
            training.fit(gen, steps_per_epoch=int(n / args.batch_size), epochs=args.epochs, verbose=0,
                         callbacks=[SaveEvery(inference, args.out, args.save_every, history)])
            if args.epochs % args.save_every:
                save(inference, args.out, args.epochs)
        total = time.perf_counter() - t0
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump({"start": args.start, "seed": args.seed, "lr": args.lr, "epochs": args.epochs,
                   "batch_size": args.batch_size, "train_images": n, "seconds": round(total, 2),
                   "history": history}, f, indent=1)
    print(f"trained {args.epochs} epochs in {total:.1f} s; models in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
