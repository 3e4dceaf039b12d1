"""Runs the tiny train step on 1 device, on all devices (data parallel) and on all devices with
FSDP, from the same initial state and global batches; prints the differences as JSON.

What is compared is what equals the 1-device run up to the order of the cross-device sums:
- plain SGD for `SGD_STEPS` steps, data parallel and FSDP: the losses, the gradients' global
  norms, the parameters and batch statistics (the update is linear in the gradient, so rounding
  stays rounding);
- one AdamW step, FSDP: the loss and Adam's moments, `(1 - b1) g` and `(1 - b2) g^2` of the
  clipped gradient, split over the devices like their parameters. Adam's parameters are not
  compared: `m / sqrt(v)` turns the rounding noise of a gradient that is zero in exact
  arithmetic (an attention key bias) into a step of +-lr.
Differences are reported in units of float32 rounding (ulps) at each array's scale.

Data parallel runs no AdamW step: its state is all replicated, so its optimizer update has no
cross-device part (it is the 1-device update of the all-reduced gradient). That gradient is
checked by the SGD run, though coarsely entry by entry: a parameter moves by lr x g, so an error
in g shows only once lr x it exceeds rounding at the parameter's scale (in the tiny model, from
1e-4 to over 100% of an array's largest gradient, 3% at the median). Its global norm is checked
to rounding, and the moments check, entry by entry, the gradient of FSDP, whose backward pass
splits the batch the same way and sums each gradient whole before each device keeps its slice
(`sharding.gather_params`).

The state is initialised on 1 device and copied into each layout's shardings: every run starts
from the same arrays, with one initialiser compile per layout fewer. The FSDP layout's own
sharded initialiser (what a run started with `mesh.fsdp` uses) is compiled once and its arrays
compared with the 1-device ones (`init_ulps`; the random bits do not depend on the sharding).

Run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8` (see
tests/model/test_train_step.py); the device count must be set before jax is imported.
"""

import json
import os
import sys

os.environ.setdefault("USE_TORCH", "0")  # the program, never imported: no PyTorch (no_torch.py)

import jax
import numpy as np

from real_jax.distributed import sharding as shd
from real_jax.experiment import Experiment, build_experiment
from real_jax.training.state import TrainState
from tests.model.helpers import (
    EOS_ID,
    FLOAT32_EPS,
    VOCAB_SIZE,
    random_batch,
    tiny_config,
    ulps_apart,
)

SGD_STEPS = 2
GLOBAL_BATCH = 8


def build(devices, fsdp: bool, optimizer: str) -> Experiment:
    config = tiny_config("real")
    config.model.decoder.dropout = 0.1  # dropout on: its rng must not depend on the sharding
    config.mesh.fsdp = fsdp
    config.optim.name = optimizer
    config.optim.warmup_steps = 0  # every step moves the parameters
    return build_experiment(config, vocab_size=VOCAB_SIZE, eos_id=EOS_ID, devices=devices,
                            batch_size=GLOBAL_BATCH, total_steps=10, check=False)


def run(experiment: Experiment, initial: TrainState, steps: int):
    """`steps` train steps from `initial` (host arrays, its optimizer state replaced by a fresh
    one of this experiment's optimizer) placed in the experiment's layout.

    Returns the losses, the gradients' global norms, the final state on the host, and whether
    each of its arrays was split over devices (a `TrainState` of bools).
    """
    _, shardings = experiment.abstract_state()
    state = jax.device_put(initial.replace(opt_state=experiment.tx.init(initial.params)),
                           shardings)
    step = experiment.train_step(shardings)
    losses, grad_norms = [], []
    for i in range(steps):
        batch = shd.make_global_batch(random_batch(experiment.config, GLOBAL_BATCH, seed=i),
                                      experiment.mesh)
        state, metrics = step(state, batch, jax.random.key(42))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    sharded = jax.tree.map(lambda x: not x.sharding.is_fully_replicated, state)
    host = jax.tree.map(np.asarray, jax.device_get(state))
    return losses, grad_norms, host, sharded


def adam_moments(opt_state):
    """`(mu, nu)` of the AdamW state inside the optimizer chain."""
    (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
               if hasattr(s, "mu")]
    return adam.mu, adam.nu


def relative_ulps(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / (FLOAT32_EPS * abs(x)) for x, y in zip(a, b, strict=True))


def main() -> None:
    devices = jax.devices()
    reference = build(devices[:1], False, "sgd")
    initial = jax.device_get(reference.init_state(jax.random.key(0))[0])
    reference_sgd = run(reference, initial, SGD_STEPS)
    optim = reference.config.optim
    # an entry whose gradient is zero in exact arithmetic moves by rounding noise; its scale is
    # then the largest move SGD can make (lr x clip norm per step), not its own
    largest_move = SGD_STEPS * optim.learning_rate * optim.grad_clip_norm
    report = {"device_count": len(devices), "reference_losses": reference_sgd[0]}
    fsdp_sgd = build(devices, True, "sgd")
    sharded_initial = jax.device_get(fsdp_sgd.init_state(jax.random.key(0))[0])
    init_ulps = ulps_apart((initial.params, initial.batch_stats),
                           (sharded_initial.params, sharded_initial.batch_stats))
    for name, experiment in (("data_parallel", build(devices, False, "sgd")), ("fsdp", fsdp_sgd)):
        losses, grad_norms, state, sharded = run(experiment, initial, SGD_STEPS)
        report[name] = {
            "sgd_losses": losses,
            "sgd_loss_ulps": relative_ulps(losses, reference_sgd[0]),
            "sgd_grad_norm_ulps": relative_ulps(grad_norms, reference_sgd[1]),
            "sgd_param_ulps": ulps_apart(state.params, reference_sgd[2].params, largest_move),
            "sgd_batch_stats_ulps": ulps_apart(state.batch_stats,
                                               reference_sgd[2].batch_stats),
            "sharded_arrays": sum(jax.tree.leaves(sharded)),
        }
    reference_adam = run(build(devices[:1], False, "adamw"), initial, 1)
    losses, _, state, sharded = run(build(devices, True, "adamw"), initial, 1)
    mu, nu = adam_moments(state.opt_state)
    reference_mu, reference_nu = adam_moments(reference_adam[2].opt_state)
    report["fsdp"] |= {
        "init_ulps": init_ulps,
        "adam_loss_ulps": relative_ulps(losses, reference_adam[0]),
        # moments of a zero-in-exact-arithmetic gradient: scale of the largest clipped one
        "adam_mu_ulps": ulps_apart(mu, reference_mu, (1 - optim.b1) * optim.grad_clip_norm),
        "adam_nu_ulps": ulps_apart(nu, reference_nu, (1 - optim.b2) * optim.grad_clip_norm**2),
        "adam_sharded_moments": sum(jax.tree.leaves(adam_moments(sharded.opt_state))),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
