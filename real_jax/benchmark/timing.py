"""Measuring tools shared by the benchmarks: timing, memory, XLA's FLOP count, the matmul peak,
and random batches in the pipeline's format."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from real_jax.distributed import sharding as shd


def random_batch(config: ml_collections.ConfigDict, batch_size: int, vocab_size: int,
                 eos_id: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in the pipeline's format (docs/model.md, "Batch format") with random content."""
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    lq, la = config.data.question_max_tokens, config.data.answer_max_tokens
    ref = rng.integers(0, 256, (batch_size, size, size), dtype=np.uint8)
    main = np.clip(ref.astype(np.int16) + rng.integers(-40, 40, ref.shape), 0, 255)
    question_ids = np.full((batch_size, lq), eos_id, np.int32)
    question_mask = np.zeros((batch_size, lq), np.int32)
    answer_ids = np.full((batch_size, la), eos_id, np.int32)
    answer_mask = np.zeros((batch_size, la), np.int32)
    for i in range(batch_size):
        q = int(rng.integers(max(1, lq // 2), lq + 1))
        a = int(rng.integers(max(1, la // 2), la))
        question_ids[i, lq - q:] = rng.integers(0, vocab_size - 1, q)
        question_mask[i, lq - q:] = 1
        answer_ids[i, :a] = rng.integers(0, vocab_size - 1, a)
        answer_ids[i, a] = eos_id
        answer_mask[i, :a + 1] = 1
    return {"ref": ref, "main": main.astype(np.uint8), "question_ids": question_ids,
            "question_mask": question_mask, "answer_ids": answer_ids, "answer_mask": answer_mask}


def median_time(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_device_memory() -> int | None:
    """Largest `peak_bytes_in_use` over the local devices, or None where not reported (CPU)."""
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def xla_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled (per-device, after partitioning) program."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0)) if analysis else 0.0


def measure_peak_flops(dtype: Any, size: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Dense matmul FLOP/s of all local devices together (each multiplies its own pair).

    `size` defaults to 2048 on CPU and 8192 on accelerators; the figure is the best of
    `repeats` timed calls after one warm-up."""
    devices = jax.local_devices()
    if size is None:
        size = 2048 if devices[0].platform == "cpu" else 8192
    mesh = shd.make_mesh(devices)
    sharding = shd.batch_sharding(mesh)
    n = len(devices)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (n, size, size), dtype), sharding)
    b = jax.device_put(jax.random.normal(key_b, (n, size, size), dtype), sharding)
    matmul = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y,
                                             preferred_element_type=dtype))
    matmul(a, b).block_until_ready()
    best = min(median_time(lambda: matmul(a, b).block_until_ready(), 1, 0)[0]
               for _ in range(repeats))
    return {"peak_flops_per_s": 2.0 * size**3 * n / best, "peak_matmul_size": size,
            "peak_dtype": jnp.dtype(dtype).name}
