"""The per-layer quantization ledger (:func:`~.layer_ledger.build_layer_ledger`'s dict) for people:
a Markdown table worst layer first, two bar charts (ST-AP cost and SQNRs), and the three files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ssd_mnv1.fileio import atomic_path, atomic_write_text


def _short(tensor: str | None) -> str:
    """A fused TFLite tensor name's first part (``model_7/tf.nn.relu6_12/Relu6;...`` -> ``...Relu6``)."""
    return "–" if tensor is None else tensor.split(";")[0]


def layer_ledger_markdown(d: dict) -> str:
    ap = d["st_ap"]
    loo = any("st_ap_recovery" in r for r in d["layers"])
    fmt = lambda v, spec=".1f": "–" if v is None else format(v, spec)  # noqa: E731
    lines = [f"# Per-layer quantization ledger: `{d['model']}`", "",
             f"`{d['int8_tflite']}` ({d['weight_granularity']} weights) against `{d['fp32_tflite']}`, "
             f"{d['images']} images of `{d['data']}` at {d['input_size']}x{d['input_size']}.", "",
             f"ST-AP (st20): PyTorch float {ap['pytorch_float']:.2f}, fake-quant all layers "
             f"{ap['pytorch_fake_quant_all']:.2f}; TFLite float32 {ap['tflite_fp32']:.2f}, "
             f"int8 {ap['tflite_int8']:.2f}.", "",
             "- **ST-AP cost** = float ST-AP − ST-AP of the PyTorch fake-quant model with only that layer "
             "quantized (a conv block's weights and output; a head conv's weights, its int8 output being "
             f"the concatenation's; ranges {d['fake_quant_ranges']})."]
    if loo:
        lines.append("- **recovery** = ST-AP with every layer quantized but that one − ST-AP with all quantized.")
    lines += ["- **SQNR** = 10 log10(Σx² / Σ(x_int8 − x)²) of the layer's int8 output tensor against the float32 "
              "file's over all images: the error accumulated up to that layer.",
              f"- **local SQNR**: the layer's own noise, its output in PyTorch with only it quantized vs none "
              f"({d['local_sqnr_images']} images). **weight SQNR**: the int8 filter vs the float file's "
              "BN-folded filter.", "- Worst first (cost, then SQNR).", "",
              "| rank | module | TFLite tensor | kind | weights | SQNR dB | local SQNR dB | weight SQNR dB "
              "| ST-AP alone | ST-AP cost |" + (" recovery |" if loo else ""),
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if loo else "")]
    for r in d["layers"]:
        lines.append(f"| {r['rank']} | `{r['module']}` | `{_short(r['tensor'])}` | {r['kind']} | "
                     f"{r['weight_granularity'] or '–'} | {fmt(r['sqnr_db'])} | {fmt(r['local_sqnr_db'])} | "
                     f"{fmt(r['weight_sqnr_db'])} | {r['st_ap_alone']:.2f} | {r['st_ap_cost']:+.2f} |"
                     + (f" {r['st_ap_recovery']:+.2f} |" if loo else ""))
    t = d["timings_s"]
    lines += ["", "TFLite tensor: the first part of the fused name (the full name is in the JSON).",
              f"Timings (s): SQNR {t['sqnr']}, ST-AP costs {t['st_ap_costs']}, total {t['total']}."]
    return "\n".join(lines) + "\n"


def plot_layer_ledger(d: dict, png_path: str | os.PathLike, top: int | None = None) -> Path:
    """Two bar charts sharing the layer axis, worst layer at the top: the ST-AP cost (and recovery,
    with leave-one-out) and the SQNRs (output, local, weights). ``top``: only the worst N layers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = d["layers"][:top] if top else d["layers"]
    n = len(rows)
    y = np.arange(n)
    height = 2.0 + 0.22 * n
    fig = Figure(figsize=(12, height), dpi=100)
    FigureCanvasAgg(fig)
    ax_cost, ax_sqnr = fig.subplots(1, 2, sharey=True)
    costs = [r["st_ap_cost"] for r in rows]
    loo = all("st_ap_recovery" in r for r in rows) and n > 0
    h = 0.4 if loo else 0.75
    ax_cost.barh(y - (h / 2 if loo else 0), costs, height=h, label="cost: float − only this layer quantized",
                 color=["tab:red" if c > 0 else "tab:gray" for c in costs])
    if loo:
        ax_cost.barh(y + h / 2, [r["st_ap_recovery"] for r in rows], height=h, color="tab:green",
                     label="recovery: all but this layer − all quantized")
    ax_cost.axvline(0.0, color="black", linewidth=0.6)
    ax_cost.set_xlabel("ST-AP points")
    ax_cost.set_yticks(y)
    ax_cost.set_yticklabels([r["module"] for r in rows], fontsize=7)
    clip = lambda v: np.nan if v is None else min(v, 80.0)  # noqa: E731
    series = (("sqnr_db", "output, accumulated (int8 vs float32 TFLite)", "tab:blue"),
              ("local_sqnr_db", "output, this layer alone (PyTorch)", "tab:purple"),
              ("weight_sqnr_db", "weights", "tab:orange"))
    for k, (key, label, color) in enumerate(series):
        ax_sqnr.barh(y + (k - 1) * 0.27, [clip(r[key]) for r in rows], height=0.27, color=color, label=label)
    ax_sqnr.set_xlabel("SQNR (dB, capped at 80)")
    handles = []
    for ax in (ax_cost, ax_sqnr):
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_ylim(n - 0.5, -0.5)
        handles += ax.get_legend_handles_labels()[0]
    fig.legend(handles, [hd.get_label() for hd in handles], loc="lower center", ncol=3, fontsize=7, frameon=False)
    ap = d["st_ap"]
    fig.suptitle(f"Per-layer int8 ledger, {d['weight_granularity']} weights, {d['input_size']}px, "
                 f"{d['images']} images — ST-AP: float {ap['pytorch_float']:.2f}, fake-quant "
                 f"{ap['pytorch_fake_quant_all']:.2f}, TFLite int8 {ap['tflite_int8']:.2f} (worst layer on top)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1))
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(png_path)


def write_layer_ledger(d: dict, out_dir: str | os.PathLike, stem: str = "layer_ledger") -> tuple[Path, Path, Path]:
    """``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    paths = out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"
    atomic_write_text(paths[0], json.dumps(d, indent=2) + "\n")
    atomic_write_text(paths[1], layer_ledger_markdown(d))
    plot_layer_ledger(d, paths[2])
    return paths
