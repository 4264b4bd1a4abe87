"""The ``ssd-mnv1`` console script: one entry point that routes to each ``python -m ssd_mnv1.<module>``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssd_mnv1 import cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("ssd-mnv1")


def _script(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . installs the console script"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kwargs)


@pytest.mark.slow
def test_help_lists_every_command_with_one_line():
    result = _script("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("fit", "evaluate", "export", "predict", "reproduce", "footprint", "convert", "prepare-data"):
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 2, line  # a name and a description


@pytest.mark.parametrize("name, prog", [
    ("fit", "python -m ssd_mnv1.fit [options] fit"), ("evaluate", "python -m ssd_mnv1.evaluate"),
    ("export", "python -m ssd_mnv1.export"), ("predict", "python -m ssd_mnv1.predict"),
    ("reproduce", "python -m ssd_mnv1.reproduce"), ("footprint", "python -m ssd_mnv1.footprint"),
    ("convert", "python -m ssd_mnv1.convert"), ("prepare-data", "python -m ssd_mnv1.prepare_data"),
])
def test_each_command_routes_its_help_to_its_module(name, prog, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ssd-mnv1"])
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code in (0, None)
    assert f"usage: {prog}" in capsys.readouterr().out


def test_fit_passes_lightning_subcommands_through(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ssd-mnv1"])
    with pytest.raises(SystemExit):
        cli.main(["fit", "validate", "--help"])
    assert "usage: python -m ssd_mnv1.fit [options] validate" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["trian"], []])
@pytest.mark.slow
def test_unknown_or_missing_command_is_one_error_line_and_exit_2(args):
    result = _script(*args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "fit" in line and "prepare-data" in line
    assert all(word in line for word in args)


@pytest.mark.slow
def test_fit_never_imports_tensorflow(tmp_path):
    """A short real fit through the dispatcher, then a look at sys.modules in that process."""
    code = ("import sys\nfrom ssd_mnv1.cli import main\n"
            f"status = main(sys.argv[1:])\nprint('tensorflow' in sys.modules, status)\n")
    args = ["fit", "--config", str(REPO / "lightning_configs" / "quickstart.yaml"), "--trainer.accelerator", "cpu",
            "--trainer.max_steps", "1", "--data.synthetic_train", "2", "--data.synthetic_val", "1",
            "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "False 0"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
