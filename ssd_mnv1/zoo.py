"""ST's released st_ssd_mobilenet_v1 (alpha 0.25) files per input size, and the figures ST publishes.

The file names are those of ST's model zoo layout; the ST-AP comes from ST's model cards
(st_reference §11) and the STM32 footprints from st_reference §11.1 and §11.2. These numbers are
ST's, measured by ST on its own evaluation set and boards, never here. Nothing is downloaded:
``st_files`` only names paths under a folder the user already holds.
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


def _release(size: int, ap: dict[str, float], stm32: dict[str, float]) -> STRelease:
    stem = f"st_ssd_mobilenet_v1_025_{size}"
    return STRelease(size, 0.25, stem, f"{stem}.h5", f"{stem}_int8.tflite", f"{stem}_config.yaml",
                     MappingProxyType(ap), MappingProxyType(stm32))


RELEASES: Mapping[int, STRelease] = MappingProxyType({r.input_size: r for r in (
    _release(192, {"card_20_int8": 33.70, "card_now_int8": 35.80, "card_now_float": 35.80},
             {"H7 activation RAM KiB (Cube.AI 8.1)": 249.54, "H7 weights flash KiB (Cube.AI 8.1)": 438.28,
              "H7 activation RAM KiB (Cube.AI 10.0)": 266.3, "H7 weights flash KiB (Cube.AI 10.0)": 483.16,
              "STM32H747 @400 MHz ms": 149.18, "STM32MP157F (2xA7) ms": 67.80, "STM32MP257F NPU ms": 12.34}),
    _release(224, {"card_20_int8": 44.45, "card_now_int8": 46.10, "card_now_float": 46.90},
             {"H7 activation RAM KiB (Cube.AI 8.1)": 366.15, "H7 weights flash KiB (Cube.AI 8.1)": 595.66,
              "H7 activation RAM KiB (Cube.AI 10.0)": 379.6, "H7 weights flash KiB (Cube.AI 10.0)": 675.64,
              "STM32H747 @400 MHz ms": 218.99, "STM32MP157F (2xA7) ms": 100.20, "STM32MP257F NPU ms": 18.65,
              "STM32N6570 NPU ms": 9.63}),
    _release(256, {"card_20_int8": 46.26, "card_now_int8": 50.50, "card_now_float": 51.00},
             {"H7 activation RAM KiB (Cube.AI 8.1)": 439.34, "H7 weights flash KiB (Cube.AI 8.1)": 595.66,
              "H7 activation RAM KiB (Cube.AI 10.0)": 456.1, "H7 weights flash KiB (Cube.AI 10.0)": 675.64,
              "STM32H747 @400 MHz ms": 267.18, "STM32MP157F (2xA7) ms": 119.00, "STM32MP257F NPU ms": 14.33,
              "STM32N6570 NPU ms": 10.37}),
)})


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
