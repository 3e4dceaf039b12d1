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
  JAX / PyTorch ratios (`--torch_compile`: also under `torch.compile`, inductor, with
  channels-last unless `--notorch_channels_last`, compile s and step s beside eager, one table of
  all three); on this host's CPU, or with `--torch_device=cuda` on the GPU (bfloat16
  autocast where `model.dtype` is bfloat16); `--nojax --torch` times PyTorch alone (on one GPU
  run each framework in its own process: JAX keeps most of the device memory once it has run);
- with `--components`: each part of the step (encoders, projectors, GPT-2, optimizer) timed
  alone in each framework (`real_jax.benchmark.components`), a table beside the whole step.

Prints the results and a markdown row (BENCHMARKS.md's table); `--json` writes them.

The work is in `real_jax.benchmark` (`report.run`); this module only parses the flags.
"""

from __future__ import annotations  # noqa: I001  (real_jax.no_torch must come first)

import real_jax.no_torch  # noqa: F401  (first: without --torch, transformers skips torch)

import json
import os
import sys
from pathlib import Path

import jax
from absl import app, flags

from real_jax.benchmark.jax_side import flops_only
from real_jax.benchmark.report import (
    GPT2_VOCAB_SIZE,
    MARKDOWN_HEADER,
    config_summary,
    machine,
    markdown_row,
    run,
)
from real_jax import cli
from real_jax.cli import set_gpu_xla_flags
from real_jax.distributed import runtime as distributed

_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_VOCAB = flags.DEFINE_integer("vocab_size", GPT2_VOCAB_SIZE, "Decoder vocabulary size.")
_DECODE = flags.DEFINE_bool("decode", True, "Also time greedy and beam decoding.")
_JAX = flags.DEFINE_bool("jax", True, "Time the JAX step (--nojax --torch: PyTorch alone).")
_TORCH = flags.DEFINE_bool("torch", False, "Also time the PyTorch TorchReAl.")
_TORCH_DEVICE = flags.DEFINE_enum("torch_device", "cpu", ["cpu", "cuda"],
                                  "Where --torch runs (cuda: bfloat16 autocast as model.dtype).")
_TORCH_COMPILE = flags.DEFINE_bool(
    "torch_compile", False, "With --torch: also time the PyTorch step under torch.compile "
    "(inductor), beside eager (compile s and step s each).")
_TORCH_CHANNELS_LAST = flags.DEFINE_bool(
    "torch_channels_last", True, "With --torch_compile: channels-last convolution weights and "
    "activations for the compiled step.")
_COMPONENTS = flags.DEFINE_bool(
    "components", False, "Also time each part of the step alone (real_jax.benchmark.components), "
    "in both frameworks with --torch.")
_JSON = flags.DEFINE_string("json", None, "Write the results to this JSON file.")
_FLOPS_ONLY = flags.DEFINE_bool(
    "flops_only", False, "Only parameters and FLOPs per sample from the lowered program (no "
    "compilation, no memory): sizes the paper config anywhere.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _COMPONENTS.value and not _JAX.value:
        raise app.UsageError("--components times each part beside the JAX step: drop --nojax")
    if _TORCH_COMPILE.value and not _TORCH.value:
        raise app.UsageError("--torch_compile times PyTorch: add --torch")
    if not _JAX.value:
        # JAX would take 75 % of the GPU at its first device query (the machine summary),
        # leaving PyTorch the rest; a user's own setting wins.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    set_gpu_xla_flags()
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
                 decode=_DECODE.value, jax_side=_JAX.value, torch=_TORCH.value,
                 torch_device=_TORCH_DEVICE.value, components=_COMPONENTS.value,
                 torch_compile=_TORCH_COMPILE.value,
                 torch_channels_last=_TORCH_CHANNELS_LAST.value)
    if jax.process_index() != 0:
        return
    result["command"] = " ".join(["python -m real_jax.bench", *sys.argv[1:]])
    print(json.dumps(result, indent=1))
    if "jax" in result:
        print(MARKDOWN_HEADER)
        print(markdown_row(result))
    if "side_by_side" in result:
        print(result["side_by_side"])
    if "parts_table" in result:
        print(result["parts_table"])
    if _JSON.value:
        path = Path(_JSON.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (path[:preset]).")
    flags.mark_flags_as_required(["config"])
    # not a JAX command to `cli`: no compilation cache (compile times are measured), and the GPU
    # flags are set in `main`, after the --nojax environment
    cli.run(main, jax_command=False)
