"""Saliency maps: which pixels of the main image an answer depends on.

For a pair, a question and an answer (generated or given), the map is the magnitude of the
gradient of the answer's log-likelihood, `sum_t log p(answer_t | images, question, answer_<t)`,
with respect to the residual input `main - ref` (source `residual`, the default when the model
has a residual branch) or to the main image, through both the main encoder and the residual
(source `main`; the only one for the `baseline` variant), lightly smoothed with a Gaussian. The
residual lives on the main image's pixel grid, so either map can be drawn over the main image
(`real_jax/evaluation/heatmap.py`). Batch norm uses its running statistics (eval mode), so every
example's map depends on that example alone.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from real_jax.models.real import ReAl

SOURCES = ("residual", "main")
SALIENCY_KEYS = ("ref", "main", "question_ids", "question_mask", "answer_ids", "answer_mask")


def default_source(model: ReAl) -> str:
    return "residual" if model.has_residual_branch else "main"


def answer_log_likelihood(logits: jnp.ndarray, answer_ids: jnp.ndarray,
                          answer_mask: jnp.ndarray) -> jnp.ndarray:
    """`float32[B, La, V]`, `int32[B, La]` x2 -> summed log-probability of each answer, `[B]`."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
    return (picked * answer_mask).sum(axis=-1)


def gaussian_blur(images: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """Separable Gaussian blur of `float32[B, H, W]` (edges replicated); sigma in pixels."""
    if sigma <= 0:
        return images
    radius = max(1, int(round(3 * sigma)))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    along = lambda x, axis: jnp.apply_along_axis(
        lambda v: jnp.convolve(v, kernel, mode="valid"), axis, x)
    return along(along(padded, 1), 2)


def check_source(model: ReAl, source: str | None) -> str:
    """The saliency source to use for `model` (`None`: `default_source`); raises if invalid."""
    source = source or default_source(model)
    if source not in SOURCES:
        raise ValueError(f"saliency source {source!r} not in {SOURCES}")
    if source == "residual" and not model.has_residual_branch:
        raise ValueError("the baseline variant has no residual input; use source='main'")
    return source


def answer_gradients(model: ReAl, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
                     source: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Gradient of each answer's log-likelihood with respect to its `source` input.

    Returns `(float32[B, S, S], log-likelihood float32[B])`; residual gradients are per unit
    of the [-1, 1] residual, main-image gradients per unit of the [0, 1] image.
    """
    source = check_source(model, source)

    def total_log_likelihood(offset: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, _ = model.apply(variables, *(batch[k] for k in SALIENCY_KEYS), train=False,
                                **{f"{source}_offset": offset})
        per_example = answer_log_likelihood(logits, batch["answer_ids"], batch["answer_mask"])
        return per_example.sum(), per_example

    offset = jnp.zeros(batch["main"].shape, jnp.float32)
    return jax.grad(total_log_likelihood, has_aux=True)(offset)


def make_saliency_fn(model: ReAl, source: str | None = None, smooth_sigma: float | None = None
                     ) -> Callable[[Mapping[str, Any], Mapping[str, jax.Array]],
                                   tuple[jax.Array, jax.Array]]:
    """`saliency(variables, batch) -> (maps float32[B, S, S] >= 0, log-likelihood float32[B])`,
    jit-compiled: `|answer_gradients|`, Gaussian-smoothed.

    `batch` holds `SALIENCY_KEYS`: the images `[B, S, S]`, the left-padded question and the
    answer to explain (its tokens + EOS, right-padded, with its mask). `smooth_sigma` defaults
    to S / 64 pixels.
    """
    source = check_source(model, source)

    def saliency(variables: Mapping[str, Any], batch: Mapping[str, jax.Array]):
        grads, log_likelihood = answer_gradients(model, variables, batch, source)
        sigma = batch["main"].shape[-1] / 64 if smooth_sigma is None else smooth_sigma
        return gaussian_blur(jnp.abs(grads), sigma), log_likelihood

    return jax.jit(saliency)
