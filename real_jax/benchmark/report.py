"""The whole benchmark (`run`) and its report: machine, config summary, markdown row."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import sys
from datetime import date
from typing import Any

import jax
import ml_collections

from real_jax.benchmark.components import jax_parts, parts_table, torch_parts
from real_jax.benchmark.jax_side import bench_jax
from real_jax.benchmark.torch_side import bench_torch

GPT2_VOCAB_SIZE = 50257


def machine() -> dict[str, Any]:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count(),
            "cpu_count": os.cpu_count(), "host": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "jax": jax.__version__, "date": date.today().isoformat(),
            # 1, 5 and 15 min run-queue averages at the start: a loaded host slows both sides
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def config_summary(config: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
    return {"preset": config.get("preset", "?"), "encoder": config.model.encoder,
            "dtype": config.model.dtype, "image_size": config.data.image_size,
            "global_batch_size": config.train.global_batch_size, "vocab_size": vocab_size,
            "n_layer": config.model.decoder.n_layer, "n_embd": config.model.decoder.n_embd,
            "variant": config.model.variant}


def release_memory() -> None:
    """Frees what the side just timed left behind (its model, state, compiled program) and hands
    the freed heap back to the OS, so that the next side's peak does not stack on it: the paper
    model's JAX side, eager PyTorch and inductor's compilation each take several GB."""
    gc.collect()
    jax.clear_caches()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not glibc
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def run(config: ml_collections.ConfigDict, *, vocab_size: int = GPT2_VOCAB_SIZE,
        steps: int = 10, warmup: int = 2, decode: bool = True, jax_side: bool = True,
        torch: bool = False, torch_device: str = "cpu", components: bool = False,
        torch_compile: bool = False, torch_channels_last: bool = True) -> dict[str, Any]:
    """The whole benchmark; returns `{"machine", "config", ["jax"], ["torch"],
    ["torch_compiled"], ["jax_over_torch"], ["jax_over_torch_compiled"], ["side_by_side"],
    ["parts", "parts_table"]}` (`parts`: `real_jax.benchmark.components`).

    `torch_compile=True` (with `torch=True`) also times the PyTorch step under `torch.compile`
    (inductor), channels-last when `torch_channels_last`, after the eager one, without decoding.

    `jax_side=False, torch=True` times PyTorch alone: on a GPU each framework is timed in a
    process of its own, since JAX holds most of the device's memory once it has run."""
    result: dict[str, Any] = {"machine": machine(), "config": config_summary(config, vocab_size)}
    if jax_side:
        result["jax"] = bench_jax(config, vocab_size=vocab_size, steps=steps, warmup=warmup,
                                  decode=decode)
    release_memory()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    if torch:
        result["torch"] = bench_torch(config, vocab_size=vocab_size, steps=steps,
                                      warmup=warmup, threads=threads, decode=decode,
                                      device=torch_device)
    if torch and jax_side:
        ratio = {"train_samples_per_s": result["jax"]["samples_per_s"]
                 / result["torch"]["samples_per_s"]}
        if decode:
            ratio["decode_greedy_tokens_per_s"] = (result["jax"]["decode_greedy_tokens_per_s"]
                                                   / result["torch"]["decode_greedy_tokens_per_s"])
        result["jax_over_torch"] = ratio
    if torch and torch_compile:
        release_memory()
        result["torch_compiled"] = bench_torch(
            config, vocab_size=vocab_size, steps=steps, warmup=warmup, threads=threads,
            decode=False, device=torch_device, compile=True, channels_last=torch_channels_last)
        if jax_side:
            result["jax_over_torch_compiled"] = {
                "train_samples_per_s": result["jax"]["samples_per_s"]
                / result["torch_compiled"]["samples_per_s"]}
    if torch:
        result["side_by_side"] = side_by_side_table(result)
    if components and jax_side:
        parts = {"jax": jax_parts(config, vocab_size=vocab_size, steps=steps, warmup=warmup)}
        if torch:
            parts["torch"] = torch_parts(config, vocab_size=vocab_size, steps=steps,
                                         warmup=warmup, threads=threads)
        whole = {"jax": result["jax"]["step_s"]}
        if torch:
            whole["torch"] = result["torch"]["step_s"]
        result["parts"] = parts
        result["parts_table"] = parts_table(parts["jax"], parts.get("torch"), whole)
    return result


def side_by_side_table(result: dict[str, Any]) -> str:
    """Markdown: compile s, first step s, median step s, samples/s and JAX's speed over each,
    for JAX, PyTorch eager and PyTorch compiled (those present in `result`)."""
    rows = ["| framework | compile s | first step s | step s | samples/s | JAX / this |",
            "|---|---|---|---|---|---|"]
    jax_rate = result.get("jax", {}).get("samples_per_s")
    for key, name in (("jax", "JAX (jit)"), ("torch", "PyTorch eager"),
                      ("torch_compiled", "PyTorch torch.compile (inductor)")):
        side = result.get(key)
        if side is None:
            continue
        if key == "torch_compiled" and side.get("channels_last"):
            name += " + channels-last"
        elif key == "torch" and side.get("channels_last"):
            name += " (channels-last)"
        ratio = None if jax_rate is None else jax_rate / side["samples_per_s"]
        rows.append(f"| {name} | {_fmt(side.get('compile_s'))} | "
                    f"{_fmt(side.get('first_step_s'), digits=2)} | "
                    f"{_fmt(side['step_s'], digits=3)} | {_fmt(side['samples_per_s'], digits=3)} "
                    f"| {_fmt(ratio, digits=2)} |")
    return "\n".join(rows)


def _fmt(value: float | None, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value / scale:.{digits}f}{unit}"


MARKDOWN_HEADER = (
    "| date | machine | preset | devices | batch | compile s | step s | samples/s | GFLOP/sample "
    "| achieved TFLOP/s | peak TFLOP/s | MFU | peak mem | greedy tok/s | beam tok/s "
    "| torch samples/s | JAX/torch train | JAX/torch greedy |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(result: dict[str, Any]) -> str:
    m, c, j = result["machine"], result["config"], result["jax"]
    memory = j.get("peak_device_memory_bytes")
    memory_text = (_fmt(memory, " GiB", 2**30, 2) if memory is not None
                   else f"n/a (RSS {_fmt(j['peak_rss_bytes'], ' GiB', 2**30, 2)})")
    torch_result = result.get("torch", {})
    ratio = result.get("jax_over_torch", {})
    cells = [
        m["date"], f"{m['device_kind']} ({m['cpu_count']} cores)" if m["platform"] == "cpu"
        else m["device_kind"], c["preset"], str(m["device_count"]), str(c["global_batch_size"]),
        _fmt(j["compile_s"]), _fmt(j["step_s"], digits=3), _fmt(j["samples_per_s"]),
        _fmt(j["flops_per_sample"], scale=1e9, digits=2),
        _fmt(j["achieved_flops_per_s"], scale=1e12, digits=3),
        _fmt(j["peak_flops_per_s"], scale=1e12, digits=3), f"{100 * j['mfu']:.1f} %",
        memory_text, _fmt(j.get("decode_greedy_tokens_per_s")),
        _fmt(j.get("decode_beam_tokens_per_s")), _fmt(torch_result.get("samples_per_s")),
        _fmt(ratio.get("train_samples_per_s"), digits=2),
        _fmt(ratio.get("decode_greedy_tokens_per_s"), digits=2),
    ]
    return "| " + " | ".join(cells) + " |"
