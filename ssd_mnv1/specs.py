"""Per-resolution architecture constants of ST's ``st_ssd_mobilenet_v1``.

ST's Keras code builds a slightly different graph for each input size (extra layers, zero paddings,
head kernel of the 1x1 level, anchor sizes). Those differences live here, in one table, so that the
model, the anchor generator and the weight importer read the same facts.

Only the three sizes ST ships are supported: the paddings at 224 and the anchor sizes are
hand-tuned by ST per size, and no general rule reproduces them, so any other size is refused with
a clear error rather than silently building a different graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SUPPORTED_INPUT_SIZES = (192, 224, 256)
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
    #: 192 only: Up2 of the 1x1 top map gives 2x2, padded top/left to the 3x3 of the level below.
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
#: (smallest, next) anchor size per level of the six-level pyramids (224 and 256); 192 drops the first.
_SIX_LEVEL_ANCHOR_SIZES = ((0.10, 0.16), (0.26, 0.33), (0.42, 0.49), (0.58, 0.66), (0.74, 0.82), (0.90, 0.98))

_SPEC_256 = ResolutionSpec(
    input_size=256,
    level_sizes=(32, 16, 8, 4, 2, 1),
    anchor_sizes=_SIX_LEVEL_ANCHOR_SIZES,
    num_extras=4,
    lateral_pads=(_NO_PAD, _NO_PAD, _NO_PAD),
    top_up_pad=_NO_PAD,
    top_head_kernel=1,
)

_SPECS = {
    192: ResolutionSpec(
        input_size=192,
        level_sizes=(24, 12, 6, 3, 1),
        anchor_sizes=_SIX_LEVEL_ANCHOR_SIZES[1:],
        num_extras=2,
        lateral_pads=(_NO_PAD, _NO_PAD, _NO_PAD),
        top_up_pad=(1, 0, 1, 0),
        top_head_kernel=3,
    ),
    # ST builds 224 as 256's pyramid: C5/C11/C13 (28/14/7) are zero-padded to 32/16/8.
    224: replace(_SPEC_256, input_size=224, lateral_pads=((2, 2, 2, 2), (1, 1, 1, 1), (1, 0, 1, 0))),
    256: _SPEC_256,
}


def resolution_spec(input_size: int) -> ResolutionSpec:
    """The spec for ``input_size``; a ``ValueError`` listing the supported sizes otherwise."""
    try:
        return _SPECS[int(input_size)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"unsupported input_size {input_size!r}: ST's graph is defined only for "
            f"{', '.join(map(str, SUPPORTED_INPUT_SIZES))} (paddings and anchor sizes are per-size)"
        ) from None


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
