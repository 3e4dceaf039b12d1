"""The optimizer: AdamW (or plain SGD) with linear warmup, cosine decay and global-norm clipping."""

from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("adamw", "sgd")


def weight_decay_mask(params: Any) -> Any:
    """Decay matrices and kernels only; biases and norm scales/offsets are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    optim_config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns the optax transformation and its learning-rate schedule (for logging).

    `optim_config.name` is `adamw` (the paper config) or `sgd`: plain SGD with the same schedule,
    clipping and decoupled weight decay. Its update is linear in the gradient, so two runs that
    differ only in the order of their reductions end with parameters equal to float32 rounding,
    which is what the multi-process equivalence test compares (Adam's `g / sqrt(v)` turns the
    rounding noise of a near-zero gradient into a full step of either sign).
    """
    warmup = min(optim_config.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim_config.learning_rate * optim_config.end_learning_rate_fraction,
    )
    if optim_config.name == "adamw":
        update = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                             weight_decay=optim_config.weight_decay, mask=weight_decay_mask)
    elif optim_config.name == "sgd":
        update = optax.chain(
            optax.add_decayed_weights(optim_config.weight_decay, mask=weight_decay_mask),
            optax.sgd(schedule))
    else:
        raise ValueError(f"config.optim.name={optim_config.name!r} not in {OPTIMIZERS}")
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), update), schedule
