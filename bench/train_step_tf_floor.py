"""How far ST's own Keras training step moves when only TensorFlow's CPU kernels change.

    python bench/train_step_tf_floor.py --st-src ST_SRC \
        --vectors ../shared/reference/train_step/batchA_224.npz \
        --weights ST_224.h5

ST_224.h5 is ST's released 224 ``.h5`` (``ssd_mnv1.zoo.st_files(DIR, 224).h5``).

Runs one step of ST's 2.0 training (the ``.h5`` loaded by tf_keras, outputs concatenated, ST's
``ssd_focal_loss`` imported from ``ST_SRC/object_detection/src/training/loss.py`` at run time, legacy
Adam 1e-3, Keras' train step) on the vectors' ``images`` and ``y_true``, twice: with TensorFlow's
default oneDNN kernels and with its Eigen kernels (``TF_ENABLE_ONEDNN_OPTS=0``). Each run is scored
with the statistics of ``bench/train_step_parity.py`` (:mod:`ssd_mnv1.training.step_parity`) against
the stored step, so the numbers are the floor that any port, ours included, can be held to. Needs the ``export`` extra (TensorFlow,
tf_keras) and a copy of ST's 2.0 source (never part of this repository).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

KERNELS = {"onednn": "1", "eigen": "0"}


def st_keras_step(st_src: Path, vectors: Path, weights: Path) -> dict:
    """One Keras training step of ST's model and loss; returns losses, grads and variables after."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    sys.path.insert(0, str(st_src / "object_detection" / "src" / "training"))
    import loss as st_loss  # ST's loss.py, read from --st-src

    tf.config.experimental.enable_op_determinism()
    v = np.load(vectors)
    inference = tf.keras.models.load_model(str(weights), compile=False)
    model = tf.keras.Model(inference.input,
                           tf.keras.layers.Concatenate(axis=2, name="predictions")(inference.outputs))
    model.trainable = True
    model.compile(optimizer=tf.keras.optimizers.legacy.Adam(learning_rate=1e-3), loss=st_loss.ssd_focal_loss())
    x, y = tf.constant(v["images"]), tf.constant(v["y_true"])

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            total = model.compute_loss(x, y, y_pred, None)
            reg = tf.add_n(model.losses)
        grads = tape.gradient(total, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return y_pred, total, reg, grads

    y_pred, total, reg, grads = step(x, y)
    positive = tf.reduce_max(y[:, :, 1:-8], axis=-1)
    denom = tf.maximum(1.0, tf.reduce_sum(positive))
    cls = tf.reduce_sum(st_loss.focal_loss(y[:, :, :-8], y_pred[:, :, :-8], alpha=1.0, gamma=0.25)) / denom
    loc = tf.reduce_sum(st_loss.smooth_l1_loss(y[:, :, -8:-4], y_pred[:, :, -8:-4], sigma=0.5) * positive) / denom
    name = lambda var: var.name.rsplit(":", 1)[0]  # noqa: E731
    return {"losses": {"total": float(total), "cls": float(cls), "loc": float(loc), "reg": float(reg)},
            "grads": {name(var): g.numpy() for var, g in zip(model.trainable_variables, grads)},
            "after": {name(var): var.numpy() for var in model.variables},
            "y_pred_max_abs_diff": float(np.abs(y_pred.numpy() - v["y_pred"]).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--st-src", type=Path, required=True, help="copy of ST's ModelZoo 2.0 source tree")
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--worker", choices=tuple(KERNELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    loss_py = args.st_src / "object_detection" / "src" / "training" / "loss.py"
    for path, option in ((loss_py, "--st-src"), (args.vectors, "--vectors"), (args.weights, "--weights")):
        if not path.is_file():
            parser.error(f"{option}: {path}: no such file")
    from ssd_mnv1.training.step_parity import compare_with_st, parity_table

    if args.worker:
        out = st_keras_step(args.st_src, args.vectors, args.weights)
        result = compare_with_st(dict(np.load(args.vectors)), out["losses"], out["grads"], out["after"])
        result.update(kernels=args.worker, losses_ours=out["losses"], y_pred_max_abs_diff=out["y_pred_max_abs_diff"])
        print(json.dumps(result))
        return 0
    v = np.load(args.vectors)
    results = {}
    for kernels, flag in KERNELS.items():
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag)
        proc = subprocess.run([sys.executable, __file__, "--st-src", str(args.st_src), "--vectors", str(args.vectors),
                               "--weights", str(args.weights), "--worker", kernels],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"error: ST's Keras step with {kernels} kernels failed (exit {proc.returncode})")
        results[kernels] = json.loads(proc.stdout.strip().splitlines()[-1])
        print("\n".join(parity_table(results[kernels], v, f"ST's own Keras step, TensorFlow {kernels} kernels, "
                                                           f"vs the stored step ({args.vectors.name}); max abs diff "
                                                           f"of y_pred {results[kernels]['y_pred_max_abs_diff']:.2e}",
                                      label="TF run")[:-1]))
        print()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
