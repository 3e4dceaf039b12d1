"""Throughput and MFU benchmark of the train step and of decoding, JAX and (optionally) PyTorch.

    python -m real_jax.bench --config=configs/real.py:bench [--config.x=...] [--steps=10]
        [--vocab_size=50257] [--torch] [--json=runs/bench/bench.json]

For the config's model and global batch on the devices present (all of them, data parallel, as
in training), with synthetic random batches (no dataset needed):

- compile time of the train step, and its step time (median of `--steps` after `--warmup`);
- samples/s; model FLOPs per sample from XLA's cost analysis of the compiled step (the
  partitioned per-device program's flops x devices / global batch: forward, backward and the
  optimizer update); achieved FLOP/s and MFU against a peak measured in the same run (a large
  matmul in the compute dtype, `model.dtype`), so MFU is relative to what this machine really
  does, not a datasheet;
- peak device memory (`device.memory_stats()["peak_bytes_in_use"]`; n/a on CPU, where the
  process's peak RSS is given instead);
- decoding tokens/s with the KV cache, greedy and beam (`generation.beam_size`), on the same
  batch, counting the positions the decoder actually ran (the loop stops when all rows ended);
- with `--torch`: the same for the PyTorch `TorchReAl` of `real_jax.interop` (built from the
  config with random weights, same batch, as many threads as XLA uses), a train step written the
  same way (generation loss + consistency loss, AdamW, clipping) and its greedy decoding, and the
  JAX / PyTorch ratios.

Prints the results and a markdown row (BENCHMARKS.md's table); `--json` writes them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from real_jax import distributed
from real_jax import sharding as shd
from real_jax.generation import make_generate_fn
from real_jax.models import DTYPES, build_model
from real_jax.optim import make_optimizer
from real_jax.registration import config_from_data_config
from real_jax.train_step import (
    abstract_train_state,
    create_train_state,
    example_batch,
    make_train_step,
)

GPT2_VOCAB_SIZE = 50257


def random_batch(config: ml_collections.ConfigDict, batch_size: int, vocab_size: int,
                 eos_id: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in the pipeline's format (README, "Batch format") with random content."""
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


def _median_time(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
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
    best = min(_median_time(lambda: matmul(a, b).block_until_ready(), 1, 0)[0]
               for _ in range(repeats))
    return {"peak_flops_per_s": 2.0 * size**3 * n / best, "peak_matmul_size": size,
            "peak_dtype": jnp.dtype(dtype).name}


def bench_jax(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int, warmup: int,
              decode: bool = True, peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train step (and decoding) of the JAX model on all devices; see the module docstring."""
    eos_id = vocab_size - 1
    model = build_model(config.model, vocab_size, eos_id,
                        registration=config_from_data_config(config.data))
    mesh = shd.make_mesh()
    batch_size = config.train.global_batch_size
    tx, schedule = make_optimizer(config.optim, 1000)
    shapes = example_batch(batch_size, config.data.image_size, config.data.question_max_tokens,
                           config.data.answer_max_tokens)
    state, shardings = create_train_state(model, tx, jax.random.key(0), shapes, mesh,
                                          fsdp=config.mesh.fsdp)
    step_fn = make_train_step(model, tx, config.loss, mesh, shardings, schedule=schedule,
                              grad_accum_steps=config.train.grad_accum_steps)
    rng = jax.random.key(1)
    host = random_batch(config, batch_size, vocab_size, eos_id)
    per_host = batch_size // jax.process_count()
    local = {k: v[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
             for k, v in host.items()}
    batch = shd.make_global_batch(local, mesh)

    param_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    flops_per_step = xla_flops(compiled) * jax.device_count()

    holder = {"state": state}

    def one_step() -> None:
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        jax.block_until_ready(metrics["loss"])

    step_s, times = _median_time(one_step, steps, warmup)
    result: dict[str, Any] = {
        "framework": "jax",
        "param_count": param_count,
        # float32 gradients all-reduced once per step under data parallelism
        "gradient_bytes_per_step": 4 * param_count,
        "compile_s": compile_s,
        "step_s": step_s,
        "step_times_s": times,
        "samples_per_s": batch_size / step_s,
        "flops_per_sample": flops_per_step / batch_size,
        "achieved_flops_per_s": flops_per_step / step_s,
    }
    peak = peak or measure_peak_flops(DTYPES[config.model.dtype])
    result.update(peak)
    result["mfu"] = result["achieved_flops_per_s"] / peak["peak_flops_per_s"]
    result["peak_device_memory_bytes"] = peak_device_memory()
    if decode:
        variables = {"params": holder["state"].params,
                     "batch_stats": holder["state"].batch_stats}
        result.update(bench_jax_decode(model, config, variables, batch, eos_id, steps=3))
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def flops_only(config: ml_collections.ConfigDict, *, vocab_size: int) -> dict[str, Any]:
    """Parameters and FLOPs per sample of the train step without compiling or running it.

    XLA's cost analysis of the lowered (not yet optimised) program on one device: no memory is
    allocated, so the paper config at 512 px can be sized on a laptop. Compiled-program figures
    (what `bench_jax` reports) can differ by a few per cent after XLA's simplifications."""
    model = build_model(config.model, vocab_size, vocab_size - 1,
                        registration=config_from_data_config(config.data))
    mesh = shd.make_mesh(jax.devices()[:1])
    batch_size = config.train.global_batch_size
    tx, schedule = make_optimizer(config.optim, 1000)
    shapes = example_batch(batch_size, config.data.image_size, config.data.question_max_tokens,
                           config.data.answer_max_tokens)
    abstract, shardings = abstract_train_state(model, tx, shapes, mesh, fsdp=False)
    step_fn = make_train_step(model, tx, config.loss, mesh, shardings, schedule=schedule,
                              grad_accum_steps=config.train.grad_accum_steps)
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd.batch_sharding(mesh))
             for k, s in shapes.items()}
    lowered = step_fn.lower(abstract, batch, jax.random.key(0))
    param_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    return {"framework": "jax", "param_count": param_count,
            "gradient_bytes_per_step": 4 * param_count,
            "flops_per_sample": xla_flops(lowered) / batch_size, "flops_source": "lowered"}


def _decoded_positions(tokens: np.ndarray, eos_id: int) -> int:
    """Positions the decoder ran for a `[B, T]` output: the loop runs until every row ended."""
    ends = [int(np.argmax(row == eos_id)) + 1 if (row == eos_id).any() else row.shape[0]
            for row in tokens]
    return tokens.shape[0] * max(ends)


def bench_jax_decode(model: Any, config: ml_collections.ConfigDict, variables: Any,
                     batch: dict[str, jax.Array], eos_id: int, steps: int) -> dict[str, Any]:
    gen = config.generation
    out: dict[str, Any] = {}
    for method, beam in (("greedy", 1), ("beam", gen.beam_size)):
        generate = make_generate_fn(model, method=method, max_new_tokens=gen.max_answer_tokens,
                                    eos_id=eos_id, beam_size=beam,
                                    length_penalty=gen.length_penalty)
        tokens = np.asarray(jax.device_get(generate(variables, batch)))  # compile + warm-up
        seconds, _ = _median_time(lambda g=generate: jax.block_until_ready(g(variables, batch)),
                                  steps, 0)
        positions = _decoded_positions(tokens, eos_id)
        out[f"decode_{method}_tokens_per_s"] = positions / seconds
        out[f"decode_{method}_s"] = seconds
        out[f"decode_{method}_positions"] = positions
    out["decode_beam_size"] = gen.beam_size
    return out


# ----------------------------------------------------------------------------- PyTorch


def _torch_model(config: ml_collections.ConfigDict, vocab_size: int, eos_id: int) -> Any:
    """`TorchReAl` with random weights for `config.model` (the export's structure summary)."""
    # transformers is already imported (with its Flax models) by the JAX side; do not set
    # USE_FLAX=0 here: it would leak into subprocesses and break their FlaxGPT2 import.
    from transformers import GPT2Config, GPT2LMHeadModel

    from real_jax.interop.torch_model import TorchReAl
    from real_jax.models.resnet import make_encoder

    m = config.model
    encoder = make_encoder(m.encoder)
    decoder = GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab_size, n_positions=m.decoder.n_positions, n_embd=m.decoder.n_embd,
        n_layer=m.decoder.n_layer, n_head=m.decoder.n_head, resid_pdrop=m.decoder.dropout,
        embd_pdrop=m.decoder.dropout, attn_pdrop=m.decoder.dropout,
        bos_token_id=eos_id, eos_token_id=eos_id))
    summary = {
        "variant": m.variant,
        "encoder": {"name": m.encoder, "stage_sizes": list(encoder.stage_sizes),
                    "num_filters": encoder.num_filters, "feature_dim": encoder.feature_dim},
        "num_queries": m.num_queries,
        "projector": {"width": m.projector_width, "depth": m.projector_depth,
                      "heads": m.projector_heads},
        "eos_id": eos_id, "vocab_size": vocab_size,
        "max_answer_tokens": config.generation.max_answer_tokens,
    }
    return TorchReAl(summary, decoder)


def bench_torch(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int, warmup: int,
                threads: int, decode: bool = True) -> dict[str, Any]:
    """The PyTorch train step and greedy decoding on this host's CPU (float32)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    eos_id = vocab_size - 1
    model = _torch_model(config, vocab_size, eos_id)
    batch_size = config.train.global_batch_size
    host = random_batch(config, batch_size, vocab_size, eos_id)
    t = {k: torch.from_numpy(v).long() if "ids" in k or "mask" in k else torch.from_numpy(v)
         for k, v in host.items()}
    optim = config.optim
    opt = torch.optim.AdamW(model.parameters(), lr=optim.learning_rate,
                            betas=(optim.b1, optim.b2), weight_decay=optim.weight_decay)
    loss_config = config.loss
    use_consistency = config.model.variant == "real" and loss_config.consistency_weight != 0

    def train_step() -> float:
        model.train()
        prefix, features = model.encode(t["ref"], t["main"])
        question = model.decoder.transformer.wte(t["question_ids"])
        answer = model.decoder.transformer.wte(t["answer_ids"])
        embeds = torch.cat([prefix, question, answer], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), t["question_mask"],
                          t["answer_mask"]], dim=1)
        positions = (torch.cumsum(mask, 1) - 1).clamp(min=0)
        logits = model.decoder(inputs_embeds=embeds, attention_mask=mask,
                               position_ids=positions).logits
        start = prefix.shape[1] + question.shape[1] - 1
        logits = logits[:, start:start + answer.shape[1]].float()
        nll = F.cross_entropy(logits.transpose(1, 2), t["answer_ids"], reduction="none")
        answer_mask = t["answer_mask"].float()
        loss = ((nll * answer_mask).sum(1) / answer_mask.sum(1).clamp(min=1)).mean()
        if use_consistency:
            sign = 1.0 if loss_config.consistency_sign == "paper" else -1.0
            images = features["ref"] - features["main"]
            if loss_config.get("consistency_image_target", "trainable") == "detached":
                images = images.detach()
            difference = sign * images - features["residual"]
            difference = difference.mean(dim=(2, 3))  # pooled, [B, C]
            loss = loss + loss_config.consistency_weight * difference.square().mean(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip_norm)
        opt.step()
        return float(loss.detach())

    step_s, times = _median_time(train_step, steps, warmup)
    result: dict[str, Any] = {"framework": "torch", "torch_version": torch.__version__,
                              "threads": threads, "step_s": step_s, "step_times_s": times,
                              "samples_per_s": batch_size / step_s}
    if decode:
        model.eval()
        max_new = config.generation.max_answer_tokens
        args = (t["ref"], t["main"], t["question_ids"], t["question_mask"])
        tokens = model.generate(*args, max_new_tokens=max_new).numpy()
        seconds, _ = _median_time(lambda: model.generate(*args, max_new_tokens=max_new), 3, 0)
        positions = _decoded_positions(tokens, eos_id)
        result.update({"decode_greedy_tokens_per_s": positions / seconds,
                       "decode_greedy_s": seconds, "decode_greedy_positions": positions})
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count(),
            "cpu_count": os.cpu_count(), "host": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "jax": jax.__version__, "date": date.today().isoformat()}


def config_summary(config: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
    return {"preset": config.get("preset", "?"), "encoder": config.model.encoder,
            "dtype": config.model.dtype, "image_size": config.data.image_size,
            "global_batch_size": config.train.global_batch_size, "vocab_size": vocab_size,
            "n_layer": config.model.decoder.n_layer, "n_embd": config.model.decoder.n_embd,
            "variant": config.model.variant}


def run(config: ml_collections.ConfigDict, *, vocab_size: int = GPT2_VOCAB_SIZE,
        steps: int = 10, warmup: int = 2, decode: bool = True,
        torch: bool = False) -> dict[str, Any]:
    """The whole benchmark; returns `{"machine", "config", "jax", ["torch", "ratio"]}`."""
    result: dict[str, Any] = {
        "machine": machine(),
        "config": config_summary(config, vocab_size),
        "jax": bench_jax(config, vocab_size=vocab_size, steps=steps, warmup=warmup,
                         decode=decode),
    }
    if torch:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        result["torch"] = bench_torch(config, vocab_size=vocab_size, steps=steps,
                                      warmup=warmup, threads=threads, decode=decode)
        ratio = {"train_samples_per_s": result["jax"]["samples_per_s"]
                 / result["torch"]["samples_per_s"]}
        if decode:
            ratio["decode_greedy_tokens_per_s"] = (result["jax"]["decode_greedy_tokens_per_s"]
                                                   / result["torch"]["decode_greedy_tokens_per_s"])
        result["jax_over_torch"] = ratio
    return result


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


_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_VOCAB = flags.DEFINE_integer("vocab_size", GPT2_VOCAB_SIZE, "Decoder vocabulary size.")
_DECODE = flags.DEFINE_bool("decode", True, "Also time greedy and beam decoding.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time the PyTorch TorchReAl (CPU).")
_JSON = flags.DEFINE_string("json", None, "Write the results to this JSON file.")
_FLOPS_ONLY = flags.DEFINE_bool(
    "flops_only", False, "Only parameters and FLOPs per sample from the lowered program (no "
    "compilation, no memory): sizes the paper config anywhere.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()
    config = flags.FLAGS.config
    if _FLOPS_ONLY.value:
        result = {"machine": machine(), "config": config_summary(config, _VOCAB.value),
                  "jax": flops_only(config, vocab_size=_VOCAB.value)}
        print(json.dumps(result, indent=1))
        if _JSON.value:
            Path(_JSON.value).parent.mkdir(parents=True, exist_ok=True)
            Path(_JSON.value).write_text(json.dumps(result, indent=1))
        return
    result = run(config, vocab_size=_VOCAB.value, steps=_STEPS.value, warmup=_WARMUP.value,
                 decode=_DECODE.value, torch=_TORCH.value)
    if jax.process_index() != 0:
        return
    result["command"] = " ".join(["python -m real_jax.bench", *sys.argv[1:]])
    print(json.dumps(result, indent=1))
    print(MARKDOWN_HEADER)
    print(markdown_row(result))
    if _JSON.value:
        path = Path(_JSON.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (path[:preset]).")
    flags.mark_flags_as_required(["config"])
    app.run(main)
