"""ST's released st_ssd_mobilenet_v1 (alpha 0.25) files per input size, and the figures ST publishes.

The file names are those of ST's model zoo layout; the ST-AP comes from ST's model cards
(docs/st_model.md §11) and the STM32 footprints from docs/st_model.md §11.1 and §11.2. These numbers are
ST's, measured by ST on its own evaluation set and boards, never here. ``st_files`` names paths
under a folder the user already holds.

:data:`MODEL_ZOO` names every released file that can be fetched by name (``st_ssd_mobilenet_v1_025_224``,
``st_ssd_mobilenet_v1_025_224_int8``, ``mobilenet_v1_025_224_imagenet``, ...): where it lies in ST's
repository at :data:`ZOO_COMMIT`, where it lies in a folder laid out as ``st_files`` reads one, its
sha256 and its licence. :mod:`ssd_mnv1.hub` downloads them; this module downloads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Card:
    """One published ST-AP column: the model card it is quoted from and which weights it describes."""

    key: str
    column: str
    source: str


#: The model cards ST-AP (%, on ST's own evaluation set) is quoted from, in table order. The 2.0
#: card (ModelZoo 2.0.x) ships with the very .h5/.tflite files named here and gives int8 figures
#: only; the current card (2025 code) may describe retrained weights.
CARDS = (
    Card("card_20_int8", "2.0 card int8", "ModelZoo 2.0 card: these very .h5/.tflite files, int8"),
    Card("card_now_int8", "current card int8", "current model card (2025): possibly retrained weights, int8"),
    Card("card_now_float", "current card float", "current model card (2025): possibly retrained weights, float"),
)


@dataclass(frozen=True)
class STRelease:
    """ST's files for one input size (names, as ST's model zoo lays them out) and ST's figures."""

    input_size: int
    alpha: float
    folder: str
    h5: str
    int8_tflite: str
    config: str
    #: sha256 of the .h5 and of the int8 .tflite as ST released them (ModelZoo 2.0.0).
    h5_sha256: str
    int8_sha256: str
    #: Published ST-AP (%) per ``Card.key``.
    published_ap: Mapping[str, float]
    #: Published STM32 figures, label (with its unit and tool) -> value, in ST's order.
    stm32: Mapping[str, float]


@dataclass(frozen=True)
class STFiles:
    """Paths of one release's files under a reference folder; they need not exist."""

    folder: Path
    h5: Path
    int8_tflite: Path
    config: Path


#: The input sizes ST released; the tables below give one value per size, in this order.
_SIZES = (192, 224, 256)
#: sha256 of each size's (.h5, int8 .tflite), as ST's repository holds them at :data:`ZOO_COMMIT`.
_SHA256 = (
    ("80ac12fbaaefcfd1ba7518244e93dff77a504b57bff4158097624d9da6c7b985",
     "400d49a932dfb9cd983893248c58a3a34e7adfe457b1ea5dd39e7c960f5444d2"),
    ("66cf856851056d81646d1de797433fbaaeaca3ad659576d11f3c68ab7f4f2e5e",
     "93d2fc8c9895ed53ec27ddb9f283078cd72742c8dd7d35d16fab798dcf168660"),
    ("277406a2746574fec8e5bef11eb33300e4ca92e772a1e4191fc9b7bfd4b0df86",
     "b2d7835399f7246a1c4c8438daa8499b930a496512eb5f9c832802a5ae6fca80"),
)
#: Published ST-AP (%) per ``Card.key``, at 192 / 224 / 256.
_PUBLISHED_AP = {
    "card_20_int8": (33.70, 44.45, 46.26),
    "card_now_int8": (35.80, 46.10, 50.50),
    "card_now_float": (35.80, 46.90, 51.00),
}
#: Published STM32 figures (label with its unit and tool), at 192 / 224 / 256 in ST's order; None:
#: not published for that size.
_STM32 = {
    "H7 activation RAM KiB (Cube.AI 8.1)": (249.54, 366.15, 439.34),
    "H7 weights flash KiB (Cube.AI 8.1)": (438.28, 595.66, 595.66),
    "H7 activation RAM KiB (Cube.AI 10.0)": (266.3, 379.6, 456.1),
    "H7 weights flash KiB (Cube.AI 10.0)": (483.16, 675.64, 675.64),
    "STM32H747 @400 MHz ms": (149.18, 218.99, 267.18),
    "STM32MP157F (2xA7) ms": (67.80, 100.20, 119.00),
    "STM32MP257F NPU ms": (12.34, 18.65, 14.33),
    "STM32N6570 NPU ms": (None, 9.63, 10.37),
}


def _release(column: int) -> STRelease:
    size = _SIZES[column]
    stem = f"st_ssd_mobilenet_v1_025_{size}"
    ap = {key: values[column] for key, values in _PUBLISHED_AP.items()}
    stm32 = {label: values[column] for label, values in _STM32.items() if values[column] is not None}
    return STRelease(size, 0.25, stem, f"{stem}.h5", f"{stem}_int8.tflite", f"{stem}_config.yaml",
                     *_SHA256[column], MappingProxyType(ap), MappingProxyType(stm32))


RELEASES: Mapping[int, STRelease] = MappingProxyType({size: _release(i) for i, size in enumerate(_SIZES)})


def st_release(size: int) -> STRelease:
    """ST's release for input size ``size`` (192, 224 or 256)."""
    if size not in RELEASES:
        raise ValueError(f"ST released no st_ssd_mobilenet_v1 for input size {size}: "
                         f"choose one of {', '.join(map(str, RELEASES))}")
    return RELEASES[size]


def st_files(reference_dir: str | Path, size: int, must_exist: bool = False) -> STFiles:
    """Where ST's files for ``size`` are under ``reference_dir``; ``must_exist`` checks the two
    model files (.h5 and int8 .tflite) and names every missing one."""
    release = st_release(size)
    folder = Path(reference_dir) / release.folder
    files = STFiles(folder, folder / release.h5, folder / release.int8_tflite, folder / release.config)
    missing = [str(p) for p in (files.h5, files.int8_tflite) if not p.is_file()]
    if must_exist and missing:
        raise FileNotFoundError(f"{reference_dir}: missing ST file(s) {', '.join(missing)}")
    return files


# ----------------------------------------------------------------------------------- the model zoo

#: ST's official model zoo repository and the commit (ModelZoo 2.0.0, 2024-02-21) of the files named here.
ZOO_REPOSITORY = "https://github.com/STMicroelectronics/stm32ai-modelzoo"
ZOO_COMMIT = "ff424ea597aa8b1f7b9afd5f598668b9c28470ea"
#: The folder of the detector releases (each release's ``folder`` under it) in ST's repository.
_DETECTOR_FOLDER = ("object_detection/pretrained_models/st_ssd_mobilenet_v1/ST_pretrainedmodel_public_dataset/"
                    "coco_2017_person")


@dataclass(frozen=True)
class Licence:
    """A released file's licence: its identifier, what it allows in one line, where its text is."""

    name: str
    terms: str
    url: str


SLA0044 = Licence("SLA0044", "STMicroelectronics' licence; the files are for use only on or with "
                  "STMicroelectronics devices, never under open-source terms", "https://www.st.com/SLA0044")
APACHE_2 = Licence("Apache-2.0", "Keras Applications' ImageNet weights", "https://www.apache.org/licenses/LICENSE-2.0")


@dataclass(frozen=True)
class ZooFile:
    """One released file that is fetched by name (:mod:`ssd_mnv1.hub`)."""

    name: str
    #: Path in ST's repository at :data:`ZOO_COMMIT`.
    repo_path: str
    #: Path in a folder laid out as :func:`st_files` reads one (ST's reference layout): the
    #: download cache and any mirror (``SSD_MNV1_ZOO_URL``).
    local_path: str
    sha256: str
    licence: Licence
    description: str

    @property
    def url(self) -> str:
        """The pinned download address in ST's repository."""
        return f"{ZOO_REPOSITORY}/raw/{ZOO_COMMIT}/{self.repo_path}"


def _release_files(release: STRelease) -> tuple[ZooFile, ...]:
    size = release.input_size
    return tuple(ZooFile(Path(file).stem, f"{_DETECTOR_FOLDER}/{release.folder}/{file}", f"{release.folder}/{file}",
                         sha256, SLA0044, f"ST's {what} person detector at {size}x{size}")
                 for file, sha256, what in ((release.h5, release.h5_sha256, "float Keras .h5"),
                                            (release.int8_tflite, release.int8_sha256, "int8 .tflite")))


#: The Keras-Applications MobileNetV1 0.25 ImageNet backbone ST trains from (``--model.backbone_weights``).
IMAGENET_BACKBONE = ZooFile(
    "mobilenet_v1_025_224_imagenet",
    "image_classification/pretrained_models/mobilenetv1/Public_pretrainedmodel_public_dataset/ImageNet/"
    "mobilenet_v1_0.25_224/mobilenet_v1_0.25_224.h5",
    "mobilenet_v1_0.25_224_imagenet.h5",
    "dc1ff623e6cd99c3cc0dd2821ca0807ba013606af5a4e2afd4488fbf26a8b589", APACHE_2,
    "Keras-Applications MobileNetV1 alpha 0.25 ImageNet backbone (backbone weights only)")

#: Every file fetchable by name: name -> :class:`ZooFile`.
MODEL_ZOO: Mapping[str, ZooFile] = MappingProxyType({f.name: f for f in (
    *(f for release in RELEASES.values() for f in _release_files(release)), IMAGENET_BACKBONE)})


def zoo_file(name: str) -> ZooFile:
    """The registry entry ``name``; one error listing every name for anything else."""
    if name not in MODEL_ZOO:
        raise ValueError(f"{name!r} is not a model zoo name: choose one of {', '.join(MODEL_ZOO)}")
    return MODEL_ZOO[name]
