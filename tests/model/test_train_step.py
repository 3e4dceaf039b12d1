"""The jitted train step: multi-device equivalence, overfitting, gradient accumulation."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from launch.local import process_env
from real_jax.distributed import sharding as shd
from real_jax.training.optimizer import make_optimizer
from real_jax.training.state import create_train_state, example_batch
from real_jax.training.step import _split_microbatches, make_loss_fn, make_train_step
from tests.model.helpers import FLOAT32_EPS, random_batch, tiny_config, tiny_model, ulps_apart

REPO = Path(__file__).resolve().parents[2]
# Float32 on CPU; the only differences come from the order of the cross-device sums (8 partial
# sums instead of 1), each within a few rounding errors of its terms; 16 ulps of each array's
# scale leaves room for two steps and the sums inside batch norm (multidevice_equivalence.py).
ULPS = 16


def test_eight_devices_data_parallel_and_fsdp_match_one_device():
    env = process_env(8)
    result = subprocess.run(
        [sys.executable, "-m", "tests.model.multidevice_equivalence"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["device_count"] == 8
    for name in ("data_parallel", "fsdp"):
        for key in ("sgd_loss_ulps", "sgd_grad_norm_ulps", "sgd_param_ulps",
                    "sgd_batch_stats_ulps"):
            assert report[name][key] <= ULPS, (name, key, report)
    for key in ("adam_loss_ulps", "adam_mu_ulps", "adam_nu_ulps"):  # AdamW: FSDP only
        assert report["fsdp"][key] <= ULPS, (key, report)
    assert report["reference_losses"][0] != report["reference_losses"][1]  # SGD moved
    assert report["data_parallel"]["sharded_arrays"] == 0
    assert report["fsdp"]["sharded_arrays"] > 0
    assert report["fsdp"]["adam_sharded_moments"] > 0
    assert report["fsdp"]["init_ulps"] == 0  # the sharded initialiser draws the same values


def make_step(config, batch_size, grad_accum_steps=1):
    model = tiny_model(config)
    mesh = shd.make_mesh(jax.devices()[:1])
    tx, schedule = make_optimizer(config.optim, 1000)
    shapes = example_batch(batch_size, config.data.image_size, config.data.question_max_tokens,
                           config.data.answer_max_tokens)
    state, shardings = create_train_state(model, tx, jax.random.key(0), shapes, mesh)
    step = make_train_step(model, tx, config.loss, mesh, shardings, schedule=schedule,
                           grad_accum_steps=grad_accum_steps)
    return model, tx, mesh, state, step


def test_tiny_model_overfits_a_fixed_batch_of_four_pairs():
    config = tiny_config("real")
    config.model.decoder.dropout = 0.0
    config.model.projector_dropout = 0.0
    config.optim.learning_rate = 1e-2  # measured: below 0.05 after 35 steps (97 at 3e-3)
    config.optim.warmup_steps = 10
    config.optim.weight_decay = 0.0
    _, _, mesh, state, step = make_step(config, 4)
    batch = shd.make_global_batch(random_batch(config, 4, seed=3), mesh)
    for _ in range(300):
        state, metrics = step(state, batch, jax.random.key(0))
        if float(metrics["loss_gen"]) < 0.05:
            break
    assert float(metrics["loss_gen"]) < 0.05, jax.device_get(metrics)
    assert bool(metrics["finite"])


def recording_gradients() -> optax.GradientTransformation:
    """An optimizer that keeps the gradient it is given as its state and leaves the parameters
    unchanged: the train step's gradient, exactly as the step computed it, after one step."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def test_gradient_accumulation_averages_strided_microbatch_gradients():
    config = tiny_config("real")
    config.model.decoder.dropout = 0.0
    config.model.projector_dropout = 0.0
    model = tiny_model(config)
    mesh = shd.make_mesh(jax.devices()[:1])
    tx = recording_gradients()
    shapes = example_batch(4, config.data.image_size, config.data.question_max_tokens,
                           config.data.answer_max_tokens)
    state, shardings = create_train_state(model, tx, jax.random.key(0), shapes, mesh)
    step = make_train_step(model, tx, config.loss, mesh, shardings, grad_accum_steps=2)
    initial = jax.device_get(state)
    batch = shd.make_global_batch(random_batch(config, 4, seed=9), mesh)
    new_state, metrics = step(state, batch, jax.random.key(0))

    # By hand: micro-batch i holds rows i, i + 2; gradients averaged; batch stats threaded.
    loss_fn = make_loss_fn(model, config.loss)
    micro = _split_microbatches(batch, 2)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    # On the mesh, as the batch stats grad_fn returns are: the second micro-batch's call then
    # has the first's argument types and reuses its compiled program.
    params, stats = jax.device_put((initial.params, initial.batch_stats), shd.replicated(mesh))
    losses, micro_grads = [], []
    for i in range(2):
        mb = jax.tree.map(lambda x, i=i: x[i], micro)
        (loss, (_, stats)), grads = grad_fn(params, stats, mb, jax.random.key(1))
        losses.append(float(loss))
        micro_grads.append(jax.device_get(grads))
    expected = jax.tree.map(lambda a, b: (a + b) / 2, *micro_grads)

    # The step's gradients are the same float32 operations as the hand-made ones in another
    # program (the micro-batches inside a `lax.scan`, other fusions), so each entry may be
    # summed in another order. A weight gradient sums over the batch and positions; the
    # largest such sum is the stem convolution's, over the 2 x 2 images of a micro-batch at
    # (S/2)^2 = 1024 positions each, N = 4096 terms. Reordering a float32 sum of N terms moves
    # it by ~sqrt(N) roundings of the terms' magnitude (independent rounding errors), 64 ulps
    # of its array's largest entry when the terms are no larger than it. Summing instead of
    # averaging doubles every entry: 2^22 ulps of the largest.
    accum_ulps = 64
    recorded = jax.device_get(new_state.opt_state)
    assert ulps_apart(recorded, expected) <= accum_ulps, ulps_apart(recorded, expected)
    assert float(metrics["loss"]) == pytest.approx(np.mean(losses), rel=ULPS * FLOAT32_EPS)
    assert float(metrics["grad_norm"]) == pytest.approx(
        float(optax.global_norm(expected)), rel=ULPS * FLOAT32_EPS)
    assert int(new_state.step) == 1
