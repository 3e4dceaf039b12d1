"""Random weights, small torch models and a tiny random-weight ReAl shared by the interop tests."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import torch

from data_pipeline.tokenizer import Tokenizer
from real_jax.experiment import build_model
from real_jax.training.state import model_args

QUESTIONS = ["what has changed compared to the reference image?",
             "is there any change in the lung opacity?",
             "what has changed in the left lung?"]
ANSWERS = ["the main image has an additional finding of pneumothorax than the reference image.",
           "the main image is missing the findings of fracture, lung opacity, and pleural "
           "effusion than the reference image.", "nothing has changed."]


def random_like(tree: Mapping[str, Any], seed: int) -> dict:
    """Numpy leaves with the shapes of `tree` (e.g. `jax.eval_shape` of an init), scaled so that
    activations stay O(1): kernels ~ N(0, 1/fan_in), norm scales and BN variances in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)

    def fill(path: tuple[str, ...], leaf: Any) -> np.ndarray:
        shape = tuple(leaf.shape)
        if path[-1] in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) if path[-1] != "embedding" else 1
            return rng.normal(0, min(0.5, fan_in**-0.5), shape).astype(np.float32)
        return rng.normal(0, 0.1, shape).astype(np.float32)

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> dict:
        return {k: walk(v, path + (k,)) if isinstance(v, Mapping) else fill(path + (k,), v)
                for k, v in node.items()}

    return walk(tree, ())


def randomize_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters, so eval-mode BN is not the identity.

    The last BN of each residual branch (`bn3`) gets small scales, as a trained ResNet's have, so
    16 blocks of un-normalised residual sums keep the features O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                gain = 0.2 if name.endswith("bn3") else 1.0
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_((torch.rand(n, generator=gen) + 0.5) * gain)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def left_pad(rows: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> left-padded `int32[N, length]` ids and mask (truncated to `length`)."""
    ids, mask = np.full((len(rows), length), pad, np.int32), np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, length - len(row):], mask[i, length - len(row):] = row, 1
    return ids, mask


def tiny_real(root: Path, config: ml_collections.ConfigDict,
              images: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """A ReAl built from `config` (registration from `config.model`, as training builds it) with
    random weights, a tokenizer trained on QUESTIONS + ANSWERS saved under `root/data` (which
    becomes `config.data.dir`), and a 3-example batch.

    `images`: `(ref, main)` `uint8[3, S, S]`; default: random noise and a noisy copy.
    Returns `{"model", "config", "tokenizer", "batch", "variables"}`.
    """
    config.data.dir = str(root / "data")
    tokenizer = Tokenizer.train(QUESTIONS + ANSWERS, vocab_size=300)
    tokenizer.save(root / "data" / "tokenizer")
    (root / "data" / "prepare.json").write_text("{}")  # what load_tokenizer checks for
    model = build_model(config.model, tokenizer.vocab_size, tokenizer.eos_id)

    size, lq, la = config.data.image_size, config.data.question_max_tokens, 8
    if images is None:
        rng = np.random.default_rng(0)
        ref = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
        main = np.clip(ref.astype(int) + rng.integers(-60, 60, ref.shape), 0, 255).astype(np.uint8)
    else:
        ref, main = images
    q_ids, q_mask = left_pad(tokenizer.encode_batch(QUESTIONS), lq, tokenizer.pad_id)
    answers = [a[: la - 1] + [tokenizer.eos_id] for a in tokenizer.encode_batch(ANSWERS)]
    a_ids = np.full((3, la), tokenizer.pad_id, np.int32)
    a_mask = np.zeros((3, la), np.int32)
    for i, a in enumerate(answers):
        a_ids[i, : len(a)], a_mask[i, : len(a)] = a, 1
    batch = {"ref": ref, "main": main, "question_ids": q_ids, "question_mask": q_mask,
             "answer_ids": a_ids, "answer_mask": a_mask}

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model_args(batch),
                                               train=False))
    params, batch_stats = random_like(shapes["params"], 1), random_like(shapes["batch_stats"], 2)
    return {"model": model, "config": config, "tokenizer": tokenizer, "batch": batch,
            "variables": {"params": params, "batch_stats": batch_stats}}


def assert_same_greedy_tokens(model: Any, variables: Any, torch_model: Any, batch: Mapping,
                              max_new_tokens: int, eos_id: int) -> np.ndarray:
    """JAX and PyTorch greedy decoding of `batch` give the same tokens (and not only EOS, which
    would make the comparison vacuous). Returns the JAX tokens `int32[B, max_new_tokens]`."""
    import jax.numpy as jnp

    from real_jax.models.generation import make_generate_fn

    generate = make_generate_fn(model, method="greedy", max_new_tokens=max_new_tokens,
                                eos_id=eos_id)
    jax_tokens = np.asarray(generate(variables, {k: jnp.asarray(v) for k, v in batch.items()}))
    torch_tokens = torch_model.generate(batch["ref"], batch["main"], batch["question_ids"],
                                        batch["question_mask"], max_new_tokens).numpy()
    assert (jax_tokens != eos_id).any(), "random weights answered with EOS only: test is vacuous"
    np.testing.assert_array_equal(torch_tokens, jax_tokens)
    return jax_tokens
