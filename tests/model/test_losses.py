"""L_gen and L_con against the formulas computed by hand in numpy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.training.losses import consistency_loss, generation_loss


def numpy_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_generation_loss_is_mean_over_samples_of_mean_answer_nll():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, (3, 5))
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    log_probs = numpy_log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    expected = np.mean([nll[i, mask[i] == 1].mean() for i in range(3)])
    got = generation_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_generation_loss_ignores_labels_and_logits_outside_the_answer_mask():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 9)).astype(np.float32)
    labels = rng.integers(0, 9, (2, 6))
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    base = generation_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    logits[mask == 0] = rng.normal(size=(int((mask == 0).sum()), 9)) * 10
    labels[mask == 0] = rng.integers(0, 9, int((mask == 0).sum()))
    again = generation_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    np.testing.assert_allclose(again, base, rtol=1e-6)


def test_generation_loss_sample_weight_drops_padding_samples():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 4))
    mask = np.ones((3, 4), np.int32)
    weighted = generation_loss(logits, labels, mask, sample_weight=jnp.array([1.0, 1.0, 0.0]))
    first_two = generation_loss(logits[:2], labels[:2], mask[:2])
    np.testing.assert_allclose(weighted, first_two, rtol=1e-6)


@pytest.mark.parametrize(
    "sign,spatial,aggregate",
    list(itertools.product(["paper", "main_minus_ref"], ["pooled", "spatial"], ["mean", "sum"])),
)
def test_consistency_loss_matches_numpy_formula(sign, spatial, aggregate):
    rng = np.random.default_rng(3)
    f_ref, f_main, f_res = (rng.normal(size=(2, 3, 4, 6)) for _ in range(3))
    diff = f_ref - f_main - f_res if sign == "paper" else f_main - f_ref - f_res
    per_sample = []
    for b in range(2):
        vectors = diff[b].mean((0, 1))[None] if spatial == "pooled" else diff[b].reshape(-1, 6)
        squared = (vectors**2).sum(-1) if aggregate == "sum" else (vectors**2).mean(-1)
        per_sample.append(squared.mean())
    got = consistency_loss(
        *(jnp.asarray(f, jnp.float32) for f in (f_ref, f_main, f_res)),
        sign=sign,
        spatial=spatial,
        aggregate=aggregate,
    )
    np.testing.assert_allclose(got, np.mean(per_sample), rtol=1e-5)


def test_consistency_loss_is_zero_when_residual_feature_matches_the_difference():
    rng = np.random.default_rng(4)
    f_ref, f_main = rng.normal(size=(2, 2, 2, 2, 8)).astype(np.float32)
    assert float(consistency_loss(f_ref, f_main, f_ref - f_main, sign="paper")) < 1e-12
    assert float(consistency_loss(f_ref, f_main, f_main - f_ref, sign="main_minus_ref")) < 1e-12


def test_consistency_loss_rejects_unknown_options():
    f = jnp.zeros((1, 1, 1, 2))
    with pytest.raises(ValueError, match="sign"):
        consistency_loss(f, f, f, sign="backwards")
    with pytest.raises(ValueError, match="spatial"):
        consistency_loss(f, f, f, spatial="max")
    with pytest.raises(ValueError, match="aggregate"):
        consistency_loss(f, f, f, aggregate="median")


def test_detached_image_target_trains_only_the_residual_feature():
    rng = np.random.default_rng(5)
    f_ref, f_main, f_res = (jnp.asarray(rng.normal(size=(2, 2, 2, 4)), jnp.float32)
                            for _ in range(3))
    grads = jax.grad(lambda a, b, c: consistency_loss(a, b, c, image_target="detached"),
                     argnums=(0, 1, 2))(f_ref, f_main, f_res)
    assert float(jnp.abs(grads[0]).max()) == 0.0 and float(jnp.abs(grads[1]).max()) == 0.0
    assert float(jnp.abs(grads[2]).max()) > 0.0
    trainable = jax.grad(lambda a: consistency_loss(a, f_main, f_res, image_target="trainable"))
    assert float(jnp.abs(trainable(f_ref)).max()) > 0.0
    with pytest.raises(ValueError, match="image_target"):
        consistency_loss(f_ref, f_main, f_res, image_target="frozen")
