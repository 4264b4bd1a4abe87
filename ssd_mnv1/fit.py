"""Train, validate or test the detector with LightningCLI and composed YAML configs.

    python -m ssd_mnv1.fit                                   # the quickstart (no download, CPU, < 5 min)
    python -m ssd_mnv1.fit fit --config lightning_configs/base.yaml --config lightning_configs/st_224.yaml \\
        --model.backbone_weights IMAGENET.h5 --data.train DIR --data.val DIR
    python -m ssd_mnv1.fit fit --config ... --ckpt_path last                 # resume (also after a kill)
    python -m ssd_mnv1.fit validate --config ... --ckpt_path FILE.ckpt
    python -m ssd_mnv1.fit fit --config ... --print_config                   # the merged config

With no arguments it runs ``lightning_configs/quickstart.yaml`` (packaged with the library).
``base.yaml`` is ST's recipe; the config after it sets the size (``st_<S>.yaml``) or the purpose
(``finetune_st_224.yaml``, ``qat.yaml`` + ``qat_<S>.yaml``). A config value ``???`` is a required option.
``model.input_size`` is linked to ``data.input_size`` and ``data.class_names`` sets
``model.class_names`` (stored in the checkpoint). Trainer options (``--trainer.devices``, ``--trainer.num_nodes``,
``--trainer.strategy ddp``, ``--trainer.precision 16-mixed``) scale the same run to GPUs and nodes.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from importlib import resources
from pathlib import Path

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from .cli import run
from .fileio import atomic_path, output_folder, write_failure
from .progress import is_terminal
from .training import DetectionDataModule, LearningCurves, LogProgressBar, NonFiniteLossError, SSDLightningModule
from .training.threads import AdaptiveThreads

#: A config value that must be replaced on the command line (OmegaConf's spelling of "missing").
REQUIRED = "???"
#: LightningCLI's subcommands (``ssd-mnv1 fit`` implies ``fit`` unless given one of these).
SUBCOMMANDS = tuple(LightningCLI.subcommands())


def packaged_config(name: str) -> Path:
    """Path of a config shipped in ``lightning_configs/`` (installed as ``ssd_mnv1.lightning_configs``)."""
    path = Path(str(resources.files("ssd_mnv1.lightning_configs") / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: packaged config not found")
    return path


def _checkpoint_dir(default_root_dir: str | None) -> str:
    return os.path.join(default_root_dir or ".", "checkpoints")


def _writes_last(callback) -> bool:
    """A checkpoint callback that writes ``last*.ckpt`` at every save (a monitored one with
    ``save_last`` writes it only when the monitored value improves)."""
    return (isinstance(callback, ModelCheckpoint) and callback.monitor is None
            and (bool(callback.save_last) or callback.filename == ModelCheckpoint.CHECKPOINT_NAME_LAST))


def _required_left(value, key: str = "") -> list[str]:
    """The options (as flags) whose value is still :data:`REQUIRED`; list items and ``init_args``
    are spelled as jsonargparse reads them (``--trainer.callbacks.X`` reaches the last callback)."""
    if isinstance(value, dict):
        found = []
        for name, item in value.items():
            found += _required_left(item, key if name == "init_args" else f"{key}.{name}" if key else name)
        return found
    if isinstance(value, list):
        return [flag for item in value for flag in _required_left(item, key)]
    return [f"--{key}"] if value == REQUIRED else []


def _with_tensorboard(logger, default_root_dir):
    """``logger`` (None, one or a list) plus a TensorBoardLogger in ``<run folder>/tensorboard``."""
    from pytorch_lightning.loggers import TensorBoardLogger

    loggers = (list(logger) if isinstance(logger, (list, tuple))
               else [] if isinstance(logger, bool) or logger is None else [logger])
    if any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        return loggers
    folder = getattr(loggers[0], "log_dir", None) if loggers else None
    return [*loggers, TensorBoardLogger(folder or default_root_dir or ".", name="", version="tensorboard",
                                        default_hp_metric=False)]


class AtomicSaveConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run folder, written atomically (a full disk leaves no
    truncated config); always overwritten (``--ckpt_path last`` reruns write it again)."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        log_dir = None if self.already_saved else trainer.log_dir  # a collective call: every rank
        if log_dir is None or "://" in str(log_dir):  # remote folders: Lightning's own writer
            return super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:
            with atomic_path(Path(log_dir) / self.config_filename) as tmp:
                self.parser.save(self.config, str(tmp), skip_none=False, overwrite=True, multifile=self.multifile)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class SSDLightningCLI(LightningCLI):
    """LightningCLI with linked model/data options, required ``???`` values, and a last checkpoint.

    Every fit writes ``<trainer.default_root_dir>/checkpoints/last.ckpt`` after each epoch: one
    folder that does not change between runs (the best checkpoints go to the logger's versioned
    folder), so ``--ckpt_path last`` finds it when resuming. Its options are ``--last_checkpoint.*``
    (e.g. ``every_n_train_steps`` for long epochs). It is left out when checkpointing is off or a
    config's own callbacks already write ``last.ckpt``. The torch thread count is decided once, before
    the first step, from the CPU plan (``data.torch_threads`` overrides it) and never changes, so a
    seeded run gives the same numbers whatever the machine's load; ``--adaptive_threads true`` adds
    :class:`AdaptiveThreads` (speed over reproducibility). A fit writes ``learning_curves.png``
    into the run folder (:class:`LearningCurves`); when stdout is not a terminal the progress bar
    prints plain lines (:class:`LogProgressBar`); ``--tensorboard true`` adds a TensorBoard logger.
    """

    def __init__(self, *args, **kwargs) -> None:
        self.output_root: str | None = None
        try:
            super().__init__(*args, **{"save_config_callback": AtomicSaveConfig, **kwargs})
        except OSError as exc:  # a full disk, a folder made read-only under a run: one error line
            error = write_failure(exc, exc.filename or self.output_root or os.getcwd(),
                                  left="the run stopped (--ckpt_path last resumes from the last checkpoint)")
            if error is None:
                raise
            raise error from exc

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.input_size", "data.input_size")
        parser.link_arguments("data.class_names", "model.class_names")
        parser.add_class_arguments(ModelCheckpoint, "last_checkpoint", instantiate=True, fail_untyped=False,
                                   sub_configs=True)
        parser.set_defaults({"last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
                             "last_checkpoint.monitor": None, "last_checkpoint.save_top_k": 1,
                             "last_checkpoint.enable_version_counter": False})
        parser.link_arguments("trainer.default_root_dir", "last_checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.add_argument("--tensorboard", type=bool, default=False,
                            help="also log to TensorBoard, in <run folder>/tensorboard")
        parser.add_argument("--adaptive_threads", type=bool, default=False,
                            help="on the CPU, re-time the torch thread count during training and keep the "
                                 "fastest (faster on a machine whose load changes; the result then depends "
                                 "on that load: float rounding changes with the thread count)")

    def _subconfig(self, config):
        return config[self.subcommand] if self.subcommand else config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig(self.config)
        missing = _required_left(config.as_dict())
        if missing:
            raise ValueError(f"missing required option{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                             f"(the config leaves {REQUIRED}): give {'them' if len(missing) > 1 else 'it'} "
                             "on the command line")
        root = config.get("trainer", {}).get("default_root_dir")
        if root is not None:  # checkpoints, logs and reports go there: a bad folder fails before the data loads
            self.output_root = str(output_folder(root, "--trainer.default_root_dir"))

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self._subconfig(self.config_init)
        trainer = {**config.get("trainer", {}), **kwargs}
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        added = []
        if trainer.get("enable_checkpointing") is not False and not any(map(_writes_last, callbacks)):
            added.append(config["last_checkpoint"])
        data = self._subconfig(self.config).get("data", {})
        if self._subconfig(self.config).get("adaptive_threads") and data.get("torch_threads") is None and not any(
                isinstance(cb, AdaptiveThreads) for cb in callbacks):
            added.append(AdaptiveThreads())  # acts on the CPU accelerator only; not reproducible
        if self.subcommand == "fit" and not any(isinstance(cb, LearningCurves) for cb in callbacks):
            added.append(LearningCurves())
        if (trainer.get("enable_progress_bar") is not False and not is_terminal(sys.stdout)
                and not any(isinstance(cb, ProgressBar) for cb in callbacks)):
            added.append(LogProgressBar())  # plain lines in a log (no carriage-return redraws)
        if self._subconfig(self.config).get("tensorboard") and trainer.get("logger") is not False:
            kwargs["logger"] = _with_tensorboard(trainer.get("logger"), trainer.get("default_root_dir"))
        if added:
            kwargs["callbacks"] = [*callbacks, *added]
        return super().instantiate_trainer(**kwargs)


def _check_input_size_options(args: list[str]) -> None:
    """A non-square ``--model.input_size`` (``256x192``, ``[256, 192]``) gets the rule's own error, not
    the parser's "expected an int"."""
    from .specs import resolution_spec

    for i, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if key in ("--model.input_size", "--data.input_size"):
            value = value if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value.strip().lstrip("-").isdigit() and len(re.findall(r"\d+", value)) >= 2:
                resolution_spec(value if "x" in value.lower() else tuple(re.findall(r"\d+", value)))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        config = packaged_config("quickstart.yaml")
        print(f"ssd_mnv1 quickstart: training on generated person-like images ({config})", flush=True)
        args = ["fit", "--config", str(config)]
    else:
        _check_input_size_options(args)
        if argv is None:
            args = None  # LightningCLI reads sys.argv itself (and warns when given both)
    try:
        with warnings.catch_warnings():  # args given on purpose (quickstart, ssd-mnv1 fit), not mixed up with sys.argv
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            SSDLightningCLI(SSDLightningModule, DetectionDataModule, args=args,
                            save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                            parser_kwargs={"prog": "python -m ssd_mnv1.fit"})
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
