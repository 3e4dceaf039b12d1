"""Where the consistency loss compares features (`model.alignment`) and the main-image-only
control: each choice returns what `real_jax/models/real.py` says, with the same parameters."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.models.real import ALIGNMENTS
from real_jax.models.resnet import make_encoder
from real_jax.training.losses import consistency_loss
from real_jax.training.state import MODEL_INPUT_KEYS
from tests.model.helpers import init_variables, jit_apply, random_batch, tiny_config, tiny_model


@pytest.fixture(scope="module")
def setup():
    config = tiny_config("real")
    model = tiny_model(config)
    batch = random_batch(config, 2, seed=3)
    # One compiled init serves every alignment: the residual head's model has the others'
    # variables plus `alignment_head`, and Flax draws each module's parameters from its own path.
    head_variables = init_variables(model.clone(alignment="residual_head"), batch, seed=1)
    return config, model, batch, head_variables


def without_head(variables):
    return {collection: {name: tree for name, tree in trees.items() if name != "alignment_head"}
            for collection, trees in variables.items()}


def perturbed(variables):
    # Break the zero-initialised last batch-norm scales so every block's output varies.
    return jax.tree.map(lambda x: x + 0.3 if x.ndim == 1 else x, variables)


def as_shapes(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def features(model, variables, batch):
    return jit_apply(model)(variables, batch)[1]


def test_pre_activation_is_the_encoder_output_before_its_relu(setup):
    _, model, batch, head_variables = setup
    variables = perturbed(without_head(head_variables))
    paper = features(model, variables, batch)
    pre = features(model.clone(alignment="pre_activation"), variables, batch)
    for key in ("ref", "main", "residual"):
        # Same parameters, same encoder outputs: only what L_con compares changes.
        np.testing.assert_allclose(pre[key], paper[key], atol=1e-5)
        np.testing.assert_allclose(np.maximum(pre[f"align_{key}"], 0), paper[key], atol=1e-5)
        assert float(jnp.min(pre[f"align_{key}"])) < 0 <= float(jnp.min(paper[f"align_{key}"]))


def test_residual_head_maps_the_residual_feature_to_both_signs(setup):
    config, model, batch, head_variables = setup
    head_model = model.clone(alignment="residual_head")
    kernel = head_variables["params"]["alignment_head"]["kernel"]
    width = make_encoder(config.model.encoder).feature_dim
    assert kernel.shape == (width, width)
    out = features(head_model, perturbed(head_variables), batch)
    assert out["align_residual"].shape == out["align_ref"].shape == out["residual"].shape
    assert float(jnp.min(out["align_residual"])) < 0 < float(jnp.max(out["align_residual"]))


def test_projected_tokens_compare_the_projectors_outputs(setup):
    config, model, batch, head_variables = setup
    out = features(model.clone(alignment="projected_tokens"),
                   perturbed(without_head(head_variables)), batch)
    q, d = config.model.num_queries, config.model.decoder.n_embd
    assert out["align_ref"].shape == out["align_residual"].shape == (2, q, d)
    loss = consistency_loss(out["align_ref"], out["align_main"], out["align_residual"])
    assert loss.shape == () and float(loss) > 0


def test_every_alignment_trains_with_a_finite_consistency_loss(setup):
    _, model, batch, head_variables = setup
    inputs = [jnp.asarray(batch[k]) for k in MODEL_INPUT_KEYS]
    for alignment in ALIGNMENTS:
        variant = model.clone(alignment=alignment)
        # Freshly initialised (not perturbed), as at the start of training; the variant's own
        # variables: its init gives the same names, shapes and dtypes.
        head = alignment == "residual_head"
        variables = head_variables if head else without_head(head_variables)
        shapes = jax.eval_shape(lambda v=variant: v.init(jax.random.key(0), *inputs, train=False))
        assert as_shapes(shapes) == as_shapes(variables), alignment

        def loss(params, variables, inputs, variant=variant):
            out = variant.apply({**variables, "params": params}, *inputs, train=False)[1]
            return consistency_loss(out["align_ref"], out["align_main"], out["align_residual"],
                                    image_target="trainable")

        value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"], variables, inputs)
        assert np.isfinite(float(value)), alignment
        assert float(jnp.abs(jax.flatten_util.ravel_pytree(grads["residual_encoder"])[0]).max()) > 0


def test_main_image_only_control_ignores_the_reference(setup):
    _, model, batch, head_variables = setup
    variables = perturbed(without_head(head_variables))
    control = model.clone(main_image_only=True)
    other_ref = dict(batch, ref=255 - batch["ref"])
    a, b = features(control, variables, batch), features(control, variables, other_ref)
    np.testing.assert_allclose(a["ref"], a["main"], atol=1e-6)
    for key in ("ref", "main", "residual"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    # The full model does look at the reference.
    assert not np.allclose(features(model, variables, batch)["residual"], a["residual"])
