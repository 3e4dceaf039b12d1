"""Cross-device collectives of the compiled train step on 8 forced CPU devices, data parallel
and FSDP: a JSON report (and a markdown table, BENCHMARKS.md section 9).

    python launch/collectives.py [--config=configs/real.py[:preset]] [--vocab_size=50257]
        [--nosmall_inputs] [--json=launch/results/collectives_paper.json] [--markdown]
        [--config.field=value ...]

For each layout (`mesh.fsdp` off, then on) the train step (`Experiment.train_step`) is lowered
from the abstract state and compiled for 8 devices, nothing allocated, and the compiled HLO is
read by `real_jax.distributed.hlo`: the count, executions and bytes (per device) of each kind of
collective, beside the sizes that bound them (parameter, sharded-parameter, batch-norm statistics
bytes, metric scalars). Plain data parallelism should all-reduce only; FSDP should all-gather
each sharded parameter once and sum the gradients (all-reduce or reduce-scatter).
`tests/scaling/test_collectives.py` runs this script on the tiny preset and checks those bounds.

The default is the paper config (`configs/real.py`: ResNet-50 x2, projectors, GPT-2 124M,
bfloat16 compute) with only the inputs shrunk (`--small_inputs`, the default): 64 px images, a
global batch of 8 (one example per device) and 8-token question and answer budgets. The
collectives a layout needs do not depend on those sizes, and the paper config's 512 px would
make the compile far longer. The config is not checked against the machine (`check=False`): the
paper config names pretrained weights and a dataset that the compile does not need.

The device count must be set before JAX starts a backend, so the script re-runs itself with
`XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu` (`launch.local.
process_env`, which keeps any other XLA flags) unless it already has them. Two compiles: about
4 min for the paper config on 2 CPU cores, 1 to 2 min for the tiny preset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# `python launch/collectives.py` puts launch/, not the repository, first on the path.
sys.path.insert(0, str(REPO))
# Never uses PyTorch: transformers, imported for FlaxGPT2, must not load it (no_torch.py).
os.environ.setdefault("USE_TORCH", "0")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch.local import process_env  # noqa: E402
from real_jax.distributed import hlo  # noqa: E402
from real_jax.distributed import sharding as shd  # noqa: E402
from real_jax.experiment import build_experiment  # noqa: E402

DEVICES = 8
GPT2_VOCAB = 50257
# Less LLVM effort on the machine code (about a fifth of the compile time here): the collectives
# are fixed by XLA's HLO passes before code generation, and the same with or without these.
FAST_CODEGEN = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LAYOUTS = (("data_parallel", False), ("fsdp", True))

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(REPO / "configs" / "real.py"), "Config file (path[:preset]); default the paper "
    "config. `mesh.fsdp` is set by the script (both layouts are compiled).")
_VOCAB = flags.DEFINE_integer("vocab_size", GPT2_VOCAB, "Decoder vocabulary size.")
_SMALL = flags.DEFINE_bool(
    "small_inputs", True, f"64 px images, global batch {DEVICES}, 8-token question and answer "
    "budgets instead of the config's (same collectives, much shorter compile).")
_JSON = flags.DEFINE_string("json", None, "Also write the report to this JSON file.")
_MARKDOWN = flags.DEFINE_bool("markdown", False, "Print a markdown table after the report.")


def has_devices(env: Mapping[str, str]) -> bool:
    """Whether `env` already gives JAX `DEVICES` CPU devices (`launch.local.process_env`)."""
    count = f"--xla_force_host_platform_device_count={DEVICES}"
    return env.get("JAX_PLATFORMS") == "cpu" and count in env.get("XLA_FLAGS", "").split()


def config_name() -> str:
    """The `--config` argument, its file relative to the repository when inside it."""
    path, colon, preset = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    with contextlib.suppress(ValueError):  # a config file outside the repository
        path = str(Path(path).resolve().relative_to(REPO))
    return path + colon + preset


def shrink_inputs(config: ml_collections.ConfigDict) -> None:
    """The config's model with small inputs (`--small_inputs`)."""
    config.data.image_size = 64
    config.data.question_max_tokens = 8
    config.data.answer_max_tokens = 8
    config.generation.answer_max_tokens = 7
    config.train.global_batch_size = DEVICES
    config.eval.batch_size = DEVICES


def tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def compile_step(base: ml_collections.ConfigDict, vocab_size: int, fsdp: bool) -> dict[str, Any]:
    """The compiled train step's collectives, `{kind: {count, executed, bytes}}`, and the sizes
    that bound them (bytes per device)."""
    config = base.copy_and_resolve_references()
    config.mesh.fsdp = fsdp
    experiment = build_experiment(config, vocab_size=vocab_size, total_steps=1000, check=False)
    abstract, shardings = experiment.abstract_state()
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd.batch_sharding(
        experiment.mesh)) for k, s in experiment.input_shapes.items()}
    start = time.perf_counter()
    lowered = experiment.train_step(shardings).lower(abstract, batch, jax.random.key(0))
    compiled = lowered.compile(compiler_options=FAST_CODEGEN)
    seconds = time.perf_counter() - start
    totals = hlo.collective_totals(compiled.as_text())
    params, param_shardings = jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params)
    _, metrics = lowered.out_info  # (new state, metrics): shapes of the step's outputs
    model = config.model
    return {
        "model": {"encoder": model.encoder, "n_layer": model.decoder.n_layer,
                  "n_embd": model.decoder.n_embd, "vocab_size": vocab_size, "dtype": model.dtype,
                  "variant": model.variant, "image_size": config.data.image_size,
                  "batch": config.train.global_batch_size},
        "compile_s": seconds,
        "param_count": sum(int(np.prod(x.shape)) for x in params),
        "param_bytes": tree_bytes(abstract.params),
        # mean and variance of every batch-norm layer (float32)
        "batch_stats_bytes": tree_bytes(abstract.batch_stats),
        "metric_scalars": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(metrics)),
        "sharded_params": sum(not s.is_fully_replicated for s in param_shardings),
        # float32 bytes of the parameters FSDP splits (what its all-gathers bring together)
        "sharded_param_bytes": sum(4 * int(np.prod(x.shape)) for x, s in zip(
            params, param_shardings, strict=True) if not s.is_fully_replicated),
        "collectives": {kind: dataclasses.asdict(t) for kind, t in totals.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    """BENCHMARKS.md section 9's table: count / bytes per device of each kind, `-` for none."""
    kinds = hlo.KINDS
    lines = ["| step | " + " | ".join(f"{k} (count / bytes)" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for name, _ in LAYOUTS:
        cells = []
        for kind in kinds:
            t = report[name]["collectives"][kind]
            cells.append(f"{t['count']} / {t['bytes']:,}" if t["count"] else "-")
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not has_devices(os.environ):
        # Nothing has started a backend yet, but the flags must be there before one starts.
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                  process_env(DEVICES))
    if jax.device_count() != DEVICES:
        raise RuntimeError(f"expected {DEVICES} devices, JAX has {jax.device_count()}")
    config = _CONFIG.value
    if _SMALL.value:
        shrink_inputs(config)
    report: dict[str, Any] = {
        "command": " ".join(["python launch/collectives.py", *sys.argv[1:]]),
        "config": config_name(),
        "preset": config.get("preset", ""), "small_inputs": _SMALL.value,
        "jax": jax.__version__, "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "units": "bytes per device and per step; counts of collective instructions",
    }
    for name, fsdp in LAYOUTS:
        report[name] = compile_step(config, _VOCAB.value, fsdp)
        print(f"{name}: compiled in {report[name]['compile_s']:.0f} s", file=sys.stderr,
              flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if _JSON.value:
        path = Path(_JSON.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    if _MARKDOWN.value:
        print(markdown(report))


if __name__ == "__main__":
    app.run(main)
