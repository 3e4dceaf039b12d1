"""Checkpoints: an Orbax `CheckpointManager` holding the train state, the grain iterator state and
the config, saved asynchronously; it keeps the last N steps plus the best one by a metric.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves no checkpoint that `latest_step()` would pick. Every process calls `save`/`restore`
(the arrays are global); Orbax has only process 0 write the shared files, and grain writes one
iterator state per process.
"""

from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

STATE, DATA_ITERATOR, CONFIG = "state", "data_iterator", "config"


def metric_value(metrics: dict[str, Any], path: str) -> float:
    """`metrics["difference"]["CIDEr"]` for path `difference/CIDEr`."""
    value: Any = metrics
    for key in path.split("/"):
        value = value[key]
    return float(value)


class Checkpointer:
    """Saves and restores `(state, data iterator, config)` under `directory`."""

    def __init__(self, directory: str | Path, *, keep: int, best_metric: str | None,
                 async_save: bool = True) -> None:
        policies: list[pp.PreservationPolicy] = [pp.LatestN(n=keep)]
        if best_metric:
            policies.append(pp.BestN(get_metric_fn=lambda m: metric_value(m, best_metric), n=1,
                                     keep_checkpoints_without_metrics=False))
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=pp.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                create=True,
            ),
            item_names=(STATE, DATA_ITERATOR, CONFIG),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step() if self.best_metric else None

    def save(self, step: int, state: Any, data_iterator: Any,
             config: ml_collections.ConfigDict, metrics: dict[str, Any] | None = None) -> bool:
        """Starts an async save (the call returns once the arrays are copied off-device)."""
        items = {
            STATE: ocp.args.StandardSave(state),
            CONFIG: ocp.args.JsonSave(config.to_dict()),
        }
        if data_iterator is not None:
            items[DATA_ITERATOR] = grain.checkpoint.CheckpointSave(data_iterator)
        best = metrics if metrics and self.best_metric else None
        return self.manager.save(step, args=ocp.args.Composite(**items), metrics=best, force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """Restores the state into the layout of `abstract_state` (shapes, dtypes, shardings)
        and, when given, the data iterator in place. Returns the state."""
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA_ITERATOR] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE]

    def restore_config(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{CONFIG: ocp.args.JsonRestore()}))
        return restored[CONFIG]

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of a state, for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
