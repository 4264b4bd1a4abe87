"""Import Keras .h5 files (ST detectors, Keras-Applications MobileNet) with h5py only - no TensorFlow.

Two kinds of file are understood:

* ST ``st_ssd_mobilenet_v1`` detectors (whole models saved by Keras 2.8): backbone + ST-added layers.
  The model is built from the file itself (input size from the input layer, alpha from ``conv1``,
  number of classes from the classification heads).
* Keras-Applications ``MobileNet`` ImageNet files (any alpha): only the backbone is loaded.

Backbone layers keep Keras-Applications names (``conv1``, ``conv_dw_i``, ``conv_pw_i`` + ``_bn``).
ST's own layers carry Keras auto-names (``conv2d_7``, ``batch_normalization_12``, ``fmap_4``) that
depend on creation order, so they are mapped by that order (the numeric suffix) and each conv is
paired with the BN that the saved graph feeds it into - never by hard-coded numbers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backbone import MobileNetV1
from ..layers import ConvBN
from ..fileio import existing_file
from ..model import SSDMobileNetV1
from ..specs import ANCHORS_PER_LOCATION, ST_INPUT_SIZES, SUPPORTED_ALPHAS, SUPPORTED_INPUT_SIZES

_BACKBONE_RE = re.compile(r"^(conv1|conv_(dw|pw)_\d+)(_bn)?$")
_AUTO_RE = re.compile(r"^(conv2d|depthwise_conv2d)(?:_(\d+))?$")
#: Keras BatchNormalization variables and the BatchNorm2d tensors they become, in the same order.
_BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


class KerasImportError(ValueError):
    """A Keras file that cannot be mapped onto the PyTorch model; the message names the layer."""


@dataclass
class KerasFile:
    """The parts of a Keras .h5 that the importer needs, read once."""

    path: Path
    weights: dict[str, dict[str, np.ndarray]]
    classes: dict[str, str] = field(default_factory=dict)
    inbound: dict[str, list[str]] = field(default_factory=dict)
    input_size: int | None = None
    #: Name and (height, width) of the saved graph's InputLayer, when the file has a graph.
    input_layer: str | None = None
    input_shape: tuple | None = None

    @property
    def is_detector(self) -> bool:
        return any(_AUTO_RE.match(n) for n in self.weights)

    def layer(self, name: str) -> dict[str, np.ndarray]:
        if name not in self.weights:
            raise KerasImportError(f"{self.path}: layer '{name}' is missing from the file")
        return self.weights[name]


def read_keras_h5(path: str | os.PathLike) -> KerasFile:
    """Read every layer's weights and the saved graph (if any) from a Keras .h5 file."""
    import h5py

    path = existing_file(path, "Keras .h5 file", KerasImportError)
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise KerasImportError(f"{path}: not a Keras weights file (no 'layer_names' attribute)")
            order = [_str(n) for n in root.attrs["layer_names"]]
            weights: dict[str, dict[str, np.ndarray]] = {}
            for name in order:
                group = root[name]
                names = [_str(w) for w in group.attrs.get("weight_names", [])]
                if names:
                    weights[name] = {
                        w.split("/")[-1].split(":")[0]: np.asarray(group[w], dtype=np.float32) for w in names
                    }
            config = json.loads(_str(f.attrs["model_config"])) if "model_config" in f.attrs else None
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(exc))
        if cut:
            raise KerasImportError(f"{path}: cannot read as a Keras .h5 file: it is truncated ({cut[1]} of "
                                   f"{cut[2]} bytes)") from None
        raise KerasImportError(f"{path}: cannot read as a Keras .h5 file ({exc})") from None

    kf = KerasFile(path=path, weights=weights)
    if config is not None:
        for layer in config.get("config", {}).get("layers", []):
            name = layer.get("name") or layer.get("config", {}).get("name")
            kf.classes[name] = layer.get("class_name", "")
            kf.inbound[name] = _inbound_names(layer.get("inbound_nodes", []))
            shape = layer.get("config", {}).get("batch_input_shape")
            if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4:
                kf.input_layer, kf.input_shape = name, (shape[1], shape[2])
                kf.input_size = shape[1] if shape[1] == shape[2] else None
    return kf


def _inbound_names(nodes: list) -> list[str]:
    """Names of a layer's input layers; TFOpLambda nodes are stored flat ([name, 0, 0, kwargs])."""
    names = []
    for node in nodes:
        if node and isinstance(node[0], str):
            names.append(node[0])
        else:
            names += [inp[0] for inp in node if isinstance(inp, list) and inp and isinstance(inp[0], str)]
    return names


def _str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------ inference


def infer_alpha(kf: KerasFile) -> float:
    """Width multiplier from ``conv1``'s output channels (32*alpha)."""
    out = kf.layer("conv1")["kernel"].shape[-1]
    for alpha in SUPPORTED_ALPHAS:
        if int(32 * alpha) == out:
            return alpha
    raise KerasImportError(f"{kf.path}: layer 'conv1' has {out} filters, which matches no supported "
                           f"alpha ({', '.join(map(str, SUPPORTED_ALPHAS))})")


def _auto_layers(kf: KerasFile, kind: str) -> list[str]:
    """ST-added layers of one kind in Keras creation order (numeric suffix; no suffix is 0)."""
    found = []
    for name in kf.weights:
        m = _AUTO_RE.match(name)
        if m and m.group(1) == kind:
            found.append((int(m.group(2) or 0), name))
    return [name for _, name in sorted(found)]


def infer_num_classes(kf: KerasFile) -> int:
    """From the last Conv2D created (the finest level's box conv follows its cls conv)."""
    convs = _auto_layers(kf, "conv2d")
    if len(convs) < 2:
        raise KerasImportError(f"{kf.path}: too few ST head layers to infer the number of classes")
    channels = kf.layer(convs[-2])["kernel"].shape[-1]
    if channels % ANCHORS_PER_LOCATION or channels // ANCHORS_PER_LOCATION < 2:
        raise KerasImportError(f"{kf.path}: layer '{convs[-2]}' has {channels} filters; a classification "
                               f"head needs {ANCHORS_PER_LOCATION}*(1+num_classes)")
    return channels // ANCHORS_PER_LOCATION - 1


def infer_input_size(kf: KerasFile) -> int:
    if kf.input_shape is not None and all(isinstance(v, int) for v in kf.input_shape):
        h, w = kf.input_shape
        if h != w:
            raise KerasImportError(f"{kf.path}: input layer '{kf.input_layer}' is {h}x{w} (height x width); "
                                   "ST's detector takes a square input")
        if h not in SUPPORTED_INPUT_SIZES:
            raise KerasImportError(f"{kf.path}: input layer '{kf.input_layer}' is {h}x{w}; the detector is "
                                   "defined for square sizes that are a multiple of 32 from 128 to 512")
    if kf.input_size is not None:
        return int(kf.input_size)
    # No saved graph: 5 levels (heads 3x3 everywhere) is 192; 6 levels cannot tell 224 from 256.
    n_conv = len(_auto_layers(kf, "conv2d"))
    if n_conv == 17:
        return 192
    raise KerasImportError(f"{kf.path}: the file has no model_config, so the input size is unknown; "
                           "pass model=build_model(input_size=...)")


# -------------------------------------------------------------------------------------- mapping


def _st_conv_order(model: SSDMobileNetV1) -> list[tuple[str, ConvBN]]:
    """ST-added Conv2D+BN modules in the order ST's Keras code creates them."""
    neck, head = model.neck, model.head
    order = [(f"neck.lateral.{i}", neck.lateral[i]) for i in range(3)]
    for k in range(len(neck.extras.blocks) // 2):
        order += [
            (f"neck.extras.blocks.{2 * k}.pw", neck.extras.blocks[2 * k].pw),
            (f"neck.extras.blocks.{2 * k + 1}.pw", neck.extras.blocks[2 * k + 1].pw),
            (f"neck.lateral.{3 + k}", neck.lateral[3 + k]),
        ]
    order.append(("neck.top", neck.top))
    for lvl in reversed(range(len(head.cls))):
        order += [(f"head.cls.{lvl}", head.cls[lvl]), (f"head.box.{lvl}", head.box[lvl])]
    return order


def _st_dw_order(model: SSDMobileNetV1) -> list[tuple[str, ConvBN]]:
    return [(f"neck.extras.blocks.{i}.dw", b.dw) for i, b in enumerate(model.neck.extras.blocks)]


def _backbone_pairs(backbone: MobileNetV1, prefix: str) -> list[tuple[str, ConvBN, str, str]]:
    pairs = [(f"{prefix}conv1", backbone.conv1, "conv1", "conv1_bn")]
    for i, block in enumerate(backbone.blocks, start=1):
        for part in ("dw", "pw"):
            pairs.append((f"{prefix}blocks.{i - 1}.{part}", getattr(block, part),
                          f"conv_{part}_{i}", f"conv_{part}_{i}_bn"))
    return pairs


def _bn_after(kf: KerasFile, conv: str) -> str:
    """The BatchNormalization layer fed by ``conv`` in the saved graph."""
    consumers = [n for n, ins in kf.inbound.items() if conv in ins and kf.classes.get(n) == "BatchNormalization"]
    if len(consumers) != 1:
        raise KerasImportError(f"{kf.path}: expected exactly one BatchNormalization after layer '{conv}', "
                               f"found {consumers or 'none'}")
    return consumers[0]


def kernel_permutation(depthwise: bool) -> tuple[int, int, int, int]:
    """Axes that turn a Keras kernel into PyTorch's: HWIO -> OIHW; depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)."""
    return (2, 3, 0, 1) if depthwise else (3, 2, 0, 1)


def keras_variables(kf: KerasFile, model: nn.Module) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """Keras variable name (``layer/variable``, as in ``model.variables`` without ``:0``) -> our
    parameter or buffer name and the kernel permutation (``None`` for vectors), for every conv and
    BN of ``model`` that ``kf`` provides. Used to compare gradients and weights with Keras."""
    out = {}
    for target, module, conv, bn in keras_layer_pairs(kf, model):
        depthwise = module.conv.groups > 1
        out[f"{conv}/{'depthwise_kernel' if depthwise else 'kernel'}"] = (f"{target}.conv.weight",
                                                                          kernel_permutation(depthwise))
        if module.conv.bias is not None:
            out[f"{conv}/bias"] = (f"{target}.conv.bias", None)
        for var, name in zip(_BN_VARS, _BN_TENSORS):
            out[f"{bn}/{var}"] = (f"{target}.bn.{name}", None)
    return out


def _copy(kf: KerasFile, target: str, module: ConvBN, conv: str, bn: str) -> None:
    layer = kf.layer(conv)
    depthwise = module.conv.groups > 1
    key = "depthwise_kernel" if depthwise else "kernel"
    if key not in layer:
        raise KerasImportError(f"{kf.path}: layer '{conv}' has no '{key}' (has {sorted(layer)}); "
                               f"it cannot be {target}")
    perm = kernel_permutation(depthwise)
    kernel = layer[key]
    expected = tuple(module.conv.weight.shape[i] for i in np.argsort(perm))
    if kernel.shape != expected:
        raise KerasImportError(f"{kf.path}: layer '{conv}' {key} has shape {tuple(kernel.shape)}, "
                               f"{target}.conv expects {expected} (Keras layout)")
    params = {"conv.weight": torch.from_numpy(kernel.transpose(perm).copy())}
    if module.conv.bias is not None:
        if "bias" not in layer:
            raise KerasImportError(f"{kf.path}: layer '{conv}' has no bias; {target}.conv needs one")
        params["conv.bias"] = torch.from_numpy(layer["bias"])
    elif "bias" in layer:
        raise KerasImportError(f"{kf.path}: layer '{conv}' has a bias; {target}.conv has none")
    bn_layer = kf.layer(bn)
    for var, name in zip(_BN_VARS, (f"bn.{t}" for t in _BN_TENSORS)):
        if var not in bn_layer:
            raise KerasImportError(f"{kf.path}: layer '{bn}' has no '{var}'")
        params[name] = torch.from_numpy(bn_layer[var])
    state = module.state_dict()
    for name, value in params.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise KerasImportError(f"{kf.path}: layer '{bn if name.startswith('bn') else conv}' gives "
                                   f"{target}.{name} shape {tuple(value.shape)}, model expects "
                                   f"{tuple(state[name].shape)}")
    with torch.no_grad():
        for name, value in params.items():
            state[name].copy_(value)


def _count_mismatch(kf: KerasFile, kind: str, found: int, model: SSDMobileNetV1) -> str:
    """Too many or too few ST layers; names the input sizes whose graph has ``found`` of them."""
    expected = len(_st_conv_order(model) if kind == "conv2d" else _st_dw_order(model))
    text = (f"{kf.path}: the file has {found} ST-added {kind} layers, a {model.input_size}x{model.input_size} "
            f"model has {expected}")
    fits = []
    for size in ST_INPUT_SIZES:
        other = SSDMobileNetV1(model.alpha, size, model.num_classes)
        if len(_st_conv_order(other) if kind == "conv2d" else _st_dw_order(other)) == found:
            fits.append(str(size))
    if fits:
        source = (f"its input layer '{kf.input_layer}' says {model.input_size}" if kf.input_size == model.input_size
                  else f"the model is built for {model.input_size}")
        return text + f"; {found} is the count of a {' or '.join(fits)} model, but {source}"
    return text + "; the file is not a complete ST detector"


def keras_layer_pairs(kf: KerasFile, model: nn.Module) -> list[tuple[str, ConvBN, str, str]]:
    """``(module path, module, Keras conv layer, Keras BN layer)`` for every conv+BN of ``model``
    that ``kf`` provides: the backbone always, ST's layers too when ``kf`` is a detector."""
    backbone, prefix = (model, "") if isinstance(model, MobileNetV1) else (model.backbone, "backbone.")
    pairs = _backbone_pairs(backbone, prefix)
    if not kf.is_detector or isinstance(model, MobileNetV1):
        return pairs
    if not kf.inbound:
        raise KerasImportError(f"{kf.path}: the file has no model_config, so ST's layers cannot be paired "
                               "with their BatchNormalization layers")
    if kf.input_size is not None and kf.input_size != model.input_size:
        raise KerasImportError(f"{kf.path}: layer 'input' is {kf.input_size}x{kf.input_size}, "
                               f"the model is built for {model.input_size}x{model.input_size}")
    for kind, order in (("conv2d", _st_conv_order(model)), ("depthwise_conv2d", _st_dw_order(model))):
        names = _auto_layers(kf, kind)
        if len(names) != len(order):
            raise KerasImportError(_count_mismatch(kf, kind, len(names), model))
        pairs += [(target, module, conv, _bn_after(kf, conv)) for (target, module), conv in zip(order, names)]
    return pairs


def load_keras_h5(path: str | os.PathLike | KerasFile, model: nn.Module | None = None) -> nn.Module:
    """Load a Keras .h5 (a path, or a file :func:`read_keras_h5` has read) into ``model`` (built from
    the file when ``None``) and return the model.

    ST detector files load every layer; Keras-Applications MobileNet files load the backbone only
    (``model`` may then be a detector or a bare :class:`~ssd_mnv1.backbone.MobileNetV1`).
    """
    kf = path if isinstance(path, KerasFile) else read_keras_h5(path)
    alpha = infer_alpha(kf)
    if model is None:
        if kf.is_detector:
            model = SSDMobileNetV1(alpha, infer_input_size(kf), infer_num_classes(kf))
        else:
            model = SSDMobileNetV1(alpha, kf.input_size if kf.input_size in SUPPORTED_INPUT_SIZES else 224)
    backbone, prefix = (model, "") if isinstance(model, MobileNetV1) else (model.backbone, "backbone.")
    if backbone.alpha != alpha:
        raise KerasImportError(f"{kf.path}: layer 'conv1' has {int(32 * alpha)} filters (alpha {alpha}); "
                               f"{prefix}conv1.conv expects {int(32 * backbone.alpha)} (alpha {backbone.alpha})")
    for target, module, conv, bn in keras_layer_pairs(kf, model):
        _copy(kf, target, module, conv, bn)
    return model
