"""Lowers and compiles the paper model's train step for all devices, data parallel and FSDP,
from the abstract state (nothing allocated), and prints the cross-device collectives of each
compiled program as JSON (`real_jax.distributed.hlo`).

The model is the paper config's (`configs/real.py`: ResNet-50 x2, projectors, GPT-2 124M,
bfloat16 compute) with only the inputs shrunk: 64 px images, a global batch of 8 and short
question and answer budgets. The collectives a layout needs do not depend on those sizes.

Run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8` and
`JAX_PLATFORMS=cpu` (see tests/scaling/test_collectives.py); the device count must be set before
jax is imported. The config is not checked against the machine (`check=False`): the paper
config names pretrained weights and a dataset that the compile does not need.
"""

import dataclasses
import json
import sys
import time

import jax
import numpy as np

from configs.real import get_config
from real_jax.distributed import hlo
from real_jax.distributed import sharding as shd
from real_jax.experiment import build_experiment

GLOBAL_BATCH = 8
VOCAB_SIZE = 50257  # GPT-2's
# Less LLVM effort on the machine code (about a fifth of the compile time here): the collectives
# are fixed by XLA's HLO passes before code generation, and the same with or without these.
FAST_CODEGEN = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def paper_config_small_inputs(fsdp: bool):
    config = get_config("paper")
    config.data.image_size = 64
    config.data.question_max_tokens = 8
    config.data.answer_max_tokens = 8
    config.generation.answer_max_tokens = 7
    config.train.global_batch_size = GLOBAL_BATCH
    config.eval.batch_size = GLOBAL_BATCH
    config.mesh.fsdp = fsdp
    return config


def compile_step(fsdp: bool) -> dict:
    """The compiled train step's collectives, `{kind: {count, executed, bytes}}`, and sizes."""
    config = paper_config_small_inputs(fsdp)
    experiment = build_experiment(config, vocab_size=VOCAB_SIZE, total_steps=1000, check=False)
    abstract, shardings = experiment.abstract_state()
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd.batch_sharding(
        experiment.mesh)) for k, s in experiment.input_shapes.items()}
    start = time.perf_counter()
    compiled = experiment.train_step(shardings).lower(
        abstract, batch, jax.random.key(0)).compile(compiler_options=FAST_CODEGEN)
    seconds = time.perf_counter() - start
    totals = hlo.collective_totals(compiled.as_text())
    model = config.model
    return {
        "model": {"encoder": model.encoder, "n_layer": model.decoder.n_layer,
                  "n_embd": model.decoder.n_embd, "vocab_size": VOCAB_SIZE, "dtype": model.dtype,
                  "variant": model.variant, "image_size": config.data.image_size,
                  "batch": GLOBAL_BATCH},
        "compile_s": seconds,
        "param_count": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params)),
        "sharded_params": sum(not s.is_fully_replicated
                              for s in jax.tree.leaves(shardings.params)),
        # float32 bytes of the parameters FSDP splits (what its all-gathers bring together)
        "sharded_param_bytes": sum(4 * int(np.prod(x.shape)) for x, s in zip(
            jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params), strict=True)
            if not s.is_fully_replicated),
        "collectives": {kind: dataclasses.asdict(t) for kind, t in totals.items()},
    }


def main() -> None:
    report = {"device_count": jax.device_count()}
    for name, fsdp in (("data_parallel", False), ("fsdp", True)):
        report[name] = compile_step(fsdp)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
