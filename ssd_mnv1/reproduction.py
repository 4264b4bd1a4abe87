"""ST's published AP next to what our evaluator measures for ST's own files and for our port.

:func:`measure` scores ST's files (``ssd_mnv1.zoo``'s layout of ST's model zoo) at each size: the
int8 ``.tflite`` under three input conversions, the ``.h5`` in Keras and through our port, every
model on the same decoded pixels (:func:`ssd_mnv1.evaluation.resize_all`); :func:`to_markdown`
sets the rows beside ST's published figures. ``python -m ssd_mnv1.reproduce`` prints them.
"""

from __future__ import annotations

from pathlib import Path

from .zoo import CARDS, st_files, st_release

#: (key, label) of every measured model, in table order.
MODELS = (
    ("int8_raw", "ST int8 .tflite, raw uint8 pixels (device)"),
    ("int8_st", "ST int8 .tflite, ST 2.0 host input conversion"),
    ("int8_st25", "ST int8 .tflite, ST 2025 host input conversion"),
    ("keras", "ST float .h5, Keras (tf_keras)"),
    ("port", "ST float .h5, our PyTorch port"),
)
#: The measured columns of the side-by-side tables (column head, key); the 2025 input conversion
#: is only in the full list.
SIDE_BY_SIDE = (("ST int8 .tflite, raw px", "int8_raw"), ("ST int8 .tflite, ST input", "int8_st"),
                ("ST .h5, Keras", "keras"), ("our port of the .h5", "port"))


def _keras_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tf_keras") is not None


def measure(reference_dir: Path, data: str, sizes: list[int], metrics=("st20", "st25", "coco"),
            limit: int | None = None, keras: bool = True, progress: bool = True,
            decoder: str = "tf", st25_nms: str = "tf", threads: int | None = None) -> list[dict]:
    """One row per (size, model): ST-AP 2.0 / 2025 and COCO AP / AP50 in percent."""
    from .data import open_dataset
    from .evaluation import evaluate, resize_all
    from .runners import KerasRunner, TFLiteRunner, TorchRunner
    from .weights import load_keras_h5

    dataset = open_dataset(data)
    rows = []
    for size in sizes:
        files = st_files(reference_dir, size, must_exist=True)
        images = resize_all(dataset, size, limit=limit, progress=progress, decoder=decoder)
        runners = {}
        if keras and _keras_available():
            runners["keras"] = lambda: KerasRunner(files.h5)
        runners["port"] = lambda: TorchRunner(load_keras_h5(files.h5))
        for mode in ("raw", "st", "st25"):
            runners[f"int8_{mode}"] = lambda mode=mode: TFLiteRunner(files.int8_tflite, mode,
                                                                     num_threads=threads)
        for key, label in MODELS:
            if key not in runners:
                continue
            res = evaluate(runners[key](), dataset, metrics, images=images, progress=progress,
                           st25_nms=st25_nms)
            rows.append({"size": size, "key": key, "model": label, "images": res.images,
                         "decoder": decoder, "st25_nms": st25_nms,
                         "st_ap_20": res.st_ap.get("st20"), "st_ap_25": res.st_ap.get("st25"),
                         "coco_ap": (res.coco or {}).get("AP"), "coco_ap50": (res.coco or {}).get("AP50")})
    return rows


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _side_by_side(rows: list[dict], sizes: list[int], metric: str) -> list[str]:
    by = {(r["size"], r["key"]): r for r in rows}
    head = ["S"] + [f"published: {card.column}" for card in CARDS] + \
        [f"measured: {col}" for col, _ in SIDE_BY_SIDE] + ["port − Keras"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in sizes:
        measured = [by.get((s, k), {}).get(metric) for _, k in SIDE_BY_SIDE]
        keras, port = by.get((s, "keras"), {}).get(metric), by.get((s, "port"), {}).get(metric)
        delta = f"{port - keras:+.2f}" if keras is not None and port is not None else "–"
        published = [st_release(s).published_ap[card.key] for card in CARDS]
        cells = [str(s)] + [_fmt(v) for v in published + measured] + [delta]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(rows: list[dict], sizes: list[int], data: str) -> str:
    """Per resolution, ST's published AP next to our measurements; then every measured number."""
    n = rows[0]["images"] if rows else 0
    decoder = rows[0].get("decoder", "?") if rows else "?"
    nms = rows[0].get("st25_nms", "?") if rows else "?"
    decoders = {"tf": "TensorFlow's `tf.io.decode_image` (as ST's evaluation code)", "pil": "PIL"}
    nms_names = {"tf": "TF's `combined_non_max_suppression` (as ST's 2025 code)", "torch": "torchvision"}
    lines = ["## ST-AP (%) per resolution: ST's published figures next to our measurements", "",
             "* **published**: ST's model cards, measured by ST on its own (undocumented) COCO-person "
             "evaluation set, so not expected to equal ours. "
             + " ".join(f"*{card.column}* = {card.source}." for card in CARDS),
             f"* **measured**: `python -m ssd_mnv1.reproduce` on {n} images of `{data}`; every model "
             f"sees the same pixels (JPEG decoded by {decoders.get(decoder, decoder)}, ST's nearest "
             "stretch to S×S). ST-AP: IoU 0.4, +1-pixel IoU, all-point interpolation, crowd boxes as "
             "ordinary GT. *raw px* = uint8 pixels as the device feeds them; *ST input* = ST 2.0's host "
             "conversion round(x/scale + zp).",
             "",
             "### Measured with ST-AP 2.0 (ModelZoo 2.0 evaluator, no detection cap: the pipeline behind the 2.0 card)",
             ""]
    lines += _side_by_side(rows, sizes, "st_ap_20")
    lines += ["", "### Measured with ST-AP 2025 (objdet_metrics: clip to [0, 1], combined NMS, cap 100)", "",
              f"NMS: {nms_names.get(nms, nms)}.", ""]
    lines += _side_by_side(rows, sizes, "st_ap_25")
    lines += ["", "### All measurements", "",
              "COCO: pycocotools on original-image pixels, 2025 post-processing (top 100), crowd as ignore.", "",
              "| S | model | ST-AP 2.0 | ST-AP 2025 | COCO AP | COCO AP50 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['model']} | {_fmt(r['st_ap_20'])} | {_fmt(r['st_ap_25'])} | "
                     f"{_fmt(r['coco_ap'])} | {_fmt(r['coco_ap50'])} |")
    return "\n".join(lines) + "\n"
