"""Beam search against exhaustive enumeration and a plain Python beam search.

On the tiny ReAl (vocabulary of 6) the reference never runs the KV cache: every next-token
distribution comes from a teacher-forced forward pass of the whole model, one row per answer
prefix. On many random toy decoders (`beam_search_loop` with a lookup-table step function) the
same Python beam search checks the search rules case by case.
"""

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.experiment import build_model
from real_jax.models.generation import beam_search, beam_search_loop
from real_jax.training.state import MODEL_INPUT_KEYS
from tests.model.helpers import EOS_ID, random_batch, tiny_config

VOCAB = 6  # EOS_ID = 0 and five other tokens
STEPS = 4
EXAMPLES = 8  # enough that some answer depends on the width and the penalty (asserted)
ALPHAS = (0.0, 0.6, 2.0, -1.0)
# Answers ending at EOS or cut at STEPS: 1 + 5 + 25 + 125 * 6.
ALL_ANSWERS = sum((VOCAB - 1) ** n for n in range(STEPS - 1)) + (VOCAB - 1) ** (STEPS - 1) * VOCAB
# float32 log-probabilities summed over STEPS tokens, cached vs uncached: a few 1e-6 apart.
TIE = 1e-4

NextLogProbs = Callable[[tuple[int, ...]], np.ndarray]


@pytest.fixture(scope="module")
def setup():
    config = tiny_config("real")
    config.data.image_size = 32
    # A short prompt, so that the answer's own tokens weigh in the decoder's attention.
    config.data.question_max_tokens = 4
    config.model.num_queries = 2
    model = build_model(config.model, vocab_size=VOCAB, eos_id=EOS_ID)
    batch = random_batch(config, EXAMPLES, seed=3)
    for key in ("question_ids", "answer_ids"):
        batch[key] = batch[key] % VOCAB
    variables = random_variables(model, batch, seed=1)
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    return model, variables, inputs, next_token_log_probs(model, variables, batch)


def random_variables(model, batch, seed: int) -> dict:
    """Weights that keep activations O(1) (GPT-2's 0.02-std init gives near-uniform next tokens,
    hence near-tied answers), with two changes: the attention's query, key and value projection
    3x larger, so that attention picks out the answer's own earlier tokens instead of averaging
    the prompt (a beam fed another beam's KV cache then scores differently); and an EOS logit
    raised by 1 through `ln_f`'s bias, so that ending competes with going on (the best answer
    then changes with the length penalty)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "embedding":
            value = rng.normal(0, 0.3, shape)
        elif len(shape) >= 2:
            value = rng.normal(0, np.prod(shape[:-1]) ** -0.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        return np.asarray(value, np.float32)

    args = [jnp.asarray(batch[k]) for k in MODEL_INPUT_KEYS]
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, train=False))
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    decoder = variables["params"]["decoder"]
    for block in decoder["h"].values():
        block["attn"]["c_attn"]["kernel"] *= 3.0
    eos_row = decoder["wte"]["embedding"][EOS_ID]
    decoder["ln_f"]["bias"] = decoder["ln_f"]["bias"] + eos_row / (eos_row @ eos_row)
    return variables


def next_token_log_probs(model, variables, batch) -> list[dict]:
    """Per example `{prefix: float64[VOCAB]}` for every prefix of non-EOS tokens shorter than
    STEPS. Each prefix starts an answer buffer of STEPS tokens; the decoder is causal, so the
    logits after the prefix ignore what follows it."""
    prefixes = [p for n in range(STEPS) for p in itertools.product(range(1, VOCAB), repeat=n)]
    answers = np.full((len(prefixes), STEPS), EOS_ID, np.int32)
    for i, prefix in enumerate(prefixes):
        answers[i, : len(prefix)] = prefix
    forward = jax.jit(lambda v, *args: jax.nn.log_softmax(
        model.apply(v, *args, train=False)[0].astype(jnp.float32), axis=-1))
    tables = []
    for b in range(EXAMPLES):
        rows = [np.repeat(np.asarray(batch[k][b : b + 1]), len(prefixes), 0)
                for k in MODEL_INPUT_KEYS[:4]]
        log_probs = np.asarray(forward(variables, *rows, answers, np.ones_like(answers)),
                               np.float64)
        tables.append({p: log_probs[i, len(p)] for i, p in enumerate(prefixes)})
    return tables


def normaliser(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def all_answers(next_log_probs: NextLogProbs, steps: int) -> list[tuple[tuple[int, ...], float]]:
    """Every answer `(tokens, log-prob)`: tokens up to the first EOS, or `steps` without one."""
    out = []

    def grow(prefix: tuple[int, ...], logp: float) -> None:
        for token, token_logp in enumerate(next_log_probs(prefix)):
            answer = prefix + (token,)
            if token == EOS_ID or len(answer) == steps:
                out.append((answer, logp + token_logp))
            else:
                grow(answer, logp + token_logp)

    grow((), 0.0)
    return out


def python_beam_search(next_log_probs: NextLogProbs, steps: int, k: int,
                       alpha: float) -> tuple[int, ...]:
    """The algorithm of `beam_search`'s docstring, one example, on lists."""
    live, pool = [((), 0.0)], []
    for step in range(steps):
        candidates = sorted(((prefix + (token,), logp + token_logp)
                             for prefix, logp in live
                             for token, token_logp in enumerate(next_log_probs(prefix))),
                            key=lambda c: -c[1])[: 2 * k]
        ends = [c[0][-1] == EOS_ID or step == steps - 1 for c in candidates]
        pool += [(c[0], c[1] / normaliser(step + 1, alpha))
                 for c, end in zip(candidates[:k], ends, strict=False) if end]
        pool = sorted(pool, key=lambda c: -c[1])[:k]
        live = [c for c, end in zip(candidates, ends, strict=True) if not end][:k]
        reachable = max(normaliser(step + 2, alpha), normaliser(steps, alpha))
        if len(pool) == k and (not live or live[0][1] / reachable <= pool[-1][1]):
            break
    return pool[0][0]


def greedy_answer(next_log_probs: NextLogProbs, steps: int) -> tuple[int, ...]:
    answer = ()
    while len(answer) < steps and (not answer or answer[-1] != EOS_ID):
        answer += (int(np.argmax(next_log_probs(answer))),)
    return answer


def as_answer(row: list[int]) -> tuple[int, ...]:
    """A generated row -> the answer up to its first EOS (included); the rest must be EOS."""
    end = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
    assert set(row[end:]) <= {EOS_ID}, row
    return tuple(row[:end])


def beam_answers(model, k: int):
    """`(variables, inputs, alpha) -> answers`, compiled once: alpha is an argument."""
    beam = jax.jit(lambda v, b, a: beam_search(model, v, b, max_new_tokens=STEPS, eos_id=EOS_ID,
                                               beam_size=k, length_penalty=a))

    def answers(variables, inputs, alpha: float) -> list[tuple[int, ...]]:
        tokens = np.asarray(beam(variables, inputs, jnp.float32(alpha)))
        assert tokens.shape == (EXAMPLES, STEPS) and tokens.dtype == np.int32
        return [as_answer(row) for row in tokens.tolist()]

    return answers


def test_beam_as_wide_as_all_answers_returns_the_best_normalised_answer(setup):
    model, variables, inputs, tables = setup
    beam = beam_answers(model, ALL_ANSWERS)
    best_per_alpha = []
    for alpha in ALPHAS:
        expected = []
        for b in range(EXAMPLES):
            answers = all_answers(tables[b].__getitem__, STEPS)
            assert len(answers) == ALL_ANSWERS
            ranked = sorted(((logp / normaliser(len(a), alpha), a) for a, logp in answers),
                            reverse=True)
            assert ranked[0][0] - ranked[1][0] > TIE, f"near tie at alpha={alpha}, example {b}"
            expected.append(ranked[0][1])
        assert beam(variables, inputs, alpha) == expected, f"alpha={alpha}"
        best_per_alpha.append(expected)
    # The penalty must change some answer's length, or a wrong normaliser could pass.
    assert len({tuple(map(len, best)) for best in best_per_alpha}) > 1, best_per_alpha


def test_narrow_beams_equal_a_plain_python_beam_search(setup):
    model, variables, inputs, tables = setup
    greedy = [greedy_answer(table.__getitem__, STEPS) for table in tables]
    unlike_greedy = 0
    for k in (1, 3):
        beam = beam_answers(model, k)
        for alpha in ALPHAS:
            expected = [python_beam_search(table.__getitem__, STEPS, k, alpha)
                        for table in tables]
            assert beam(variables, inputs, alpha) == expected, f"beam_size={k}, alpha={alpha}"
            if k == 1 and alpha == 0.0:
                assert expected == greedy
            unlike_greedy += sum(e != g for e, g in zip(expected, greedy, strict=True))
    # Some answer must depend on the width and the penalty, or the search is not exercised.
    assert unlike_greedy > 0


# Toy decoders: the logits after prefix p (length t) are `last[t, p[t-1]] + sum_i earlier[i, p[i]]`
# (`last[0, TOY_VOCAB]` for the first token), random per example, so that they depend on the
# whole prefix and a beam fed another beam's state goes wrong.
TOY_EXAMPLES = 400
TOY_VOCAB = 5
TOY_STEPS = 5


def toy_decoders(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`last float32[E, TOY_STEPS + 1, TOY_VOCAB + 1, TOY_VOCAB]` (by position and previous
    token), `earlier float32[E, TOY_STEPS, TOY_VOCAB, TOY_VOCAB]` (by an earlier token and its
    position); EOS raised by 1 so that answers end at every length."""
    rng = np.random.default_rng(seed)
    last = rng.normal(0, 1.5, (TOY_EXAMPLES, TOY_STEPS + 1, TOY_VOCAB + 1, TOY_VOCAB))
    last[..., EOS_ID] += 1.0
    earlier = rng.normal(0, 1.0, (TOY_EXAMPLES, TOY_STEPS, TOY_VOCAB, TOY_VOCAB))
    return last.astype(np.float32), earlier.astype(np.float32)


def toy_next_log_probs(last: np.ndarray, earlier: np.ndarray, example: int) -> NextLogProbs:
    def next_log_probs(prefix: tuple[int, ...]) -> np.ndarray:
        t = len(prefix)
        logits = last[example, t, prefix[-1] if prefix else TOY_VOCAB].astype(np.float64)
        for i, token in enumerate(prefix):
            logits = logits + earlier[example, i, token]
        return logits - np.logaddexp.reduce(logits)

    return next_log_probs


def toy_beam_search(k: int):
    """`(last, earlier, alpha) -> int32[TOY_EXAMPLES, TOY_STEPS]` by `beam_search_loop`; the
    state is each row's example and prefix, reordered with the beams as a KV cache is."""

    def step_fn(state, token, step):
        example, prefix = state
        prefix = prefix.at[:, step].set(token)
        positions = jnp.arange(TOY_STEPS)
        contributions = earlier_[example[:, None], positions[None], prefix]  # [N, STEPS, V]
        logits = last_[example, step + 1, token] + jnp.sum(
            jnp.where((positions <= step)[None, :, None], contributions, 0.0), axis=1)
        return logits, (example, prefix)

    def search(last, earlier, alpha):
        nonlocal last_, earlier_
        last_, earlier_ = last, earlier
        example = jnp.repeat(jnp.arange(TOY_EXAMPLES), k)
        state = (example, jnp.zeros((TOY_EXAMPLES * k, TOY_STEPS), jnp.int32))
        return beam_search_loop(last[example, 0, TOY_VOCAB], state, step_fn, beam_size=k,
                                max_new_tokens=TOY_STEPS, eos_id=EOS_ID, length_penalty=alpha)

    last_ = earlier_ = None
    return jax.jit(search)


def test_beam_search_loop_equals_a_plain_python_beam_search_on_random_toy_decoders():
    last, earlier = toy_decoders(seed=0)
    decoders = [toy_next_log_probs(last, earlier, e) for e in range(TOY_EXAMPLES)]
    greedy = [greedy_answer(d, TOY_STEPS) for d in decoders]
    unlike_greedy, lengths = 0, set()
    for k in (1, 2, 4):
        search = toy_beam_search(k)
        for alpha in ALPHAS:
            tokens = np.asarray(search(last, earlier, jnp.float32(alpha)))
            got = [as_answer(row) for row in tokens.tolist()]
            expected = [python_beam_search(d, TOY_STEPS, k, alpha) for d in decoders]
            wrong = [e for e in range(TOY_EXAMPLES) if got[e] != expected[e]]
            assert not wrong, (f"beam_size={k}, alpha={alpha}: examples {wrong[:5]}, got "
                               f"{[got[e] for e in wrong[:5]]}, expected "
                               f"{[expected[e] for e in wrong[:5]]}")
            unlike_greedy += sum(g != e for g, e in zip(got, greedy, strict=True))
            lengths |= {len(a) for a in got}
    assert unlike_greedy > TOY_EXAMPLES and lengths == set(range(1, TOY_STEPS + 1)), lengths
