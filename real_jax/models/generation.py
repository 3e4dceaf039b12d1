"""Answer generation with a KV cache: greedy and beam search, jit-compiled with fixed shapes.

The prompt `[image tokens | question]` is run once through GPT-2 (prefill), filling the cache;
then one token per step. Questions are left-padded, so every prompt ends at the same position and
one cache index serves the whole batch; position ids count real tokens only, as in training.
Both return `int32[B, max_new_tokens]` with EOS from the end of each answer on (`strip_after_eos`
cuts there). Greedy stops once every sequence has emitted EOS; beam search keeps finished
hypotheses apart from the live beams and stops once no live beam can beat them (`beam_search`).
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


def gnmt_length_normaliser(length: jax.Array | int, alpha: float) -> jax.Array:
    """GNMT's length penalty `((5 + length) / 6) ** alpha` (Wu et al. 2016, eq. 14), `float32`."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


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
    """Beam search with a pool of finished hypotheses; returns the best, `int32[B, max_new_tokens]`.

    A hypothesis `y` (tokens generated, EOS included) scores
    `log p(y | prompt) / ((5 + len(y)) / 6) ** length_penalty` (GNMT); `len(y)` counts the EOS,
    and a hypothesis cut off at `max_new_tokens` without EOS has `len(y) = max_new_tokens`.
    `length_penalty=0` ranks by plain log-probability, > 0 favours longer answers.

    Per example, `beam_size` live beams and a pool of the `beam_size` best finished hypotheses
    (their normalised scores, `-inf` for empty slots). Each step takes the `2 * beam_size` best
    continuations of the live beams by log-probability; those ending (EOS, or the last step) move
    to the pool if they rank in the first `beam_size` (the HF / fairseq rule), the best
    `beam_size` others stay live, so a finished hypothesis never takes a live beam's slot. An
    example stops (its pool no longer changes) once its pool is full and no live beam can beat
    the worst entry: log-probabilities only fall as tokens are added, so a live beam's best final
    score is its log-probability over the largest normaliser still reachable. The loop ends when
    every example has stopped, or after `max_new_tokens` steps.
    At the last step every live continuation ends, so the pool is never empty when the search
    stops and the best live beam competes as a hypothesis of length `max_new_tokens`.

    Output rows are EOS after the end of the answer, as `greedy_search`'s. With `beam_size=1`
    and `length_penalty=0` the tokens are greedy's; with another penalty one beam can still
    prefer a later, longer (or earlier, shorter) ending. The search itself is `beam_search_loop`.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    decoder, logits, cache, mask, next_position = _prefill(model, variables, batch,
                                                           max_new_tokens)
    expand = lambda x: jnp.repeat(x, beam_size, axis=0) if x.ndim > 0 else x
    mask, next_position = expand(mask), expand(next_position)

    def step_fn(cache: Any, token: jax.Array, step: jax.Array) -> tuple[jax.Array, Any]:
        return decoder(cache, decoder.embed(token[:, None]), mask, (next_position + step)[:, None])

    return beam_search_loop(expand(logits), jax.tree.map(expand, cache), step_fn,
                            beam_size=beam_size, max_new_tokens=max_new_tokens, eos_id=eos_id,
                            length_penalty=length_penalty)


def beam_search_loop(
    logits: jax.Array,
    state: Any,
    step_fn: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]],
    *,
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    length_penalty: float = 0.0,
) -> jax.Array:
    """The search of `beam_search` (see there) over any decoder, in one `lax.while_loop`.

    Args:
      logits: `float[B * beam_size, V]`, the first token's logits; row `b * beam_size + j` is
        beam j of example b (the same for every j).
      state: the decoder's state, e.g. its KV cache: a pytree whose leaves are scalars or have
        `B * beam_size` rows in the same order; rows are reordered as the beams are.
      step_fn: `(state, tokens int32[B * beam_size], step int32[]) -> (logits, state)`: feeds
        each beam the token it chose at `step` and returns the next `float[B * beam_size, V]`.

    Returns the best hypothesis per example, `int32[B, max_new_tokens]`, EOS after its end.
    """
    k, steps = beam_size, max_new_tokens
    size, vocab = logits.shape[0] // k, logits.shape[1]
    # Each parent beam has one EOS continuation, so 2k candidates keep k that go on.
    width = min(2 * k, k * vocab)
    # One live beam to start with: the others would only repeat its continuations.
    live_logp = jnp.full((size, k), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    live_tokens = jnp.full((size, k, steps), eos_id, jnp.int32)
    pool_scores = jnp.full((size, k), -jnp.inf, jnp.float32)
    pool_tokens = jnp.full((size, k, steps), eos_id, jnp.int32)
    improvable = jnp.ones((size,), bool)
    in_first_k = jnp.arange(width) < k
    gather = lambda x, index: jnp.take_along_axis(x, index[..., None], axis=1)

    def cond(carry):
        step, improvable = carry[0], carry[-1]
        return (step < steps) & jnp.any(improvable)

    def body(carry):
        step, logits, state, live_logp, live_tokens, pool_scores, pool_tokens, improvable = carry
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(size, k, vocab)
        candidates = (live_logp[..., None] + log_probs).reshape(size, k * vocab)
        cand_logp, flat = jax.lax.top_k(candidates, width)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand_tokens = gather(live_tokens, parent).at[:, :, step].set(token)
        ends = (token == eos_id) | (step == steps - 1)
        length = step + 1

        # An example that has stopped keeps its pool: its loop runs on only for the others.
        finished = jnp.where(ends & in_first_k & improvable[:, None],
                             cand_logp / gnmt_length_normaliser(length, length_penalty), -jnp.inf)
        pool_scores, pick = jax.lax.top_k(jnp.concatenate([pool_scores, finished], 1), k)
        pool_tokens = gather(jnp.concatenate([pool_tokens, cand_tokens], 1), pick)

        live_logp, pick = jax.lax.top_k(jnp.where(ends, -jnp.inf, cand_logp), k)
        live_tokens = gather(cand_tokens, pick)
        rows = (jnp.arange(size)[:, None] * k + jnp.take_along_axis(parent, pick, 1)).reshape(-1)
        state = jax.tree.map(lambda x: x[rows] if x.ndim > 0 else x, state)
        logits, state = step_fn(state, live_tokens[:, :, step].reshape(-1), step)

        # log p <= 0, so dividing by the largest reachable normaliser bounds the final score.
        largest = jnp.maximum(gnmt_length_normaliser(length + 1, length_penalty),
                              gnmt_length_normaliser(steps, length_penalty))
        improvable = improvable & (live_logp[:, 0] / largest > pool_scores[:, -1])
        return step + 1, logits, state, live_logp, live_tokens, pool_scores, pool_tokens, improvable

    carry = (jnp.zeros((), jnp.int32), logits, state, live_logp, live_tokens, pool_scores,
             pool_tokens, improvable)
    return jax.lax.while_loop(cond, body, carry)[6][:, 0]


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
