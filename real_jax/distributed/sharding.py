"""Device mesh, shardings, and host-to-global batch assembly.

One mesh axis, `data`, spans every device of every host. The batch is split over it; parameters
and optimizer state are either replicated (plain data parallelism) or, with `mesh.fsdp=True`,
each array is split along its largest dimension that the device count divides (ZeRO-3 style
fully-sharded data parallelism over the same devices; the train step gathers the parameters
for the forward pass and reduce-scatters their gradients, `gather_params`). Because the step is
one `jax.jit` over global arrays, batch-norm statistics are means over the global batch. Inputs
that pair rows (ref and main) keep each pair on one device (`models/real.py`), so that a
data-parallel step communicates by all-reduce only (`distributed/hlo.py` reads what it uses).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (or the given) devices.

    Built with `jax.sharding.Mesh` directly: `jax.make_mesh` defaults to Explicit axis types,
    which HF FlaxGPT2's embedding lookup does not support.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_partition_spec(shape: Sequence[int], num_shards: int, min_size: int) -> P:
    """Splits the largest dimension divisible by `num_shards`; arrays of fewer than `min_size`
    elements stay replicated (`mesh.fsdp_min_size`)."""
    if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_shards == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp_min_size: int | None) -> Any:
    """Shardings for a pytree of `jax.ShapeDtypeStruct` (the train state): all replicated
    (data parallel) when `fsdp_min_size` is None, else FSDP (`fsdp_partition_spec`)."""
    num_shards = mesh.shape[DATA_AXIS]

    def sharding_for(leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        if fsdp_min_size is not None and leaf.ndim > 0:
            return NamedSharding(mesh, fsdp_partition_spec(leaf.shape, num_shards,
                                                           fsdp_min_size))
        return replicated(mesh)

    return jax.tree.map(sharding_for, abstract_state)


def is_sharded(shardings: Any) -> bool:
    """Whether any sharding in the pytree splits its array (FSDP), rather than replicating it."""
    return any(not s.is_fully_replicated for s in jax.tree.leaves(shardings))


def gather_params(params: Any, shardings: Any) -> Any:
    """FSDP: the whole parameters for the forward pass; their gradients back in `shardings`.

    The forward pass sees every parameter replicated (an all-gather of each split array). In the
    backward pass each gradient is first summed whole over the batch shards, then each device
    keeps its own slice: an all-reduce and a local slice, which XLA's GPU pipeline turns into
    one reduce-scatter (ReduceScatterCreator; its CPU pipeline has no such pass). Without
    these constraints, XLA's sharding propagation may split a layer the way its weight is split
    (output channels, features) and move activations between devices instead: all-to-all and
    activation all-gathers in the forward pass, an all-to-all of the updates of an embedding's
    gradient scatter in the backward pass.

    Args:
      params: pytree of arrays, each placed as the matching leaf of `shardings`.
      shardings: pytree of `NamedSharding` (the train state's `params` shardings).
    Returns:
      the same values, constrained to be replicated.
    """

    def replicate(x: jax.Array, sharding: NamedSharding) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, P()))

    @jax.custom_vjp
    def gather(tree: Any) -> Any:
        return jax.tree.map(replicate, tree, shardings)

    def forward(tree: Any) -> tuple[Any, None]:
        return gather(tree), None

    def backward(_: None, grads: Any) -> tuple[Any]:
        whole = jax.tree.map(replicate, grads, shardings)
        return (jax.tree.map(jax.lax.with_sharding_constraint, whole, shardings),)

    gather.defvjp(forward, backward)
    return gather(params)


def make_global_batch(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, keys: Sequence[str] | None = None
) -> dict[str, jax.Array]:
    """This host's slice of the batch -> global arrays split over `data`.

    Each host passes its own `[B / num_hosts, ...]` arrays; the result has the global batch.
    """
    sharding = batch_sharding(mesh)
    keys = list(local_batch) if keys is None else keys
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
        for key in keys
    }
