"""The paper preset (`configs/real.py`'s default: ResNet-50 x2, GPT-2 124M, bf16, 512 px) traced
without compiling (`jax.eval_shape`): init, the train step's loss and gradients, greedy and beam
decoding, each with the shapes and dtypes the training command and the evaluator rely on."""

import math

import jax
import jax.numpy as jnp

from configs.real import get_config
from real_jax.experiment import build_model
from real_jax.models.generation import beam_search, greedy_search
from real_jax.training.state import example_batch, model_args
from real_jax.training.step import make_loss_fn

GPT2_VOCAB, GPT2_EOS = 50257, 50256  # the paper decoder's tokenizer (HF "gpt2")
BATCH = 2
# Parameter counts of the pieces, from their definitions: torchvision ResNet-50 without its fc
# layer (25,557,032 - 2048 * 1000 - 1000), GPT-2 124M (124,439,808 with its tied head).
RESNET50_NO_FC, GPT2_124M = 23_508_032, 124_439_808


def test_paper_preset_traces_init_loss_gradients_and_decoding_with_the_paper_shapes():
    config = get_config()
    assert config.model.dtype == "bfloat16" and config.model.encoder == "resnet50"
    model = build_model(config.model, vocab_size=GPT2_VOCAB, eos_id=GPT2_EOS)
    batch = example_batch(BATCH, config.data.image_size, config.data.question_max_tokens,
                          config.data.answer_max_tokens)

    variables = jax.eval_shape(
        lambda rng: model.init({"params": rng, "dropout": rng},
                               *model_args({k: jnp.zeros((1, *s.shape[1:]), s.dtype)
                                            for k, s in batch.items()}), train=False),
        jax.random.key(0))
    params = variables["params"]
    # float32 master weights under bf16 compute
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    count = lambda tree: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
    assert count(params["image_encoder"]) == count(params["residual_encoder"])
    # batch-norm scale and bias are parameters, their running statistics are not
    assert count(params["image_encoder"]) == RESNET50_NO_FC
    # `wpe` of 1024 positions and `wte` of the GPT-2 vocabulary, as in the 124M checkpoint.
    assert count(params["decoder"]) == GPT2_124M
    assert params["decoder"]["wte"]["embedding"].shape == (GPT2_VOCAB, 768)

    logits, features = jax.eval_shape(
        lambda v, b: model.apply(v, *model_args(b), train=False), variables, batch)
    assert logits.shape == (BATCH, config.data.answer_max_tokens, GPT2_VOCAB)
    assert logits.dtype == jnp.float32
    # 512 px through ResNet-50's stride 32: 16 x 16 positions of 2048 channels, float32 out.
    for key in ("ref", "main", "residual", "align_ref", "align_main", "align_residual"):
        assert (features[key].shape, features[key].dtype) == ((BATCH, 16, 16, 2048),
                                                              jnp.float32), key

    grad_fn = jax.value_and_grad(make_loss_fn(model, config.loss), has_aux=True)
    (loss, (metrics, batch_stats)), grads = jax.eval_shape(
        grad_fn, params, variables["batch_stats"], batch, jax.random.key(0))
    assert (loss.shape, loss.dtype) == ((), jnp.float32)
    assert set(metrics) == {"loss", "loss_gen", "loss_con"}  # lambda = 1: L_con is in the loss
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(g.shape == p.shape and g.dtype == jnp.float32
               for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True))
    assert jax.tree.structure(batch_stats) == jax.tree.structure(variables["batch_stats"])

    max_new = config.generation.answer_max_tokens
    greedy = jax.eval_shape(lambda v, b: greedy_search(model, v, b, max_new_tokens=max_new,
                                                       eos_id=GPT2_EOS), variables, batch)
    beam = jax.eval_shape(lambda v, b: beam_search(
        model, v, b, max_new_tokens=max_new, eos_id=GPT2_EOS,
        beam_size=config.generation.beam_size,
        length_penalty=config.generation.length_penalty), variables, batch)
    for tokens in (greedy, beam):
        assert (tokens.shape, tokens.dtype) == ((BATCH, max_new), jnp.int32)
