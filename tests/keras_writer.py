"""Test helper: write a model's weights as a Keras-2.8-style .h5 with h5py (the inverse of the importer).

It lets the tests check the importer without ST's files: layer names, weight layout and the saved
graph follow what ST's and Keras-Applications' files contain.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ssd_mnv1.weights.keras_h5 import _backbone_pairs, _st_conv_order, _st_dw_order


def _conv_weights(module) -> dict[str, np.ndarray]:
    w = module.conv.weight.detach().numpy()
    out = {}
    if module.conv.groups > 1:
        out["depthwise_kernel"] = w.transpose(2, 3, 0, 1)
    else:
        out["kernel"] = w.transpose(2, 3, 1, 0)
    if module.conv.bias is not None:
        out["bias"] = module.conv.bias.detach().numpy()
    return out


def _bn_weights(module) -> dict[str, np.ndarray]:
    bn = module.bn
    return {"gamma": bn.weight.detach().numpy(), "beta": bn.bias.detach().numpy(),
            "moving_mean": bn.running_mean.numpy(), "moving_variance": bn.running_var.numpy()}


def write_keras_h5(model, path: Path, *, backbone_only: bool = False, input_size: int | None = None,
                   overrides: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Write ``model`` to ``path``; ``overrides`` replaces a layer's arrays, ``drop`` omits layers."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    config_layers = [{"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
                      "config": {"name": "input_1",
                                 "batch_input_shape": [None, input_size or model.input_size,
                                                       input_size or model.input_size, 3]}}]
    backbone = model.backbone
    for _, module, conv, bn in _backbone_pairs(backbone, "backbone."):
        layers[conv] = _conv_weights(module)
        layers[bn] = _bn_weights(module)
        config_layers.append({"class_name": "Conv2D", "name": conv, "inbound_nodes": [], "config": {}})
        config_layers.append({"class_name": "BatchNormalization", "name": bn,
                              "inbound_nodes": [[[conv, 0, 0, {}]]], "config": {}})
    if not backbone_only:
        bn_index = 0
        named = [("conv2d", m) for _, m in _st_conv_order(model)]
        dws = [("depthwise_conv2d", m) for _, m in _st_dw_order(model)]
        counters = {"conv2d": 0, "depthwise_conv2d": 0}
        for kind, module in dws + named:
            k = counters[kind]
            counters[kind] += 1
            conv = kind if k == 0 else f"{kind}_{k}"
            bn = f"batch_normalization_{bn_index}" if bn_index else "batch_normalization"
            bn_index += 1
            layers[conv] = _conv_weights(module)
            layers[bn] = _bn_weights(module)
            config_layers.append({"class_name": "Conv2D" if kind == "conv2d" else "DepthwiseConv2D",
                                  "name": conv, "inbound_nodes": [], "config": {}})
            # TFOpLambda-style flat node format also occurs in real files; use it for half the BNs.
            node = [conv, 0, 0, {}] if bn_index % 2 else [[conv, 0, 0, {}]]
            config_layers.append({"class_name": "BatchNormalization", "name": bn,
                                  "inbound_nodes": [node], "config": {}})
    for name, arrays in (overrides or {}).items():
        layers[name] = arrays
    for name in drop:
        layers.pop(name, None)
    config = {"class_name": "Functional", "config": {"name": "model_1", "layers": config_layers}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.8.0"
        root = f.create_group("model_weights")
        root.attrs["layer_names"] = [n.encode() for n in layers]
        for name, arrays in layers.items():
            group = root.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in arrays]
            sub = group.create_group(name)
            for k, v in arrays.items():
                sub.create_dataset(f"{k}:0", data=np.asarray(v, dtype=np.float32))
    return path
