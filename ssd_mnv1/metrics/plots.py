"""Precision-recall curve of ST-AP results, written as a PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..fileio import atomic_path


def _curves(result, name: str | None):
    per_p = getattr(result, "per_class_precision", None) or {}
    per_r = getattr(result, "per_class_recall", None) or {}
    if not per_p:  # a result without per-class arrays: its main curve only
        yield name or "", result.precision, result.recall, result.ap
        return
    for c in sorted(per_p):
        label = name or ""
        if len(per_p) > 1:
            label = f"{label} class {c}".strip()
        yield label, per_p[c], per_r[c], result.per_class.get(c, result.ap)


def save_pr_curve(result_or_dict_of_results, path: str | os.PathLike) -> None:
    """Plot recall (x) against precision (y) for one :class:`STAPResult` or a ``{name: result}``
    mapping (one curve per name, and per class where there are several), and write ``path`` (PNG)
    atomically. Uses a bare matplotlib Figure (Agg canvas), so no global pyplot state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(result_or_dict_of_results, Mapping):
        items = list(result_or_dict_of_results.items())
    else:
        items = [(None, result_or_dict_of_results)]
    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, result in items:
        for label, precision, recall, ap in _curves(result, name):
            variant = getattr(result, "variant", "")
            text = f"{label or variant} AP {100.0 * ap:.2f}".strip()
            ax.plot(recall, precision, label=text, linewidth=1.2)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    iou = getattr(items[0][1], "iou_threshold", None) if items else None
    ax.set_title("ST-AP precision-recall" + (f" (IoU {iou:g})" if iou is not None else ""))
    ax.grid(True, alpha=0.3)
    if items:
        ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
