"""Evaluation throughput (images/s) of a PyTorch model and a TFLite model at 224, side by side.

    python bench/eval_throughput.py [--data ../shared/data/coco2017_person_val] [--limit 300]
        [--reference-dir ../shared/reference] [--metrics st20 st25 coco] [--threads 1] [--rounds 2]
        [--device cpu|cuda]

Models: with ``--reference-dir``, ST's 224 ``.h5`` through our importer (PyTorch) and ST's 224 int8
``.tflite``; without it, a randomly initialised 224 detector (seeded) in PyTorch and its int8 TFLite
made by the project's exporter (``ssd_mnv1.export.pipeline.export``, calibrated on ``--data``
images). The random model's BatchNorm statistics are estimated on the first 64 images and its
class head gets a background prior, so that post-processing and metric have about as much to do
as with ST's trained 224 model (~410 vs ~370 detections per image after ST 2.0's NMS; with untouched
random weights all 6,825 anchors score the same and pass the 0.001 threshold).

Two figures per model, both through ``ssd_mnv1.evaluation.evaluate`` with the same metrics:

* end to end: JPEG decode + ST's nearest resize (DataLoader workers) + model + post-processing +
  metric;
* pre-resized: model + post-processing + metric on images resized once by ``resize_all``.

Also the bare model forward on the pre-resized images. The models are timed alternately for
``--rounds`` rounds (best round kept), in one process with the same thread count, and the table
gives the PyTorch / TFLite ratio. PyTorch runs as ``ssd_mnv1.evaluate`` runs it (BatchNorms folded
into the convs, ``runners.EVAL_TORCH_OPTIONS``) and, as extra columns, with its BatchNorms left
unfolded (the model as trained) and, with ``--device cuda``, under bf16 autocast and in
channels-last memory format; TFLite stays on the CPU.

The last line printed is one JSON object with the end-to-end figures: ``torch_images_per_s``,
``tflite_images_per_s``, ``ratio_torch_over_tflite``, and ``torch_<variant>_images_per_s`` for the
extra PyTorch columns (``unfolded``, ``bf16``, ``channels_last``), and evaluation's overhead per
model as a share of its forward time: ``<m>_postprocess_metric_share_of_forward`` (pre-resized
minus forward) and ``<m>_overhead_share_of_forward_end_to_end`` (decode + resize + post-processing
+ metric; decoding partly overlaps the model in the loader workers).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco2017_person_val"
SIZE = 224


def random_detector(calib: np.ndarray, seed: int = 0, background_prior: float = 9.0):
    """A seeded random 224 detector that behaves like a trained one as far as timing goes.

    With random weights and default BatchNorm statistics the activations die out and every anchor
    gets the same score, so the BN statistics are first re-estimated on ``calib`` (uint8 NHWC
    images); then the person logits are moved ``background_prior`` below background, which leaves
    about as many detections after NMS as ST's trained 224 model gives.
    """
    from ssd_mnv1 import build_model
    from ssd_mnv1.preprocess import normalize

    torch.manual_seed(seed)
    model = build_model(input_size=SIZE)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 16):
            model(torch.from_numpy(normalize(calib[i:i + 16])).permute(0, 3, 1, 2))
        for head in model.head.cls:
            bias = head.bn.bias.view(-1, model.head.num_outputs)  # channel = anchor * C + class
            bias[:, 1:] -= background_prior
    return model.eval()


def prepare_models(args, tmp: Path, images: np.ndarray):
    """(PyTorch model, TFLite runner, description) for the chosen models."""
    from ssd_mnv1.runners import TFLiteRunner

    if args.reference_dir is not None:
        from ssd_mnv1.weights import load_keras_h5
        from ssd_mnv1.zoo import st_files

        try:
            st = st_files(args.reference_dir, SIZE, must_exist=True)
        except FileNotFoundError as exc:
            raise SystemExit(f"--reference-dir {exc}") from None
        return (load_keras_h5(st.h5),
                TFLiteRunner(st.int8_tflite, "raw", num_threads=args.threads),
                "ST's 224 .h5 (PyTorch) vs ST's 224 int8 .tflite")

    from ssd_mnv1.checkpoint import save_checkpoint
    from ssd_mnv1.export.pipeline import export
    from ssd_mnv1.export.tf_stage import quiet_tensorflow

    quiet_tensorflow()
    model = random_detector(images[:64], args.seed)
    ckpt = save_checkpoint(model, tmp / "random_224.ckpt")
    t0 = time.perf_counter()
    result = export(ckpt, tmp / "export", "tflite-int8", calib=args.data, calib_count=args.calib_count,
                    log=lambda *_: None)
    print(f"exported the random model to int8 TFLite in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return (model,
            TFLiteRunner(result.files["tflite-int8"], "raw", num_threads=args.threads),
            "random-init 224 detector (PyTorch) vs its int8 .tflite from our exporter")


def torch_runners(model, device: str) -> dict:
    """The PyTorch columns: ``ssd_mnv1.evaluate``'s runner first, then the variants (JSON key: runner)."""
    from ssd_mnv1.runners import EVAL_TORCH_OPTIONS, TorchRunner

    variants = {"": dict(EVAL_TORCH_OPTIONS), "unfolded": {}}
    if device != "cpu":
        variants.update(bf16={**EVAL_TORCH_OPTIONS, "autocast": torch.bfloat16},
                        channels_last={**EVAL_TORCH_OPTIONS, "channels_last": True})
    return {key: TorchRunner(copy.deepcopy(model), f"pytorch {key}".strip(), device, **options)
            for key, options in variants.items()}


def time_model_only(runner, images: np.ndarray, batch_size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        runner(images[i:i + batch_size])
    return len(images) / (time.perf_counter() - t0)


def time_evaluate(runner, dataset, metrics, limit, batch_size, workers, images=None) -> tuple[float, dict]:
    from ssd_mnv1.evaluation import evaluate

    t0 = time.perf_counter()
    res = evaluate(runner, dataset, metrics, batch_size=batch_size, workers=workers, limit=limit,
                   images=images, progress=False)
    return res.images / (time.perf_counter() - t0), res.st_ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset (default {DEFAULT_DATA})")
    parser.add_argument("--reference-dir", type=Path, help="time ST's 224 .h5 and int8 .tflite instead")
    parser.add_argument("--limit", type=int, default=300, help="images per measurement (default 300)")
    parser.add_argument("--metrics", nargs="+", default=["st20", "st25", "coco"], choices=["st20", "st25", "coco"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads and TFLite threads (default 1: on a shared 2-core "
                             "machine a second torch thread that gets descheduled stalls every op)")
    parser.add_argument("--workers", type=int, help="decode workers for end to end (default: evaluate's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept")
    parser.add_argument("--calib-count", type=int, default=50, help="random model: int8 calibration images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="PyTorch device (cpu, cuda, cuda:1, ...); TFLite runs on the CPU")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device visible to PyTorch")

    from ssd_mnv1.data import open_dataset
    from ssd_mnv1.evaluation import resize_all

    if not args.data.exists():
        raise SystemExit(f"--data {args.data}: no such dataset")
    torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data)
    limit = min(args.limit, len(dataset))
    metrics = tuple(args.metrics)
    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp:
        t0 = time.perf_counter()
        images = resize_all(dataset, SIZE, workers=args.workers, limit=limit, progress=False)
        decode_ips = limit / (time.perf_counter() - t0)
        model, tflite_runner, what = prepare_models(args, Path(tmp), images)
        torch_columns = torch_runners(model, args.device)
        runners = {f"pytorch {key}".strip(): r for key, r in torch_columns.items()} | {"tflite": tflite_runner}
        for r in runners.values():  # warm-up (TFLite delegate set-up, torch first-call overheads)
            r(images[:args.batch_size])
        import pycocotools.cocoeval  # noqa: F401  (imported by the first COCO metric otherwise)

        import ssd_mnv1.metrics  # noqa: F401

        gc.freeze()  # as ssd_mnv1.evaluate's CLI does: full collections would walk the imports' objects
        best = {name: {"model": 0.0, "pre": 0.0, "e2e": 0.0} for name in runners}
        ap = {}
        for _ in range(args.rounds):
            for name, runner in runners.items():
                b = best[name]
                b["model"] = max(b["model"], time_model_only(runner, images, args.batch_size))
                ips, ap[name] = time_evaluate(runner, dataset, metrics, limit, args.batch_size, args.workers, images)
                b["pre"] = max(b["pre"], ips)
                ips, _ = time_evaluate(runner, dataset, metrics, limit, args.batch_size, args.workers)
                b["e2e"] = max(b["e2e"], ips)

    from ssd_mnv1.cpus import plan_cpus

    t = best["tflite"]
    columns = [name for name in runners if name != "tflite"]
    workers = plan_cpus(args.workers, purpose="evaluate").workers
    print(f"# Evaluation throughput at {SIZE}: {what}")
    print(f"{limit} images of {args.data}, metrics {' + '.join(metrics)}, {args.threads} thread(s), "
          f"{workers} decoding worker(s), batch {args.batch_size}, PyTorch on {args.device}, best of "
          f"{args.rounds} alternating round(s); decode + resize alone (resize_all): {decode_ips:.1f} img/s")
    print()
    print("| images/s | " + " | ".join(columns) + " | TFLite | PyTorch / TFLite |")
    print("|---|" + "---|" * (len(columns) + 2))
    for key, label in (("e2e", "end to end (JPEG decode + resize + model + post-processing + metric)"),
                       ("pre", "pre-resized (model + post-processing + metric)"),
                       ("model", "model forward only (pre-resized)")):
        cells = " | ".join(f"{best[name][key]:.1f}" for name in columns)
        print(f"| {label} | {cells} | {t[key]:.1f} | {best['pytorch'][key] / t[key]:.2f} |")
    print()
    print("ST-AP of the timed runs: " + "; ".join(
        f"{name} " + ", ".join(f"{k} {v:.2f}" for k, v in ap[name].items()) for name in runners))
    summary = {"torch_images_per_s": round(best["pytorch"]["e2e"], 1),
               "tflite_images_per_s": round(t["e2e"], 1),
               "ratio_torch_over_tflite": round(best["pytorch"]["e2e"] / t["e2e"], 3)}
    summary |= {f"torch_{key}_images_per_s": round(best[f"pytorch {key}"]["e2e"], 1) for key in torch_columns if key}
    # evaluation's own cost per image against the model's forward: post-processing + metric (pre-resized
    # minus forward) and, end to end, JPEG decode + resize on top (not all of it: decoding overlaps in workers)
    for name, key in (("pytorch", "torch"), ("tflite", "tflite")):
        forward = 1.0 / best[name]["model"]
        post = 1.0 / best[name]["pre"] - forward
        whole = 1.0 / best[name]["e2e"] - forward
        print(f"{name}: forward {forward * 1000:.2f} ms/image; post-processing + metric {post * 1000:.2f} ms "
              f"({post / forward:.0%} of the forward); everything but the forward, end to end "
              f"{whole * 1000:.2f} ms ({whole / forward:.0%})")
        summary[f"{key}_forward_ms"] = round(forward * 1000, 3)
        summary[f"{key}_postprocess_metric_share_of_forward"] = round(post / forward, 3)
        summary[f"{key}_overhead_share_of_forward_end_to_end"] = round(whole / forward, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
