"""A PyTorch detector (a checkpoint, or ST's .h5 through the Keras importer) as a runner."""

from __future__ import annotations

import numpy as np
import torch

from .. import layers
from ..preprocess import normalize


#: How ``ssd_mnv1.evaluate`` runs a PyTorch model (:class:`TorchRunner` options). BatchNorms folded
#: into the convs: ~25% less CPU forward time, outputs within ~1.5e-6 of the unfolded model's. On the
#: 690 COCO-person val images ST's 224 and 256 .h5 files score the same ST-AP 2.0 / 2025 and COCO
#: figures to 4 decimals; the 192 one the same except ST-AP 2025, 43.2676 instead of 43.2677.
EVAL_TORCH_OPTIONS = {"fold_batchnorm": True}


class TorchRunner:
    """A PyTorch detector (from a checkpoint or through our Keras importer).

    The uint8 NHWC batch is normalized as TF does (:func:`normalize`) and only permuted to NCHW, so
    it stays NHWC in memory: PyTorch's CPU convolutions take that as channels-last, their fast path
    for this network (a contiguous NCHW copy is ~1.6x slower). On an accelerator the uint8 pixels
    travel (4x less than float) and are normalized there through a 256-entry table of the same
    float32 values (a division on the device may round differently).

    Options, off by default because the outputs then differ from the model's own (by ~1e-6 for
    ``fold_batchnorm``; ST-AP on the 690 COCO-person images moves by 0.0001 at most, see
    :data:`EVAL_TORCH_OPTIONS`):
    ``fold_batchnorm`` runs a copy of the model, made now, with each float BatchNorm folded into
    its conv (one pass less over every activation: ~25% less forward time on a CPU; evaluation
    turns it on, see :func:`open_runner`);
    ``channels_last`` puts the weights in that format too (for GPUs); ``autocast``: a dtype such as
    ``torch.bfloat16`` to run the model in (mixed precision). Outputs are float32 numpy arrays.
    """

    def __init__(self, model: torch.nn.Module, name: str = "pytorch", device: str = "cpu", *,
                 fold_batchnorm: bool = False, channels_last: bool = False, autocast: torch.dtype | None = None):
        self.model = model.eval().to(device)
        self._net = layers.fold_batchnorm(self.model) if fold_batchnorm else self.model
        if channels_last:
            self._net = self._net.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.name = name
        self.input_size = model.input_size
        names = getattr(model, "class_names", None)
        self.class_names = tuple(names) if names is not None else None
        self.autocast = autocast
        self._table = None if self.device.type == "cpu" else \
            torch.from_numpy(normalize(np.arange(256, dtype=np.uint8))).to(self.device)

    @torch.no_grad()  # not inference_mode: fake-quant observers may keep tensors made here
    def __call__(self, images: np.ndarray):
        images = np.asarray(images)
        if self._table is not None and images.dtype == np.uint8:
            x = self._table[torch.from_numpy(np.ascontiguousarray(images)).to(self.device).long()]
        else:  # on the CPU, or float pixels (a bilinear resize)
            x = torch.from_numpy(normalize(images)).to(self.device)
        x = x.permute(0, 3, 1, 2)
        if self.autocast is None:
            outputs = self._net(x)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast):
                outputs = self._net(x)
        return tuple(t.float().cpu().numpy() for t in outputs)
