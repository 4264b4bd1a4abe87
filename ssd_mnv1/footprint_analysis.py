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
from .memory_plan import lifetimes, live_peak, plan_bytes, read_plan, tflm_greedy_plan, tflm_plan
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
    if len(widths) not in (2, 3):
        raise ValueError(f"{tflite_path}: {len(widths)} outputs; an SSD detector has 3 (scores, offsets, anchors), "
                         "or 2 with int8 outputs (scores, offsets)")
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
    """The live-set peak of the file's activations (TFLM's lifetimes, 16-byte aligned buffers): the
    least arena head any plan that keeps tensors whole can have (:func:`ssd_mnv1.memory_plan.live_peak`)."""
    return live_peak(lifetimes(read_tflite(tflite_path).main))[0]


def tflm_plan_bytes(tflite_path) -> int:
    """The activation bytes TFLite Micro's memory planner gives the file (the arena's non-persistent
    head, kernels' scratch buffers aside), computed without TFLM: its greedy planner, around the
    file's offline plan when it has one (:func:`ssd_mnv1.memory_plan.tflm_plan`)."""
    return plan_bytes(*tflm_plan(read_tflite(tflite_path)))


def peak_tensors(tflite_path) -> dict:
    """Where the live-set peak is: ``{"bytes", "op" (index), "op_name", "tensors": [(name, bytes), ...],
    "also_at": [(op index, name), ...]}`` (the op that runs at the first peak scope; the tensors alive
    there, largest first; later ops where as many bytes are alive)."""
    graph = read_tflite(tflite_path).main
    return _peak(graph, lifetimes(graph))


def _peak(graph: Graph, buffers: list) -> dict:
    total, scope, alive = live_peak(buffers)
    op = graph.operators[scope - 1] if scope else None
    ties = [s for s in range(scope + 1, len(graph.operators) + 1)
            if sum(b.size for b in buffers if b.first <= s <= b.last) == total]
    return {"bytes": total, "op": None if op is None else op.index, "op_name": "graph input" if op is None else op.name,
            "tensors": [(graph.tensors[b.tensor].name, b.size) for b in sorted(alive, key=lambda b: -b.size)],
            "also_at": [(graph.operators[s - 1].index, graph.operators[s - 1].name) for s in ties]}


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
    (:func:`tflm_plan_bytes`) and ``live_peak_bytes`` (:func:`peak_activation_bytes`),
    ``offline_plan`` (the file carries one), ``greedy_bytes`` (TFLM's own planner's head without
    it), ``peak`` (:func:`peak_tensors`) and ``report`` (TFLM's text)."""
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
    file = read_tflite(tflite_path)
    buffers = lifetimes(file.main)
    return {"loads": True, "arena_bytes": report.arena_bytes, "arena_checked": exact, "head_bytes": report.head_bytes,
            "tail_bytes": report.tail_bytes, "flash_bytes": runner.flash_bytes,
            "constant_bytes": constant_bytes(tflite_path), "plan_bytes": plan_bytes(*tflm_plan(file)),
            "offline_plan": bool(read_plan(file)), "greedy_bytes": plan_bytes(buffers, tflm_greedy_plan(buffers)),
            "live_peak_bytes": live_peak(buffers)[0], "peak": _peak(file.main, buffers),
            "report": report.text.strip()}


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
    peak = tflm["peak"]
    alive = ", ".join(f"`{name}` {size:,} B" for name, size in peak["tensors"])
    planned = (f"the file's offline memory plan (TFLM's own greedy planner would take {tflm['greedy_bytes']:,} B = "
               f"{_kib(tflm['greedy_bytes'])})" if tflm["offline_plan"] else
               "TFLM's greedy planner (no offline plan in the file; `export --mcu` embeds one at the live-set peak)")
    lines += [
        "| quantity | TFLM, measured (its own allocation report) | ST, published (Cube.AI 10.0, STM32H747) | "
        "project estimate |",
        "|---|---|---|---|",
        f"| activations: arena head (tensors placed by {planned}; the uint8 input and the outputs "
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
        f"Live-set peak: at op {peak['op']} ({peak['op_name']}), where {alive} are alive together"
        + (f" (the same bytes again at op {', '.join(f'{i} ({n})' for i, n in peak['also_at'])})" if peak["also_at"]
           else "") + ". A plan can only "
        "go below it by writing an op's output over its own input, which depends on the kernel's loop order "
        "(CMSIS-NN's 1x1 convolution re-reads every input pixel for each pair of output channels), so the "
        "project's plans never do.",
        "",
        "How the runtimes differ: ST's figures are for STM32Cube.AI, ST's own runtime, which compiles the graph "
        "to C with its own memory planner and weight layout; ours are TensorFlow Lite Micro's, the open runtime, "
        "which interprets the .tflite flatbuffer from flash and places every non-constant tensor in one arena, "
        "at the offsets of the file's offline plan when it has one, else with its greedy planner (largest "
        "buffers first, each tensor whole, no in-place reuse). The project's planner mirror reproduces TFLM's "
        "activation bytes without TFLM. (A dynamic-batch file, ST's or ours, "
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
