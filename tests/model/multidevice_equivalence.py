"""Runs the tiny train step on 1 device, on all devices (data parallel) and on all devices with
FSDP, from the same initial state and global batches; prints the differences as JSON.

What is compared is what equals the 1-device run up to the order of the cross-device sums:
- plain SGD for `STEPS` steps: the losses, parameters and batch statistics (the update is
  linear in the gradient, so rounding stays rounding);
- one AdamW step: the loss and Adam's moments, `(1 - b1) g` and `(1 - b2) g^2` of the clipped
  gradient. Adam's parameters are not compared: `m / sqrt(v)` turns the rounding noise of a
  gradient that is zero in exact arithmetic (an attention key bias) into a step of +-lr.
Differences are reported in units of float32 rounding (ulps) at each array's scale.

Run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8` (see
tests/model/test_train_step.py); the device count must be set before jax is imported.
"""

import json
import sys

import jax
import numpy as np

from real_jax.distributed import sharding as shd
from real_jax.experiment import build_experiment
from tests.model.helpers import EOS_ID, VOCAB_SIZE, random_batch, tiny_config

SGD_STEPS = 2
GLOBAL_BATCH = 8
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def run(devices, fsdp: bool, optimizer: str, steps: int):
    config = tiny_config("real")
    config.model.decoder.dropout = 0.1  # dropout on: its rng must not depend on the sharding
    config.mesh.fsdp = fsdp
    config.optim.name = optimizer
    config.optim.warmup_steps = 0  # every step moves the parameters
    experiment = build_experiment(config, vocab_size=VOCAB_SIZE, eos_id=EOS_ID, devices=devices,
                                  batch_size=GLOBAL_BATCH, total_steps=10, check=False)
    state, shardings = experiment.init_state(jax.random.key(0))
    sharded = sum(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
    step = experiment.train_step(shardings)
    losses = []
    for i in range(steps):
        batch = shd.make_global_batch(random_batch(config, GLOBAL_BATCH, seed=i),
                                      experiment.mesh)
        state, metrics = step(state, batch, jax.random.key(42))
        losses.append(float(metrics["loss"]))
    host = jax.tree.map(np.asarray, jax.device_get(state))
    return losses, host, sharded, config.optim


def ulps_apart(a, b, floor: float = 0.0) -> float:
    """Largest |x - y| over the leaves, in ulps of each leaf's scale (max |x|, or `floor`)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if x.size:
            scale = max(float(np.max(np.abs(x))), floor, float(np.finfo(np.float32).tiny))
            worst = max(worst, float(np.max(np.abs(x - y))) / (FLOAT32_EPS * scale))
    return worst


def adam_moments(opt_state):
    """`(mu, nu)` of the AdamW state inside the optimizer chain."""
    (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
               if hasattr(s, "mu")]
    return adam.mu, adam.nu


def losses_ulps(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / (FLOAT32_EPS * abs(x)) for x, y in zip(a, b, strict=True))


def main() -> None:
    devices = jax.devices()
    reference_sgd = run(devices[:1], False, "sgd", SGD_STEPS)
    reference_adam = run(devices[:1], False, "adamw", 1)
    optim = reference_sgd[3]
    # an entry whose gradient is zero in exact arithmetic moves by rounding noise; its scale is
    # then the largest move SGD can make (lr x clip norm per step), not its own
    largest_move = SGD_STEPS * optim.learning_rate * optim.grad_clip_norm
    report = {"device_count": len(devices), "reference_losses": reference_sgd[0]}
    for name, fsdp in (("data_parallel", False), ("fsdp", True)):
        sgd_losses, sgd_state, sharded, _ = run(devices, fsdp, "sgd", SGD_STEPS)
        adam_losses, adam_state, _, _ = run(devices, fsdp, "adamw", 1)
        report[name] = {
            "sgd_losses": sgd_losses,
            "sgd_loss_ulps": losses_ulps(sgd_losses, reference_sgd[0]),
            "sgd_param_ulps": ulps_apart(sgd_state.params, reference_sgd[1].params,
                                         largest_move),
            "sgd_batch_stats_ulps": ulps_apart(sgd_state.batch_stats,
                                               reference_sgd[1].batch_stats),
            "adam_loss_ulps": losses_ulps(adam_losses, reference_adam[0]),
            # moments of a zero-in-exact-arithmetic gradient: scale of the largest clipped one
            "adam_mu_ulps": ulps_apart(adam_moments(adam_state.opt_state)[0],
                                       adam_moments(reference_adam[1].opt_state)[0],
                                       (1 - optim.b1) * optim.grad_clip_norm),
            "adam_nu_ulps": ulps_apart(adam_moments(adam_state.opt_state)[1],
                                       adam_moments(reference_adam[1].opt_state)[1],
                                       (1 - optim.b2) * optim.grad_clip_norm**2),
            "sharded_arrays": sharded,
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
