"""ReAl's losses: answer generation NLL, residual consistency, and their weighted sum.

`L_gen`: the negative log-likelihood of the answer tokens only (EOS included), averaged over each
sample's answer length, then over the batch (paper eq. 1). `L_con = ||f_ref - f_main - f_res||^2`
on the features that `model.alignment` selects (paper eq. 2 takes the encoders' outputs;
`real_jax/models/real.py` lists the choices); its sign convention and reduction are config
fields:

- `sign`: `"paper"` takes `f_ref - f_main - f_res` literally; `"main_minus_ref"` takes
  `f_main - f_ref - f_res`, which matches the residual's own direction `I_res = I_main - I_ref`.
- `spatial`: `"pooled"` averages each feature map over space first (one 2048-vector per image);
  `"spatial"` compares the maps position by position and averages the positions.
- `aggregate`: `"sum"` is the squared L2 norm over channels (the equation literally); `"mean"`
  divides it by the channel count, which keeps `L_con` on the scale of `L_gen` with lambda = 1.
- `image_target`: `"detached"` treats the image-feature difference as the target that the
  residual feature is aligned to (no `L_con` gradient into the shared image encoder);
  `"trainable"` lets `L_con` train all three encoders, as the bare equation does. With
  `"trainable"`, the easiest way to lower `L_con` is to make every feature constant (then
  `f_ref - f_main = 0 = f_res`), and on the synthetic demo that collapse happens within ~200 steps,
  before the decoder has learnt to read the images: the images then carry no information at all
  (docs/results.md). `"detached"` removes that shortcut.
"""

import jax
import jax.numpy as jnp
import optax

CONSISTENCY_SIGNS = ("paper", "main_minus_ref")
CONSISTENCY_SPATIAL = ("pooled", "spatial")
CONSISTENCY_AGGREGATES = ("mean", "sum")
CONSISTENCY_IMAGE_TARGETS = ("detached", "trainable")


def generation_loss(
    logits: jnp.ndarray,
    answer_ids: jnp.ndarray,
    answer_mask: jnp.ndarray,
    sample_weight: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Mean over samples of the per-sample mean answer-token NLL.

    Args:
      logits: `float32[B, La, V]`, `logits[:, t]` predicting `answer_ids[:, t]`.
      answer_ids: `int32[B, La]`.
      answer_mask: `int[B, La]`, 1 on answer tokens and EOS.
      sample_weight: optional `float[B]` (0 on padding samples of an evaluation batch).
    Returns:
      scalar `float32`.
    """
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), answer_ids)
    mask = answer_mask.astype(jnp.float32)
    per_sample = jnp.sum(nll * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    if sample_weight is None:
        return jnp.mean(per_sample)
    weight = sample_weight.astype(jnp.float32)
    return jnp.sum(per_sample * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def consistency_loss(
    f_ref: jnp.ndarray,
    f_main: jnp.ndarray,
    f_residual: jnp.ndarray,
    *,
    sign: str = "paper",
    spatial: str = "pooled",
    aggregate: str = "mean",
    image_target: str = "detached",
) -> jnp.ndarray:
    """Residual feature alignment loss; features are `float[B, ..., C]` (`[B, h, w, C]` maps or
    `[B, Q, D]` tokens). Returns a scalar `float32`. The defaults are `configs/real.py`'s."""
    if image_target == "detached":
        f_ref, f_main = jax.lax.stop_gradient(f_ref), jax.lax.stop_gradient(f_main)
    elif image_target != "trainable":
        raise ValueError(f"consistency image_target {image_target!r} not in "
                         f"{CONSISTENCY_IMAGE_TARGETS}")
    # In float32 before subtracting: bf16 features (`projected_tokens` under bf16 compute)
    # subtracted in bf16 would round the difference, the quantity L_con measures, to 8 bits.
    f_ref, f_main, f_residual = (f.astype(jnp.float32) for f in (f_ref, f_main, f_residual))
    if sign == "paper":
        difference = f_ref - f_main - f_residual
    elif sign == "main_minus_ref":
        difference = f_main - f_ref - f_residual
    else:
        raise ValueError(f"consistency sign {sign!r} not in {CONSISTENCY_SIGNS}")
    if spatial == "pooled":
        difference = jnp.mean(difference, axis=tuple(range(1, difference.ndim - 1)))  # [B, C]
    elif spatial == "spatial":
        difference = difference.reshape(difference.shape[0], -1, difference.shape[-1])  # [B, hw, C]
    else:
        raise ValueError(f"consistency spatial reduction {spatial!r} not in {CONSISTENCY_SPATIAL}")
    if aggregate == "sum":
        per_vector = jnp.sum(jnp.square(difference), axis=-1)
    elif aggregate == "mean":
        per_vector = jnp.mean(jnp.square(difference), axis=-1)
    else:
        raise ValueError(f"consistency aggregate {aggregate!r} not in {CONSISTENCY_AGGREGATES}")
    return jnp.mean(per_vector)
