"""The one jitted train step: forward, losses, backward, optional gradient accumulation
(`lax.scan` over micro-batches), clipping and the optimizer update, with the old state donated.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from real_jax.distributed import sharding as shd
from real_jax.models.real import ReAl
from real_jax.training.losses import consistency_loss, generation_loss
from real_jax.training.state import TrainState, model_args


def make_loss_fn(model: ReAl, loss_config: ml_collections.ConfigDict) -> Callable[..., Any]:
    """`loss_fn(params, batch_stats, batch, rng) -> (L_total, (metrics, new_batch_stats))`."""
    use_consistency = model.variant == "real" and loss_config.consistency_weight != 0

    def loss_fn(params: Any, batch_stats: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        (logits, features), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            *model_args(batch),
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        l_gen = generation_loss(logits, batch["answer_ids"], batch["answer_mask"])
        metrics = {"loss_gen": l_gen}
        total = l_gen
        if use_consistency:
            l_con = consistency_loss(
                features["align_ref"],
                features["align_main"],
                features["align_residual"],
                sign=loss_config.consistency_sign,
                spatial=loss_config.consistency_spatial,
                aggregate=loss_config.consistency_aggregate,
                image_target=loss_config.consistency_image_target,
            )
            metrics["loss_con"] = l_con
            total = total + loss_config.consistency_weight * l_con
        metrics["loss"] = total
        return total, (metrics, updates["batch_stats"])

    return loss_fn


def _split_microbatches(batch: Mapping[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """`[B, ...]` -> `[num, B/num, ...]`, micro-batch i = rows i, i+num, i+2*num, ...

    Strided rather than contiguous so that every device holds a share of every micro-batch.
    """

    def split(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return {key: split(value) for key, value in batch.items()}


def make_train_step(
    model: ReAl,
    tx: optax.GradientTransformation,
    loss_config: ml_collections.ConfigDict,
    mesh: Mesh,
    state_shardings: Any,
    *,
    schedule: optax.Schedule | None = None,
    grad_accum_steps: int = 1,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
    """Returns `train_step(state, batch, rng) -> (state, metrics)`, jitted, state donated.

    `batch` holds global arrays of the global batch, split over `data`. `metrics` are replicated
    scalars: the loss parts, `grad_norm`, `learning_rate`, `finite` (loss and gradients), and
    `skipped` (1 when `skip_nonfinite` dropped the update) and `skipped_total` (all steps
    dropped so far, kept in `TrainState.skipped_steps`).
    """
    loss_fn = make_loss_fn(model, loss_config)
    if shd.is_sharded(state_shardings.params):
        # FSDP: compute with whole parameters, so that only parameters and gradients move
        # between devices, never activations (`gather_params`).
        sharded_loss_fn = loss_fn

        def loss_fn(params: Any, *args: Any):
            return sharded_loss_fn(shd.gather_params(params, state_shardings.params), *args)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated_grads(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        if grad_accum_steps == 1:
            (_, (metrics, batch_stats)), grads = grad_fn(
                state.params, state.batch_stats, batch, rng
            )
            return grads, metrics, batch_stats

        micro = _split_microbatches(batch, grad_accum_steps)

        def body(carry, inputs):
            grads_sum, metrics_sum, batch_stats = carry
            index, microbatch = inputs
            (_, (metrics, batch_stats)), grads = grad_fn(
                state.params, batch_stats, microbatch, jax.random.fold_in(rng, index)
            )
            add = lambda a, b: jax.tree.map(jnp.add, a, b)
            return (add(grads_sum, grads), add(metrics_sum, metrics), batch_stats), None

        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        abstract_metrics = jax.eval_shape(
            lambda: loss_fn(state.params, state.batch_stats, jax.tree.map(lambda x: x[0], micro),
                            rng)[1][0]
        )
        zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_metrics)
        indices = jnp.arange(grad_accum_steps)
        (grads, metrics, batch_stats), _ = jax.lax.scan(
            body, (zero_grads, zero_metrics, state.batch_stats), (indices, micro)
        )
        scale = lambda tree: jax.tree.map(lambda x: x / grad_accum_steps, tree)
        return scale(grads), scale(metrics), batch_stats

    def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        grads, metrics, batch_stats = accumulated_grads(state, batch, step_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
            skipped_steps=state.skipped_steps,
        )
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        skipped = jnp.zeros((), jnp.int32)
        if skip_nonfinite:
            # Keep the old parameters and optimizer state; only the step counter advances, so
            # the data order and the per-step rng stay those of an uninterrupted run.
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            new_state = new_state.replace(
                params=keep(new_state.params, state.params),
                batch_stats=keep(new_state.batch_stats, state.batch_stats),
                opt_state=keep(new_state.opt_state, state.opt_state),
            )
            skipped = (~finite).astype(jnp.int32)
            new_state = new_state.replace(skipped_steps=state.skipped_steps + skipped)
        metrics = dict(metrics, grad_norm=grad_norm, finite=finite, skipped=skipped,
                       skipped_total=new_state.skipped_steps)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return new_state, metrics

    data = shd.batch_sharding(mesh)
    replicated = shd.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, data, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
