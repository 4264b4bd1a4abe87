"""TensorFlow Lite Micro's arena with the offline memory plan and with int8 outputs, against TFLM's
own planner and ST's published RAM, and the outputs each variant gives on real images.

    python bench/tflm_memory.py FILE_MCU.tflite [...] [--data DIR] [--limit N] [--json OUT]

Each FILE_MCU is an int8 ``--mcu`` file with ST's float outputs. Three variants of it are loaded in
TFLM: ``greedy`` (every tensor left to TFLM's own planner), ``planned`` (the offline plan of
:func:`ssd_mnv1.memory_plan.plan_file`, what ``export --mcu`` embeds) and ``int8_outputs``
(:func:`ssd_mnv1.export.tflite_edit.int8_outputs` of it, planned). For each: TFLM's arena report
(head = activations, tail = runtime state), next to ST's published H7 activation and runtime RAM
for the size. With ``--data``: every image's outputs under TFLM, planned and int8_outputs against
greedy (elements that differ; the int8 outputs dequantized, the anchors the host's), and ST-AP of
the three under TFLM and of the float and int8-output files under LiteRT's XNNPACK. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ssd_mnv1.data import open_dataset
from ssd_mnv1.evaluation import evaluate, resize_all
from ssd_mnv1.export.tflite_edit import int8_outputs
from ssd_mnv1.fileio import atomic_write_text
from ssd_mnv1.footprint_analysis import ST_RUNTIME_RAM_KIB
from ssd_mnv1.memory_plan import embed_plan, plan_file
from ssd_mnv1.runners import TFLiteRunner, TFLMRunner
from ssd_mnv1.zoo import RELEASES, st_release

METRICS = ("st20",)


class _Record:
    """Keeps every batch's outputs, or compares them with a recorded run's."""

    def __init__(self, runner, reference: list | None = None):
        self.runner, self.name, self.input_size = runner, runner.name, runner.input_size
        self.batches, self.reference, self.differing = [], reference, 0

    def __call__(self, images):
        outs = self.runner(images)
        if self.reference is None:
            self.batches.append(outs)
        else:
            ref = self.reference[len(self.batches)]
            self.batches.append(None)
            self.differing += sum(int((a != b).sum()) for a, b in zip(outs, ref))
        return outs


def _variants(path: Path, folder: Path) -> dict[str, Path]:
    data = path.read_bytes()
    files = {"greedy": embed_plan(data, {}, str(path)), "planned": plan_file(data, str(path))[0],
             "int8_outputs": plan_file(int8_outputs(data, str(path)), str(path))[0]}
    out = {}
    for name, blob in files.items():
        out[name] = folder / f"{path.stem}_{name}.tflite"
        out[name].write_bytes(blob)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = open_dataset(args.data) if args.data else None
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            files = _variants(Path(model), Path(tmp))
            row: dict = {"model": model}
            for name, path in files.items():
                r = TFLMRunner(path).arena_report()
                row[name] = {"arena": r.arena_bytes, "head": r.head_bytes, "tail": r.tail_bytes,
                             "flash": path.stat().st_size}
            size = TFLMRunner(files["planned"]).input_size
            row["size"] = size
            if size in RELEASES:
                act = st_release(size).stm32.get("H7 activation RAM KiB (Cube.AI 10.0)")
                row["st_activation_kib"], row["st_runtime_kib"] = act, ST_RUNTIME_RAM_KIB.get(size)
                row["planned_head_over_st"] = round(row["planned"]["head"] / 1024 / act, 3)
            if dataset is not None:
                images = resize_all(dataset, size, progress=False, limit=args.limit)
                base = _Record(TFLMRunner(files["greedy"]))
                runs = {"tflm_greedy": base, "tflm_planned": None, "tflm_int8_outputs": None,
                        "xnnpack_float": TFLiteRunner(files["planned"]),
                        "xnnpack_int8_outputs": TFLiteRunner(files["int8_outputs"])}
                aps, differing = {}, {}
                for key in runs:
                    runner = runs[key]
                    if runner is None:
                        runner = _Record(TFLMRunner(files[key.split("_", 1)[1]]), base.batches)
                    result = evaluate(runner, dataset, METRICS, images=images, limit=len(images), progress=False)
                    aps[key] = result.st_ap["st20"]
                    if isinstance(runner, _Record) and runner.reference is not None:
                        differing[key] = runner.differing
                row.update({"images": len(images), "st_ap": aps, "elements_differing_from_greedy": differing})
            report.append(row)
            print(f"{size}: TFLM head greedy {row['greedy']['head']:,} -> planned {row['planned']['head']:,} "
                  f"(int8 outputs {row['int8_outputs']['head']:,}); total {row['greedy']['arena']:,} -> "
                  f"{row['planned']['arena']:,} ({row['int8_outputs']['arena']:,}); ST activations "
                  f"{row.get('st_activation_kib')} KiB + runtime {row.get('st_runtime_kib')} KiB"
                  + (f"; ST-AP {row['st_ap']}; differing elements {row['elements_differing_from_greedy']}"
                     if dataset is not None else ""), flush=True)
    line = json.dumps({"models": report})
    if args.json:
        atomic_write_text(args.json, line + "\n")
    print(line)


if __name__ == "__main__":
    main()
