"""One training step of our trainer against one step of ST's own 2.0 Keras training code.

ST's train-step vectors (``../shared/reference/train_step/README.md``) hold ST's input batch, the
boxes as ST's matcher receives them, ST's targets, losses, gradients and the variables after one Adam
step from the shipped ``.h5``. :func:`train_step_parity` loads the ``.h5`` with our importer into
``SSDLightningModule`` (ST's recipe is its default configuration) and runs the trainer's own code:
``training_loss`` (matcher, loss, L2, training-mode BN), ``backward`` and the optimizer
``configure_optimizers`` returns. ``bench/train_step_parity.py`` prints the comparison;
``bench/train_step_tf_floor.py`` scores ST's own Keras step under two TensorFlow kernel sets with
:func:`compare_with_st`.

Gradients are compared per Keras variable as max|g_ours - g_ST| / max|g_ST|. Conv biases are left
out: each feeds a training-mode BN, so their true gradient is 0 and ST's stored values are float32
noise. Weights after the step are compared where |g_ST| > 1e-5 (below that Adam's step depends on
the noise of g, train_step README "Notes for comparing a port").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..weights import keras_variables, read_keras_h5
from .module import SSDLightningModule

#: The issue's thresholds of a step, as :func:`parity_table` and ``bench/train_step_parity.py`` apply them
#: (tests/test_train_step_parity.py bounds the backbone gradients and BN statistics at twice
#: TensorFlow's own kernel floor instead).
THRESHOLDS = {"optimizer_on_st_grads_max_abs_diff": 1e-6, "loss_total_rel_diff": 1e-5, "loss_cls_rel_diff": 1e-5,
              "loss_loc_rel_diff": 1e-5, "loss_reg_rel_diff": 1e-5, "grad_rel_diff": 1e-3,
              "bn_stats_max_abs_diff": 1e-5, "after_step_max_abs_diff": 1e-6}
#: |g_ST| above which weights after the step are compared.
GRAD_FLOOR = 1e-5
#: Keys of ST's train-step vectors that :func:`train_step_parity` reads (besides grads/ and after/).
VECTOR_KEYS = ("files", "input_size", "images", "gt_boxes", "gt_count", "y_true", "loss_total", "loss_cls",
               "loss_loc", "loss_reg")
#: Keras-Applications names of the MobileNet backbone; every other variable belongs to ST's layers.
BACKBONE_PREFIXES = ("conv1", "conv_dw_", "conv_pw_")


def batch_from_vectors(v: dict) -> dict:
    """The trainer's batch dict from ST's arrays: NCHW images, per-image normalized float64 boxes."""
    size = int(v["input_size"])
    images = torch.from_numpy(np.ascontiguousarray(v["images"].transpose(0, 3, 1, 2)))
    boxes, labels = [], []
    for rows, count in zip(v["gt_boxes"], v["gt_count"]):
        rows = torch.from_numpy(rows[:count])
        boxes.append(rows[:, 1:5] / size)  # ST divides its pixel corners by S in float64
        labels.append(rows[:, 0].long())
    n = len(boxes)
    return {"images": images, "boxes": boxes, "labels": labels, "indices": torch.arange(n),
            "files": [str(f) for f in v["files"]], "boxes_dropped": torch.tensor(0),
            "images_dropped": torch.tensor(0)}


def _rel(ours: float, st: float) -> float:
    return abs(ours - st) / max(abs(st), 1e-30)


def compare_with_st(v: dict, losses: dict[str, float], grads: dict[str, np.ndarray],
                    after: dict[str, np.ndarray]) -> dict:
    """The step statistics of one trainer against ST's vectors ``v``. ``grads`` / ``after`` are keyed by
    Keras variable name (``layer/variable``) in Keras layout; ``losses`` by ``total, cls, loc, reg``."""
    out = {f"loss_{k}_rel_diff": _rel(float(val), float(v[f"loss_{k}"])) for k, val in losses.items()}
    grad_rel, grad_l2, bias_grads, bn_diff = {}, {}, [], 0.0
    after_diff = {"backbone": 0.0, "st": 0.0}
    for name, value in after.items():
        key = name + ":0"
        if name.endswith(("/moving_mean", "/moving_variance")):  # after the training-mode forward
            bn_diff = max(bn_diff, float(np.abs(value - v["after/" + key]).max()))
            continue
        g_st = v["grads/" + key]
        if name.endswith("/bias"):  # conv bias feeding a training-mode BN: true gradient 0
            bias_grads.append(float(np.abs(g_st).max()))
            continue
        delta = np.abs(grads[name] - g_st)
        scale = float(np.abs(g_st).max())
        grad_rel[name] = float(delta.max()) / scale if scale > 0 else (0.0 if delta.max() == 0 else float("inf"))
        norm = float(np.linalg.norm(g_st))
        grad_l2[name] = float(np.linalg.norm(delta)) / norm if norm > 0 else grad_rel[name]
        mask = np.abs(g_st) > GRAD_FLOOR
        if mask.any():
            part = "backbone" if name.startswith(BACKBONE_PREFIXES) else "st"
            after_diff[part] = max(after_diff[part], float(np.abs(value - v["after/" + key])[mask].max()))
    worst = max(grad_rel, key=grad_rel.get)
    worst_l2 = max(grad_l2, key=grad_l2.get)
    st_layers = {k: r for k, r in grad_rel.items() if not k.startswith(BACKBONE_PREFIXES)}
    worst_st = max(st_layers, key=st_layers.get)
    out.update({
        "grad_rel_diff": grad_rel[worst], "grad_worst_variable": worst,
        "grad_rel_l2_diff": grad_l2[worst_l2], "grad_rel_l2_worst_variable": worst_l2,
        "grad_variables_compared": len(grad_rel), "conv_biases_excluded": len(bias_grads),
        "st_conv_bias_grad_max": max(bias_grads, default=0.0),
        "grad_rel_diff_st_layers": st_layers[worst_st], "grad_worst_st_layer_variable": worst_st,
        "bn_stats_max_abs_diff": bn_diff, "after_step_max_abs_diff": max(after_diff.values()),
        "after_step_max_abs_diff_st_layers": after_diff["st"],
    })
    return out


def _keras_layout(t: torch.Tensor, perm) -> np.ndarray:
    a = t.detach().numpy()
    return np.ascontiguousarray(a.transpose(np.argsort(perm))) if perm else a.copy()


def train_step_parity(vectors: str | Path, weights: str | Path, match_variant: str = "st20") -> dict:
    """One step of our trainer from ST's ``.h5`` ``weights`` on ST's train-step ``vectors`` (a
    ``batch*_<S>.npz``), compared with ST's stored step: targets, losses, gradients, BN statistics,
    weights after the optimizer step (:func:`compare_with_st`) and the optimizer alone fed ST's
    gradients. Seed torch first for a reproducible step."""
    v = dict(np.load(vectors, allow_pickle=False))
    size = int(v["input_size"])
    module = SSDLightningModule(input_size=size, weights=str(weights), match_variant=match_variant)
    module.train()
    batch = batch_from_vectors(v)

    # Targets: the same call training_loss makes.
    labels, targets = module.targets(batch)
    st_labels = torch.from_numpy(v["y_true"][..., :-8].argmax(-1))
    positive, st_positive = labels > 0, st_labels > 0
    positives_equal = bool(torch.equal(positive, st_positive) and torch.equal(labels, st_labels))
    both = positive & st_positive
    st_targets = torch.from_numpy(v["y_true"][..., -8:-4])
    target_diff = float((targets[both] - st_targets[both]).abs().max()) if both.any() else 0.0

    loss, parts = module.training_loss(batch)
    loss.backward()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    optimizer.step()

    tensors = dict(module.model.named_parameters()) | dict(module.model.named_buffers())
    grads, after = {}, {}
    for keras_name, (ours_name, perm) in keras_variables(read_keras_h5(weights), module.model).items():
        t = tensors[ours_name]
        after[keras_name] = _keras_layout(t, perm)
        if t.grad is not None:
            grads[keras_name] = _keras_layout(t.grad, perm)
    losses = {"total": float(loss.detach()), "cls": float(parts["classification"].detach()),
              "loc": float(parts["box"].detach()), "reg": float(parts["reg"].detach())}
    result = {"vectors": str(vectors), "input_size": size, "match_variant": match_variant,
              "positives_equal": positives_equal, "n_positive_ours": int(positive.sum()),
              "n_positive_st": int(st_positive.sum()), "max_abs_target_offset_diff": target_diff,
              "losses_ours": losses}
    result.update(compare_with_st(v, losses, grads, after))
    result["optimizer_on_st_grads_max_abs_diff"] = optimizer_on_st_gradients(v, weights)
    return result


def optimizer_on_st_gradients(v: dict, weights: str | Path) -> float:
    """Max |w - w_ST| over every trainable entry after our optimizer's step fed ST's own gradients:
    the optimizer alone (Keras' epsilon placement), free of the gradient noise."""
    module = SSDLightningModule(input_size=int(v["input_size"]), weights=str(weights))
    params = dict(module.model.named_parameters())
    names = keras_variables(read_keras_h5(weights), module.model)
    for keras_name, (ours_name, perm) in names.items():
        if ours_name in params:
            g = v[f"grads/{keras_name}:0"]
            params[ours_name].grad = torch.from_numpy(np.ascontiguousarray(g.transpose(perm) if perm else g))
    optimizer = module.configure_optimizers()
    (optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer).step()
    return max(float(np.abs(_keras_layout(params[ours_name], perm) - v[f"after/{keras_name}:0"]).max())
               for keras_name, (ours_name, perm) in names.items() if ours_name in params)


def parity_failures(result: dict) -> list[str]:
    """The keys of ``result`` that miss :data:`THRESHOLDS` (and ``positives_equal`` when the positive
    anchors differ)."""
    failed = [k for k, limit in THRESHOLDS.items() if not result[k] <= limit]
    return (["positives_equal"] if not result.get("positives_equal", True) else []) + failed


def parity_table(result: dict, v: dict, title: str, label: str = "ours") -> list[str]:
    """Readable rows of a :func:`compare_with_st` result."""
    rows = [title, f"| quantity | {label} | ST | difference | threshold |", "|---|---|---|---|---|"]
    if "n_positive_ours" in result:
        rows += [f"| positive anchors | {result['n_positive_ours']} | {result['n_positive_st']} | "
                 f"identical set and classes: {result['positives_equal']} | identical |",
                 f"| target offsets (positives) | | | max abs {result['max_abs_target_offset_diff']:.2e} | |"]
    for k, ours in result["losses_ours"].items():
        rows.append(f"| loss_{k} | {ours:.8f} | {float(v['loss_' + k]):.8f} | rel {result[f'loss_{k}_rel_diff']:.2e} | "
                    f"{THRESHOLDS[f'loss_{k}_rel_diff']:.0e} |")
    rows += [
        f"| gradients ({result['grad_variables_compared']} variables), max abs diff / max abs g_ST | | | "
        f"{result['grad_rel_diff']:.2e} ({result['grad_worst_variable']}) | {THRESHOLDS['grad_rel_diff']:.0e} |",
        f"| gradients, L2 norm of diff / L2 norm of g_ST | | | {result['grad_rel_l2_diff']:.2e} "
        f"({result['grad_rel_l2_worst_variable']}) | |",
        f"| gradients of ST's layers (neck, head), max abs diff / max abs g_ST | | | "
        f"{result['grad_rel_diff_st_layers']:.2e} ({result['grad_worst_st_layer_variable']}) | |",
        f"| BN moving statistics | | | max abs {result['bn_stats_max_abs_diff']:.2e} | "
        f"{THRESHOLDS['bn_stats_max_abs_diff']:.0e} |",
        f"| weights after one step of our optimizer fed ST's gradients (every entry) | | | max abs "
        f"{result['optimizer_on_st_grads_max_abs_diff']:.2e} | {THRESHOLDS['optimizer_on_st_grads_max_abs_diff']:.0e} |",
        f"| weights after one Adam step (where abs(g_ST) > {GRAD_FLOOR:g}) | | | max abs "
        f"{result['after_step_max_abs_diff']:.2e} (ST's layers: {result['after_step_max_abs_diff_st_layers']:.2e}) | "
        f"{THRESHOLDS['after_step_max_abs_diff']:.0e} |",
        f"Left out of the gradient comparison: {result['conv_biases_excluded']} conv biases, each feeding a "
        f"training-mode BN (true gradient 0; ST's stored values are float32 noise up to "
        f"{result['st_conv_bias_grad_max']:.1e}).",
    ]
    failed = parity_failures(result)
    return rows + ["PASS" if not failed else f"FAIL: {', '.join(failed)}"]
