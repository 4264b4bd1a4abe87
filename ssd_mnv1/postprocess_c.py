"""The C post-processor of the deployment bundle (``ssd_mnv1/c/ssd_postprocess.c``), run on the host.

:func:`postprocess_c` has :func:`ssd_mnv1.postprocess.postprocess`'s interface for the ``deploy``
recipe and returns the same :class:`~ssd_mnv1.postprocess.Detections`, computed by the C code the
firmware compiles: ``evaluate --postprocess c`` scores a device's whole path (TFLM + this C).

The C is compiled once with the system's C compiler (``$CC``, else ``cc``) into
``$SSD_MNV1_CACHE/c`` (default ``~/.cache/ssd_mnv1/c``), in a file named after the hash of the
sources and flags, and loaded with ctypes. The library holds :data:`HOST_MAX_CANDIDATES` candidates
(a firmware build holds ``SSD_PP_MAX_CANDIDATES``, 1024 by default), enough never to drop one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_path, user_cache_dir
from .postprocess import VARIANTS, Detections

#: The C sources (package data): the post-processor and its header.
C_DIR = Path(__file__).resolve().parent / "c"
SOURCES = ("ssd_postprocess.c", "ssd_postprocess.h")
#: Candidates the host library holds (every anchor of a 512 input for 9 classes).
HOST_MAX_CANDIDATES = 1 << 18
#: Detections the host library returns at most (a firmware build: ``SSD_PP_MAX_DETECTIONS``, 100).
HOST_MAX_DETECTIONS = 4096
FLAGS = ("-std=c99", "-O2", "-shared", "-fPIC", "-ffp-contract=off", f"-DSSD_PP_MAX_CANDIDATES={HOST_MAX_CANDIDATES}",
         f"-DSSD_PP_MAX_DETECTIONS={HOST_MAX_DETECTIONS}")

_TYPES = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.uint8): 2}
_lock = threading.Lock()
_library: ctypes.CDLL | None = None


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("type", ctypes.c_int), ("scale", ctypes.c_float),
                ("zero_point", ctypes.c_int32)]


class _Config(ctypes.Structure):
    _fields_ = [("score_threshold", ctypes.c_float), ("iou_threshold", ctypes.c_float),
                ("max_detections", ctypes.c_int32), ("clip", ctypes.c_int32)]


class _Detection(ctypes.Structure):
    _fields_ = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float), ("y2", ctypes.c_float),
                ("score", ctypes.c_float), ("class_id", ctypes.c_int32), ("anchor", ctypes.c_int32)]


class _Stats(ctypes.Structure):
    _fields_ = [("candidates", ctypes.c_int32), ("dropped", ctypes.c_int32), ("truncated", ctypes.c_int32)]


def cache_dir() -> Path:
    """``$SSD_MNV1_CACHE/c``, else ``$XDG_CACHE_HOME/ssd_mnv1/c``, else ``~/.cache/ssd_mnv1/c``."""
    if os.environ.get("SSD_MNV1_CACHE"):
        return Path(os.environ["SSD_MNV1_CACHE"]) / "c"
    return user_cache_dir("c")


def compiler() -> str:
    """The C compiler's path (``$CC``, else ``cc``); one ValueError naming the fix when there is none."""
    name = os.environ.get("CC") or "cc"
    found = shutil.which(name)
    if found is None:
        raise ValueError(f"--postprocess c compiles ssd_mnv1/c/ssd_postprocess.c, but there is no C compiler "
                         f"{name!r} on PATH: install one (apt-get install gcc, or clang) or set CC to it")
    return found


def library_path() -> Path:
    """The compiled library, built now when it is not in the cache yet."""
    cc = compiler()
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((C_DIR / name).read_bytes())
    digest.update(" ".join((cc,) + FLAGS).encode())
    path = cache_dir() / f"ssd_postprocess_{digest.hexdigest()[:16]}.so"
    if path.is_file():
        return path
    with atomic_path(path) as tmp:
        run = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(C_DIR / "ssd_postprocess.c")],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{cc} could not compile {C_DIR / 'ssd_postprocess.c'}:\n{run.stderr[-2000:]}")
    return path


def load_library() -> ctypes.CDLL:
    """The C post-processor, compiled (once per source version) and loaded."""
    global _library
    with _lock:
        if _library is None:
            lib = ctypes.CDLL(str(library_path()))
            lib.ssd_postprocess.restype = ctypes.c_int32
            lib.ssd_postprocess.argtypes = [ctypes.POINTER(_Tensor)] * 3 + [
                ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(_Config), ctypes.c_void_p,
                ctypes.POINTER(_Detection), ctypes.c_int32, ctypes.POINTER(_Stats)]
            lib.ssd_pp_workspace_size.restype = ctypes.c_size_t
            lib.ssd_pp_max_candidates.restype = ctypes.c_int32
            _library = lib
        return _library


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype not in _TYPES:
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def _tensor(x: np.ndarray, quantization: tuple[float, int] | None, what: str) -> _Tensor:
    kind = _TYPES[x.dtype]
    if kind and quantization is None:
        raise ValueError(f"{what}: an {x.dtype} array needs its (scale, zero point)")
    scale, zero_point = quantization if kind else (0.0, 0)
    return _Tensor(x.ctypes.data, kind, float(scale), int(zero_point))


def postprocess_c(scores, offsets, anchors, *, score_threshold: float | None = None,
                  iou_threshold: float | None = None, max_detections: int | None = None,
                  clip: bool = True, quantization: dict[str, tuple[float, int]] | None = None) -> list[Detections]:
    """The deploy recipe by the C post-processor: ``postprocess(scores, offsets, anchors)`` (variant
    ``deploy``) detection for detection.

    ``scores`` (N, NA, 1 + C), ``offsets`` (N, NA, 4), ``anchors`` (N, NA, 4) or (NA, 4), or one
    image's (NA, ...): float32, or int8 / uint8 with ``quantization[name] = (scale, zero point)``
    (``name`` one of ``scores``, ``offsets``, ``anchors``). Thresholds and cap: None takes the
    deploy recipe's (0.5, 0.5, 100).
    """
    spec = VARIANTS["deploy"]
    cap = spec.max_detections if max_detections is None else int(max_detections)
    if not 0 <= cap <= HOST_MAX_DETECTIONS:
        raise ValueError(f"max_detections must be 0 to {HOST_MAX_DETECTIONS}, got {cap}")
    config = _Config(spec.score_threshold if score_threshold is None else float(score_threshold),
                     spec.iou_threshold if iou_threshold is None else float(iou_threshold), cap, int(clip))
    quantization = quantization or {}
    scores, offsets, anchors = _array(scores), _array(offsets), _array(anchors)
    if scores.ndim == 2:
        scores, offsets = scores[None], offsets[None]
    num_images, num_anchors, columns = scores.shape
    if offsets.shape != (num_images, num_anchors, 4) or anchors.shape[-2:] != (num_anchors, 4):
        raise ValueError(f"scores {scores.shape}, offsets {offsets.shape} and anchors {anchors.shape} do not "
                         "describe one set of anchors")
    lib = load_library()
    workspace = ctypes.create_string_buffer(lib.ssd_pp_workspace_size())
    out = (_Detection * max(cap, 1))()
    stats = _Stats()
    results = []
    for i in range(num_images):
        anchors_i = anchors if anchors.ndim == 2 else np.ascontiguousarray(anchors[i])
        s, o = np.ascontiguousarray(scores[i]), np.ascontiguousarray(offsets[i])
        tensors = [_tensor(a, quantization.get(name), name)
                   for a, name in ((s, "scores"), (o, "offsets"), (anchors_i, "anchors"))]
        n = lib.ssd_postprocess(*[ctypes.byref(t) for t in tensors], num_anchors, columns, ctypes.byref(config),
                                workspace, out, cap, ctypes.byref(stats))
        if n < 0:
            raise ValueError(f"the C post-processor refused its arguments (error {n})")
        if stats.truncated:
            raise RuntimeError(f"the C post-processor dropped {stats.dropped} of {stats.candidates} candidates")
        dets = np.frombuffer(out, dtype=np.dtype([(name, np.float32) for name in ("x1", "y1", "x2", "y2", "score")] +
                                                 [("class_id", np.int32), ("anchor", np.int32)]), count=n)
        boxes = np.stack([dets["x1"], dets["y1"], dets["x2"], dets["y2"]], axis=1).reshape(-1, 4)
        results.append(Detections(torch.from_numpy(boxes.copy()), torch.from_numpy(dets["score"].copy()),
                                  torch.from_numpy(dets["class_id"].astype(np.int64))))
    return results
