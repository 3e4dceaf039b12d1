"""Forward pass invariances and KV-cached decoding against uncached step-by-step argmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.models.generation import beam_search, greedy_search, make_generate_fn, strip_after_eos
from real_jax.training.losses import generation_loss
from tests.model.helpers import (
    EOS_ID,
    break_zero_init,
    init_variables,
    jit_apply,
    random_batch,
    tiny_config,
    tiny_model,
)

MAX_NEW = 12
jit_generation_loss = jax.jit(generation_loss)


@pytest.fixture(scope="module")
def setup():
    config = tiny_config("real")
    model = tiny_model(config)
    batch = random_batch(config, 3, seed=5)
    variables = init_variables(model, batch, seed=7)
    # Break the zero-initialised last batch-norm scales so every branch contributes.
    variables = break_zero_init(variables)
    return config, model, batch, variables


def eval_loss(model, variables, batch):
    logits, _ = jit_apply(model)(variables, batch)
    return jit_generation_loss(logits, batch["answer_ids"], batch["answer_mask"])


def repad(batch, extra_question, extra_answer, filler):
    """More left padding on questions and right padding on answers, padded with `filler`."""
    out = dict(batch)
    n = batch["question_ids"].shape[0]
    out["question_ids"] = np.concatenate(
        [np.full((n, extra_question), filler, np.int32), batch["question_ids"]], 1)
    out["question_mask"] = np.concatenate(
        [np.zeros((n, extra_question), np.int32), batch["question_mask"]], 1)
    out["answer_ids"] = np.concatenate(
        [batch["answer_ids"], np.full((n, extra_answer), filler, np.int32)], 1)
    out["answer_mask"] = np.concatenate(
        [batch["answer_mask"], np.zeros((n, extra_answer), np.int32)], 1)
    return out


def test_generation_loss_does_not_depend_on_padding_or_padded_labels(setup):
    _, model, batch, variables = setup
    base = eval_loss(model, variables, batch)
    more_padding = repad(batch, extra_question=5, extra_answer=7, filler=17)
    np.testing.assert_allclose(eval_loss(model, variables, more_padding), base, rtol=2e-5)
    # Different token ids (labels) under the padded question and answer positions.
    garbage = dict(batch)
    for ids, mask in (("question_ids", "question_mask"), ("answer_ids", "answer_mask")):
        garbage[ids] = np.where(batch[mask] == 1, batch[ids], 33).astype(np.int32)
    np.testing.assert_allclose(eval_loss(model, variables, garbage), base, rtol=2e-5)


def test_answer_logits_depend_on_the_images(setup):
    _, model, batch, variables = setup
    blank = dict(batch, ref=np.zeros_like(batch["ref"]), main=np.zeros_like(batch["main"]))
    assert abs(float(eval_loss(model, variables, blank)) -
               float(eval_loss(model, variables, batch))) > 1e-4


def test_blank_images_control_ignores_the_images(setup):
    _, model, batch, variables = setup
    blind = model.clone(blank_images=True)
    other = dict(batch, ref=255 - batch["ref"], main=batch["ref"])
    np.testing.assert_allclose(eval_loss(blind, variables, other),
                               eval_loss(blind, variables, batch), rtol=1e-6)


def uncached_greedy(model, variables, batch, max_new):
    """Step-by-step argmax with a full forward pass each step and no cache.

    The answer buffer has a fixed length; causality means logits at step t see only the tokens
    already chosen, so one compiled program serves every step.
    """
    n = batch["ref"].shape[0]
    forward = jax.jit(lambda answer: model.apply(
        variables, jnp.asarray(batch["ref"]), jnp.asarray(batch["main"]),
        jnp.asarray(batch["question_ids"]), jnp.asarray(batch["question_mask"]),
        answer, jnp.ones_like(answer), train=False)[0])
    tokens = np.full((n, max_new), EOS_ID, np.int32)
    finished = np.zeros(n, bool)
    for t in range(max_new):
        logits = np.asarray(forward(jnp.asarray(tokens)))
        token = np.where(finished, EOS_ID, logits[:, t].argmax(-1))
        tokens[:, t] = token
        finished |= token == EOS_ID
    return tokens


def test_cached_greedy_equals_uncached_stepwise_argmax(setup):
    _, model, batch, variables = setup
    cached = make_generate_fn(model, method="greedy", max_new_tokens=MAX_NEW, eos_id=EOS_ID)(
        variables, {k: jnp.asarray(v) for k, v in batch.items()})
    expected = uncached_greedy(model, variables, batch, MAX_NEW)
    np.testing.assert_array_equal(np.asarray(cached), expected)


def test_beam_search_with_one_beam_equals_greedy(setup):
    _, model, batch, variables = setup
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    greedy = jax.jit(lambda v, b: greedy_search(model, v, b, max_new_tokens=MAX_NEW,
                                                eos_id=EOS_ID))(variables, inputs)
    beam = jax.jit(lambda v, b: beam_search(model, v, b, max_new_tokens=MAX_NEW, eos_id=EOS_ID,
                                            beam_size=1))(variables, inputs)
    np.testing.assert_array_equal(np.asarray(beam), np.asarray(greedy))


def test_beam_search_output_is_eos_after_the_first_eos(setup):
    _, model, batch, variables = setup
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    tokens = np.asarray(make_generate_fn(model, method="beam", beam_size=3,
                                         max_new_tokens=MAX_NEW, eos_id=EOS_ID)(variables, inputs))
    assert tokens.shape == (3, MAX_NEW)
    for row in tokens.tolist():
        if EOS_ID in row:
            assert set(row[row.index(EOS_ID):]) == {EOS_ID}
    assert strip_after_eos(np.array([[5, 6, EOS_ID, 7]]), EOS_ID) == [[5, 6]]


def test_generation_rejects_prompts_longer_than_the_decoder_context(setup):
    config, model, batch, variables = setup
    too_many = config.model.decoder.n_positions
    with pytest.raises(ValueError, match="n_positions"):
        # Traced only: the check needs the prompt's length, not its values.
        jax.eval_shape(lambda v, b: greedy_search(model, v, b, max_new_tokens=too_many,
                                                  eos_id=EOS_ID),
                       variables, {k: jnp.asarray(v) for k, v in batch.items()})
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, variables, batch, max_new_tokens=2, eos_id=EOS_ID, beam_size=0)
