"""QAT's detection-aware distillation (``distillation: detections``) and its guard against ending
below the post-training start (``guard: true``)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from ssd_mnv1.quantization.distill import detection_distillation_loss


def _outputs(seed: int, images: int = 2, anchors: int = 500, columns: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, anchors, columns, generator=g) * 2
    logits[..., 0] += 4.0  # mostly background, as a detector's anchors are
    return logits, torch.randn(images, anchors, 4, generator=g)


def test_detection_distillation_is_zero_on_the_teacher_and_blind_to_anchors_no_one_ranks():
    t_logits, t_offsets = _outputs(0)
    assert float(detection_distillation_loss(t_logits, t_offsets, t_logits, t_offsets, top_k=20)) == pytest.approx(
        0.0, abs=1e-6)
    s_logits, s_offsets = _outputs(1)
    base = detection_distillation_loss(s_logits, s_offsets, t_logits, t_offsets, top_k=20)
    assert float(base) > 0
    fg_t, fg_s = 1 - t_logits.softmax(-1)[0, :, 0], 1 - s_logits.softmax(-1)[0, :, 0]
    unseen = int(torch.argmin(fg_t + fg_s))  # sure background for both: in neither top 20
    quiet = s_logits.clone()
    quiet[0, unseen, 0] += 5.0  # the student even surer it is background
    quiet_offsets = s_offsets.clone()
    quiet_offsets[0, unseen] += 10.0
    assert torch.equal(detection_distillation_loss(quiet, quiet_offsets, t_logits, t_offsets, top_k=20), base)
    top = int(torch.argmax(fg_t))  # the teacher's most confident anchor counts
    moved = s_logits.clone()
    moved[0, top, 1] += 3.0
    assert float(detection_distillation_loss(moved, s_offsets, t_logits, t_offsets, top_k=20)) != float(base)


def _st_ap(hits: int, images: int = 40, seed: int = 0):
    """ST-AP result of ``images`` images with one person each, ``hits`` of them found (the rest missed,
    a box elsewhere)."""
    from ssd_mnv1.metrics import STAPEvaluator
    from ssd_mnv1.postprocess import Detections

    g = torch.Generator().manual_seed(seed)
    metric = STAPEvaluator(192, "st20", sync_on_compute=False)
    for i in range(images):
        x, y = torch.rand(2, generator=g) * 0.5
        gt = torch.tensor([[x, y, x + 0.3, y + 0.4]])
        box = gt if i < hits else gt + 0.5
        metric.update([Detections(box, torch.tensor([0.9]), torch.tensor([1]))], [gt], [torch.tensor([1])], [i])
    return metric.compute()


def test_guard_keeps_qat_only_when_the_held_out_images_resolve_its_gain():
    from ssd_mnv1.quantization.callback import guard_decision

    start = _st_ap(20)
    clear = guard_decision(start, _st_ap(36))  # 16 more of 40 images found
    assert clear["kept"] == "qat" and clear["gain_low"] > 0 and clear["gain"] == pytest.approx(
        clear["qat_st_ap"] - clear["start_st_ap"], abs=1e-3)
    slight = guard_decision(start, _st_ap(21))  # one more image: within what 40 images resolve
    assert slight["kept"] == "ptq_start" and slight["gain"] > 0 >= slight["gain_low"]
    assert guard_decision(start, _st_ap(12))["kept"] == "ptq_start"


def test_an_unknown_distillation_objective_is_one_error_naming_the_option():
    from ssd_mnv1.training import QuantizationAwareTraining

    with pytest.raises(ValueError, match="QuantizationAwareTraining.distillation must be one of kl, detections"):
        QuantizationAwareTraining(distillation="boxes")


@pytest.mark.slow
@pytest.mark.parametrize("lr", [0.5, 0.0])
def test_guard_keeps_the_better_of_qat_and_its_post_training_start_and_the_checkpoint_says_which(
        lr, reference_dir, coco_person_train, tmp_path, capsys):
    """ST's 192 model on real images: a learning rate that wrecks it ends below the start, one that
    changes nothing ties it; neither gain is resolved, so the start comes back, in last.ckpt too."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from ssd_mnv1.checkpoint import load_checkpoint
    from ssd_mnv1.export.pipeline import qat_guard_text
    from ssd_mnv1.training import DetectionDataModule, QuantizationAwareTraining, SSDLightningModule
    from ssd_mnv1.zoo import st_files

    pl.seed_everything(0)
    module = SSDLightningModule(input_size=192, lr=lr, detection_loss_weight=0.0, l2=0.0,
                                weights=str(st_files(reference_dir, 192).h5))
    data = DetectionDataModule(train=str(coco_person_train), val_split=0.1, input_size=192, batch_size=8,
                               num_workers=0)
    qat = QuantizationAwareTraining(calibration_images=str(coco_person_train / "images"), calibration_count=8,
                                    freeze_ranges=True, distillation_weight=1.0, distillation="detections",
                                    per_tensor=True, equalize=True, guard=True)
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)  # as ssd_mnv1.fit writes last.ckpt
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="train_loss", save_last=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, max_steps=3, limit_val_batches=0,
                         callbacks=[best, last, qat], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    out = capsys.readouterr().out
    guard = qat.guard_result
    kept = "ptq_start"
    assert guard["kept"] == kept and guard["start_st_ap"] > 10
    assert (guard["qat_st_ap"] < guard["start_st_ap"]) == (lr > 0) and guard["gain_low"] <= 0
    assert "QAT guard: ST-AP on the run's validation set (10% of the training images, held out)" in out
    for path in (tmp_path / "checkpoints" / "last.ckpt", tmp_path / "best" / "last.ckpt"):
        assert load_checkpoint(path).qat_guard == guard, path
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ("holds its post-training start" in qat_guard_text(saved.qat_guard)) == (kept == "ptq_start")
    state = saved.state_dict()
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in state.items())  # last.ckpt = what was kept
    if kept == "ptq_start":  # it exports as the post-training start: the equalized, bias-corrected float model
        from ssd_mnv1.export.pipeline import models_for_export
        from ssd_mnv1.loading import load_model
        from ssd_mnv1.quantization.calibration import as_batches, calibration_images
        from ssd_mnv1.quantization.equalize import correct_bias, equalize

        images = calibration_images(coco_person_train / "images", 192, 8, 0)
        start = correct_bias(equalize(load_model(st_files(reference_dir, 192).h5))[0], as_batches(images), True)
        exported, _ = models_for_export(tmp_path / "checkpoints" / "last.ckpt")
        x = torch.cat(as_batches(images))[:2]
        with torch.no_grad():
            for a, b in zip(exported(x), start.eval()(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
