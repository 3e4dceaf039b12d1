"""`config.loss` reaches the train step's loss (`make_loss_fn(model, config.loss)`, the path
`make_train_step` takes): lambda weights L_con, and `consistency_image_target` decides whether
L_con trains the shared image encoder."""

import jax
import jax.numpy as jnp
import pytest

from real_jax.training.step import make_loss_fn
from tests.model.helpers import (
    FLOAT32_EPS,
    break_zero_init,
    init_variables,
    random_batch,
    tiny_config,
    tiny_model,
    ulps_apart,
)

LAMBDA = 0.37  # not 0 or 1, so a dropped or ignored weight shows


@pytest.fixture(scope="module")
def setup():
    config = tiny_config("real")
    config.model.decoder.dropout = 0.0
    config.model.projector_dropout = 0.0
    model = tiny_model(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 4, seed=11).items()}
    variables = init_variables(model, batch, seed=3)
    # Break the zero-initialised last batch-norm scales so every branch contributes.
    variables = break_zero_init(variables)
    return config, model, batch, variables


def loss_and_grads(setup, **loss_fields):
    config, model, batch, variables = setup
    loss_config = config.loss.copy_and_resolve_references()
    loss_config.update(loss_fields)
    grad_fn = jax.jit(jax.value_and_grad(make_loss_fn(model, loss_config), has_aux=True))
    (loss, (metrics, _)), grads = grad_fn(variables["params"], variables["batch_stats"], batch,
                                          jax.random.key(0))
    return float(loss), jax.device_get(metrics), jax.device_get(grads)


def test_loss_is_generation_loss_plus_lambda_times_consistency_loss(setup):
    loss, metrics, _ = loss_and_grads(setup, consistency_weight=LAMBDA)
    l_gen, l_con = float(metrics["loss_gen"]), float(metrics["loss_con"])
    assert l_con > 0
    # one float32 multiply and one add: two roundings of the result
    assert loss == pytest.approx(l_gen + LAMBDA * l_con, rel=2 * FLOAT32_EPS)
    assert float(metrics["loss"]) == loss


def test_detached_image_target_leaves_the_image_encoder_gradient_to_generation_loss(setup):
    _, _, gen_only = loss_and_grads(setup, consistency_weight=0.0)
    _, _, detached = loss_and_grads(setup, consistency_weight=LAMBDA,
                                    consistency_image_target="detached")
    _, _, trainable = loss_and_grads(setup, consistency_weight=LAMBDA,
                                     consistency_image_target="trainable")
    # The same float32 operations for L_gen's part, in programs that differ by the L_con
    # branch, so other fusions may sum in another order. The largest sum is the stem batch
    # norm's, over 2 x 4 images at (S/2)^2 = 1024 positions, N = 8192 terms: a reordered
    # float32 sum moves by ~sqrt(N) = 91 roundings of its terms (independent errors), here in
    # ulps of the array's largest entry. L_con's gradient, where it arrives, is a change of
    # the gradient's own size: millions of ulps.
    reorder_ulps = 128
    assert ulps_apart(detached["image_encoder"], gen_only["image_encoder"]) <= reorder_ulps
    # L_con's own gradient reaches the image encoder only when it is trainable ...
    assert ulps_apart(trainable["image_encoder"], gen_only["image_encoder"]) > 1e5
    # ... and the residual encoder either way.
    assert ulps_apart(detached["residual_encoder"], gen_only["residual_encoder"]) > 1e5
