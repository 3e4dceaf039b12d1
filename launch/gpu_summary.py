"""`launch/gpu_check.sh`'s summary: the key figures of the files one run left in its output
folder, and the JAX / PyTorch ratios, written to OUT/summary.json and printed.

    python launch/gpu_summary.py OUT WALL_S TESTS_STATUS BENCH_STATUS

Reads bench.json (required: the run failed without it), and where present torch.json (PyTorch
eager and `torch.compile`), profile/profile.json (time per category), train.json (the training
command fed by the real pipeline: `launch/rehearsal.py --train_only`), rehearsal.json, tests.txt
and skipped.txt (the steps the budget left out).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

JAX_KEYS = ("compile_s", "step_s", "samples_per_s", "mfu", "peak_flops_per_s",
            "peak_device_memory_bytes", "decode_greedy_tokens_per_s", "decode_beam_tokens_per_s")
TORCH_KEYS = ("torch_version", "device", "dtype", "compiled", "channels_last", "compile_s",
              "first_step_s", "step_s", "samples_per_s", "peak_device_memory_bytes",
              "decode_greedy_tokens_per_s")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarise(out: Path, wall_s: int, tests_status: int) -> dict[str, Any]:
    """The summary of one gpu_check run's folder `out` (module docstring)."""
    bench = _read(out / "bench.json")
    if bench is None:
        raise FileNotFoundError(f"{out / 'bench.json'}: the benchmark did not finish; see "
                                f"{out / 'bench.txt'}")
    jax_side = {k: bench["jax"].get(k) for k in JAX_KEYS}
    tests = (out / "tests.txt").read_text().strip().splitlines() if (
        out / "tests.txt").is_file() else []
    skipped = (out / "skipped.txt").read_text().splitlines() if (
        out / "skipped.txt").is_file() else []
    summary: dict[str, Any] = {
        "machine": bench["machine"], "config": bench["config"], "wall_s": wall_s,
        "skipped": skipped, "tests": tests[-1] if tests else "not run",
        "tests_exit_status": tests_status, "jax": jax_side}
    torch_run = _read(out / "torch.json") or {}
    for key in ("torch", "torch_compiled"):
        if key in torch_run:
            side = torch_run[key]
            summary[key] = {k: side.get(k) for k in TORCH_KEYS if k in side}
            ratios = {"train_samples_per_s": jax_side["samples_per_s"] / side["samples_per_s"]}
            if side.get("decode_greedy_tokens_per_s") and jax_side["decode_greedy_tokens_per_s"]:
                ratios["decode_greedy_tokens_per_s"] = (jax_side["decode_greedy_tokens_per_s"]
                                                        / side["decode_greedy_tokens_per_s"])
            summary[f"jax_over_{key}"] = ratios
    profile = _read(out / "profile" / "profile.json")
    if profile is not None:
        summary["profile"] = {"table": str(out / "profile" / "profile.md"),
                              **{k: profile.get(k) for k in ("wall_s_per_step", "compile_s")}}
    train = _read(out / "train.json")
    if train is not None:
        figures = train.get("training", {}).get("reference")
        summary["training_command"] = {
            "ok": train.get("ok"), "settings": train.get("settings"), **(figures or {}),
            "over_benchmark_samples_per_s": (figures["samples_per_s"] / jax_side["samples_per_s"]
                                             if figures and figures.get("samples_per_s")
                                             else None)}
    rehearsal = _read(out / "rehearsal.json")
    if rehearsal is not None:
        summary["rehearsal"] = {"ok": rehearsal.get("ok"), "total_wall_s":
                                rehearsal.get("total_wall_s"),
                                "failed": [c["check"] for c in rehearsal.get("checks", [])
                                           if not c["ok"]]}
    return summary


def main(argv: list[str]) -> int:
    out, wall_s, tests_status, bench_status = Path(argv[0]), *map(int, argv[1:4])
    try:
        summary = summarise(out, wall_s, tests_status)
    except FileNotFoundError as e:
        print(f"error: {e} (exit status {bench_status})", file=sys.stderr)
        return 1
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
