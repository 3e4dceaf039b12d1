"""`model.remat`: activation checkpointing changes memory and FLOPs, never the numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from real_jax.experiment import generate_fn
from real_jax.models.resnet import make_encoder
from real_jax.training.state import MODEL_INPUT_KEYS
from real_jax.training.step import make_loss_fn
from tests.model.helpers import (
    EOS_ID,
    break_zero_init,
    init_variables,
    random_batch,
    tiny_config,
    tiny_model,
)

FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Remat recomputes each block's forward from its saved input with the same ops. A difference can
# only enter where XLA fuses the recomputed ops into other kernels and sums in another order: a
# few ulps at an activation's scale, carried through the backward of a shallow model (tiny: three
# ResNet blocks deep, one GPT-2 block) without much growth. 16 ulps of each array's scale (of its
# part's, for gradients: `ulps_of_its_part`) is the bound the multi-device test uses for
# reordered sums.
ULPS = 16


def largest(tree) -> float:
    return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(tree) if x.size)


def ulps_apart(a, b, scale_of=lambda path, x: largest(x)) -> float:
    """Largest |x - y| over the leaves, in float32 ulps of each leaf's scale (by default its
    own largest magnitude)."""
    worst = 0.0
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(scale_of(path, x), float(np.finfo(np.float32).tiny))
        worst = max(worst, float(np.max(np.abs(x - y))) / (FLOAT32_EPS * scale))
    return worst


def ulps_of_its_part(grads, other) -> float:
    """`ulps_apart` at the scale of each gradient's part (an encoder, a projector, the decoder):
    its largest gradient. A gradient that sums many terms that cancel (a batch-norm bias's, over
    every position of the batch; an attention key bias's, zero in exact arithmetic since a
    softmax ignores a shift shared by all its logits) is far smaller than its terms, and a
    reordered sum changes it by rounding of the terms' size, not of its own."""
    part_scale = {part: largest(tree) for part, tree in grads.items()}
    return ulps_apart(grads, other, lambda path, x: part_scale[path[0].key])


def count_primitive(jaxpr, name: str) -> int:
    """Equations named `name` in `jaxpr` and every jaxpr nested in its equations' parameters."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    count += count_primitive(sub, name)
    return count


def test_remat_gives_the_same_parameters_loss_and_gradients():
    config = tiny_config("real")  # dropout on: remat must replay the same dropout masks
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 4).items()}
    args = [batch[k] for k in MODEL_INPUT_KEYS]
    plain = tiny_model(config)
    config.model.remat = True
    remat = tiny_model(config)
    assert remat.remat and not plain.remat

    variables = init_variables(plain, batch)
    remat_shapes = jax.eval_shape(
        lambda: remat.init({"params": jax.random.key(0)}, *args, train=False))
    as_shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    # Same names, shapes and dtypes: checkpoints and the PyTorch export map either way.
    assert as_shapes(remat_shapes) == as_shapes(variables)

    checkpoint_name = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).jaxpr.eqns[0].primitive.name
    inputs = (variables["params"], variables["batch_stats"], batch, jax.random.key(1))
    results = {}
    for name, model in (("plain", plain), ("remat", remat)):
        grad_fn = jax.value_and_grad(make_loss_fn(model, config.loss), has_aux=True)
        results[name] = jax.jit(grad_fn)(*inputs)
        checkpointed = count_primitive(jax.make_jaxpr(grad_fn)(*inputs).jaxpr, checkpoint_name)
        # one per bottleneck of each of the two encoders, one per GPT-2 block
        blocks = sum(make_encoder(config.model.encoder).stage_sizes)
        expected = 2 * blocks + config.model.decoder.n_layer if model.remat else 0
        assert checkpointed == expected, (name, checkpointed)

    (loss, (metrics, batch_stats)), grads = results["plain"]
    (loss_r, (metrics_r, batch_stats_r)), grads_r = results["remat"]
    assert np.isfinite(float(loss)) and float(metrics["loss_con"]) > 0
    for part in ("image_encoder", "residual_encoder", "decoder"):
        assert float(optax.global_norm(grads[part])) > 0, part
    report = {"loss": ulps_apart(metrics, metrics_r), "grads": ulps_of_its_part(grads, grads_r),
              "batch_stats": ulps_apart(batch_stats, batch_stats_r)}
    print(report)
    assert max(report.values()) <= ULPS, report


def test_remat_model_decodes_the_same_tokens():
    # Evaluation during training decodes with the training config's model: the KV cache is
    # written inside the remat-wrapped GPT-2 blocks.
    config = tiny_config("real")
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 3, seed=5).items()}
    plain = tiny_model(config)
    variables = init_variables(plain, batch, seed=7)
    # Break the zero-initialised last batch-norm scales so every branch contributes.
    variables = break_zero_init(variables)
    tokens = {remat: np.asarray(generate_fn(plain.clone(remat=remat), config.generation,
                                            EOS_ID)(variables, batch))
              for remat in (False, True)}
    assert len(np.unique(tokens[False])) > 1  # not one token repeated everywhere
    np.testing.assert_array_equal(tokens[True], tokens[False])
