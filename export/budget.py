"""What a configuration costs on the device before it is trained: the ``--mcu`` int8 file its
export would write, measured (``python -m ssd_mnv1.footprint --size S [S ...] --classes C``).

The arena and the flash of a file depend on its graph - input size, classes, width, output variant -
and not on its weights' values, so a model with seeded random weights (and random batch-norm
statistics, so that no two constants are equal and the converter deduplicates none) is exported
through the real chain (ONNX, onnx2tf, int8 TFLite, the offline memory plan) and loaded in
TensorFlow Lite Micro, whose own allocation report gives the arena. A trained checkpoint of the same
configuration exports to a file with the same graph, hence the same arena and flash (the tests pin
it). ``fits`` compares what the C bundle would ask for (:func:`~ssd_mnv1.export.c_bundle.arena_with_margin`)
and the file's bytes with a part's RAM and flash.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ssd_mnv1.footprint_analysis import count_macs, tflm_footprint

from .c_bundle import arena_with_margin
from .pipeline import export


@dataclass
class Budget:
    """One configuration's device cost (bytes; ``arena_bytes`` from TFLM's report)."""

    input_size: int
    num_classes: int
    alpha: float
    int8_outputs: bool
    macs: int
    flash_bytes: int
    arena_bytes: int
    head_bytes: int
    tail_bytes: int
    #: What the C bundle's MODEL_ARENA_BYTES would be (arena + margin).
    arena_with_margin_bytes: int
    #: None when no limit was given.
    fits_ram: bool | None = None
    fits_flash: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def random_model(input_size: int, num_classes: int, alpha: float = 0.25, seed: int = 0) -> torch.nn.Module:
    """The detector of a configuration with seeded random weights and batch-norm statistics."""
    from ssd_mnv1.loading import build_model

    torch.manual_seed(seed)
    model = build_model(alpha=alpha, input_size=input_size, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None:  # Keras zeros: all alike
            module.bias.data.copy_(torch.randn(module.out_channels, generator=generator) * 0.1)
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def measure(input_size: int, num_classes: int, alpha: float = 0.25, *, int8_outputs: bool = False,
            ram_kib: float | None = None, flash_kib: float | None = None) -> Budget:
    """Export the configuration's random model to its ``--mcu`` int8 file and measure it in TFLM."""
    from PIL import Image

    from ssd_mnv1.checkpoint import save_checkpoint

    model = random_model(input_size, num_classes, alpha)
    with tempfile.TemporaryDirectory(prefix="ssd_mnv1_budget_") as tmp:
        tmp = Path(tmp)
        calib = tmp / "calib"
        calib.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (input_size, input_size, 3), dtype=np.uint8)).save(calib / f"{i}.png")
        ckpt = save_checkpoint(model, tmp / f"config_{input_size}.ckpt")
        result = export(ckpt, tmp / "export", "tflite-int8", calib=calib, mcu=True, int8_outputs=int8_outputs,
                        log=lambda *_: None)
        tflm = tflm_footprint(result.files["tflite-int8"])
        if not tflm["loads"]:
            raise RuntimeError(f"TensorFlow Lite Micro did not load the exported file: {tflm['why']}")
    budget = Budget(input_size, num_classes, alpha, int8_outputs, count_macs(model, input_size), tflm["flash_bytes"],
                    tflm["arena_bytes"], tflm["head_bytes"], tflm["tail_bytes"], arena_with_margin(tflm["arena_bytes"]))
    if ram_kib is not None:
        budget.fits_ram = budget.arena_with_margin_bytes <= ram_kib * 1024
    if flash_kib is not None:
        budget.fits_flash = budget.flash_bytes <= flash_kib * 1024
    return budget


def budget_markdown(budgets: list[Budget], ram_kib: float | None, flash_kib: float | None) -> str:
    """The budget table: one row per size."""
    kib = (lambda n: f"{n / 1024:,.1f}")
    yes = (lambda v: "–" if v is None else ("yes" if v else "**no**"))
    b0 = budgets[0]
    lines = [f"## Device budget: {b0.num_classes} class(es), alpha {b0.alpha}, "
             f"{'int8' if b0.int8_outputs else 'float32 (ST)'} outputs, the --mcu int8 file in TensorFlow Lite Micro",
             "",
             f"| size | MACs | flash (the .tflite) KiB | arena KiB (activations + runtime) | arena + margin KiB "
             f"(MODEL_ARENA_BYTES) | fits RAM {'' if ram_kib is None else f'{ram_kib:g} KiB'} | fits flash "
             f"{'' if flash_kib is None else f'{flash_kib:g} KiB'} |",
             "|---|---|---|---|---|---|---|"]
    for b in budgets:
        lines.append(f"| {b.input_size} | {b.macs / 1e6:.1f} M | {kib(b.flash_bytes)} | {kib(b.arena_bytes)} "
                     f"({kib(b.head_bytes)} + {kib(b.tail_bytes)}) | {kib(b.arena_with_margin_bytes)} | "
                     f"{yes(b.fits_ram)} | {yes(b.fits_flash)} |")
    lines += ["", "Measured on a file exported from random weights: the graph, hence the arena and the flash, is "
              "the trained model's. Runtime state (the tail) was measured by a 64-bit host build of TFLM and is "
              "smaller on a 32-bit Cortex-M; the margin (+5 %, at least 4 KiB) covers optimized kernels' scratch "
              "buffers. Flash counts the model file only, not the runtime's code."]
    return "\n".join(lines)
