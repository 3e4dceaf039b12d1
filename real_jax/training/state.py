"""The train state and its sharded initialisation.

`create_train_state` first gets the state's shapes with `jax.eval_shape` (nothing allocated),
derives the shardings from them, then runs the initialiser under `jax.jit(out_shardings=...)` so
every parameter is created directly in its place on the mesh.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from real_jax.distributed import sharding as shd
from real_jax.models.real import ReAl

MODEL_INPUT_KEYS = ("ref", "main", "question_ids", "question_mask", "answer_ids", "answer_mask")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # Steps whose update was dropped for a non-finite loss or gradient (train.nonfinite_policy
    # = skip); part of the checkpoint, so the count survives a resume.
    skipped_steps: Any = 0


def example_batch(
    batch_size: int, image_size: int, question_max_tokens: int, answer_max_tokens: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of the model inputs of one batch (docs/model.md, "Batch format")."""
    image = jax.ShapeDtypeStruct((batch_size, image_size, image_size), jnp.uint8)
    question = jax.ShapeDtypeStruct((batch_size, question_max_tokens), jnp.int32)
    answer = jax.ShapeDtypeStruct((batch_size, answer_max_tokens), jnp.int32)
    return {
        "ref": image,
        "main": image,
        "question_ids": question,
        "question_mask": question,
        "answer_ids": answer,
        "answer_mask": answer,
    }


def model_args(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
    return tuple(batch[key] for key in MODEL_INPUT_KEYS)


def _init_fn(model: ReAl, tx: optax.GradientTransformation,
             input_shapes: Mapping[str, jax.ShapeDtypeStruct]) -> Callable[[jax.Array], TrainState]:
    def init(rng: jax.Array) -> TrainState:
        # One example: the parameters' shapes and values do not depend on the batch, and the
        # initialiser's forward pass then costs one example, not a global batch (and its
        # program is the same for every batch size).
        dummy = {k: jnp.zeros((1, *s.shape[1:]), s.dtype) for k, s in input_shapes.items()}
        variables = model.init({"params": rng, "dropout": rng}, *model_args(dummy), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            skipped_steps=jnp.zeros((), jnp.int32),
        )

    return init


def abstract_train_state(
    model: ReAl,
    tx: optax.GradientTransformation,
    input_shapes: Mapping[str, jax.ShapeDtypeStruct],
    mesh: Mesh,
    fsdp_min_size: int | None = None,
) -> tuple[TrainState, Any]:
    """Shapes, dtypes and shardings of the train state, with nothing allocated.

    `fsdp_min_size`: None replicates every array (data parallel); an int shards the arrays of at
    least that many elements (FSDP, `mesh.fsdp_min_size`). Returns
    `(abstract_state, state_shardings)`; the abstract leaves carry their sharding, so they can
    serve directly as a checkpoint restore target.
    """
    return _abstract_state_of(_init_fn(model, tx, input_shapes), mesh, fsdp_min_size)


def _abstract_state_of(init: Callable[[jax.Array], TrainState], mesh: Mesh,
                       fsdp_min_size: int | None) -> tuple[TrainState, Any]:
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = shd.state_shardings(abstract, mesh, fsdp_min_size)
    with_sharding = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        abstract, shardings)
    return with_sharding, shardings


def create_train_state(
    model: ReAl,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shapes: Mapping[str, jax.ShapeDtypeStruct],
    mesh: Mesh,
    fsdp_min_size: int | None = None,
) -> tuple[TrainState, Any]:
    """Initialises the state directly in its sharded layout (`fsdp_min_size`: as in
    `abstract_train_state`). Returns `(state, state_shardings)`."""
    init = _init_fn(model, tx, input_shapes)
    _, shardings = _abstract_state_of(init, mesh, fsdp_min_size)
    # The same function object as eval_shape's: jit reuses that trace instead of tracing the
    # model's initialiser again (~1 s of each fresh start on a CPU).
    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings
