"""The PyTorch side of the per-layer ledger (:mod:`.layer_ledger`): what each quantized layer of a
fake-quant model costs in ST-AP, switched on alone (and, optionally, off alone), and its local
SQNR, its own noise with only it quantized. No TFLite file is involved: the model's quantizers are
switched on and off in place and restored afterwards.
"""

from __future__ import annotations

import math

import torch

KIND_CONV = "weights+output"
KIND_ACT = "activation"
KIND_WEIGHTS = "weights"  # a conv whose output is quantized by the op it feeds (head convs -> concat)


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB: +inf without noise, -inf without signal."""
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def layer_quantizers(model) -> list[tuple[str, str, list]]:
    """(module path, kind, quantizers) of every quantized layer of a QAT model, in forward order:
    each ConvBN (weights + output, or weights only where its output has no quantizer of its own)
    and each standalone activation quantizer."""
    from ssd_mnv1.layers import ConvBN
    from ssd_mnv1.quantization.qat import ActivationQuantizer, InputQuantizer

    layers = []
    for path, m in model.named_modules():
        if isinstance(m, ConvBN):
            if isinstance(m.output_quant, ActivationQuantizer):
                layers.append((path, KIND_CONV, [m.weight_quant, m.output_quant]))
            else:  # a head conv: its int8 output is at its concatenation's scale (cls/box_quant)
                layers.append((path, KIND_WEIGHTS, [m.weight_quant]))
        elif isinstance(m, (ActivationQuantizer, InputQuantizer)) and not path.endswith(".output_quant"):
            layers.append((path, KIND_ACT, [m]))
    order = {"input_quant": -1}  # the input first, the scores last, the rest in module order
    return sorted(layers, key=lambda r: order.get(r[0], 1 if r[0] == "scores_quant" else 0))


def _st_ap(model, dataset, images, batch_size: int = 64) -> float:
    from ssd_mnv1.evaluation import evaluate
    from ssd_mnv1.runners import TorchRunner

    return evaluate(TorchRunner(model, "pytorch-fake-quant"), dataset, ("st20",), images=images,
                    batch_size=batch_size, progress=False).st_ap["st20"]


@torch.no_grad()
def _local_sqnr(model, layers, x: torch.Tensor) -> dict[str, float]:
    """Each layer's own quantization noise: SQNR (dB) of its output with only its quantizers on
    against its output with none (the quantizers of ``layers`` start disabled)."""
    modules = dict(model.named_modules())
    want: set[str] = set()
    outs: dict[str, torch.Tensor] = {}

    def keep(path):
        def hook(module, inputs, output):
            if path in want:
                outs[path] = output.detach().double().clone()
        return hook

    hooks = [modules[path].register_forward_hook(keep(path)) for path, _, _ in layers]
    try:
        want.update(path for path, _, _ in layers)
        model(x)
        reference = dict(outs)
        result = {}
        for path, _, qs in layers:
            want.clear()
            want.add(path)
            for q in qs:
                q.enabled = True
            model(x)
            for q in qs:
                q.enabled = False
            ref = reference[path]
            result[path] = sqnr_db(float(ref.square().sum()), float((outs[path] - ref).square().sum()))
    finally:
        for h in hooks:
            h.remove()
    return result


def quantizer_costs(qat_model, dataset, images, *, leave_one_out: bool = False, local_images: int = 32,
                    progress: bool = True) -> dict:
    """ST-AP of ``qat_model`` with no quantizer, all of them and each layer's alone (and, with
    ``leave_one_out``, all but each layer's), plus each layer's local SQNR on ``local_images``."""
    from ssd_mnv1.progress import progress as progress_bar

    from ssd_mnv1.preprocess import normalize

    layers = layer_quantizers(qat_model)
    everything = [q for _, _, qs in layers for q in qs]
    saved = [q.enabled for q in everything]
    qat_model.eval()

    def switch(quantizers, on: bool):
        for q in quantizers:
            q.enabled = on

    result = {"kinds": {p: k for p, k, _ in layers}, "alone": {}, "without": {}}
    try:
        switch(everything, False)
        x = torch.from_numpy(normalize(images[:local_images])).permute(0, 3, 1, 2)
        x = x.to(next(qat_model.parameters()).device)
        result["local_sqnr"] = _local_sqnr(qat_model, layers, x)
        result["float"] = _st_ap(qat_model, dataset, images)
        for path, _, qs in progress_bar(layers, desc="ST-AP, one layer quantized", unit="layer",
                                        disable=not progress):
            switch(qs, True)
            result["alone"][path] = _st_ap(qat_model, dataset, images)
            switch(qs, False)
        switch(everything, True)
        result["all"] = _st_ap(qat_model, dataset, images)
        if leave_one_out:
            for path, _, qs in progress_bar(layers, desc="ST-AP, all but one layer quantized", unit="layer",
                                            disable=not progress):
                switch(qs, False)
                result["without"][path] = _st_ap(qat_model, dataset, images)
                switch(qs, True)
    finally:
        for q, e in zip(everything, saved):
            q.enabled = e
    return result
