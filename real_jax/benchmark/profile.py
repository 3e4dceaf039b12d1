"""Where a compiled step's time goes, by category, from a `jax.profiler` trace and the step's HLO.

    ops = parse_hlo(compiled.as_text())                 # every instruction, by name
    events = trace_events(load_trace(trace_dir), module="jit_train_step")
    table = category_times(events, ops)                 # seconds per category + idle gaps
    print(markdown_table(table, steps=3, peak_flops_per_s=..., bandwidth_bytes_per_s=...))

Categories (`CATEGORIES`): convolutions (XLA `convolution`, cuDNN convolution custom calls, and
the 1x1 convolutions that `PointwiseConv` writes as dots inside the encoders), attention and
matmuls (`dot`, cuBLAS / cuBLASLt GEMMs, Triton GEMM fusions, cuDNN attention), the optimizer
(instructions whose source frame is in optax's transforms or clipping, or in
`real_jax/training/optimizer.py`), normalisation and elementwise (every other fusion, reduce,
elementwise op), layout (copies, transposes), other (collectives, control flow, RNG, custom calls
not named above), and idle: the wall time of the traced window in which no op of the step ran
(host dispatch, Python, waits between kernels or thunks).

What is traced differs by platform, and both are handled: on CPU, XLA's thunk executor records
one event per executed HLO instruction on the host threads (`args.hlo_op`); on a GPU the device
lines (`/device:GPU:N`, threads "Stream #...") record one event per kernel, with `args.hlo_op`
where XLA's profiler knows it and otherwise a kernel name derived from the fusion's name
(`loop_add_fusion_3` for `loop_add_fusion.3`) or a library kernel's name (cuBLAS, cuDNN), which
`classify_name` categorises by pattern. Derived GPU lines ("XLA Ops", "Steps", ...) are left out so
nothing is counted twice.

Accounting (ours): each thread's events are reduced to self time (a nested event's time belongs
to the innermost one); where ops on several threads overlap, each elementary interval's wall time
is shared equally among the ops running in it. So the categories plus idle sum to the traced
window exactly, and a category's time is wall time, not the sum of per-thread busy time.

FLOPs and bytes per category are counted from the HLO per executed instruction: FLOPs of dots and
convolutions from their shapes (2 x output elements x contraction size), one FLOP per output
element of other arithmetic (XLA's cost-analysis convention), and bytes as the instruction's
operands plus its result (the traffic at fusion boundaries, what XLA's cost analysis calls bytes
accessed); each times the number of times the trace shows the instruction ran.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONV, NORM, MATMUL, OPTIMIZER, LAYOUT, OTHER, IDLE = (
    "convolutions", "normalisation and elementwise", "attention and matmuls", "optimizer",
    "layout (copy, transpose)", "other", "idle gaps")
CATEGORIES = (CONV, NORM, MATMUL, OPTIMIZER, LAYOUT, OTHER, IDLE)

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "exponential",
                "log", "rsqrt", "sqrt", "tanh", "power", "negate", "abs", "compare", "select",
                "logistic", "erf", "exponential-minus-one", "log-plus-one", "clamp", "and", "or",
                "not", "xor", "convert", "floor", "ceil", "round-nearest-even", "sign", "atan2"}
_LAYOUT = {"copy", "transpose", "copy-start", "copy-done", "bitcast", "reshape",
           "dynamic-slice", "dynamic-update-slice", "slice", "concatenate", "pad", "broadcast",
           "gather", "scatter", "reverse", "iota"}
_OTHER = {"all-reduce", "all-reduce-start", "all-reduce-done", "all-gather", "reduce-scatter",
          "all-to-all", "collective-permute", "while", "conditional", "call", "rng",
          "rng-bit-generator", "rng-get-and-update-state", "send", "recv", "infeed", "outfeed",
          "after-all", "partition-id", "replica-id", "sort", "tuple", "get-tuple-element",
          "parameter", "constant"}
_CONTROL = {"while", "conditional", "call", "tuple", "get-tuple-element", "parameter",
            "constant", "bitcast", "after-all"}
_OPTIMIZER_SOURCES = re.compile(r"/optax/(?!losses/)|real_jax/training/optimizer\.py")
_ENCODER_CONV = re.compile(r"_encoder/.*(conv|downsample|shortcut)", re.IGNORECASE)


@dataclasses.dataclass
class HloOp:
    """One HLO instruction: `shape` is its result's text (`f32[8,64]{1,0}` or a tuple)."""

    name: str
    opcode: str
    shape: str
    operands: list[str]
    attributes: str
    computation: str
    calls: str | None = None
    op_name: str = ""
    source: str = ""


@dataclasses.dataclass
class HloModule:
    """The instructions of a module by name, its computations' instruction names, its name."""

    name: str
    ops: dict[str, HloOp]
    computations: dict[str, list[str]]


def _elements(dims: str) -> int:
    return math.prod(int(d) for d in dims.split(",") if d) if dims else 1


def array_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape text (a tuple's elements summed)."""
    return sum(_DTYPE_BYTES[dt] * _elements(dims) for dt, dims in _ARRAY.findall(shape))


def _first_dims(shape: str) -> list[int]:
    match = _ARRAY.search(shape)
    return [int(d) for d in match.group(2).split(",") if d] if match else []


def _source_tables(lines: list[str]) -> dict[int, str]:
    """stack_frame_id -> the file of its innermost frame (the module's debug tables)."""
    files: dict[int, str] = {}
    locations: dict[int, int] = {}
    frames: dict[int, str] = {}
    section = None
    for line in lines:
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        head = line.split(" ", 1)
        if section is None or len(head) < 2 or not head[0].isdigit():
            section = None
            continue
        key = int(head[0])
        if section == "FileNames":
            files[key] = head[1].strip('"')
        elif section == "FileLocations":
            match = re.search(r"file_name_id=(\d+)", head[1])
            if match:
                locations[key] = int(match.group(1))
        elif section == "StackFrames":
            match = re.search(r"file_location_id=(\d+)", head[1])
            if match:
                frames[key] = files.get(locations.get(int(match.group(1)), -1), "")
    return frames


def parse_hlo(text: str) -> HloModule:
    """Every instruction of an HLO module's text (`compiled.as_text()`), by name."""
    lines = text.splitlines()
    frames = _source_tables(lines)
    header = re.match(r"HloModule ([\w.\-]+)", lines[0]) if lines else None
    ops: dict[str, HloOp] = {}
    computations: dict[str, list[str]] = defaultdict(list)
    computation = ""
    for line in lines:
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            computation = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        depth, end = 1, len(rest)
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                end = i
                break
        operands = re.findall(r"%([\w.\-]+)", rest[:end])
        attributes = rest[end + 1:]
        calls = re.search(r"calls=%([\w.\-]+)", attributes)
        op_name = re.search(r'op_name="([^"]*)"', attributes)
        frame = re.search(r"stack_frame_id=(\d+)", attributes)
        ops[name] = HloOp(name, opcode, shape, operands, attributes, computation,
                          calls.group(1) if calls else None, op_name.group(1) if op_name else "",
                          frames.get(int(frame.group(1)), "") if frame else "")
        computations[computation].append(name)
    return HloModule(header.group(1) if header else "", ops, dict(computations))


def _conv_flops(op: HloOp, module: HloModule) -> float:
    """2 x (forward output elements) x (kernel elements / output features), for an XLA
    convolution or a cuDNN forward / backward-input / backward-filter custom call."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", op.attributes)
    shapes = [module.ops[o].shape for o in op.operands if o in module.ops]
    if not labels or len(shapes) < 2:
        return 0.0
    result = op.shape
    if "BackwardInput" in op.attributes:
        out, kernel = shapes[0], shapes[1]
    elif "BackwardFilter" in op.attributes:
        out, kernel = shapes[1], result
    else:
        out, kernel = result, shapes[1]
    kernel_dims = _first_dims(kernel)
    kernel_labels = labels.group(2)
    if len(kernel_dims) != len(kernel_labels) or "o" not in kernel_labels:
        return 0.0
    out_features = kernel_dims[kernel_labels.index("o")]
    return 2.0 * math.prod(_first_dims(out)) * math.prod(kernel_dims) / max(out_features, 1)


def _dot_flops(op: HloOp, module: HloModule) -> float:
    """2 x output elements x contraction size, for `dot` and cuBLAS GEMM custom calls."""
    lhs = module.ops.get(op.operands[0]) if op.operands else None
    if lhs is None:
        return 0.0
    dims = re.search(r'lhs_contracting_dims=\{([0-9,]*)\}', op.attributes) or re.search(
        r'"lhs_contracting_dimensions":\[([0-9",]*)\]', op.attributes)
    lhs_dims = _first_dims(lhs.shape)
    contracting = [int(d) for d in re.findall(r"\d+", dims.group(1))] if dims else []
    size = math.prod(lhs_dims[d] for d in contracting if d < len(lhs_dims))
    return 2.0 * math.prod(_first_dims(op.shape)) * size


def _inner(op: HloOp, module: HloModule) -> list[HloOp]:
    """The instructions a fusion (or call) runs, recursively; an unfused op is itself."""
    if op.calls is None or op.opcode not in ("fusion", "call", "custom-call"):
        return [op]
    out: list[HloOp] = []
    for name in module.computations.get(op.calls, []):
        out.extend(_inner(module.ops[name], module))
    return out


def op_flops(op: HloOp, module: HloModule) -> float:
    """FLOPs of one execution of a top-level instruction (module docstring)."""
    total = 0.0
    for inner in _inner(op, module):
        target = re.search(r'custom_call_target="([^"]*)"', inner.attributes)
        target_name = target.group(1) if target else ""
        if inner.opcode == "convolution" or "$conv" in target_name:
            total += _conv_flops(inner, module)
        elif inner.opcode == "dot" or "gemm" in target_name or "matmul" in target_name:
            total += _dot_flops(inner, module)
        elif inner.opcode in _ELEMENTWISE:
            total += math.prod(_first_dims(inner.shape))
        elif inner.opcode in ("reduce", "reduce-window"):
            operand = module.ops.get(inner.operands[0]) if inner.operands else None
            total += math.prod(_first_dims(operand.shape)) if operand else 0
    return total


def op_bytes(op: HloOp, module: HloModule) -> int:
    """Operands plus result bytes of one execution of a top-level instruction (none for control
    flow and tuples, which move no data themselves)."""
    if op.opcode in _CONTROL:
        return 0
    return array_bytes(op.shape) + sum(array_bytes(module.ops[o].shape)
                                       for o in op.operands if o in module.ops)


def classify_op(op: HloOp, module: HloModule) -> str:
    """The category (`CATEGORIES`) of a top-level HLO instruction, on any platform."""
    inner = _inner(op, module)
    targets = " ".join(re.findall(r'custom_call_target="([^"]*)"', " ".join(
        i.attributes for i in inner)))
    opcodes = {i.opcode for i in inner}
    if "convolution" in opcodes or "$conv" in targets:
        return CONV
    if "dot" in opcodes or re.search(r"gemm|matmul|fmha|triton", targets + op.attributes):
        in_encoder = any(_ENCODER_CONV.search(i.op_name) for i in inner if i.opcode == "dot")
        return CONV if in_encoder else MATMUL
    if any(_OPTIMIZER_SOURCES.search(i.source) for i in inner if i.source):
        return OPTIMIZER
    if op.opcode == "fusion" or opcodes & (_ELEMENTWISE | {"reduce", "reduce-window",
                                                          "select-and-scatter", "map"}):
        # A fusion of only data movement is layout work.
        computing = opcodes - _LAYOUT - {"parameter", "constant", "tuple",
                                         "get-tuple-element"}
        return NORM if computing else LAYOUT
    if opcodes & _LAYOUT:
        return LAYOUT
    return OTHER


def classify_name(name: str) -> str:
    """The category of a kernel known only by name (GPU kernels with no HLO op recorded)."""
    lower = name.lower()
    if re.search(r"conv|cudnn|dgrad|wgrad|fprop|implicit_", lower):
        return CONV
    if re.search(r"gemm|matmul|cublas|xmma|cutlass|triton|fmha|flash|dot", lower):
        return MATMUL
    if re.search(r"transpose|copy", lower):
        return LAYOUT
    if re.search(r"fusion|reduce|elementwise|kernel", lower):
        return NORM
    return OTHER


def load_trace(trace_dir: str | Path) -> dict[str, Any]:
    """The Chrome-trace JSON that `jax.profiler.trace(trace_dir)` wrote (the newest one)."""
    found = sorted(Path(trace_dir).glob("plugins/profile/*/*.trace.json.gz"))
    if not found:
        raise FileNotFoundError(f"no plugins/profile/*/*.trace.json.gz under {trace_dir}: was "
                                f"it written by jax.profiler.trace?")
    with gzip.open(found[-1], "rt") as f:
        return json.load(f)


@dataclasses.dataclass
class Event:
    """One executed op: `op` is its HLO instruction name, or None for a kernel known by name."""

    thread: tuple[int, int]
    start_us: float
    end_us: float
    op: str | None
    name: str


def trace_events(trace: Mapping[str, Any], module: str | None = None) -> list[Event]:
    """The op events of the step (of HLO module `module` where events name theirs): the
    device's stream lines where the trace has devices (GPU), else the host's thunk events."""
    raw = trace.get("traceEvents", [])
    processes = {e["pid"]: e["args"]["name"] for e in raw
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in raw
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    events = []
    for e in raw:
        if e.get("ph") != "X" or "dur" not in e or e.get("name", "").startswith("end: "):
            continue
        args = e.get("args", {})
        if devices:
            if e["pid"] not in devices or "stream" not in threads.get(
                    (e["pid"], e["tid"]), "").lower():
                continue
        elif "hlo_op" not in args:
            continue
        named = args.get("hlo_module")
        if module and named is not None and not str(named).startswith(module):
            continue  # another program's op (a profiler may append an id to the name)
        events.append(Event((e["pid"], e["tid"]), float(e["ts"]), float(e["ts"]) + float(e["dur"]),
                            args.get("hlo_op"), e.get("name", "")))
    return events


def _self_segments(events: list[Event]) -> list[tuple[float, float, Event]]:
    """Per thread, each event's time not covered by an event nested inside it."""
    out = []
    by_thread: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for event in events:
        by_thread[event.thread].append(event)
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e.start_us, -e.end_us))
        points = sorted({p for e in thread_events for p in (e.start_us, e.end_us)})
        stack: list[Event] = []
        i = 0
        for left, right in zip(points, points[1:], strict=False):
            while stack and stack[-1].end_us <= left:
                stack.pop()
            while i < len(thread_events) and thread_events[i].start_us <= left:
                if thread_events[i].end_us > left:
                    stack.append(thread_events[i])
                i += 1
            stack = [e for e in stack if e.end_us > left]
            if stack:
                out.append((left, right, stack[-1]))
    return out


def category_times(events: list[Event], module: HloModule) -> dict[str, Any]:
    """Seconds per category over the traced window, counts of each op, and the window.

    Returns `{"seconds": {category: s}, "window_s": s, "executions": {op name: n},
    "unmatched_kernels": n}`; `seconds` sums to `window_s` (module docstring)."""
    if not events:
        raise ValueError("the trace has no op events of the step: was the step run inside "
                         "jax.profiler.trace, and is `module` its HLO module's name?")
    segments = _self_segments(events)
    category_of: dict[int, str] = {}
    unmatched = 0
    for event in events:
        op = module.ops.get(event.op or "") or module.ops.get(
            re.sub(r"_(\d+)$", r".\1", event.name)) or module.ops.get(event.name)
        if op is not None:
            event.op = op.name
            category_of[id(event)] = classify_op(op, module)
        else:
            unmatched += 1
            category_of[id(event)] = classify_name(event.name)
    boundaries = sorted({p for left, right, _ in segments for p in (left, right)})
    starts = sorted(segments, key=lambda s: s[0])
    seconds: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    active: list[tuple[float, float, Event]] = []
    j = 0
    for left, right in zip(boundaries, boundaries[1:], strict=False):
        while j < len(starts) and starts[j][0] <= left:
            active.append(starts[j])
            j += 1
        active = [s for s in active if s[1] > left]
        running = [s for s in active if s[0] <= left]
        width = (right - left) * 1e-6
        if not running:
            seconds[IDLE] += width
            continue
        for _, _, event in running:
            seconds[category_of[id(event)]] += width / len(running)
    window = (max(e.end_us for e in events) - min(e.start_us for e in events)) * 1e-6
    seconds[IDLE] += window - sum(seconds.values())  # before the first boundary: none; rounding
    executions = Counter(e.op for e in events if e.op in module.ops)
    return {"seconds": seconds, "window_s": window, "executions": dict(executions),
            "unmatched_kernels": unmatched}


def category_costs(executions: Mapping[str, int], module: HloModule) -> dict[str, dict[str, float]]:
    """FLOPs and bytes per category over the traced executions (module docstring)."""
    costs = {c: {"flops": 0.0, "bytes": 0.0} for c in CATEGORIES}
    for name, count in executions.items():
        op = module.ops[name]
        category = classify_op(op, module)
        costs[category]["flops"] += count * op_flops(op, module)
        costs[category]["bytes"] += count * op_bytes(op, module)
    return costs


def roofline_note(seconds: float, flops: float, nbytes: float, peak_flops_per_s: float | None,
                  bandwidth_bytes_per_s: float | None) -> str:
    """Which roof bounds a category (arithmetic intensity against the machine's balance) and
    the fraction of that roof its measured time reaches."""
    if seconds <= 0 or nbytes <= 0 or not peak_flops_per_s or not bandwidth_bytes_per_s:
        return ""
    intensity = flops / nbytes
    balance = peak_flops_per_s / bandwidth_bytes_per_s
    achieved = (f"{flops / seconds / 1e9:.1f} GFLOP/s, {nbytes / seconds / 1e9:.1f} GB/s")
    if intensity >= balance:
        return (f"compute roof ({intensity:.0f} FLOP/B >= {balance:.0f}): {achieved}, "
                f"{100 * flops / seconds / peak_flops_per_s:.0f} % of the matmul peak")
    fraction = nbytes / seconds / bandwidth_bytes_per_s
    where = ("above the streamed bandwidth: cache-resident" if fraction > 1
             else f"{100 * fraction:.0f} % of the streamed bandwidth")
    return f"memory roof ({intensity:.1f} FLOP/B < {balance:.0f}): {achieved}, {where}"


def summarize(events: list[Event], module: HloModule, *, steps: int,
              peak_flops_per_s: float | None = None,
              bandwidth_bytes_per_s: float | None = None) -> dict[str, Any]:
    """Per step: seconds, share, FLOPs, bytes and roofline note of each category."""
    times = category_times(events, module)
    costs = category_costs(times["executions"], module)
    rows = {}
    for category in CATEGORIES:
        s = times["seconds"][category]
        flops, nbytes = costs[category]["flops"], costs[category]["bytes"]
        rows[category] = {
            "seconds_per_step": s / steps, "share": s / times["window_s"],
            "flops_per_step": flops / steps, "bytes_per_step": nbytes / steps,
            "roofline": "" if category == IDLE else roofline_note(
                s, flops, nbytes, peak_flops_per_s, bandwidth_bytes_per_s)}
    return {"steps": steps, "window_s": times["window_s"],
            "seconds_per_step": times["window_s"] / steps, "categories": rows,
            "unmatched_kernels": times["unmatched_kernels"],
            "peak_flops_per_s": peak_flops_per_s,
            "bandwidth_bytes_per_s": bandwidth_bytes_per_s}


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The category table of `summarize` in markdown."""
    rows = ["| category | s / step | share | GFLOP / step | GB moved / step | roofline |",
            "|---|---|---|---|---|---|"]
    for category, row in summary["categories"].items():
        rows.append(f"| {category} | {row['seconds_per_step']:.4f} | {100 * row['share']:.1f} % "
                    f"| {row['flops_per_step'] / 1e9:.2f} | {row['bytes_per_step'] / 1e9:.3f} "
                    f"| {row['roofline']} |")
    rows.append(f"| **step (traced window / steps)** | {summary['seconds_per_step']:.4f} | "
                f"100 % | | | |")
    return "\n".join(rows)

