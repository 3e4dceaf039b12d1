"""Runs the tiny train step on 1 device, on all devices (data parallel) and on all devices with
FSDP, from the same initial state and global batch; prints the differences as JSON.

Run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8` (see
tests/model/test_train_step.py); the device count must be set before jax is imported.
"""

import json
import sys

import jax
import numpy as np

from real_jax import sharding as shd
from real_jax.optim import make_optimizer
from real_jax.train_step import create_train_state, example_batch, make_train_step
from tests.model.helpers import random_batch, tiny_config, tiny_model

STEPS = 2
GLOBAL_BATCH = 8


def run(devices, fsdp: bool):
    config = tiny_config("real")
    config.model.decoder.dropout = 0.1  # dropout on: its rng must not depend on the sharding
    model = tiny_model(config)
    mesh = shd.make_mesh(devices)
    tx, schedule = make_optimizer(config.optim, 10)
    shapes = example_batch(GLOBAL_BATCH, config.data.image_size,
                           config.data.question_max_tokens, config.data.answer_max_tokens)
    state, shardings = create_train_state(model, tx, jax.random.key(0), shapes, mesh, fsdp=fsdp)
    sharded = sum(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
    step = make_train_step(model, tx, config.loss, mesh, shardings, schedule=schedule)
    losses = []
    for i in range(STEPS):
        batch = shd.make_global_batch(random_batch(config, GLOBAL_BATCH, seed=i), mesh)
        state, metrics = step(state, batch, jax.random.key(42))
        losses.append(float(metrics["loss"]))
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    stats = jax.tree.map(np.asarray, jax.device_get(state.batch_stats))
    return losses, params, stats, sharded


def max_abs_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main() -> None:
    devices = jax.devices()
    reference = run(devices[:1], fsdp=False)
    report = {"device_count": len(devices), "reference_losses": reference[0]}
    for name, fsdp in (("data_parallel", False), ("fsdp", True)):
        losses, params, stats, sharded = run(devices, fsdp)
        report[name] = {
            "losses": losses,
            "max_loss_difference": max(
                abs(a - b) for a, b in zip(losses, reference[0], strict=True)),
            "max_param_difference": max_abs_difference(params, reference[1]),
            "max_batch_stats_difference": max_abs_difference(stats, reference[2]),
            "sharded_arrays": sharded,
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
