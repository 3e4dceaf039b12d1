"""Model structure: torchvision-sized ResNet-50, GPT-2 124M, and the paper's ablation switches.

Shape-only (`jax.eval_shape`), so nothing is compiled.
"""

import jax
import jax.numpy as jnp
import pytest

from configs.real import get_config
from real_jax.experiment import build_model
from real_jax.models.real import prefix_length
from real_jax.models.resnet import ResNet50
from real_jax.training.optimizer import make_optimizer
from real_jax.training.state import create_train_state, example_batch
from real_jax.training.step import make_loss_fn
from tests.model.helpers import random_batch, tiny_config, tiny_model


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def abstract_params(model, config):
    shapes = example_batch(2, config.data.image_size, config.data.question_max_tokens,
                           config.data.answer_max_tokens)
    dummy = [jnp.zeros(s.shape, s.dtype) for s in shapes.values()]
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *dummy,
                                             train=False))["params"]


def test_resnet50_has_torchvision_parameter_count():
    variables = jax.eval_shape(
        lambda: ResNet50().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    # torchvision resnet50: 25,557,032 parameters, minus the fc layer (2048 * 1000 + 1000).
    assert count(variables["params"]) == 25_557_032 - 2_049_000
    assert jax.tree.leaves(variables["params"]["layer1_0"]["conv2"])[0].shape == (3, 3, 64, 64)


def test_paper_decoder_is_gpt2_124m_with_hf_parameter_names():
    config = get_config("paper")
    model = build_model(config.model, vocab_size=50257, eos_id=50256)
    params = abstract_params(model, config)
    assert set(params["decoder"]) == {"wte", "wpe", "h", "ln_f"}
    assert count(params["decoder"]) == 124_439_808  # HF GPT2Model (gpt2) parameter count
    assert set(params["decoder"]["h"]["0"]) == {"ln_1", "attn", "ln_2", "mlp"}


@pytest.mark.parametrize("variant", ["baseline", "residual_input", "real"])
def test_variant_switches_remove_exactly_the_residual_branch(variant):
    config = tiny_config(variant)
    model = tiny_model(config)
    params = abstract_params(model, config)
    has_residual = variant != "baseline"
    assert ("residual_encoder" in params) == has_residual
    assert ("residual_projector" in params) == has_residual
    assert {"image_encoder", "image_projector", "decoder"} <= set(params)
    assert model.prefix_length == prefix_length(variant, config.model.num_queries)
    assert model.prefix_length == (3 if has_residual else 2) * config.model.num_queries


@pytest.mark.parametrize("variant", ["baseline", "residual_input", "real"])
def test_only_full_real_computes_the_consistency_loss(variant):
    config = tiny_config(variant)
    model = tiny_model(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 2).items()}
    tx, _ = make_optimizer(config.optim, 10)
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    state = jax.eval_shape(
        lambda: create_train_state(model, tx, jax.random.key(0), batch_shapes(batch), mesh)[0]
    )
    loss_fn = make_loss_fn(model, config.loss)
    _, (metrics, _) = jax.eval_shape(
        loss_fn, state.params, state.batch_stats, batch, jax.random.key(1)
    )
    assert ("loss_con" in metrics) == (variant == "real")
    assert {"loss", "loss_gen"} <= set(metrics)


def batch_shapes(batch):
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


def test_consistency_weight_zero_turns_off_the_consistency_loss():
    config = tiny_config("real")
    config.loss.consistency_weight = 0.0
    model = tiny_model(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 2).items()}
    params = abstract_params(model, config)
    loss_fn = make_loss_fn(model, config.loss)
    stats = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                              *batch.values(), train=False))["batch_stats"]
    _, (metrics, _) = jax.eval_shape(loss_fn, params, stats, batch, jax.random.key(1))
    assert "loss_con" not in metrics


def test_a_fresh_state_traces_the_model_initialiser_once(monkeypatch):
    """`create_train_state` needs the state's shapes (for its shardings) before initialising:
    both come from one trace of the initialiser (a second costs ~1 s of each fresh start)."""
    from real_jax.training import state as state_module

    traces = []
    make_init = state_module._init_fn

    def counting_init_fn(*args):
        init = make_init(*args)

        def counted(rng):
            traces.append(rng)
            return init(rng)

        return counted

    monkeypatch.setattr(state_module, "_init_fn", counting_init_fn)
    config = tiny_config("real")
    model = tiny_model(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 2).items()}
    tx, _ = make_optimizer(config.optim, 10)
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    jax.eval_shape(
        lambda: create_train_state(model, tx, jax.random.key(0), batch_shapes(batch), mesh)[0])
    assert len(traces) == 1


@pytest.mark.parametrize("source", ["difference", "main"])
def test_residual_source_main_keeps_the_branch_and_drops_the_difference(source):
    """The same-capacity control: with `residual_source="main"` the residual branch has the
    paper's parameters but its features no longer depend on the reference."""
    from tests.model.helpers import init_variables

    config = tiny_config("residual_input")
    config.model.residual_source = source
    model = tiny_model(config)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 2).items()}
    variables = init_variables(model, batch)
    assert set(variables["params"]) == set(abstract_params(tiny_model(tiny_config("real")),
                                                           config))
    encode = lambda ref: model.apply(variables, ref, batch["main"], train=False,
                                     method=model.encode)[1]["residual"]
    flipped = 255 - batch["ref"]
    same = bool(jnp.array_equal(encode(batch["ref"]), encode(flipped)))
    assert same == (source == "main")
