"""Answer generation with a KV cache: greedy and beam search, jit-compiled with fixed shapes.

The prompt `[image tokens | question]` is run once through GPT-2 (prefill), filling the cache;
then one token per step. Questions are left-padded, so every prompt ends at the same position and
one cache index serves the whole batch; position ids count real tokens only, as in training.
Finished sequences emit EOS from then on, and the loop stops once every sequence has finished.
"""

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from real_jax.models.real import ReAl, position_ids_from_mask

GENERATION_METHODS = ("greedy", "beam")


def _decoder_last_logits(
    module: ReAl, embeds: jax.Array, mask: jax.Array, positions: jax.Array, init_cache: bool
) -> jax.Array:
    hidden = module.decoder.hidden_states(
        embeds, mask, positions, deterministic=True, init_cache=init_cache
    )
    return module.decoder.logits(hidden[:, -1])


def _embed(module: ReAl, token_ids: jax.Array) -> jax.Array:
    return module.embed_tokens(token_ids)


class _CachedDecoder:
    """Runs the decoder one chunk at a time against a KV cache of `max_length` positions."""

    def __init__(self, model: ReAl, variables: Mapping[str, Any], batch: int, max_length: int,
                 dtype: Any) -> None:
        self.model = model
        self.variables = variables
        embed_dim = model.decoder_config.n_embd
        cache_shapes = jax.eval_shape(
            lambda: model.apply(
                variables,
                jnp.zeros((batch, max_length, embed_dim), dtype),
                jnp.ones((batch, max_length), jnp.int32),
                jnp.zeros((batch, max_length), jnp.int32),
                True,
                method=_decoder_last_logits,
                mutable=["cache"],
            )[1]["cache"]
        )
        self.initial_cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

    def __call__(self, cache: Any, embeds: jax.Array, mask: jax.Array, positions: jax.Array):
        """`float[N, T, D]` -> (logits of the last position `float32[N, V]`, updated cache)."""
        logits, updated = self.model.apply(
            {**self.variables, "cache": cache},
            embeds,
            mask,
            positions,
            False,
            method=_decoder_last_logits,
            mutable=["cache"],
        )
        return logits, updated["cache"]

    def embed(self, token_ids: jax.Array) -> jax.Array:
        return self.model.apply(self.variables, token_ids, method=_embed)


def _prefill(model: ReAl, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
             max_new_tokens: int):
    embeds, prompt_mask, _ = model.apply(
        variables,
        batch["ref"],
        batch["main"],
        batch["question_ids"],
        batch["question_mask"],
        False,
        method=ReAl.prompt,
    )
    size, prompt_length, _ = embeds.shape
    max_length = prompt_length + max_new_tokens
    if max_length > model.decoder_config.n_positions:
        raise ValueError(
            f"prompt ({prompt_length}) + max_new_tokens ({max_new_tokens}) exceeds the decoder's "
            f"n_positions={model.decoder_config.n_positions}"
        )
    # Future positions are marked attendable: the cache itself hides the ones not yet written.
    mask = jnp.ones((size, max_length), jnp.int32).at[:, :prompt_length].set(prompt_mask)
    positions = position_ids_from_mask(prompt_mask)
    decoder = _CachedDecoder(model, variables, size, max_length, embeds.dtype)
    logits, cache = decoder(decoder.initial_cache, embeds, mask, positions)
    return decoder, logits, cache, mask, positions[:, -1] + 1


def greedy_search(
    model: ReAl,
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    max_new_tokens: int,
    eos_id: int,
) -> jax.Array:
    """Greedy decoding. Returns `int32[B, max_new_tokens]`, EOS after the end of each answer."""
    decoder, logits, cache, mask, next_position = _prefill(model, variables, batch,
                                                           max_new_tokens)
    size = logits.shape[0]
    tokens = jnp.full((size, max_new_tokens), eos_id, jnp.int32)
    finished = jnp.zeros((size,), bool)

    def cond(carry):
        step, _, _, _, finished = carry
        return (step < max_new_tokens) & ~jnp.all(finished)

    def body(carry):
        step, logits, cache, tokens, finished = carry
        token = jnp.where(finished, eos_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        tokens = tokens.at[:, step].set(token)
        finished = finished | (token == eos_id)
        logits, cache = decoder(
            cache, decoder.embed(token[:, None]), mask, (next_position + step)[:, None]
        )
        return step + 1, logits, cache, tokens, finished

    carry = (jnp.zeros((), jnp.int32), logits, cache, tokens, finished)
    return jax.lax.while_loop(cond, body, carry)[3]


def beam_search(
    model: ReAl,
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    max_new_tokens: int,
    eos_id: int,
    beam_size: int,
    length_penalty: float = 0.0,
) -> jax.Array:
    """Beam search; returns the best beam, `int32[B, max_new_tokens]`.

    Beams are ranked by total log-probability divided by `length ** length_penalty` (0: plain
    log-probability). A finished beam keeps its score and emits EOS. With `beam_size=1` this is
    exactly greedy search.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    decoder, logits, cache, mask, next_position = _prefill(model, variables, batch,
                                                           max_new_tokens)
    size, vocab = logits.shape
    k = beam_size
    expand = lambda x: jnp.repeat(x, k, axis=0) if x.ndim > 0 else x
    cache = jax.tree.map(expand, cache)
    mask = expand(mask)
    next_position = expand(next_position)
    logits = expand(logits)
    scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None], (size, 1))
    tokens = jnp.full((size, k, max_new_tokens), eos_id, jnp.int32)
    finished = jnp.zeros((size, k), bool)
    lengths = jnp.zeros((size, k), jnp.int32)
    only_eos = jnp.where(jnp.arange(vocab) == eos_id, 0.0, -jnp.inf)

    def cond(carry):
        step, *_, finished, _ = carry
        return (step < max_new_tokens) & ~jnp.all(finished)

    def body(carry):
        step, logits, cache, scores, tokens, finished, lengths = carry
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(size, k, vocab)
        log_probs = jnp.where(finished[..., None], only_eos, log_probs)
        candidates = (scores[..., None] + log_probs).reshape(size, k * vocab)
        scores, flat = jax.lax.top_k(candidates, k)
        beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        take = lambda x: jnp.take_along_axis(x, beam.reshape(beam.shape + (1,) * (x.ndim - 2)), 1)
        tokens = take(tokens).at[:, :, step].set(token)
        was_finished = take(finished)
        lengths = take(lengths) + (~was_finished).astype(jnp.int32)
        finished = was_finished | (token == eos_id)
        rows = (jnp.arange(size)[:, None] * k + beam).reshape(-1)
        cache = jax.tree.map(lambda x: x[rows] if x.ndim > 0 else x, cache)
        logits, cache = decoder(
            cache, decoder.embed(token.reshape(-1, 1)), mask, (next_position + step)[:, None]
        )
        return step + 1, logits, cache, scores, tokens, finished, lengths

    carry = (jnp.zeros((), jnp.int32), logits, cache, scores, tokens, finished, lengths)
    _, _, _, scores, tokens, _, lengths = jax.lax.while_loop(cond, body, carry)
    if length_penalty:
        scores = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
    best = jnp.argmax(scores, axis=1)
    return jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]


def make_generate_fn(
    model: ReAl,
    *,
    method: str,
    max_new_tokens: int,
    eos_id: int,
    beam_size: int = 1,
    length_penalty: float = 0.0,
) -> Callable[[Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]:
    """`generate(variables, batch) -> int32[B, max_new_tokens]`, jit-compiled."""
    if method == "greedy":
        fn = partial(greedy_search, max_new_tokens=max_new_tokens, eos_id=eos_id)
    elif method == "beam":
        fn = partial(beam_search, max_new_tokens=max_new_tokens, eos_id=eos_id,
                     beam_size=beam_size, length_penalty=length_penalty)
    else:
        raise ValueError(f"generation method {method!r} not in {GENERATION_METHODS}")
    return jax.jit(lambda variables, batch: fn(model, variables, batch))


def strip_after_eos(tokens: jax.Array | Any, eos_id: int) -> list[list[int]]:
    """`int[B, T]` -> per row the tokens before the first EOS."""
    rows = []
    for row in jax.device_get(tokens).tolist():
        rows.append(row[: row.index(eos_id)] if eos_id in row else row)
    return rows
