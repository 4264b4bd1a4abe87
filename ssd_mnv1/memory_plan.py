"""Where every activation tensor of a TFLite file lives in TensorFlow Lite Micro's arena.

TFLM places the non-constant tensors in the arena's head with a greedy planner (largest buffer
first, each at the lowest offset that overlaps no buffer alive at the same time). On our detector
its tie order puts the uint8 input above its int8 copy, and the plan ends ~30 % above the live-set
peak, the least any plan that keeps tensors whole can reach. TFLM also accepts a plan computed
offline, stored in the file's metadata as ``OfflineMemoryAllocation`` (TFLM's memory-management
docs: int32 words ``[version 0, subgraph 0, n, offset of tensor 0, ..., offset of tensor n-1]``,
-1 for a tensor TFLM should place itself), and then uses those offsets as they are. This module:

* :func:`lifetimes` - each tensor's first and last scope, by TFLM's ``AllocationInfoBuilder`` rules;
* :func:`tflm_greedy_plan` / :func:`tflm_plan` - the offsets TFLM's own planner chooses, with or
  without an offline plan in the file (a mirror, checked against TFLM's allocation report by the tests);
* :func:`compact_plan` - a plan at the live-set peak where the orders it tries reach it;
* :func:`embed_plan` / :func:`read_plan` - the plan in and out of the file's metadata.

Plans never overlap two tensors alive at the same scope (an op's input and output included): that
holds for every kernel, whatever its loop order (CMSIS-NN's 1x1 convolution, for one, loops over
output channels outermost and reads every input pixel again for each pair of them, so an output
written over its own input would corrupt it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tflite_file import Graph, TFLiteFile, parse, schema as tflite_schema, to_bytes

#: TFLite Micro aligns every arena buffer to this many bytes (MicroArenaBufferAlignment()).
TFLM_BUFFER_ALIGNMENT = 16
#: The metadata entry TFLM reads an offline plan from.
METADATA_NAME = "OfflineMemoryAllocation"
#: An offset TFLM's planner fills in at runtime.
ONLINE = -1


@dataclass(frozen=True)
class Buffer:
    """One planned tensor: its index, bytes (aligned as TFLM aligns them) and the first and last
    scope it is alive (scope 0: before the first op; op ``k`` runs at scope ``k + 1``)."""

    tensor: int
    size: int
    first: int
    last: int

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return not (self.last < other.first or other.last < self.first)


def lifetimes(graph: Graph) -> list[Buffer]:
    """The tensors TFLM plans (every non-constant one an op or the graph uses), in tensor order.

    As TFLM's ``AllocationInfoBuilder``: graph inputs from scope 0; op ``k`` at scope ``k + 1``
    creates its outputs and uses its inputs and outputs; graph outputs stay to the last scope.
    """
    first: dict[int, int] = {}
    last: dict[int, int] = {}

    def use(i: int, scope: int) -> None:
        last[i] = max(last.get(i, scope), scope)

    for i in graph.inputs:
        first.setdefault(i, 0)
        use(i, 0)
    scope = 0
    for op in graph.operators:
        scope += 1
        outputs = [i for i in op.outputs if i >= 0]
        for i in outputs:
            first.setdefault(i, scope)
        for i in [i for i in op.inputs if i >= 0] + outputs:
            use(i, scope)
    for i in graph.outputs:
        use(i, scope)
    align = TFLM_BUFFER_ALIGNMENT
    return [Buffer(t.index, -(-t.nbytes // align) * align, first[t.index], last[t.index])
            for t in graph.tensors if t.index in first and not t.constant]


def live_peak(buffers: list[Buffer]) -> tuple[int, int, list[Buffer]]:
    """(bytes, scope, buffers alive there) of the scope where the most bytes are alive: the least
    arena head any plan keeping tensors whole can have (the first such scope on a tie)."""
    scopes = range(max((b.last for b in buffers), default=0) + 1)
    best = max(scopes, key=lambda s: (sum(b.size for b in buffers if b.first <= s <= b.last), -s))
    alive = [b for b in buffers if b.first <= best <= b.last]
    return sum(b.size for b in alive), best, alive


def plan_bytes(buffers: list[Buffer], offsets: dict[int, int]) -> int:
    """The arena head a plan needs: the highest end of a buffer."""
    return max((offsets[b.tensor] + b.size for b in buffers), default=0)


def check_plan(buffers: list[Buffer], offsets: dict[int, int]) -> None:
    """Raise ``ValueError`` naming the first two tensors a plan puts in the same bytes while both are alive."""
    for i, a in enumerate(buffers):
        if offsets.get(a.tensor, ONLINE) < 0:
            raise ValueError(f"tensor {a.tensor} has no offset in the plan")
        for b in buffers[i + 1:]:
            oa, ob = offsets[a.tensor], offsets[b.tensor]
            if a.overlaps_in_time(b) and oa < ob + b.size and ob < oa + a.size:
                raise ValueError(f"the plan overlaps tensors {a.tensor} [{oa}, {oa + a.size}) and {b.tensor} "
                                 f"[{ob}, {ob + b.size}), alive together at scopes {max(a.first, b.first)}-"
                                 f"{min(a.last, b.last)}")


def _place(buffers: list[Buffer], order: list[int], best_fit: bool,
           fixed: dict[int, int] | None = None) -> dict[int, int]:
    """Offsets from placing ``buffers`` in ``order``, each in the lowest (or the tightest) gap
    between the placed buffers alive with it that holds it, else above them; ``fixed`` tensors
    (an offline plan) are placed first, where it says."""
    fixed = fixed or {}
    offsets: dict[int, int] = dict(fixed)
    placed: list[tuple[int, Buffer]] = [(fixed[b.tensor], b) for b in buffers if b.tensor in fixed]
    for k in order:
        buf = buffers[k]
        busy = sorted((o, o + b.size) for o, b in placed if b.overlaps_in_time(buf))
        gaps: list[tuple[int, int]] = []  # (room, offset)
        top = 0
        for start, end in busy:
            if start - top >= buf.size:
                gaps.append((start - top, top))
            top = max(top, end)
        offset = (min(gaps)[1] if best_fit else gaps[0][1]) if gaps else top
        offsets[buf.tensor] = offset
        placed.append((offset, buf))
    return offsets


def tflm_greedy_plan(buffers: list[Buffer]) -> dict[int, int]:
    """The offsets TFLM's ``GreedyMemoryPlanner`` gives (no offline plan): buffers by decreasing
    size, ties the later tensor first (its stable sort of a reversed list), each at the lowest
    offset free while it is alive."""
    order = sorted(reversed(range(len(buffers))), key=lambda k: -buffers[k].size)  # sorted() is stable
    return _place(buffers, order, best_fit=False)


def tflm_plan(file: TFLiteFile) -> tuple[list[Buffer], dict[int, int]]:
    """(buffers, offsets) as TFLM places the file's tensors: the file's offline plan where it has
    one (fixed first, as TFLM does), the rest by :func:`tflm_greedy_plan`'s order around them."""
    buffers = lifetimes(file.main)
    fixed = read_plan(file) or {}
    online = [k for k in sorted(reversed(range(len(buffers))), key=lambda k: -buffers[k].size)
              if buffers[k].tensor not in fixed]
    return buffers, _place(buffers, online, best_fit=False, fixed=fixed)


def compact_plan(buffers: list[Buffer]) -> dict[int, int]:
    """The smallest of a few greedy plans: buffers by decreasing size (ties: the earlier tensor
    first), by decreasing size x lifetime, and by decreasing lifetime, each first-fit and
    best-fit. Deterministic; on this project's detectors it reaches :func:`live_peak`."""
    n = range(len(buffers))
    orders = (sorted(n, key=lambda k: -buffers[k].size),
              sorted(n, key=lambda k: -buffers[k].size * (buffers[k].last - buffers[k].first + 1)),
              sorted(n, key=lambda k: (buffers[k].first - buffers[k].last, -buffers[k].size)))
    plans = [_place(buffers, order, best_fit) for order in orders for best_fit in (False, True)]
    best = min(plans, key=lambda p: plan_bytes(buffers, p))  # min() keeps the first of equals
    check_plan(buffers, best)
    return best


def read_plan(file: TFLiteFile) -> dict[int, int] | None:
    """The file's offline plan (tensor -> offset, placed tensors only), or None when it has none."""
    model = file.flatbuffer
    for entry in model.metadata or []:
        if (entry.name or b"").decode() != METADATA_NAME:
            continue
        words = np.frombuffer(file.buffers[entry.buffer], dtype="<i4")
        if len(words) < 3 or words[0] != 0 or len(words) != 3 + int(words[2]):
            raise ValueError(f"{file.name}: malformed {METADATA_NAME} metadata ({len(words)} words)")
        if words[1] != 0:
            raise ValueError(f"{file.name}: {METADATA_NAME} for subgraph {int(words[1])}; expected subgraph 0")
        return {i: int(o) for i, o in enumerate(words[3:]) if o != ONLINE}
    return None


def embed_plan(data: bytes, offsets: dict[int, int], name: str = "TFLite model") -> bytes:
    """``data`` with ``offsets`` as its ``OfflineMemoryAllocation`` metadata (one already there is
    replaced); tensors the plan does not name are left to TFLM's planner."""
    file = parse(data, name)
    graph = file.main
    buffers = lifetimes(graph)
    planned = {b.tensor for b in buffers}
    if not set(offsets) <= planned:
        raise ValueError(f"{name}: the plan places tensors that TFLM does not plan: {sorted(set(offsets) - planned)[:5]}")
    check_plan([b for b in buffers if b.tensor in offsets], offsets)
    words = np.full(3 + len(graph.tensors), ONLINE, dtype="<i4")
    words[:3] = (0, 0, len(graph.tensors))
    for tensor, offset in offsets.items():
        words[3 + tensor] = offset
    schema = tflite_schema()
    model = file.flatbuffer
    model.metadata = model.metadata or []
    entry = next((m for m in model.metadata if (m.name or b"").decode() == METADATA_NAME), None)
    if entry is None:  # a new buffer and entry; a plan already there is overwritten in its own buffer
        model.buffers.append(schema.BufferT())
        entry = schema.MetadataT()
        entry.name = METADATA_NAME.encode()
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    model.buffers[entry.buffer].data = np.frombuffer(words.tobytes(), dtype=np.uint8)
    return to_bytes(model)


def plan_file(data: bytes, name: str = "TFLite model") -> tuple[bytes, dict]:
    """``data`` with a :func:`compact_plan` embedded, and what it gives: ``{"plan_bytes",
    "greedy_bytes" (TFLM's own plan), "live_peak_bytes"}``."""
    buffers = lifetimes(parse(data, name).main)
    plan = compact_plan(buffers)
    stats = {"plan_bytes": plan_bytes(buffers, plan),
             "greedy_bytes": plan_bytes(buffers, tflm_greedy_plan(buffers)),
             "live_peak_bytes": live_peak(buffers)[0]}
    return embed_plan(data, plan, name), stats
