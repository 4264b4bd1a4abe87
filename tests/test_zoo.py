"""Pretrained files by name (``ssd_mnv1.zoo.MODEL_ZOO``, ``ssd_mnv1.hub``), never over the network.

Downloads come from a local mirror: ``SSD_MNV1_ZOO_URL`` set to ``../shared/reference`` (laid out as
the cache), or a folder written here; the cache (``SSD_MNV1_HOME``) is a temporary folder. Tests that
need ST's files skip when ``../shared/reference`` is absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssd_mnv1 import build_model, load_model
from ssd_mnv1 import hub
from ssd_mnv1.hub import ZooDownloadError, fetch, file_url, resolve_model_file, sha256_of, zoo_dir
from ssd_mnv1.zoo import MODEL_ZOO, ZOO_COMMIT, st_files, zoo_file

NAME = "st_ssd_mobilenet_v1_025_224"
NAMES = ["st_ssd_mobilenet_v1_025_192", "st_ssd_mobilenet_v1_025_192_int8", "st_ssd_mobilenet_v1_025_224",
         "st_ssd_mobilenet_v1_025_224_int8", "st_ssd_mobilenet_v1_025_256", "st_ssd_mobilenet_v1_025_256_int8",
         "mobilenet_v1_025_224_imagenet"]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty download cache of this test, and a fresh licence notice."""
    folder = tmp_path / "zoo_cache"
    monkeypatch.setenv(hub.HOME_ENV, str(folder))
    monkeypatch.setattr(hub, "_announced", set())
    return folder


@pytest.fixture
def mirror(reference_dir, cache, monkeypatch) -> Path:
    """ST's files served from ../shared/reference (file://) into the test's cache."""
    monkeypatch.setenv(hub.URL_ENV, reference_dir.as_uri())
    return cache


def test_the_registry_names_st_files_at_the_pinned_commit_in_the_reference_layout(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.URL_ENV, raising=False)
    assert list(MODEL_ZOO) == NAMES
    raw = f"https://github.com/STMicroelectronics/stm32ai-modelzoo/raw/{ZOO_COMMIT}/"
    assert ZOO_COMMIT == "ff424ea597aa8b1f7b9afd5f598668b9c28470ea"  # ModelZoo 2.0.0
    for size in (192, 224, 256):
        files = st_files(tmp_path, size)
        for name, path in ((f"st_ssd_mobilenet_v1_025_{size}", files.h5),
                           (f"st_ssd_mobilenet_v1_025_{size}_int8", files.int8_tflite)):
            entry = zoo_file(name)
            assert tmp_path / entry.local_path == path  # the cache is a reference folder
            assert file_url(entry) == entry.url == raw + (
                "object_detection/pretrained_models/st_ssd_mobilenet_v1/ST_pretrainedmodel_public_dataset/"
                f"coco_2017_person/st_ssd_mobilenet_v1_025_{size}/{path.name}")
            assert entry.licence.name == "SLA0044" and "STMicroelectronics devices" in entry.licence.terms
    backbone = zoo_file("mobilenet_v1_025_224_imagenet")
    assert backbone.local_path == "mobilenet_v1_0.25_224_imagenet.h5" and backbone.licence.name == "Apache-2.0"
    assert backbone.url == raw + ("image_classification/pretrained_models/mobilenetv1/Public_pretrainedmodel_public_"
                                  "dataset/ImageNet/mobilenet_v1_0.25_224/mobilenet_v1_0.25_224.h5")
    assert all(re.fullmatch("[0-9a-f]{64}", e.sha256) for e in MODEL_ZOO.values())


def test_the_registry_sha256_are_those_of_the_reference_files(reference_dir):
    for entry in MODEL_ZOO.values():
        assert sha256_of(reference_dir / entry.local_path) == entry.sha256, entry.name


def test_the_cache_folder_follows_ssd_mnv1_home_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.HOME_ENV, str(tmp_path / "home"))
    assert zoo_dir() == tmp_path / "home"
    assert hub.cached_path(NAME) == tmp_path / "home" / NAME / f"{NAME}.h5"
    monkeypatch.delenv(hub.HOME_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo_dir() == tmp_path / "xdg" / "ssd_mnv1" / "zoo"


def test_load_model_by_name_downloads_once_verified_then_uses_the_cache(mirror, reference_dir, capsys, monkeypatch):
    by_name = load_model(NAME)
    stderr = capsys.readouterr().err
    assert "SLA0044" in stderr and "only on or with STMicroelectronics devices" in stderr
    assert f"downloading {NAME}" in stderr
    cached = mirror / NAME / f"{NAME}.h5"
    assert _files(mirror) == [cached] and sha256_of(cached) == zoo_file(NAME).sha256
    by_path = load_model(st_files(reference_dir, 224).h5)
    for (k, a), (_, b) in zip(by_name.state_dict().items(), by_path.state_dict().items()):
        assert torch.equal(a, b), k

    # the second time nothing is downloaded: the mirror may be gone
    monkeypatch.setenv(hub.URL_ENV, (mirror.parent / "no_mirror").as_uri())
    again = load_model(NAME)
    assert "downloading" not in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), by_path.state_dict().values()))
    assert resolve_model_file(NAME) == cached


def test_build_model_weights_by_name_fill_the_detector_and_the_backbone(mirror, reference_dir):
    torch.manual_seed(0)
    by_name = build_model(input_size=224, weights="mobilenet_v1_025_224_imagenet")
    torch.manual_seed(0)
    by_path = build_model(input_size=224, weights=reference_dir / "mobilenet_v1_0.25_224_imagenet.h5")
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values()))
    detector = build_model(input_size=192, weights="st_ssd_mobilenet_v1_025_192")
    reference = load_model(st_files(reference_dir, 192).h5)
    assert all(torch.equal(a, b) for a, b in zip(detector.state_dict().values(), reference.state_dict().values()))
    assert sorted(p.relative_to(mirror).as_posix() for p in _files(mirror)) == [
        "mobilenet_v1_0.25_224_imagenet.h5", "st_ssd_mobilenet_v1_025_192/st_ssd_mobilenet_v1_025_192.h5"]


def test_the_training_module_takes_names_as_model_weights_and_backbone_weights(mirror, reference_dir):
    from ssd_mnv1.training.module import SSDLightningModule

    module = SSDLightningModule(input_size=224, backbone_weights="mobilenet_v1_025_224_imagenet", weights=NAME)
    reference = load_model(st_files(reference_dir, 224).h5)
    assert all(torch.equal(a, b) for a, b in zip(module.model.state_dict().values(),
                                                  reference.state_dict().values()))
    assert module.hparams.weights == NAME  # the checkpoint records the name


def test_a_cached_file_with_the_wrong_sha256_is_downloaded_again(mirror, capsys):
    cached = mirror / NAME / f"{NAME}.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a file")
    assert fetch(NAME) == cached and sha256_of(cached) == zoo_file(NAME).sha256
    assert f"whose sha256 was {hashlib.sha256(b'half a file').hexdigest()}" in capsys.readouterr().err


def test_a_wrong_sha256_names_the_url_both_hashes_and_leaves_nothing_in_the_cache(cache, tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    (served / NAME).mkdir(parents=True)
    (served / NAME / f"{NAME}.h5").write_bytes(b"not ST's file")
    monkeypatch.setenv(hub.URL_ENV, str(served))  # a plain folder is a mirror too
    url = f"{served.resolve().as_uri()}/{NAME}/{NAME}.h5"
    with pytest.raises(ZooDownloadError) as error:
        load_model(NAME)
    message = str(error.value)
    assert url in message and zoo_file(NAME).sha256 in message
    assert hashlib.sha256(b"not ST's file").hexdigest() in message
    assert str(cache / NAME / f"{NAME}.h5") in message  # where to put it by hand
    assert isinstance(error.value, ValueError)  # the commands print it as one error line
    assert not cache.exists()


@pytest.mark.parametrize("base", ["missing_folder", "http://127.0.0.1:9"])
def test_an_unreachable_url_names_it_and_where_to_put_the_file(cache, tmp_path, monkeypatch, base):
    if base == "missing_folder":
        base = (tmp_path / base).as_uri()
    monkeypatch.setenv(hub.URL_ENV, base)
    with pytest.raises(ZooDownloadError) as error:
        resolve_model_file("st_ssd_mobilenet_v1_025_256_int8")
    message = str(error.value)
    assert f"cannot download {base}/st_ssd_mobilenet_v1_025_256/st_ssd_mobilenet_v1_025_256_int8.tflite" in message
    assert f"put it at {cache / 'st_ssd_mobilenet_v1_025_256' / 'st_ssd_mobilenet_v1_025_256_int8.tflite'}" in message
    assert zoo_file("st_ssd_mobilenet_v1_025_256_int8").sha256 in message
    assert not cache.exists()


def test_a_command_prints_a_failed_download_as_one_error_line(cache, tmp_path, monkeypatch, capsys):
    from ssd_mnv1 import convert
    from ssd_mnv1.cli import run

    monkeypatch.setenv(hub.URL_ENV, (tmp_path / "nowhere").as_uri())
    with pytest.raises(SystemExit) as exit_:
        run(convert.main, [NAME, str(tmp_path / "st.ckpt")])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{(tmp_path / 'nowhere').as_uri()}/{NAME}/{NAME}.h5" in errors[0]


def test_unknown_names_list_the_known_ones_and_missing_paths_stay_missing_files(cache, tmp_path):
    with pytest.raises(ValueError, match="not a model zoo name: choose one of " + ", ".join(NAMES)):
        zoo_file("st_ssd_mobilenet_v1_025_300")
    with pytest.raises(FileNotFoundError, match=r"st_ssd_mobilenet_v1_025_300: no such model file, nor a model "
                                                r"zoo name \(st_ssd_mobilenet_v1_025_192, "):
        load_model("st_ssd_mobilenet_v1_025_300")
    with pytest.raises(FileNotFoundError, match=r"nope\.h5: no such model file$"):
        load_model(tmp_path / "nope.h5")
    assert resolve_model_file(tmp_path) == tmp_path  # an existing path is never looked up


@pytest.mark.slow
def test_evaluate_runs_st_int8_file_by_name_from_the_mirror(reference_dir, coco_person_val, tmp_path):
    pytest.importorskip("ai_edge_litert")
    env = {**os.environ, hub.URL_ENV: str(reference_dir), hub.HOME_ENV: str(tmp_path / "zoo"),
           "PYTHONWARNINGS": "ignore"}
    name = "st_ssd_mobilenet_v1_025_224_int8"
    result = subprocess.run([sys.executable, "-m", "ssd_mnv1.evaluate", name, "--data", str(coco_person_val),
                             "--limit", "4", "--workers", "0", "--threads", "1"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SLA0044" in result.stderr and "ST-AP" in result.stdout
    assert _files(tmp_path / "zoo") == [tmp_path / "zoo" / "st_ssd_mobilenet_v1_025_224" / f"{name}.tflite"]
