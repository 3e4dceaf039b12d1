"""Small models and fixed random batches shared by the model tests."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.real import get_config
from real_jax.experiment import build_model
from real_jax.training.state import MODEL_INPUT_KEYS

VOCAB_SIZE = 64
EOS_ID = 0
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def tiny_config(variant: str = "real") -> ml_collections.ConfigDict:
    config = get_config("tiny")
    config.model.variant = variant
    return config


def tiny_model(config: ml_collections.ConfigDict | None = None):
    config = config or tiny_config()
    return build_model(config.model, vocab_size=VOCAB_SIZE, eos_id=EOS_ID)


def random_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0) -> dict:
    """A batch in the pipeline's format: left-padded questions, answers + EOS right-padded."""
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    lq, la = config.data.question_max_tokens, config.data.answer_max_tokens
    ref = rng.integers(0, 256, (batch_size, size, size), dtype=np.uint8)
    main = np.clip(ref.astype(int) + rng.integers(-40, 40, ref.shape), 0, 255).astype(np.uint8)
    question_ids = np.full((batch_size, lq), EOS_ID, np.int32)
    question_mask = np.zeros((batch_size, lq), np.int32)
    answer_ids = np.full((batch_size, la), EOS_ID, np.int32)
    answer_mask = np.zeros((batch_size, la), np.int32)
    for i in range(batch_size):
        q_len = int(rng.integers(3, lq))
        a_len = int(rng.integers(2, la - 1))
        question_ids[i, lq - q_len :] = rng.integers(1, VOCAB_SIZE, q_len)
        question_mask[i, lq - q_len :] = 1
        answer_ids[i, :a_len] = rng.integers(1, VOCAB_SIZE, a_len)
        answer_ids[i, a_len] = EOS_ID
        answer_mask[i, : a_len + 1] = 1
    return {
        "ref": ref,
        "main": main,
        "question_ids": question_ids,
        "question_mask": question_mask,
        "answer_ids": answer_ids,
        "answer_mask": answer_mask,
    }


_JITTED: dict[tuple[str, str], Callable] = {}


def _jit_once(name: str, model, fn: Callable) -> Callable:
    """`jax.jit(fn)`, made once per `name` and model configuration, so that calls on arguments
    of the same shapes trace and compile it once. Keyed on the model's repr, which lists every
    field: Flax modules holding a GPT2Config are not hashable."""
    key = (name, repr(model))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(fn)
    return _JITTED[key]


def init_variables(model, batch: dict, seed: int = 0) -> dict:
    """`model.init` on one example shaped like `batch`'s. The variables depend on neither the
    batch size nor its contents, so every test of the same model runs the same compiled init
    (the persistent compilation cache keys on the program; the seed is an argument)."""
    init = _jit_once("init", model,
                     lambda rng, *args: model.init({"params": rng}, *args, train=False))
    return init(jax.random.key(seed), *[jnp.asarray(np.asarray(batch[k])[:1])
                                        for k in MODEL_INPUT_KEYS])


def jit_apply(model) -> Callable:
    """`apply(variables, batch) -> model.apply(variables, *inputs, train=False)`, jitted once per
    model configuration: one compile for every batch of the same shapes, instead of the
    forward's ops dispatched (and each compiled) one by one."""
    return _jit_once("apply", model, lambda variables, batch: model.apply(
        variables, *[batch[k] for k in MODEL_INPUT_KEYS], train=False))


def ulps_apart(a, b, floor: float = 0.0) -> float:
    """Largest |x - y| over the leaves, in ulps of each leaf's scale (max |x|, or `floor`)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if x.size:
            scale = max(float(np.max(np.abs(x))), floor, float(np.finfo(np.float32).tiny))
            worst = max(worst, float(np.max(np.abs(x - y))) / (FLOAT32_EPS * scale))
    return worst


def break_zero_init(variables: dict) -> dict:
    """Adds 0.05 to every 1-D variable (biases, batch-norm scales and statistics): the last
    batch-norm scale of each residual block starts at zero, which would silence its branch."""
    return jax.tree.map(lambda x: x + 0.05 if x.ndim == 1 else x, variables)
