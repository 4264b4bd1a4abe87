"""What a detector costs on a device, as the footprint command reports it (``python -m
ssd_mnv1.footprint``): parameters, MACs, the int8 file's peak activation memory (live-set lower
bound and a mirror of TensorFlow Lite Micro's memory planner), its constant bytes, CPU latency,
and the arena TFLite Micro allocates for it, with ST's published STM32 figures beside ours.

The file-structure figures come from :mod:`ssd_mnv1.tflite_file` (no runtime needed); latency and
the TFLM arena run the file (:mod:`ssd_mnv1.runners`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from .specs import SUPPORTED_ALPHAS, resolution_spec, scaled_channels
from .tflite_file import Graph, Operator, read as read_tflite
from .zoo import RELEASES, st_release


def count_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of one inference (convolutions; everything else is negligible)."""
    total = 0

    def hook(module, _inp, out):
        nonlocal total
        kh, kw = module.kernel_size
        total += out.numel() * kh * kw * module.in_channels // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def _conv_ops(graph: Graph) -> list[Operator]:
    """The CONV_2D / DEPTHWISE_CONV_2D operators, in execution order."""
    return [op for op in graph.operators if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]


def tflite_architecture(tflite_path) -> dict:
    """``build_model`` arguments of the detector in a .tflite, read from the file itself.

    The MAC count is taken on the PyTorch model with these arguments, so they must be the file's:
    the width from the first convolution's output channels (``int(32 * alpha)``), the classes from
    the score output's width (background + classes; the two box outputs are 4 wide, so when all
    three outputs are 4 wide the scores are too: three classes), the resolution from the input
    (any size :func:`~ssd_mnv1.specs.resolution_spec` builds, square).
    """
    sg = read_tflite(tflite_path).main
    convs = _conv_ops(sg)
    if not convs:
        raise ValueError(f"{tflite_path}: no convolution in the file; not an SSD MobileNet v1 detector")
    stem = int(sg.tensors[convs[0].inputs[1]].shape[0])
    alphas = [a for a in SUPPORTED_ALPHAS if scaled_channels(32, a) == stem]
    if not alphas:
        raise ValueError(f"{tflite_path}: the first convolution has {stem} output channels, which no "
                         f"MobileNet width gives (alpha {', '.join(map(str, SUPPORTED_ALPHAS))} -> "
                         f"{', '.join(str(scaled_channels(32, a)) for a in SUPPORTED_ALPHAS)} channels)")
    widths = [int(sg.tensors[i].shape[-1]) for i in sg.outputs]
    if len(widths) != 3:
        raise ValueError(f"{tflite_path}: {len(widths)} outputs; an SSD detector has 3 (scores, offsets, anchors)")
    scores = [w for w in widths if w != 4] or [4]
    if len(scores) != 1:
        raise ValueError(f"{tflite_path}: outputs {widths} wide; an SSD detector has one score output "
                         "(background + classes) and two 4-wide box outputs")
    shape = [int(d) for d in sg.tensors[sg.inputs[0]].shape]
    if len(shape) != 4 or shape[1] != shape[2]:
        raise ValueError(f"{tflite_path}: input of shape {shape}; the detector takes a square (N, S, S, 3) image")
    try:
        resolution_spec(shape[1])
    except ValueError as exc:
        raise ValueError(f"{tflite_path}: {exc}") from None
    return {"alpha": alphas[0], "input_size": shape[1], "num_classes": scores[0] - 1}


def peak_activation_bytes(tflite_path) -> int:
    """Peak of the bytes of live activation tensors, executing the ops in order.

    A tensor lives from the op that writes it to the last op that reads it (graph inputs from the
    start, outputs to the end); constants are excluded. This is the least memory any planner that
    keeps every tensor whole (no in-place reuse) can give the graph: a lower bound, which a real
    planner exceeds by its fragmentation (TFLite Micro's: :func:`tflm_plan_bytes`).
    """
    sg = read_tflite(tflite_path).main
    n_ops = len(sg.operators)
    first, last = {}, {}
    for i in sg.inputs:
        first[i] = 0
    for step, op in enumerate(sg.operators):
        for i in op.outputs:
            if i >= 0:
                first.setdefault(i, step)
        for i in op.inputs:
            if i >= 0 and not sg.tensors[i].constant:
                last[i] = step
    for i in sg.outputs:
        last[i] = n_ops
    nbytes = {i: sg.tensors[i].nbytes for i in first}
    peak = 0
    for step in range(n_ops):
        live = sum(b for i, b in nbytes.items() if first[i] <= step <= last.get(i, first[i]))
        peak = max(peak, live)
    return peak


#: TFLite Micro aligns every arena buffer to this many bytes (MicroArenaBufferAlignment()).
TFLM_BUFFER_ALIGNMENT = 16


def tflm_plan_bytes(tflite_path) -> int:
    """The activation bytes TFLite Micro's memory planner gives the file (the arena's non-persistent
    "head", kernels' scratch buffers aside), computed the way TFLM does it, without TFLM.

    Lifetimes as TFLM's ``AllocationInfoBuilder``: graph inputs from scope 0, op ``k`` at scope
    ``k + 1`` creates its outputs and last-uses its inputs and outputs, graph outputs last to the
    end; constants are not planned. Each buffer is rounded up to :data:`TFLM_BUFFER_ALIGNMENT`.
    Placement as TFLM's ``GreedyMemoryPlanner``: buffers by decreasing size (ties: the later
    tensor first, as its stable sort of a reversed list gives), each at the lowest offset where it
    overlaps no placed buffer that is live at the same time. The result is the highest end offset.
    """
    sg = read_tflite(tflite_path).main
    first: dict[int, int] = {}
    last: dict[int, int] = {}

    def use(i: int, scope: int) -> None:
        last[i] = max(last.get(i, scope), scope)

    for i in sg.inputs:
        first.setdefault(i, 0)
        use(i, 0)
    scope = 0
    for op in sg.operators:
        scope += 1
        outputs = [i for i in op.outputs if i >= 0]
        for i in outputs:
            first.setdefault(i, scope)
        for i in [i for i in op.inputs if i >= 0] + outputs:
            use(i, scope)
    for i in sg.outputs:
        use(i, scope)
    align = TFLM_BUFFER_ALIGNMENT
    buffers = [(-(-t.nbytes // align) * align, first[t.index], last[t.index])
               for t in sg.tensors if t.index in first and not t.constant]
    order = sorted(reversed(range(len(buffers))), key=lambda k: -buffers[k][0])  # sorted() is stable
    placed: list[tuple[int, int]] = []  # (offset, buffer), by offset
    high = 0
    for k in order:
        size, start, end = buffers[k]
        offset = 0
        for other_offset, other in placed:  # the live-at-the-same-time ones, lowest offset first
            _, o_start, o_end = buffers[other]
            if o_end < start or o_start > end:
                continue
            if other_offset - offset >= size:
                break
            offset = max(offset, other_offset + buffers[other][0])
        placed.insert(next((j for j, (o, _) in enumerate(placed) if o > offset), len(placed)), (offset, k))
        high = max(high, offset + size)
    return high


def constant_bytes(tflite_path) -> int:
    """Bytes of the constant buffers (weights, biases, quantization tables, anchors) in the file."""
    return sum(len(b) for b in read_tflite(tflite_path).buffers)


def tflite_params(tflite_path) -> int:
    """Weights and biases of the CONV_2D / DEPTHWISE_CONV_2D ops (anchors and shapes excluded)."""
    sg = read_tflite(tflite_path).main
    seen = {i for op in _conv_ops(sg) for i in op.inputs[1:] if i >= 0}
    return sum(sg.tensors[i].elements for i in seen)


def latency_ms(tflite_path, threads: int, runs: int) -> float:
    from .runners import make_interpreter

    it = make_interpreter(tflite_path, num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, inp["shape"], dtype=np.uint8).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.set_tensor(inp["index"], x)
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


#: ST's "runtime RAM" (KiB) on STM32H7 with Cube.AI 10.0 (docs/st_model.md §11.2): the runtime's own
#: state, the counterpart of TFLM's persistent arena part.
ST_RUNTIME_RAM_KIB = {192: 29.93, 224: 34.34, 256: 33.75}


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def tflm_footprint(tflite_path) -> dict:
    """What TensorFlow Lite Micro allocates for the file, from TFLM's own report, next to the
    project's estimates. ``{"loads": False, "why": ...}`` when TFLM cannot load it (or is not
    installed); else ``loads``, ``arena_bytes`` (head + tail: the smallest ``tensor_arena``),
    ``arena_checked`` (the file loaded and ran in an arena of exactly that size), ``head_bytes``,
    ``tail_bytes``, ``flash_bytes`` (the file), ``constant_bytes``, the estimates ``plan_bytes``
    (:func:`tflm_plan_bytes`) and ``live_peak_bytes`` (:func:`peak_activation_bytes`), and
    ``report`` (TFLM's text)."""
    from .runners import TFLMRunner, TFLMUnsupportedModel, tflm_available

    if not tflm_available():
        return {"loads": False, "why": "tflite-micro is not installed (pip install -e '.[mcu]')"}
    try:
        runner = TFLMRunner(tflite_path)
    except TFLMUnsupportedModel as exc:
        return {"loads": False, "why": str(exc), "missing_ops": list(exc.missing_ops)}
    shape = runner.input_shape
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    runner.run_one(x[0])  # allocation is done at load; one run shows the file also executes
    report = runner.arena_report()
    try:  # the reported total is the arena TFLM needs: it loads and runs in exactly that many bytes
        TFLMRunner(tflite_path, arena_size=report.arena_bytes).run_one(x[0])
        exact = True
    except TFLMUnsupportedModel:
        exact = False
    return {"loads": True, "arena_bytes": report.arena_bytes, "arena_checked": exact, "head_bytes": report.head_bytes,
            "tail_bytes": report.tail_bytes, "flash_bytes": runner.flash_bytes,
            "constant_bytes": constant_bytes(tflite_path), "plan_bytes": tflm_plan_bytes(tflite_path),
            "live_peak_bytes": peak_activation_bytes(tflite_path), "report": report.text.strip()}


def tflm_markdown(tflm: dict, size: int) -> str:
    """The TFLite Micro section of the footprint report."""
    lines = ["", "### TensorFlow Lite Micro: what the microcontroller runtime allocates", ""]
    if not tflm["loads"]:
        return "\n".join(lines + [f"Not measured: {tflm['why']}", ""])
    stm32 = st_release(size).stm32 if size in RELEASES else {}
    st_act = stm32.get("H7 activation RAM KiB (Cube.AI 10.0)")
    st_flash = stm32.get("H7 weights flash KiB (Cube.AI 10.0)")
    st_rt = ST_RUNTIME_RAM_KIB.get(size)
    st_total = None if st_rt is None or st_act is None else round(st_act + st_rt, 2)
    checked = ": it loads and runs with exactly this arena" if tflm["arena_checked"] else \
        ": NOT confirmed, it did not load with exactly this arena"
    fmt_st = (lambda v, what: "–" if v is None else f"{v} KiB ({what})")
    plan = tflm["plan_bytes"]
    same = ("equal to TFLM's head" if plan == tflm["head_bytes"] else
            f"{plan - tflm['head_bytes']:+,} bytes from TFLM's head")
    lines += [
        "| quantity | TFLM, measured (its own allocation report) | ST, published (Cube.AI 10.0, STM32H747) | "
        "project estimate |",
        "|---|---|---|---|",
        f"| activations: arena head (tensors as TFLM's planner packs them; the uint8 input and float32 outputs "
        f"included) | {tflm['head_bytes']:,} B = {_kib(tflm['head_bytes'])} | {fmt_st(st_act, 'activation RAM')} | "
        f"TFLM planner mirror {plan:,} B = {_kib(plan)} ({same}); live-set peak {tflm['live_peak_bytes']:,} B = "
        f"{_kib(tflm['live_peak_bytes'])} (the least any planner keeping tensors whole needs) |",
        f"| runtime state: arena tail (persistent; measured on this 64-bit host) | {tflm['tail_bytes']:,} B = "
        f"{_kib(tflm['tail_bytes'])} | {fmt_st(st_rt, 'runtime RAM')} | – |",
        f"| arena total (the smallest tensor_arena for this file{checked}) | {tflm['arena_bytes']:,} B = "
        f"{_kib(tflm['arena_bytes'])} | {fmt_st(st_total, 'total RAM: activations + runtime')} | – |",
        f"| flash: the .tflite file (flatbuffer stored as is; TFLM's code not counted) | {tflm['flash_bytes']:,} B = "
        f"{_kib(tflm['flash_bytes'])}, of which constants {_kib(tflm['constant_bytes'])} | "
        f"{fmt_st(st_flash, 'weights flash')} | – |",
        "",
        "How the runtimes differ: ST's figures are for STM32Cube.AI, ST's own runtime, which compiles the graph "
        "to C with its own memory planner and weight layout; ours are TensorFlow Lite Micro's, the open runtime, "
        "which interprets the .tflite flatbuffer from flash and places every non-constant tensor in one arena "
        "with a greedy planner (largest buffers first, each tensor whole, no in-place reuse). The project's "
        "planner mirror reproduces TFLM's activation bytes without TFLM; the live-set peak is the lower bound "
        "for such a planner, which TFLM's exceeds by its fragmentation. (A dynamic-batch file, ST's or ours, "
        "reads its input again at the end to tile the anchors, which keeps the input alive throughout and "
        "raises every estimate; TFLM cannot load such a file.) TFLM's persistent part (per-tensor and per-node "
        "structs, per-channel requantization data) was measured with this 64-bit host build: on a 32-bit "
        "Cortex-M its pointer fields are half as large, so it is smaller there. The Python build runs TFLM's "
        "reference kernels; the CMSIS-NN kernels of a Cortex-M build are meant to compute the same numbers "
        "(not checked here) and may ask for small scratch buffers, which would add to the head. Flash: TFLM "
        "keeps the whole flatbuffer (weights, biases, quantization parameters, the int8 anchors and the graph) "
        "in flash; ST's weights flash counts Cube.AI's packed weights only; neither counts the runtime's code.",
        ""]
    return "\n".join(lines)
