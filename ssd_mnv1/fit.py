"""Train, validate or test the detector with LightningCLI and YAML configs.

    python -m ssd_mnv1.fit                                   # the quickstart (no download, CPU, < 5 min)
    python -m ssd_mnv1.fit fit --config lightning_configs/st_224.yaml --data.train DIR --data.val DIR
    python -m ssd_mnv1.fit fit --config CONFIG --ckpt_path last          # resume
    python -m ssd_mnv1.fit validate --config CONFIG --ckpt_path FILE.ckpt
    python -m ssd_mnv1.fit fit --print_config

With no arguments it runs ``lightning_configs/quickstart.yaml`` (packaged with the library).
``model.input_size`` is linked to ``data.input_size`` and ``data.class_names`` sets
``model.num_classes``. Trainer options (``--trainer.devices``, ``--trainer.num_nodes``,
``--trainer.strategy ddp``, ``--trainer.precision 16-mixed``) scale the same run to GPUs and nodes.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from .cli import run
from .training import DetectionDataModule, NonFiniteLossError, SSDLightningModule

def packaged_config(name: str) -> Path:
    """Path of a config shipped in ``lightning_configs/`` (installed as ``ssd_mnv1.lightning_configs``)."""
    path = Path(str(resources.files("ssd_mnv1.lightning_configs") / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: packaged config not found")
    return path


class SSDLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.input_size", "data.input_size")
        parser.link_arguments("data.class_names", "model.num_classes", compute_fn=len)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        config = packaged_config("quickstart.yaml")
        print(f"ssd_mnv1 quickstart: training on generated person-like images ({config})", flush=True)
        args = ["fit", "--config", str(config)]
    elif argv is None:
        args = None  # LightningCLI reads sys.argv itself (and warns when given both)
    try:
        SSDLightningCLI(SSDLightningModule, DetectionDataModule, args=args,
                        save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                        parser_kwargs={"prog": "python -m ssd_mnv1.fit"})
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run(main)
