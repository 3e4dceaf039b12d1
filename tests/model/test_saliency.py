"""Saliency maps (real_jax/evaluation/saliency.py): gradients of the answer's log-likelihood."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.evaluation.saliency import (
    SALIENCY_KEYS,
    answer_gradients,
    answer_log_likelihood,
    gaussian_blur,
    make_saliency_fn,
)
from tests.model.helpers import init_variables, random_batch, tiny_config, tiny_model


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    model = tiny_model(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 2).items()}
    return model, init_variables(model, batch), batch


@pytest.mark.parametrize("source", ["residual", "main"])
def test_gradient_matches_finite_difference_of_the_answer_log_likelihood(setup, source):
    model, variables, batch = setup
    grads, log_likelihood = jax.jit(
        lambda v, b: answer_gradients(model, v, b, source))(variables, batch)

    def log_likelihood_at(offset):
        logits, _ = model.apply(variables, *(batch[k] for k in SALIENCY_KEYS), train=False,
                                **{f"{source}_offset": offset})
        return answer_log_likelihood(logits, batch["answer_ids"], batch["answer_mask"])

    np.testing.assert_allclose(log_likelihood_at(jnp.zeros_like(grads)), log_likelihood,
                               rtol=1e-5)
    # Along each example's gradient, where the change is largest compared with float32
    # rounding; a small step, as the ReLU network bends quickly (measured: 6% off at 0.01).
    direction = grads / jnp.linalg.norm(grads, axis=(1, 2), keepdims=True)
    eps = 1e-2
    finite = (log_likelihood_at(eps * direction) - log_likelihood_at(-eps * direction)) / (2 * eps)
    analytic = (grads * direction).sum(axis=(1, 2))
    np.testing.assert_allclose(finite, analytic, rtol=0.1)


def test_each_example_map_depends_only_on_its_own_pair(setup):
    model, variables, batch = setup
    saliency = make_saliency_fn(model)
    maps, _ = saliency(variables, batch)
    changed = dict(batch, main=batch["main"].at[1].set(255 - batch["main"][1]))
    maps_changed, _ = saliency(variables, changed)
    assert maps.shape == batch["main"].shape and float(maps.min()) >= 0.0
    np.testing.assert_allclose(maps_changed[0], maps[0], rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(maps_changed[1]) - np.asarray(maps[1])).max() > 0


def test_baseline_has_no_residual_source():
    model = tiny_model(tiny_config("baseline"))
    with pytest.raises(ValueError, match="no residual input"):
        make_saliency_fn(model, source="residual")
    make_saliency_fn(model)  # defaults to the main image


def test_gaussian_blur_keeps_the_mass_and_spreads_a_point():
    image = jnp.zeros((1, 15, 15)).at[0, 7, 7].set(1.0)
    blurred = gaussian_blur(image, 1.5)
    assert float(blurred.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(blurred[0, 7, 7]) < 0.2 and float(blurred[0, 7, 9]) > 0.0
