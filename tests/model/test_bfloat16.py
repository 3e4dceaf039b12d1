"""The paper's arithmetic, `model.dtype = "bfloat16"` (float32 parameters, bf16 compute), on the
tiny preset: the train step's loss, logits and gradients against the float32 step, cached
against uncached decoding, and L_con on bf16 features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.models.generation import make_generate_fn
from real_jax.training.losses import consistency_loss
from real_jax.training.step import make_loss_fn
from tests.model.helpers import (
    EOS_ID,
    break_zero_init,
    init_variables,
    random_batch,
    tiny_config,
    tiny_model,
)
from tests.model.test_forward_and_generation import MAX_NEW, uncached_greedy

# bfloat16 keeps 8 significant bits (7 stored + the implicit one): rounding one value to bf16
# changes it by at most u = 2^-8 of itself.
BF16_U = 2.0**-8


def no_dropout_config(dtype: str):
    config = tiny_config("real")
    config.model.dtype = dtype
    config.model.decoder.dropout = 0.0
    config.model.projector_dropout = 0.0
    return config


@pytest.fixture(scope="module")
def steps():
    """Loss, metrics and gradients of one float32 and one bf16 train-step loss on the same
    float32 parameters and batch (the parameters do not depend on the compute dtype)."""
    batch = {k: jnp.asarray(v) for k, v in random_batch(tiny_config(), 4, seed=2).items()}
    out = {}
    for dtype in ("float32", "bfloat16"):
        config = no_dropout_config(dtype)
        model = tiny_model(config)
        if dtype == "float32":
            variables = init_variables(model, batch, seed=0)
            # Break the zero-initialised last batch-norm scales so every branch contributes.
            variables = break_zero_init(variables)
        grad_fn = jax.jit(jax.value_and_grad(make_loss_fn(model, config.loss), has_aux=True))
        (loss, (metrics, _)), grads = grad_fn(variables["params"], variables["batch_stats"],
                                              batch, jax.random.key(0))
        logits = jax.eval_shape(lambda v, m=model: m.apply(
            v, *(batch[k] for k in ("ref", "main", "question_ids", "question_mask",
                                    "answer_ids", "answer_mask")), train=False)[0], variables)
        out[dtype] = {"loss": loss, "metrics": metrics, "grads": grads, "logits": logits}
    return out


def relative_error(got, want) -> float:
    got = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(got)])
    want = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(want)])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_bfloat16_step_keeps_loss_logits_and_gradients_in_float32_and_finite(steps):
    bf16 = steps["bfloat16"]
    assert bf16["logits"].dtype == jnp.float32
    assert bf16["loss"].dtype == jnp.float32
    assert {k: v.dtype for k, v in bf16["metrics"].items()} == {
        "loss": jnp.float32, "loss_gen": jnp.float32, "loss_con": jnp.float32}
    for leaf in jax.tree.leaves(bf16["grads"]):
        assert leaf.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_bfloat16_step_gradients_are_within_bf16_rounding_of_the_float32_step(steps):
    """Tolerance from bf16's significand. Each bf16 rounding of an activation, or of the
    gradient flowing back through it, changes it by a relative error of at most u = 2^-8 (one
    rounding: the matmuls and convolutions accumulate in float32; the reductions of layer norm,
    batch norm, softmax and both losses run in float32, so a sum of N terms adds no error that
    grows with N beyond float32's). A weight gradient is a float32 sum over the batch and
    positions of activation x incoming gradient, so its relative error is that of its terms,
    accumulated along the path from the loss to the weight. In the tiny preset's decoder and
    projectors that path crosses at most ~16 roundings (per block: layer norm, q/k/v, scores,
    softmax, output, MLP in and out, forward and backward); independent rounding errors add in
    quadrature, sqrt(16) u = 4u, and a factor 2 for the correlated ones gives 8u per module.

    Behind train-mode batch norm (the ResNets) the backward pass subtracts the batch means of
    the incoming gradient dy and of dy * x_hat: the absolute error of dy survives while the
    difference can be much smaller than dy, which raises the relative error by the cancellation
    factor ||dy|| / ||dy - means||. That factor is not bounded by the arithmetic; 8 (so 64u =
    0.25) is our allowance, still far from the relative error of 1 or more that a wrong
    gradient (a dropped term, a missing cast) gives."""
    grads_32, grads_16 = steps["float32"]["grads"], steps["bfloat16"]["grads"]
    assert set(grads_32) == set(grads_16)
    for module in grads_32:
        error = relative_error(grads_16[module], grads_32[module])
        bound = 64 * BF16_U if module.endswith("_encoder") else 8 * BF16_U
        assert error <= bound, (module, error, bound)
    # The losses: the logits carry the same 8u; the cross entropy of logits off by at most
    # e differs by at most 2e, and L_con is taken on float32 features of bf16 convolutions.
    for key in ("loss_gen", "loss_con"):
        got, want = (float(steps[d]["metrics"][key]) for d in ("bfloat16", "float32"))
        assert abs(got - want) <= 16 * BF16_U * abs(want), (key, got, want)


def test_bfloat16_cached_greedy_decoding_equals_uncached_stepwise_argmax():
    config = no_dropout_config("bfloat16")
    model = tiny_model(config)
    batch = random_batch(config, 3, seed=5)
    variables = init_variables(model, batch, seed=7)
    variables = break_zero_init(variables)
    cached = make_generate_fn(model, method="greedy", max_new_tokens=MAX_NEW, eos_id=EOS_ID)(
        variables, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_array_equal(np.asarray(cached),
                                  uncached_greedy(model, variables, batch, MAX_NEW))


def test_consistency_loss_on_bfloat16_features_is_the_float32_formula_of_their_values():
    """The model's `projected_tokens` alignment compares bf16 tokens: L_con must be taken in
    float32 on their exact values (a bf16 subtraction `f_ref - f_main` of close features would
    round away the difference it measures) and return float32."""
    rng = np.random.default_rng(6)
    # f_ref - f_main is not a bf16 number (values near 1 minus values near 0.015), and f_res is
    # within ~1e-3 of it: in bf16 the difference would be rounded to steps of 2^-8.
    f_ref = jnp.asarray(1 + rng.integers(0, 128, (2, 4, 16)) / 128, jnp.bfloat16)
    f_main = jnp.asarray(rng.uniform(0.01, 0.02, f_ref.shape), jnp.bfloat16)
    exact = [np.asarray(f, np.float64) for f in (f_ref, f_main)]
    f_res = jnp.asarray(exact[0] - exact[1] + rng.normal(scale=1e-3, size=f_ref.shape),
                        jnp.bfloat16)
    exact.append(np.asarray(f_res, np.float64))
    diff = exact[0] - exact[1] - exact[2]
    for spatial in ("pooled", "spatial"):
        got = consistency_loss(f_ref, f_main, f_res, spatial=spatial, aggregate="mean")
        vectors = diff.mean(1) if spatial == "pooled" else diff
        want = np.mean(np.mean(vectors**2, -1))
        assert got.dtype == jnp.float32
        # float32 arithmetic on exact inputs: a few float32 roundings (2^-24) per term, and
        # the pooled mean's cancellation (its terms ~1e-3, the mean ~1e-4) costs a factor ~10.
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
