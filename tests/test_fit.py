"""Training end to end: overfitting, resume, DDP, the CLI and its configs, the non-finite guard.

Everything runs on the CPU with procedurally generated images (no download, no ../shared).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from ssd_mnv1.training import (NO_AUGMENTATION, DetectionDataModule, NonFiniteLossError,
                               SSDLightningModule)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "lightning_configs" / "quickstart.yaml"


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kwargs})


def _tiny_data(train=8, val=4, batch=4, **kwargs) -> DetectionDataModule:
    return DetectionDataModule(synthetic_train=train, synthetic_val=val, input_size=192, batch_size=batch,
                               num_workers=0, augmentation=NO_AUGMENTATION, **kwargs)


def _cli(*args, timeout=600, cwd=None, **env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **env_extra}
    return subprocess.run([sys.executable, "-m", "ssd_mnv1.fit", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow  # ~35 s: up to 200 training steps
def test_training_overfits_eight_images_to_st_ap_above_90(tmp_path):
    pl.seed_everything(0)
    dm = _tiny_data(train=8, batch=8, train_interpolation="nearest")
    dm.setup()
    dm.val_set = dm.train_set  # validate on the training images themselves
    module = SSDLightningModule(input_size=192, lr=3e-3, prior_probability=0.01, bn_momentum=0.1)
    stop = EarlyStopping("val_st_ap", mode="max", stopping_threshold=90.0, patience=1000)
    trainer = _trainer(tmp_path, max_epochs=200, check_val_every_n_epoch=25, callbacks=[stop],
                       enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.callback_metrics["val_st_ap"] >= 90.0
    assert trainer.global_step <= 200


def test_resume_continues_with_the_same_step_optimizer_and_scheduler_state(tmp_path):
    pl.seed_everything(0)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, max_epochs=2, callbacks=[ckpt_cb]).fit(SSDLightningModule(input_size=192, plateau_patience=0),
                                                              datamodule=_tiny_data())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4

    seen = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            opt = trainer.optimizers[0]
            seen["step"] = trainer.global_step
            seen["epoch"] = trainer.current_epoch
            seen["exp_avg"] = [opt.state[p]["exp_avg"].clone() for g in opt.param_groups for p in g["params"]]
            seen["scheduler"] = trainer.lr_scheduler_configs[0].scheduler.state_dict()
            seen["lr"] = opt.param_groups[0]["lr"]

    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[Probe()], enable_checkpointing=False)
    trainer.fit(SSDLightningModule(input_size=192, plateau_patience=0), datamodule=_tiny_data(),
                ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert seen["step"] == 4 and seen["epoch"] == 2
    saved_state = saved["optimizer_states"][0]["state"]
    assert len(seen["exp_avg"]) == len(saved_state) > 0
    for got, want in zip(seen["exp_avg"], (saved_state[k]["exp_avg"] for k in sorted(saved_state))):
        assert torch.equal(got, want)
    assert seen["scheduler"] == saved["lr_schedulers"][0]
    assert seen["lr"] == saved["optimizer_states"][0]["param_groups"][0]["lr"]
    assert trainer.global_step == 6


def test_non_finite_loss_stops_training_and_names_the_batch_files(tmp_path):
    module = SSDLightningModule(input_size=192)
    forward = module.model.forward_logits

    def poisoned(x):
        logits, offsets = forward(x)
        return logits, offsets * float("nan") if module.global_step == 1 else offsets

    module.model.forward_logits = poisoned
    with pytest.raises(NonFiniteLossError) as info:
        _trainer(tmp_path, max_epochs=1, enable_checkpointing=False).fit(module, datamodule=_tiny_data())
    message = str(info.value)
    assert "non-finite training loss" in message and "step 1" in message
    assert message.count("<synthetic seed=0 #") == 4


@pytest.mark.slow
def test_cli_quickstart_config_trains_and_reports_st_ap_before_and_after(tmp_path):
    result = _cli("fit", "--config", QUICKSTART, "--trainer.max_steps", 2, "--data.synthetic_train", 8,
                  "--data.synthetic_val", 4, "--data.batch_size", 4, "--trainer.default_root_dir", tmp_path,
                  "--trainer.logger.init_args.save_dir", tmp_path, "--trainer.enable_progress_bar", "false",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation ST-AP before training" in result.stdout
    assert "before" in result.stdout and "-> after" in result.stdout
    last = [line for line in result.stdout.splitlines() if line.startswith("last checkpoint: ")]
    assert last and (tmp_path / last[0].split(": ", 1)[1]).is_file()


def test_no_argument_run_uses_the_packaged_quickstart(monkeypatch):
    from ssd_mnv1 import fit

    captured = {}
    monkeypatch.setattr(fit, "SSDLightningCLI", lambda *a, **k: captured.update(k))
    assert fit.main([]) == 0
    assert captured["args"][:2] == ["fit", "--config"]
    assert Path(captured["args"][2]).read_text() == QUICKSTART.read_text()


@pytest.mark.parametrize("args, words", [
    (["--model.input_size", "300"], ["input_size", "300", "multiple of 32", "128", "512"]),
    (["--model.input_size", "256x192"], ["input_size", "non-square"]),
    (["--model.input_size=[256, 192]"], ["input_size", "non-square"]),
    (["--model.learning_rate", "0.1"], ["learning_rate"]),
    (["--data.val_split", "2"], ["data.val_split", "[0, 1)"]),
    (["--model.weights", "missing.h5"], ["missing.h5", "no such model file"]),
])
@pytest.mark.slow
def test_cli_config_errors_are_one_clear_message_without_traceback(tmp_path, args, words):
    result = _cli("fit", "--config", QUICKSTART, *args, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_unknown_key_in_a_config_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("  lr: 0.006", "  lrate: 0.1\n  lr: 0.006"))
    result = _cli("fit", "--config", bad, cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "lrate" in result.stderr


CONFIGS = REPO / "lightning_configs"


@pytest.mark.parametrize("configs, size", [(("st_192.yaml",), 192), (("st_224.yaml",), 224), (("st_256.yaml",), 256),
                                           (("finetune_st_224.yaml",), 224), (("qat.yaml", "qat_192.yaml"), 192),
                                           (("qat.yaml", "qat_224.yaml"), 224), (("qat.yaml", "qat_256.yaml"), 256)])
def test_packaged_configs_compose_on_base_with_one_last_checkpoint(configs, size, capsys, monkeypatch):
    import yaml

    from ssd_mnv1.fit import SSDLightningCLI

    monkeypatch.setattr(sys, "argv", ["ssd_mnv1.fit"])  # LightningCLI warns when given args and sys.argv
    with pytest.raises(SystemExit) as done:
        SSDLightningCLI(SSDLightningModule, DetectionDataModule, args=[
            "fit", "--config", str(CONFIGS / "base.yaml"), *[a for c in configs for a in ("--config", str(CONFIGS / c))],
            "--print_config"])
    assert done.value.code in (0, None)
    merged = yaml.safe_load(capsys.readouterr().out)
    assert merged["model"]["input_size"] == size
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in merged["trainer"]["callbacks"]]
    assert callbacks.count("FitReport") == 1 and callbacks.count("ModelCheckpoint") == 1  # the best one
    assert merged["last_checkpoint"]["filename"] == "last" and merged["last_checkpoint"]["monitor"] is None
    assert merged["trainer"]["default_root_dir"] == merged["trainer"]["logger"]["init_args"]["save_dir"]
    assert merged["trainer"]["default_root_dir"].endswith(f"_{size}")


def test_packaged_configs_name_no_local_paths():
    for config in CONFIGS.glob("*.yaml"):
        assert "../shared" not in config.read_text(), config.name


def test_required_config_values_are_named_in_one_error(monkeypatch):
    from ssd_mnv1 import fit

    monkeypatch.setattr(sys, "argv", ["ssd_mnv1.fit"])
    with pytest.raises(ValueError) as info:
        fit.main(["fit", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "qat.yaml"),
                  "--config", str(CONFIGS / "qat_224.yaml"), "--data.train", "somewhere"])
    message = str(info.value)
    assert "--model.weights" in message and "--trainer.callbacks.calibration_images" in message
    assert "--data.train" not in message and "\n" not in message


def _cli_trainer(tmp_path, *args) -> pl.Trainer:
    from ssd_mnv1.fit import SSDLightningCLI

    return SSDLightningCLI(SSDLightningModule, DetectionDataModule, run=False, args=[
        "--config", str(QUICKSTART), "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path), *args]).trainer


def _last_writers(trainer) -> list[ModelCheckpoint]:
    from ssd_mnv1.fit import _writes_last

    return [cb for cb in trainer.callbacks if _writes_last(cb)]


def test_every_fit_gets_one_last_checkpoint_in_a_fixed_folder_unless_a_config_has_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ssd_mnv1.fit"])  # LightningCLI warns when given args and sys.argv
    (built_in,) = _last_writers(_cli_trainer(tmp_path))
    assert Path(built_in.dirpath) == (tmp_path / "checkpoints").resolve()
    (own,) = _last_writers(_cli_trainer(tmp_path, "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
                                        "--trainer.callbacks.dirpath", str(tmp_path / "mine"),
                                        "--trainer.callbacks.save_last", "true"))
    assert Path(own.dirpath) == (tmp_path / "mine").resolve()
    off = _cli_trainer(tmp_path, "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]")
    assert not off.checkpoint_callbacks


def _val_st_ap(metrics_csv: Path) -> float:
    import csv

    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val_st_ap")]
    return float(rows[-1]["val_st_ap"])


@pytest.mark.slow
def test_two_process_ddp_trains_and_matches_single_process_validation(tmp_path):
    # One image per validation batch and one thread per process: every image then goes through
    # exactly the same arithmetic whichever rank runs it, so the two ST-APs must be equal.
    common = ["--config", QUICKSTART, "--trainer.accelerator", "cpu", "--data.synthetic_train", 8,
              "--data.synthetic_val", 9, "--data.batch_size", 2, "--data.val_batch_size", 1,
              "--data.num_workers", 0, "--trainer.enable_progress_bar", "false"]
    fit = _cli("fit", *common, "--trainer.devices", 2, "--trainer.strategy", "ddp", "--trainer.max_steps", 4,
               "--trainer.default_root_dir", tmp_path / "fit", "--trainer.logger.init_args.save_dir", tmp_path / "fit",
               cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Starting with 2 processes" in fit.stdout + fit.stderr
    last = next((tmp_path / "fit").rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["global_step"] == 4
    aps = {}
    for devices in (1, 2):
        out = tmp_path / f"val{devices}"
        result = _cli("validate", *common, "--trainer.devices", devices, "--trainer.strategy",
                      "ddp" if devices > 1 else "auto", "--ckpt_path", last, "--trainer.default_root_dir", out,
                      "--trainer.logger.init_args.save_dir", out, cwd=tmp_path, OMP_NUM_THREADS="1")
        assert result.returncode == 0, result.stderr[-3000:]
        if devices > 1:
            assert "Starting with 2 processes" in result.stdout + result.stderr
        aps[devices] = _val_st_ap(next(out.rglob("metrics.csv")))
    assert aps[1] == aps[2] > 0


def _scene_folder(folder: Path, count: int = 6) -> Path:
    """``count`` generated person scenes as PNGs: a calibration-images folder."""
    from PIL import Image

    from ssd_mnv1.training import render_scene

    folder.mkdir()
    for i in range(count):
        Image.fromarray(render_scene(7, i)[0]).save(folder / f"{i}.png")
    return folder


def test_qat_callback_calibrates_on_the_exporters_images_and_keeps_ranges_frozen(tmp_path):
    from ssd_mnv1.quantization import ActivationQuantizer, calibrate, is_qat, prepare_qat
    from ssd_mnv1.quantization.calibration import calibration_images
    from ssd_mnv1.training import QuantizationAwareTraining

    calib = _scene_folder(tmp_path / "calib")
    pl.seed_everything(0)
    module = SSDLightningModule(input_size=192, lr=1e-4, detection_loss_weight=0.0)
    images = torch.from_numpy(np.concatenate(calibration_images(calib, 192, 4))).permute(0, 3, 1, 2)
    expected = calibrate(prepare_qat(copy.deepcopy(module.model)), [images])
    seen = []

    def _ranges(model):
        return {k: (q.min_val.item(), q.max_val.item()) for k, q in model.named_modules()
                if isinstance(q, ActivationQuantizer)}

    class Ranges(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(_ranges(pl_module.model))

    qat = QuantizationAwareTraining(calibration_images=str(calib), calibration_count=4, freeze_ranges=True,
                                    distillation_weight=1.0)
    _trainer(tmp_path, max_steps=3, callbacks=[qat, Ranges()], enable_checkpointing=False, limit_val_batches=0
             ).fit(module, datamodule=_tiny_data())
    assert is_qat(module.model) and module.teacher is not None
    want = _ranges(expected)
    assert seen[0] == seen[-1] == want


def test_qat_with_equalize_starts_from_the_equalized_bias_corrected_model_and_distils_from_the_original(
        tmp_path, trained_like_model):
    """qat.yaml's start (``equalize: true``): the student is the export's ``--equalize`` model (dead
    channels folded, layers equalized, biases corrected on the calibration images) with its ranges
    calibrated there; the teacher stays the original float model, the function to keep."""
    from ssd_mnv1.quantization import calibrate, prepare_qat
    from ssd_mnv1.quantization.calibration import as_batches, calibration_images
    from ssd_mnv1.quantization.equalize import correct_bias, equalize
    from ssd_mnv1.training import QuantizationAwareTraining

    calib = _scene_folder(tmp_path / "calib")
    module = SSDLightningModule(input_size=192, lr=1e-4, detection_loss_weight=0.0)
    module.model = trained_like_model(192)
    original = copy.deepcopy(module.model)
    qat = QuantizationAwareTraining(calibration_images=str(calib), calibration_count=4, freeze_ranges=True,
                                    distillation_weight=1.0, equalize=True, calibrate_only=True)
    _trainer(tmp_path, max_steps=1, callbacks=[qat], enable_checkpointing=False, limit_val_batches=0
             ).fit(module, datamodule=_tiny_data())
    images = calibration_images(calib, 192, 4)
    corrected = correct_bias(equalize(original)[0], as_batches(images), per_tensor=False)
    expected = calibrate(prepare_qat(corrected), as_batches(images)).eval()
    x = torch.cat(as_batches(images))
    with torch.no_grad():
        for got, want in zip(module.model.eval()(x), expected(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        for got, want in zip(module.teacher(x), original(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert not torch.equal(corrected(x)[0], original(x)[0])  # the correction did something


def test_qat_validation_logs_the_students_distillation_loss_on_the_held_out_images(tmp_path):
    """``val_distill``: how far the QAT student is from its teacher on the validation images, equal
    to the distillation loss of their outputs there."""
    from ssd_mnv1.quantization import distillation_loss
    from ssd_mnv1.training import QuantizationAwareTraining

    pl.seed_everything(0)
    module = SSDLightningModule(input_size=192, lr=1e-4, detection_loss_weight=0.0)
    qat = QuantizationAwareTraining(distillation_weight=1.0, calibration_batches=1)
    data = _tiny_data(val=4, batch=4)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[qat], enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    logged = float(trainer.callback_metrics["val_distill"])
    images = next(iter(data.val_dataloader()))["images"]
    with torch.no_grad():
        module.eval()
        want = distillation_loss(*module.model.forward_logits(images), *module.teacher.forward_logits(images))
    assert logged > 0 and logged == pytest.approx(float(want), rel=1e-4)

    plain = SSDLightningModule(input_size=192, lr=1e-4)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=1, enable_checkpointing=False)
    trainer.fit(plain, datamodule=_tiny_data(val=4, batch=4))
    assert "val_loss" in trainer.callback_metrics and "val_distill" not in trainer.callback_metrics  # no teacher, nothing to log


@pytest.mark.slow
def test_cli_trains_a_three_class_model_at_a_size_st_does_not_ship_and_evaluates_it_per_class(tmp_path):
    from ssd_mnv1 import load_model
    from ssd_mnv1.evaluate import main as evaluate_main
    from ssd_mnv1.training import write_synthetic_dataset

    classes = ["person", "sign", "crate"]
    data = tmp_path / "data"
    write_synthetic_dataset(data, classes, 6, seed=0, size=192, progress=False)
    result = _cli("fit", "--config", CONFIGS / "base.yaml", "--config", CONFIGS / "custom.yaml",
                  "--model.input_size", 160, "--data.class_names", "[person, sign, crate]", "--data.train", data,
                  "--data.val", data, "--data.batch_size", 2, "--trainer.max_steps", 2,
                  "--trainer.default_root_dir", tmp_path / "run", "--trainer.logger.init_args.save_dir",
                  tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    assert model.class_names == tuple(classes) and model.input_size == 160 and model.num_anchors == 3830
    assert evaluate_main([str(ckpt), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    per_class = json.loads((tmp_path / "e.json").read_text())["per_class"]
    assert list(per_class) == classes
