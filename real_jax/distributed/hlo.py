"""The cross-device collectives of a compiled XLA program, read from its HLO text.

    compiled = jax.jit(step, ...).lower(*args).compile()
    totals = collective_totals(compiled.as_text())
    totals["all-reduce"].count, totals["all-reduce"].bytes

Why: the train step is one `jax.jit` over a mesh, and XLA's SPMD partitioner inserts whatever
communication the shardings require. Which collectives it chose says whether the layout is the
one intended: plain data parallelism should only all-reduce (gradients, batch-norm statistics,
metrics), FSDP should move parameters by all-gather and gradients by reduce-scatter (or an
all-reduce XLA did not turn into one). An all-to-all, a collective-permute or an all-gather in a
data-parallel step means some array left the device that holds its rows (a concatenation or
slice along the split batch axis, say), and the step pays for it in bandwidth.

What is counted: every instruction of the kinds in `KINDS`, in every computation of the module,
including the asynchronous pairs `<kind>-start` / `<kind>-done` (one collective, counted at the
start, whose result is the `-done`'s shape); reduce-scatter and all-to-all made asynchronous
are wrapped in an `async-start` whose called computation holds the plain instruction, which is
what is counted. Collectives that move nothing are left out: replica groups of one device (in
any of XLA's spellings: `{{0},{1}}`, `[8,1]<=[8]`, `mesh['axis_0'=8,'axis_1'=1] {'axis_1'}`), a
collective-permute whose pairs all send to themselves.

Bytes are those of each collective's result, per device (the compiled program is the program of
one device): an all-reduce's result is the whole reduced array, an all-gather's the gathered
array, a reduce-scatter's the device's shard (its operand is group-size times larger). Tuple
results (XLA combines many small all-reduces into one) are summed. Inside a `while` loop with a
trip count XLA has determined (`known_trip_count`), a collective runs that many times per run of
the program: `executed` and `bytes` count every run, `count` counts the instructions once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# `%name = SHAPE opcode(` at the start of an instruction line (`%` is optional in newer dumps).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
# An array shape inside a result shape: `f32[8,64]`, `bf16[]`, `s32[<=8]`.
_ARRAY = re.compile(r"\b(?P<dtype>[a-z][a-z0-9]*)\[(?P<dims>[^\]]*)\]")
# Computations an instruction calls; while bodies run `known_trip_count` times.
_CALLED = re.compile(
    r"\b(?:condition|body|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LISTS = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_GROUPS_LIST = re.compile(r"\breplica_groups=\{(\{[^}]*\})")
_GROUPS_IOTA = re.compile(r"\breplica_groups=\[([\d,]+)\]<=")
# `replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}`: groups span the axes in braces.
_GROUPS_MESH = re.compile(r"\breplica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_PAIRS = re.compile(r"\bsource_target_pairs=\{((?:\{\d+,\d+\},?)*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction.

    Attributes:
      kind: one of `KINDS`.
      name: the instruction's name in the HLO.
      computation: the computation that holds it.
      result_bytes: bytes of its result on one device.
      executed: how many times it runs per run of the program (loop trip counts).
    """

    kind: str
    name: str
    computation: str
    result_bytes: int
    executed: int


@dataclasses.dataclass(frozen=True)
class KindTotals:
    """The collectives of one kind: instructions, executions and result bytes per run."""

    count: int = 0
    executed: int = 0
    bytes: int = 0


def dtype_bits(dtype: str) -> int:
    """Bits of one element of an HLO primitive type (`pred`, `bf16`, `f32`, `c64`, `f8e4m3fn`,
    ...); 0 for `token` and other types that hold no array data."""
    if dtype == "pred":
        return 8
    match = re.match(r"(?:bf|[sufc])(\d+)", dtype)
    return int(match.group(1)) if match else 0


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, e.g. `f32[8,64]{1,0}` -> 2048, `(bf16[4]{0}, s32[])` -> 12.

    Layouts (`{1,0}`) are ignored, dynamic bounds (`<=8`) count at their bound, tuples are summed.
    """
    total = 0
    for match in _ARRAY.finditer(shape):
        elements = math.prod(int(d) for d in re.findall(r"\d+", match.group("dims")))
        total += math.ceil(elements * dtype_bits(match.group("dtype")) / 8)
    return total


def _split_result(rest: str) -> tuple[str, str, str]:
    """`SHAPE opcode(args), attrs` -> (shape, opcode, the text after `opcode(`)."""
    rest = rest.lstrip()
    if rest.startswith("("):  # a tuple shape: up to its matching parenthesis
        shape, tail, depth = rest, "", 0
        for end, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                shape, tail = rest[: end + 1], rest[end + 1 :]
                break
    else:
        shape, _, tail = rest.partition(" ")
    opcode, _, args = tail.strip().partition("(")
    return shape, opcode.strip(), args


def _moves_data(kind: str, attributes: str) -> bool:
    """False when the replica groups hold one device each, or a permute sends to itself only."""
    if kind == "collective-permute":
        pairs = _PAIRS.search(attributes)
        if pairs:
            return any(a != b for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1)))
        return True
    mesh = _GROUPS_MESH.search(attributes)
    if mesh:
        sizes = dict(re.findall(r"'([^']*)'=(\d+)", mesh.group(1)))
        axes = re.findall(r"'([^']*)'", mesh.group(2))
        if all(axis in sizes for axis in axes):
            return math.prod(int(sizes[axis]) for axis in axes) > 1
        return True
    groups = _GROUPS_LIST.search(attributes)
    if groups:
        return len(re.findall(r"\d+", groups.group(1))) > 1
    iota = _GROUPS_IOTA.search(attributes)
    if iota:
        return int(iota.group(1).split(",")[-1]) > 1
    return True  # `replica_groups={}`: every device


def _computations(hlo_text: str) -> Iterator[tuple[str, bool, list[str]]]:
    """(name, is_entry, instruction lines) for each computation of the module."""
    name, is_entry, lines = None, False, []
    for line in hlo_text.splitlines():
        if name is None:
            header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
            if header and not line.startswith("HloModule"):
                name, is_entry, lines = header.group(2), bool(header.group(1)), []
        elif line.strip() == "}":
            yield name, is_entry, lines
            name = None
        else:
            lines.append(line)


def _executions(calls: dict[str, list[tuple[str, int]]], entry: str | None,
                names: list[str]) -> dict[str, int]:
    """Runs of each computation per run of the entry: the sum over its callers of the caller's
    runs times the trip count of the call (1 unless it is a while loop with a known count).
    Computations not reached from the entry (or with no entry found) count as running once."""
    callers: dict[str, list[tuple[str, int]]] = {n: [] for n in names}
    for caller, callees in calls.items():
        for callee, factor in callees:
            callers.setdefault(callee, []).append((caller, factor))
    memo: dict[str, int] = {}

    def runs(name: str, seen: frozenset[str]) -> int:
        if name == entry:
            return 1
        if name not in memo:
            total = sum(runs(caller, seen | {name}) * factor
                        for caller, factor in callers.get(name, []) if caller not in seen)
            memo[name] = total
        return memo[name]

    return {n: (runs(n, frozenset()) or 1) if entry else 1 for n in names}


def find_collectives(hlo_text: str) -> list[Collective]:
    """Every cross-device collective in `hlo_text` (`compiled.as_text()`), in program order."""
    computations = list(_computations(hlo_text))
    entry = next((name for name, is_entry, _ in computations if is_entry), None)
    calls: dict[str, list[tuple[str, int]]] = {}
    found: list[tuple[str, str, str, int]] = []  # (kind, name, computation, bytes)
    starts: dict[str, int] = {}  # `-start` instruction name -> index in `found`
    for computation, _, lines in computations:
        for line in lines:
            instruction = _INSTRUCTION.match(line)
            if not instruction:
                continue
            shape, opcode, args = _split_result(instruction.group("rest"))
            trip = _TRIP_COUNT.search(args)
            factor = int(trip.group(1)) if opcode == "while" and trip else 1
            callees = _CALLED.findall(args) + [
                callee.strip().lstrip("%") for listed in _CALLED_LISTS.findall(args)
                for callee in listed.split(",") if callee.strip()]
            calls.setdefault(computation, []).extend((callee, factor) for callee in callees)
            kind = opcode.removesuffix("-start").removesuffix("-done")
            if kind not in KINDS:
                continue
            if opcode.endswith("-done"):
                operand = re.search(r"%?([\w.\-]+)\s*\)", args)
                index = starts.get(operand.group(1)) if operand else None
                if index is not None:
                    found[index] = found[index][:3] + (shape_bytes(shape),)
                continue
            if not _moves_data(kind, args):
                continue
            if opcode.endswith("-start"):
                starts[instruction.group("name")] = len(found)
            found.append((kind, instruction.group("name"), computation, shape_bytes(shape)))
    runs = _executions(calls, entry, [name for name, _, _ in computations])
    return [Collective(kind, name, computation, size, runs.get(computation, 1))
            for kind, name, computation, size in found]


def collective_totals(hlo_text: str) -> dict[str, KindTotals]:
    """`{kind: KindTotals}` for every kind in `KINDS` (zeros where there are none).

    `bytes` is the sum over the program's collectives of result bytes times executions, on one
    device: for `all-reduce`, what one device contributes to (and receives from) all-reduces
    per run of the program."""
    totals = {kind: KindTotals() for kind in KINDS}
    for c in find_collectives(hlo_text):
        t = totals[c.kind]
        totals[c.kind] = KindTotals(t.count + 1, t.executed + c.executed,
                                    t.bytes + c.result_bytes * c.executed)
    return totals
