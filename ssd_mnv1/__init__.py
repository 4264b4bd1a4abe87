"""ssd_mnv1: ST's st_ssd_mobilenet_v1 person detector in PyTorch.

Importing this package never imports TensorFlow; the exporter's heavy dependencies live in the
``export`` extra and are imported only by ``ssd_mnv1.export``.
"""

from .anchors import generate_anchors
from .box_coder import decode, encode
from .loading import MODEL_SUFFIXES, build_model, load_model, load_weights
from .model import SSDMobileNetV1
from .postprocess import Detections, postprocess
from .preprocess import load_image, preprocess, resize
from .specs import SUPPORTED_ALPHAS, SUPPORTED_INPUT_SIZES, resolution_spec
from .weights import KerasImportError

__version__ = "0.1.0"

__all__ = [
    "Detections",
    "KerasImportError",
    "MODEL_SUFFIXES",
    "SSDMobileNetV1",
    "SUPPORTED_ALPHAS",
    "SUPPORTED_INPUT_SIZES",
    "build_model",
    "decode",
    "encode",
    "generate_anchors",
    "load_image",
    "load_model",
    "load_weights",
    "postprocess",
    "preprocess",
    "resize",
    "resolution_spec",
]
