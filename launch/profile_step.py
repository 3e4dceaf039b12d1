"""Where the train step's time goes, by category, from a `jax.profiler` trace of a few steps.

    python launch/profile_step.py --config=configs/real.py[:preset] [--config.x=...] \
        [--steps=3] [--warmup=1] [--vocab_size=50257] [--out=runs/profile/NAME]

Builds the config's model and train step on all local devices (as `real_jax.bench` does: random
batches in the pipeline's format, state donated), compiles it, runs `--warmup` steps, then traces
`--steps` steps with `jax.profiler.trace` (each waited for, as training's loop does every few
steps), and makes the table of time per category (`real_jax.benchmark.profile`: convolutions,
normalisation and elementwise, attention and matmuls, the optimizer, layout, other, idle gaps),
each with its FLOPs and bytes per step and a roofline note against this machine's matmul peak
(`measure_peak_flops`, the config's compute dtype) and memory bandwidth (a large elementwise op,
`measure_bandwidth`), both measured in the same run.

Writes to `--out`: the trace (`plugins/profile/...`, open in Perfetto or TensorBoard), the compiled
step's HLO (`step.hlo.txt`), `profile.json` (the table's figures, machine, config, command) and
`profile.md` (the table), and prints the table. `--noroofline` skips the peak and bandwidth
measurements (no roofline notes); `--retable --out=DIR` remakes the table from DIR's files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from real_jax.benchmark import profile
from real_jax.benchmark.report import GPT2_VOCAB_SIZE, config_summary, machine
from real_jax.benchmark.timing import measure_peak_flops, median_time, random_batch
from real_jax.cli import set_gpu_xla_flags
from real_jax.distributed import sharding as shd
from real_jax.experiment import build_experiment
from real_jax.models import DTYPES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:preset]).")
_STEPS = flags.DEFINE_integer("steps", 3, "Traced train steps.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untraced steps after compilation.")
_VOCAB = flags.DEFINE_integer("vocab_size", GPT2_VOCAB_SIZE, "Decoder vocabulary size.")
_OUT = flags.DEFINE_string("out", "runs/profile/step", "Folder for the trace and the table.")
_RETABLE = flags.DEFINE_bool(
    "retable", False, "Only remake the table from `--out`'s trace, HLO and profile.json (the "
    "measured peak and bandwidth kept): nothing is compiled or run.")
_ROOFLINE = flags.DEFINE_bool("roofline", True, "Measure the matmul peak and the memory "
                              "bandwidth for the roofline notes.")


def measure_bandwidth(megabytes: int | None = None, repeats: int = 5) -> float:
    """Bytes/s of `y = 2x + 1` over a large float32 array on the default device (read + write),
    best of `repeats`; 256 MB on CPU, 2 GB on accelerators."""
    device = jax.devices()[0]
    megabytes = megabytes or (256 if device.platform == "cpu" else 2048)
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    fn = jax.jit(lambda v: 2 * v + 1)
    fn(x).block_until_ready()
    best = min(median_time(lambda: fn(x).block_until_ready(), 1, 0)[0] for _ in range(repeats))
    return 2 * x.nbytes / best


def profile_step(config, *, vocab_size: int, steps: int, warmup: int, out: Path,
                 roofline: bool = True) -> dict:
    """Traces `steps` train steps into `out`; returns `profile.summarize`'s dict and the HLO."""
    experiment = build_experiment(config, vocab_size=vocab_size, total_steps=1000, check=False)
    state, shardings = experiment.init_state(jax.random.key(0))
    step_fn = experiment.train_step(shardings)
    batch_size = config.train.global_batch_size
    host = random_batch(config, batch_size, vocab_size, experiment.eos_id)
    per_host = batch_size // jax.process_count()
    local = {k: v[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
             for k, v in host.items()}
    batch = shd.make_global_batch(local, experiment.mesh)
    rng = jax.random.key(1)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    hlo_text = compiled.as_text()
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.hlo.txt").write_text(hlo_text)
    for _ in range(warmup):
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics["loss"])
    with jax.profiler.trace(str(out)):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready(metrics["loss"])
        traced_s = time.perf_counter() - start
    module = profile.parse_hlo(hlo_text)
    events = profile.trace_events(profile.load_trace(out), module=module.name)
    peak = bandwidth = None
    if roofline:
        peak = measure_peak_flops(DTYPES[config.model.dtype])["peak_flops_per_s"]
        bandwidth = measure_bandwidth()
    summary = profile.summarize(events, module, steps=steps, peak_flops_per_s=peak,
                                bandwidth_bytes_per_s=bandwidth)
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list | tuple) else (analysis or {})
    summary.update({"compile_s": compile_s, "wall_s_per_step": traced_s / steps,
                    "xla_compiled_flops_per_step": float(analysis.get("flops", 0.0)),
                    "xla_compiled_bytes_accessed_per_step":
                        float(analysis.get("bytes accessed", 0.0))})
    return summary


def retable(out: Path) -> dict:
    """`profile.summarize` again from a finished run's files in `out`."""
    old = json.loads((out / "profile.json").read_text())
    module = profile.parse_hlo((out / "step.hlo.txt").read_text())
    events = profile.trace_events(profile.load_trace(out), module=module.name)
    summary = profile.summarize(events, module, steps=old["steps"],
                                peak_flops_per_s=old["peak_flops_per_s"],
                                bandwidth_bytes_per_s=old["bandwidth_bytes_per_s"])
    return old | summary


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = Path(_OUT.value)
    if _RETABLE.value:
        summary = retable(out)
        table = profile.markdown_table(summary)
        (out / "profile.json").write_text(json.dumps(summary, indent=1))
        (out / "profile.md").write_text(table + "\n")
        print(table)
        return
    set_gpu_xla_flags()
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required (unless --retable)")
    summary = profile_step(config, vocab_size=_VOCAB.value, steps=_STEPS.value,
                           warmup=_WARMUP.value, out=out, roofline=_ROOFLINE.value)
    summary.update({"machine": machine(), "config": config_summary(config, _VOCAB.value),
                    "command": " ".join(["python launch/profile_step.py", *sys.argv[1:]])})
    table = profile.markdown_table(summary)
    (out / "profile.json").write_text(json.dumps(summary, indent=1))
    (out / "profile.md").write_text(table + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "categories"}, indent=1))
    print(table)


if __name__ == "__main__":
    app.run(main)
