"""The same short training in our trainer and in ST's own Keras trainer, scored by one evaluator.

    python bench/side_by_side.py --st-src ST_SRC [--st-python ST_VENV/bin/python] [--seeds 3]
        [--epochs 20] [--val-every 5] [--val-subset [START=]N ...] [--out DIR] [--starts imagenet finetune]
        [--trainers ours st] [--lr-imagenet 1e-3] [--lr-finetune 1e-4] [--workers 1] [--threads 2]

For each start (``imagenet``: ImageNet MobileNet backbone + fresh ST layers; ``finetune``: ST's
pretrained 224 detector) x trainer x seed it runs one short training, one run at a time, each with
``--threads`` compute threads:

* ours: ``python -m ssd_mnv1.fit fit --config lightning_configs/base.yaml --config lightning_configs/st_224.yaml`` (imagenet, with
  ``--model.backbone_weights``) or ``lightning_configs/finetune_st_224.yaml`` (finetune, with
  ``--model.weights``), plus a generated override config: batch 64, ``max_epochs``, the lr, no
  validation during training (so no LR plateau schedule and no early stopping: the run is too short
  for them anyway), no logger, and :class:`SaveEveryK` (this file) instead of the configs' callbacks,
  which writes the model at epoch 0 and every ``--val-every`` epochs;
* ST: ``bench/st_keras_trainer.py`` in ST's TF/Keras environment (``--st-python``), which runs ST
  ModelZoo 2.0's generator, augmentation, loss, model and ``Model.fit`` (see that file).

Both read ``--train`` (COCO folder; ST's trainer converts it with ST's own COCO->YOLO converter).
Every saved model of both trainers (ours ``.ckpt``, ST's ``.h5`` through our importer) is then scored
with ONE evaluator, ours (``ssd_mnv1.evaluate``, ST-AP 2.0 at IoU 0.4, nearest resize, Pillow decode:
exactly what ``python -m ssd_mnv1.evaluate MODEL --data VAL`` reports), on ``--val`` or a fixed
seeded subset of it (``--val-subset N`` or per start ``imagenet=N finetune=M``: a COCO json subset
written under ``OUT/val_subset_N``).
The images are decoded once and the models are run in this process (``--eval-cli`` runs the CLI
per model instead: same numbers, slower).

Outputs in ``--out``: ``curves.json`` (per trainer, start, seed: epoch -> val ST-AP, plus the
per-epoch training times and losses), ``curves.png`` (val ST-AP against epoch: mean line and min-max band of
each trainer, one panel per start), ``runs/`` (models and logs). Prints a summary table and, as the
last line, one JSON object: per start, the final mean and min/max of each trainer and whether our
final mean lies within ST's seed spread. Finished runs are reused when the command is repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

from ssd_mnv1.zoo import st_files

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULTS = {
    "train": SHARED / "data" / "coco2017_person_train",
    "val": SHARED / "data" / "coco2017_person_val",
    "st_h5": st_files(SHARED / "reference", 224).h5,
    "backbone": SHARED / "reference" / "mobilenet_v1_0.25_224_imagenet.h5",
}
BASE_CONFIG = REPO / "lightning_configs" / "base.yaml"
CONFIGS = {"imagenet": REPO / "lightning_configs" / "st_224.yaml",
           "finetune": REPO / "lightning_configs" / "finetune_st_224.yaml"}
TRAINERS = ("ours", "st")
STARTS = ("imagenet", "finetune")


class SaveEveryK(pl.Callback):
    """Write the detector as a project checkpoint at the start (epoch 0) and every ``every`` epochs
    (``ep{E:03d}.ckpt``), with the seconds of each training epoch in ``epoch_times.json``."""

    def __init__(self, dirpath: str, every: int = 1):
        super().__init__()
        self.dirpath, self.every = Path(dirpath), int(every)
        self.times: list[dict] = []
        self._t0 = 0.0

    def _save(self, pl_module, epoch: int) -> None:
        from ssd_mnv1.checkpoint import save_checkpoint

        self.dirpath.mkdir(parents=True, exist_ok=True)
        save_checkpoint(pl_module.model, self.dirpath / f"ep{epoch:03d}.ckpt")

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step == 0:
            self._save(pl_module, 0)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        loss = trainer.callback_metrics.get("train_loss")
        self.times.append({"epoch": epoch, "seconds": round(time.perf_counter() - self._t0, 3),
                           "loss": None if loss is None else float(loss)})
        print(f"epoch {epoch}: loss {self.times[-1]['loss']} ({self.times[-1]['seconds']:.1f} s)", flush=True)
        if epoch % self.every == 0 or epoch == trainer.max_epochs:
            self._save(pl_module, epoch)
        (self.dirpath / "epoch_times.json").write_text(json.dumps(self.times, indent=1) + "\n")


# ------------------------------------------------------------------------------------ training
def override_config(run_dir: Path, args, start: str) -> Path:
    """The Lightning settings that make our run the same short run as ST's."""
    import yaml

    cfg = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
            "max_epochs": args.epochs, "default_root_dir": str(run_dir), "logger": False,
            "enable_checkpointing": False, "enable_progress_bar": False,
            "limit_val_batches": 0, "num_sanity_val_steps": 0,
            "callbacks": [{"class_path": "side_by_side.SaveEveryK",
                           "init_args": {"dirpath": str(run_dir), "every": args.val_every}}],
        },
        "model": {"lr": args.lr_imagenet if start == "imagenet" else args.lr_finetune},
        "data": {"batch_size": args.batch_size, "num_workers": args.workers, "drop_last": True},
    }
    path = run_dir / "override.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_command(trainer: str, start: str, seed: int, run_dir: Path, args) -> tuple[list[str], dict]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1")
    lr = args.lr_imagenet if start == "imagenet" else args.lr_finetune
    if trainer == "ours":
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
        weights_flag = "--model.backbone_weights" if start == "imagenet" else "--model.weights"
        weights = args.backbone if start == "imagenet" else args.st_h5
        cmd = [sys.executable, "-m", "ssd_mnv1.fit", "fit", "--config", str(BASE_CONFIG), "--config", str(CONFIGS[start]),
               "--config", str(override_config(run_dir, args, start)), weights_flag, str(weights),
               "--data.train", str(args.train), "--data.val", str(args.val), "--seed_everything", str(seed)]
        return cmd, env
    weights = args.backbone if start == "imagenet" else args.st_h5
    cmd = [args.st_python, str(Path(__file__).resolve().parent / "st_keras_trainer.py"), "--st-src", args.st_src,
           "--start", start, "--weights", str(weights), "--data", str(args.train), "--epochs", str(args.epochs),
           "--save-every", str(args.val_every), "--seed", str(seed), "--lr", str(lr),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(run_dir)]
    return cmd, env


def run_training(trainer: str, start: str, seed: int, args) -> Path:
    run_dir = Path(args.out) / "runs" / f"{trainer}_{start}_s{seed}"
    done = run_dir / "DONE"
    if done.is_file():
        print(f"[{trainer} {start} seed {seed}] reusing {run_dir}", flush=True)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in list(run_dir.glob("*.ckpt")) + list(run_dir.glob("*.h5")):
        old.unlink()
    cmd, env = train_command(trainer, start, seed, run_dir, args)
    (run_dir / "command.txt").write_text(" ".join(cmd) + "\n")
    print(f"[{trainer} {start} seed {seed}] training: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "train_log.txt", "w") as log:
        rc = subprocess.call(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = (run_dir / "train_log.txt").read_text().splitlines()[-15:]
        raise SystemExit(f"[{trainer} {start} seed {seed}] training failed (exit {rc}):\n" + "\n".join(tail))
    done.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
    print(f"[{trainer} {start} seed {seed}] trained in {seconds:.0f} s", flush=True)
    return run_dir


def epoch_log(trainer: str, run_dir: Path) -> list[dict]:
    """Per training epoch: ``{"epoch", "seconds", "loss"}`` (ours: the epoch's last-step loss; ST: Keras'
    epoch mean); both losses include the L2 term."""
    f = run_dir / ("epoch_times.json" if trainer == "ours" else "history.json")
    if not f.is_file():
        return []
    data = json.loads(f.read_text())
    return data if trainer == "ours" else data["history"]


def saved_models(trainer: str, run_dir: Path) -> dict[int, Path]:
    pattern = re.compile(r"^(?:st_)?ep(\d+)\.(ckpt|h5)$")
    out = {}
    for p in run_dir.iterdir():
        m = pattern.match(p.name)
        if m and (p.suffix == ".ckpt") == (trainer == "ours"):
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------- evaluation
def val_subset(val: Path, n: int, out: Path, seed: int = 0) -> Path:
    """A fixed seeded subset of ``n`` images of a COCO folder, as a COCO folder under ``out``."""
    import random

    data = json.loads((val / "annotations.json").read_text())
    images = sorted(data["images"], key=lambda r: r["id"])
    keep = sorted(random.Random(seed).sample(images, n), key=lambda r: r["id"]) if n < len(images) else images
    ids = {r["id"] for r in keep}
    sub = dict(data, images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    folder = out / f"val_subset_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "annotations.json").write_text(json.dumps(sub))
    link = folder / "images"
    if not link.exists():
        link.symlink_to((val / "images").resolve())
    return folder


def parse_subsets(items: list[str], starts) -> dict[str, int]:
    """``['100']`` -> every start 100; ``['imagenet=100', 'finetune=0']`` -> per start (default 0)."""
    out = {s: 0 for s in starts}
    for item in items:
        name, _, value = item.rpartition("=")
        if name and name not in STARTS:
            raise SystemExit(f"--val-subset {item}: unknown start {name!r}")
        for s in ([name] if name else starts):
            out[s] = int(value)
    return out


class Evaluator:
    """ST-AP 2.0 of model files on one dataset with ssd_mnv1.evaluate (decoded once)."""

    def __init__(self, data: Path, threads: int, cli: bool = False, tag: str = "all"):
        import torch

        from ssd_mnv1.data import open_dataset

        torch.set_num_threads(threads)
        self.data, self.threads, self.cli, self.tag = data, threads, cli, tag
        self.dataset = open_dataset(str(data))
        self.images = None
        self.cache_images = {}

    def __call__(self, model: Path) -> float:
        cache = model.with_suffix(f"{model.suffix}.eval_{self.tag}.json")
        if cache.is_file():
            return json.loads(cache.read_text())["st_ap_20"]
        if self.cli:
            subprocess.check_call([sys.executable, "-m", "ssd_mnv1.evaluate", str(model), "--data", str(self.data),
                                   "--threads", str(self.threads), "--json", str(cache)], cwd=REPO,
                                  stdout=subprocess.DEVNULL)
            return json.loads(cache.read_text())["st_ap_20"]
        from ssd_mnv1.evaluation import evaluate, resize_all
        from ssd_mnv1.runners import open_runner

        runner = open_runner(str(model), num_threads=self.threads)
        size = runner.input_size
        if size not in self.cache_images:
            self.cache_images[size] = resize_all(self.dataset, size, "nearest", workers=self.threads, progress=False)
        result = evaluate(runner, self.dataset, ("st20",), images=self.cache_images[size], progress=False)
        cache.write_text(json.dumps(result.to_json()) + "\n")
        return result.st_ap["st20"]


# ------------------------------------------------------------------------------------- report
def spread(values: list[float]) -> dict:
    return {"mean": round(sum(values) / len(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "n": len(values)}


def summarize(curves: dict, starts, trainers) -> tuple[str, dict]:
    lines, final = [], {}
    lines.append(f"{'start':<9} {'trainer':<7} {'epoch':>5} {'mean':>7} {'min':>7} {'max':>7} {'seeds':>5}")
    for start in starts:
        final[start] = {}
        for trainer in trainers:
            runs = curves.get(trainer, {}).get(start, {})
            epochs = sorted({e for r in runs.values() for e in map(int, r["st_ap"])})
            for e in epochs:
                vals = [r["st_ap"][str(e)] for r in runs.values() if str(e) in r["st_ap"]]
                s = spread(vals)
                lines.append(f"{start:<9} {trainer:<7} {e:>5} {s['mean']:>7.2f} {s['min']:>7.2f} {s['max']:>7.2f} "
                             f"{s['n']:>5}")
            if epochs:
                last = epochs[-1]
                vals = [r["st_ap"][str(last)] for r in runs.values() if str(last) in r["st_ap"]]
                final[start][trainer] = dict(spread(vals), epoch=last)
        o, s = final[start].get("ours"), final[start].get("st")
        if o and s and o["epoch"] == s["epoch"]:
            final[start]["ours_mean_within_st_spread"] = s["min"] <= o["mean"] <= s["max"]
            final[start]["ours_minus_st_mean"] = round(o["mean"] - s["mean"], 3)
    return "\n".join(lines), final


def plot(curves: dict, starts, trainers, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ours": "tab:blue", "st": "tab:orange"}
    names = {"ours": "ours (PyTorch Lightning)", "st": "ST ModelZoo 2.0 (Keras)"}
    fig, axes = plt.subplots(1, len(starts), figsize=(6.5 * len(starts), 4.6), squeeze=False)
    for ax, start in zip(axes[0], starts):
        for trainer in trainers:
            runs = curves.get(trainer, {}).get(start, {})
            epochs = sorted({e for r in runs.values() for e in map(int, r["st_ap"])})
            if not epochs:
                continue
            stats = [spread([r["st_ap"][str(e)] for r in runs.values() if str(e) in r["st_ap"]]) for e in epochs]
            ax.plot(epochs, [s["mean"] for s in stats], "-o", color=colors[trainer], ms=3,
                    label=f"{names[trainer]}, mean of {len(runs)} seeds")
            ax.fill_between(epochs, [s["min"] for s in stats], [s["max"] for s in stats], color=colors[trainer],
                            alpha=0.2, label=f"{trainer}: min-max over seeds")
        ax.set_title(f"start: {start}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val ST-AP 2.0 (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 95 * len(starts))), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--st-src", required=True, help="root of a local copy of ST's stm32ai-modelzoo 2.0.0 (never vendored)")
    ap.add_argument("--st-python", default="/tmp/st_keras_venv/bin/python",
                    help="python of the TF/Keras environment for ST's trainer")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 1..N")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--val-every", type=int, default=5, help="save and evaluate every K epochs (and epoch 0)")
    ap.add_argument("--val-subset", nargs="+", default=["0"], metavar="[START=]N",
                    help="evaluate on a fixed seeded subset of N val images (0: all 690); START=N sets it for one "
                         "start only, e.g. 'imagenet=100 finetune=0'")
    ap.add_argument("--out", default="sbs_out")
    ap.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    ap.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    ap.add_argument("--lr-imagenet", type=float, default=1e-3, help="ST's pretrained-config lr")
    ap.add_argument("--lr-finetune", type=float, default=1e-4, help="lr of lightning_configs/finetune_st_224.yaml")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="compute threads per training run / evaluation")
    ap.add_argument("--workers", type=int, default=1, help="our DataLoader worker processes")
    ap.add_argument("--train", default=str(DEFAULTS["train"]))
    ap.add_argument("--val", default=str(DEFAULTS["val"]))
    ap.add_argument("--st-h5", default=str(DEFAULTS["st_h5"]), help="ST's 224 detector .h5 (fine-tune start)")
    ap.add_argument("--backbone", default=str(DEFAULTS["backbone"]), help="Keras ImageNet MobileNet 0.25 .h5")
    ap.add_argument("--eval-cli", action="store_true", help="evaluate with the CLI, one process per model")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    val = Path(args.val)
    subset = parse_subsets(args.val_subset, args.starts)
    evaluators = {}
    for start in args.starts:
        n = subset[start]
        if n not in evaluators:
            evaluators[n] = Evaluator(val_subset(val, n, out) if n else val, args.threads, cli=args.eval_cli,
                                      tag=str(n) if n else "all")
    curves_path = out / "curves.json"
    curves: dict = {}
    title = (f"{args.epochs} epochs x {int(167 // args.batch_size) if 'coco2017_person_train' in args.train else '?'}"
             f" steps (batch {args.batch_size}), lr imagenet {args.lr_imagenet:g} / finetune {args.lr_finetune:g}; "
             + ", ".join(f"{s}: val {len(evaluators[subset[s]].dataset)} images" for s in args.starts))
    t_start = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for start in args.starts:
            for trainer in args.trainers:
                run_dir = run_training(trainer, start, seed, args)
                t0 = time.perf_counter()
                evaluator = evaluators[subset[start]]
                aps = {str(e): evaluator(p) for e, p in saved_models(trainer, run_dir).items()}
                print(f"[{trainer} {start} seed {seed}] val ST-AP by epoch: "
                      + ", ".join(f"{e}: {v:.2f}" for e, v in aps.items())
                      + f" (evaluated in {time.perf_counter() - t0:.0f} s)", flush=True)
                log = epoch_log(trainer, run_dir)
                curves.setdefault(trainer, {}).setdefault(start, {})[str(seed)] = {
                    "st_ap": aps, "epoch_seconds": [e["seconds"] for e in log],
                    "train_loss": [e["loss"] for e in log],
                    "train_seconds": json.loads((run_dir / "DONE").read_text())["seconds"]}
                meta = {"val": {s: str(evaluators[subset[s]].data) for s in args.starts},
                        "val_images": {s: len(evaluators[subset[s]].dataset) for s in args.starts},
                        "epochs": args.epochs,
                        "val_every": args.val_every, "batch_size": args.batch_size, "lr_imagenet": args.lr_imagenet,
                        "lr_finetune": args.lr_finetune, "threads": args.threads, "workers": args.workers,
                        "metric": "ST-AP 2.0 (IoU 0.4), ssd_mnv1.evaluate"}
                curves_path.write_text(json.dumps({"meta": meta, "curves": curves}, indent=1) + "\n")
                plot(curves, args.starts, args.trainers, out / "curves.png", title)
    table, final = summarize(curves, args.starts, args.trainers)
    print(f"\nbench finished in {(time.perf_counter() - t_start) / 60:.1f} min; {curves_path}, {out / 'curves.png'}")
    for trainer in args.trainers:
        for start in args.starts:
            secs = [t for r in curves.get(trainer, {}).get(start, {}).values() for t in r["epoch_seconds"][1:]]
            if secs:
                print(f"  {trainer:<5} {start:<9} median epoch {sorted(secs)[len(secs) // 2]:.1f} s "
                      f"(first epoch excluded)")
    print(table)
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
