"""The JAX side of `python -m real_jax.bench`: the compiled train step of the config's model on
all devices (data parallel, as in training), its FLOPs from XLA's cost analysis of the lowered
program (the model's FLOPs: after optimisation, XLA's GPU count leaves out the cuBLAS and cuDNN
calls, and came to 1.5 % of the model's FLOPs on an H200), the
cross-device collectives of the compiled step (`real_jax.distributed.hlo`), and KV-cached
greedy and beam decoding."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from real_jax.benchmark.timing import (
    measure_peak_flops,
    median_time,
    peak_device_memory,
    peak_rss_bytes,
    random_batch,
    xla_flops,
)
from real_jax.distributed import hlo
from real_jax.distributed import sharding as shd
from real_jax.experiment import build_experiment, generate_fn
from real_jax.models import DTYPES


def bench_jax(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int, warmup: int,
              decode: bool = True, peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train step (and decoding) of the JAX model on all devices; see the module docstring."""
    experiment = build_experiment(config, vocab_size=vocab_size, total_steps=1000, check=False)
    eos_id, mesh = experiment.eos_id, experiment.mesh
    batch_size = config.train.global_batch_size
    state, shardings = experiment.init_state(jax.random.key(0))
    step_fn = experiment.train_step(shardings)
    rng = jax.random.key(1)
    host = random_batch(config, batch_size, vocab_size, eos_id)
    per_host = batch_size // jax.process_count()
    local = {k: v[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
             for k, v in host.items()}
    batch = shd.make_global_batch(local, mesh)

    param_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    start = time.perf_counter()
    lowered = step_fn.lower(state, batch, rng)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops_per_step = xla_flops(lowered)  # the global program, before partitioning
    compiled_flops_per_step = xla_flops(compiled) * jax.device_count()
    collectives = hlo.collective_totals(compiled.as_text())

    holder = {"state": state}

    def one_step() -> None:
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        jax.block_until_ready(metrics["loss"])

    step_s, times = median_time(one_step, steps, warmup)
    result: dict[str, Any] = {
        "framework": "jax",
        "param_count": param_count,
        # float32 gradients all-reduced once per step under data parallelism
        "gradient_bytes_per_step": 4 * param_count,
        # what the compiled step all-reduces, per device (0 on one device): the gradients, a
        # parameter used twice once per use where XLA does not add the parts first (the tied
        # GPT-2 embedding on CPU: +20% for the paper model), batch-norm statistics, metrics
        "all_reduce_bytes_per_step": collectives["all-reduce"].bytes,
        "collective_counts": {kind: t.count for kind, t in collectives.items()},
        "collective_bytes_per_step": {kind: t.bytes for kind, t in collectives.items()},
        "compile_s": compile_s,
        "step_s": step_s,
        "step_times_s": times,
        "samples_per_s": batch_size / step_s,
        "flops_per_sample": flops_per_step / batch_size,
        "flops_source": "lowered",
        # XLA's count after optimisation and partitioning, for reference only (see above)
        "compiled_flops_per_sample": compiled_flops_per_step / batch_size,
        "achieved_flops_per_s": flops_per_step / step_s,
    }
    peak = peak or measure_peak_flops(DTYPES[config.model.dtype])
    result.update(peak)
    result["mfu"] = result["achieved_flops_per_s"] / peak["peak_flops_per_s"]
    result["peak_device_memory_bytes"] = peak_device_memory()
    if decode:
        variables = {"params": holder["state"].params,
                     "batch_stats": holder["state"].batch_stats}
        result.update(bench_jax_decode(experiment.model, config, variables, batch, eos_id,
                                       steps=3))
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def flops_only(config: ml_collections.ConfigDict, *, vocab_size: int) -> dict[str, Any]:
    """Parameters and FLOPs per sample of the train step without compiling or running it.

    XLA's cost analysis of the lowered (not yet optimised) program on one device, the count
    `bench_jax` reports too: no memory is allocated, so the paper config at 512 px can be sized
    on a laptop."""
    experiment = build_experiment(config, vocab_size=vocab_size, devices=jax.devices()[:1],
                                  total_steps=1000, check=False)
    mesh, batch_size = experiment.mesh, config.train.global_batch_size
    abstract, shardings = experiment.abstract_state()
    step_fn = experiment.train_step(shardings)
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd.batch_sharding(mesh))
             for k, s in experiment.input_shapes.items()}
    lowered = step_fn.lower(abstract, batch, jax.random.key(0))
    param_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    return {"framework": "jax", "param_count": param_count,
            "gradient_bytes_per_step": 4 * param_count,
            "flops_per_sample": xla_flops(lowered) / batch_size, "flops_source": "lowered"}


def decoded_positions(tokens: np.ndarray, eos_id: int) -> int:
    """Positions the decoder ran for a `[B, T]` output: the loop runs until every row ended."""
    ends = [int(np.argmax(row == eos_id)) + 1 if (row == eos_id).any() else row.shape[0]
            for row in tokens]
    return tokens.shape[0] * max(ends)


def bench_jax_decode(model: Any, config: ml_collections.ConfigDict, variables: Any,
                     batch: dict[str, jax.Array], eos_id: int, steps: int) -> dict[str, Any]:
    gen = config.generation
    out: dict[str, Any] = {}
    for method in ("greedy", "beam"):
        settings = ml_collections.ConfigDict(gen.to_dict() | {"method": method})
        generate = generate_fn(model, settings, eos_id)
        tokens = np.asarray(jax.device_get(generate(variables, batch)))  # compile + warm-up
        seconds, _ = median_time(lambda g=generate: jax.block_until_ready(g(variables, batch)),
                                  steps, 0)
        positions = decoded_positions(tokens, eos_id)
        out[f"decode_{method}_tokens_per_s"] = positions / seconds
        out[f"decode_{method}_s"] = seconds
        out[f"decode_{method}_positions"] = positions
    out["decode_beam_size"] = gen.beam_size
    return out
