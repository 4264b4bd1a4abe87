"""Per-resolution architecture of ST's ``st_ssd_mobilenet_v1``, and the rule that extends it.

ST's Keras code builds a slightly different graph for each input size (extra layers, zero paddings,
head kernel of the 1x1 level, anchor sizes). Those differences live here, so that the model, the
anchor generator and the weight importer read the same facts.

ST ships 192, 224 and 256 (:data:`ST_SPECS`, their graphs as measured in ST's files).
:func:`derive_spec` is a rule that reproduces those three exactly and gives any square size that is
a multiple of 32 from 128 to 512 (``m = S / 32`` is the side of C13, the backbone's last map):

1. **Pyramid base.** The top-down path doubles each level, ending in a 2x2 or a 3x3 map under the
   1x1 top; so C13's side is rounded up to the nearest ``2^k`` or ``3 * 2^k`` (k >= 1), ``m'``.
   When ``m' > m``, C13 is zero-padded by ``d = m' - m`` (the odd cell top/left) and C11 / C5 by
   ``d`` / ``2d`` on every side, before their laterals (ST's 224 does this with d = 1: 7 -> 8).
2. **Extras.** Pairs of depthwise-separable blocks (stride 2, then 1) halve ``m'`` until the map is
   2x2 or 3x3 (256: 8 -> 4 -> 2, four blocks; 192: 6 -> 3, two).
3. **Top.** A 1x1 level from the global average of the last map. Up-sampled x2 it is 2x2; over a
   3x3 level it is zero-padded top/left (ST's 192), and that 1x1 level's head conv is 3x3 (ST's
   192); over a 2x2 level its head conv is 1x1 (ST's 224 / 256).
4. **Anchor sizes**, counted from the top (coarsest) level down: ST's six (s0, s1) pairs, s0 on
   ``linspace(0.10, 0.90, 6)``; a seventh, finer level (416 to 512) gets half the sizes of the
   next one, so that at 512 its anchors have the same size in pixels as the finest ones at 256.

Sizes whose C13 side needs no rounding (128, 192, 256, 384, 512) have feature cells aligned with
their anchor centres; the others inherit ST's 224 misalignment (padded borders, up to 3 cells of
C13 at 288 and 416), which training learns with, and pay for the padded cells' compute. Non-square inputs are refused: each side would halve a different number of times
before ST's global-pool top level, so no single pyramid fits both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: The sizes ST ships (pretrained files, published AP).
ST_INPUT_SIZES = (192, 224, 256)
#: Every size :func:`derive_spec` builds: multiples of 32 from 128 to 512.
SUPPORTED_INPUT_SIZES = tuple(range(128, 513, 32))
SUPPORTED_ALPHAS = (0.25, 0.5, 0.75, 1.0)

#: Aspect ratios of the first four anchors of every location; the fifth is square with size s1.
ANCHOR_RATIOS = (1.0, 2.0, 0.5, 1.0 / 3.0)
ANCHORS_PER_LOCATION = len(ANCHOR_RATIOS) + 1

#: Width of every FPN lateral / top-down map and of the head inputs (fixed by ST, not scaled by alpha).
FPN_CHANNELS = 32


@dataclass(frozen=True)
class ResolutionSpec:
    """What changes with the input size S."""

    input_size: int
    #: Side n of each pyramid level, finest first (P0, P1, ...).
    level_sizes: tuple[int, ...]
    #: Anchor sizes [s0, s1] per level, relative to the image side.
    anchor_sizes: tuple[tuple[float, float], ...]
    #: Number of extra depthwise-separable blocks after C13 (strides alternate 2, 1).
    num_extras: int
    #: Zero padding (left, right, top, bottom) applied to C5 / C11 / C13 before their lateral conv.
    #: ST pads the 224 maps so that 28/14/7 become 32/16/8, the pyramid of the 256 model.
    lateral_pads: tuple[tuple[int, int, int, int], ...]
    #: Up2 of the 1x1 top map gives 2x2; over a 3x3 level (192) it is padded top/left.
    top_up_pad: tuple[int, int, int, int]
    #: Kernel of the head convs of the 1x1 top level (ST uses 1 at 224/256, 3 at 192).
    top_head_kernel: int

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def num_anchors(self) -> int:
        return sum(n * n for n in self.level_sizes) * ANCHORS_PER_LOCATION


_NO_PAD = (0, 0, 0, 0)
#: ST's (s0, s1) per level of its six-level pyramids (224 and 256), finest first; 192 drops the first.
ST_ANCHOR_SIZES = ((0.10, 0.16), (0.26, 0.33), (0.42, 0.49), (0.58, 0.66), (0.74, 0.82), (0.90, 0.98))

_ST_256 = ResolutionSpec(
    input_size=256,
    level_sizes=(32, 16, 8, 4, 2, 1),
    anchor_sizes=ST_ANCHOR_SIZES,
    num_extras=4,
    lateral_pads=(_NO_PAD, _NO_PAD, _NO_PAD),
    top_up_pad=_NO_PAD,
    top_head_kernel=1,
)

#: ST's three graphs as read from its files (docs/st_model.md §2); :func:`derive_spec` must equal them.
ST_SPECS = {
    192: ResolutionSpec(
        input_size=192,
        level_sizes=(24, 12, 6, 3, 1),
        anchor_sizes=ST_ANCHOR_SIZES[1:],
        num_extras=2,
        lateral_pads=(_NO_PAD, _NO_PAD, _NO_PAD),
        top_up_pad=(1, 0, 1, 0),
        top_head_kernel=3,
    ),
    # ST builds 224 as 256's pyramid: C5/C11/C13 (28/14/7) are zero-padded to 32/16/8.
    224: replace(_ST_256, input_size=224, lateral_pads=((2, 2, 2, 2), (1, 1, 1, 1), (1, 0, 1, 0))),
    256: _ST_256,
}


def _pyramid_base(m: int) -> int:
    """The smallest ``2^k`` or ``3 * 2^k`` (k >= 1) that is at least ``m``."""
    return min(b for k in range(1, 10) for b in (2 ** k, 3 * 2 ** k) if b >= m)


def derive_spec(input_size: int) -> ResolutionSpec:
    """The graph for a square ``input_size`` (a multiple of 32 in 128..512) by the module's rule."""
    size = _check_size(input_size)
    m = size // 32
    base = _pyramid_base(m)
    d = base - m
    c13_pad = ((d + 1) // 2, d // 2, (d + 1) // 2, d // 2)  # left, right, top, bottom: odd cell top/left
    lateral_pads = ((2 * d,) * 4, (d,) * 4, c13_pad)
    chain = [base]
    while chain[-1] > 3:
        chain.append(chain[-1] // 2)
    levels = (4 * base, 2 * base, *chain, 1)
    last = chain[-1]
    n = len(levels)
    from_top = list(reversed(ST_ANCHOR_SIZES))  # coarsest first
    while len(from_top) < n:
        s0, s1 = from_top[-1]
        from_top.append((round(s0 / 2, 2), round(s1 / 2, 2)))
    return ResolutionSpec(
        input_size=size,
        level_sizes=levels,
        anchor_sizes=tuple(reversed(from_top[:n])),
        num_extras=2 * (len(chain) - 1),
        lateral_pads=tuple(p if any(p) else _NO_PAD for p in lateral_pads),
        top_up_pad=(last - 2, 0, last - 2, 0),
        top_head_kernel=3 if last == 3 else 1,
    )


def _check_size(input_size) -> int:
    if isinstance(input_size, (tuple, list)) or (isinstance(input_size, str) and "x" in input_size.lower()):
        raise ValueError(
            f"unsupported input_size {input_size!r}: non-square inputs are not supported (each side would "
            "halve a different number of times before the detector's global-pool top level, so no one "
            "pyramid fits both; stretch the image to a square, as ST's preprocessing does)")
    try:
        size = int(input_size)
        if size != float(input_size):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"unsupported input_size {input_size!r}: give one integer side, a multiple of 32 "
                         "from 128 to 512") from None
    if size not in SUPPORTED_INPUT_SIZES:
        raise ValueError(
            f"unsupported input_size {size}: the detector is defined for square sizes that are a multiple of "
            f"32 from 128 to 512 ({', '.join(map(str, SUPPORTED_INPUT_SIZES))}); ST ships "
            f"{', '.join(map(str, ST_INPUT_SIZES))}")
    return size


def resolution_spec(input_size: int) -> ResolutionSpec:
    """The spec for ``input_size`` (:func:`derive_spec`); a ``ValueError`` naming the rule otherwise."""
    return derive_spec(input_size)


def check_alpha(alpha: float) -> float:
    """Validate the MobileNet width multiplier."""
    if float(alpha) not in SUPPORTED_ALPHAS:
        raise ValueError(
            f"unsupported alpha {alpha!r}: choose one of {', '.join(map(str, SUPPORTED_ALPHAS))}"
        )
    return float(alpha)


def scaled_channels(filters: int, alpha: float) -> int:
    """Keras-Applications MobileNet channel rule: ``int(filters * alpha)`` (truncation)."""
    return int(filters * alpha)
