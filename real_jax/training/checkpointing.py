"""Checkpoints: an Orbax `CheckpointManager` holding the train state, the grain iterator state and
the config, saved asynchronously; it keeps the last N steps plus the best one by a metric.

Orbax writes each step into a temporary directory (`N.orbax-checkpoint-tmp-*`) and renames it
when complete, so a run killed mid-save (even `kill -9`) leaves no checkpoint that
`latest_step()` would pick; the leftover temporary directory is deleted when the next run opens
the directory. Every process calls `save`/`restore` (the arrays are global); Orbax has only
process 0 write the shared files, and grain writes one iterator state per process.

A complete checkpoint that cannot be read back (files truncated or garbled after the fact, or
written by an incompatible version) raises `CheckpointRestoreError` naming the step, its
directory, and the earlier complete steps. We do not fall back to an earlier step by ourselves:
damage after the atomic rename means the storage or a person changed the files, and silently
training on from an older step would hide that and, with `keep` checkpoints, soon delete the
evidence. Deleting (or moving away) the named directory resumes from the previous step.

A save that fails (disk full, storage gone, permission lost) raises `CheckpointSaveError` at the
next `save` or `wait_until_finished`, naming the step, the error and the latest complete step,
which the failed save leaves untouched (its partial directory is removed on the next start).

Readers beside a running job (`real_jax.predict`, `--mode=evaluate`, `real_jax.export`) open the
directory `read_only` (they never clean up the job's in-flight save) and restore through
`restore_newest`: the job may delete the step a reader picked (it keeps the last N) before the
reader has read it, and the reader then takes the new latest step. Listing the steps reads each
one's metadata, so it too is repeated when a step vanishes under it.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from real_jax.errors import RunFailure
from real_jax.evaluation.metrics import metric_value

STATE, DATA_ITERATOR, CONFIG = "state", "data_iterator", "config"
T = TypeVar("T")
LISTING_ATTEMPTS = 20  # ours: a listing takes milliseconds, a job deletes a step per save


class CheckpointRestoreError(RuntimeError):
    """A complete checkpoint that cannot be restored (damaged, or an incompatible layout)."""


class CheckpointSaveError(OSError, RunFailure):
    """A checkpoint could not be written (disk full, storage gone, permission lost)."""


class Checkpointer:
    """Saves and restores `(state, data iterator, config)` under `directory`."""

    def __init__(self, directory: str | Path, *, keep: int, best_metric: str | None,
                 async_save: bool = True, read_only: bool = False) -> None:
        """`read_only` (prediction beside a running training job): never writes, creates or
        cleans anything, so an in-flight save of that job is left alone."""
        policies: list[pp.PreservationPolicy] = [pp.LatestN(n=keep)]
        if best_metric:
            policies.append(pp.BestN(get_metric_fn=lambda m: metric_value(m, best_metric), n=1,
                                     keep_checkpoints_without_metrics=False))
        self.best_metric = best_metric
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=not read_only,
            cleanup_tmp_directories=not read_only,  # partial saves of a killed run
            read_only=read_only,
        )
        self.manager = self._while_steps_vanish(lambda: ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA_ITERATOR, CONFIG)))
        # Orbax removes the leftover partial saves in a background future; wait for it so a
        # restarted run never sees them (and a test can check they are gone).
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
        self._in_flight: int | None = None  # the step of the asynchronous save not yet checked

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def reload(self) -> None:
        """Lists the steps on disk again (a reader beside a job that is saving)."""
        self._while_steps_vanish(self.manager.reload)

    def _while_steps_vanish(self, list_steps: Callable[[], T]) -> T:
        """`list_steps()`, called again while it fails because a step directory it was
        reading vanished: Orbax lists the steps and then reads each one's metadata, and a job
        beside this reader deletes old steps (it keeps the last N) at any moment. The error
        depends on the moment (a missing file, "not a directory"), so any failure during which
        a step vanished is retried."""
        for attempt in range(LISTING_ATTEMPTS):
            before = self._step_directories()
            try:
                return list_steps()
            except Exception:
                if before <= self._step_directories() or attempt == LISTING_ATTEMPTS - 1:
                    raise
            time.sleep(0.05)
        raise AssertionError("not reached")

    def _step_directories(self) -> set[str]:
        if not self.directory.is_dir():
            return set()
        return {p.name for p in self.directory.iterdir() if p.name.isdigit()}

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
        # Orbax reports a failed asynchronous write of the previous step when the next save
        # starts, and a failed write of this step here or in `wait_until_finished`.
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(**items), metrics=best,
                                      force=True)
        except Exception as e:  # noqa: BLE001 -- whatever Orbax/tensorstore/the OS raise
            raise self._save_error(step, e) from e
        self._in_flight = step
        return saved

    def _complete(self, step: int) -> bool:
        return (self.directory / str(step)).is_dir()

    def _save_error(self, step: int | None, error: Exception) -> CheckpointSaveError:
        """The error for a failed write: of the previous asynchronous save if that one did not
        complete, else of `step`."""
        if self._in_flight is not None and not self._complete(self._in_flight):
            step = self._in_flight
        complete = sorted(int(p.name) for p in self.directory.iterdir()
                          if p.name.isdigit() and int(p.name) != step)
        latest = (f"the latest complete checkpoint is step {max(complete)} (untouched)"
                  if complete else "there is no complete checkpoint yet")
        return CheckpointSaveError(
            f"could not write checkpoint step {step} to {self.directory} "
            f"({type(error).__name__}: {_first_line(error)}); {latest}. Free space or fix the "
            "storage, then run the same command again to resume.")

    def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
        """Restores the state into the layout of `abstract_state` (shapes, dtypes, shardings)
        and, when given, the data iterator in place. Returns the state."""
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA_ITERATOR] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 -- whatever Orbax/tensorstore/grain raise
            raise self._restore_error(step, e) from e
        return restored[STATE]

    def _restore_error(self, step: int, error: Exception) -> CheckpointRestoreError:
        path = self.directory / str(step)
        earlier = [s for s in self.all_steps() if s < step]
        if earlier:
            fix = (f"delete or move away {path} to resume from step {max(earlier)} (complete "
                   f"checkpoints: {sorted(earlier)})")
        else:
            fix = f"delete or move away {path} to start from scratch (no earlier checkpoint)"
        return CheckpointRestoreError(
            f"checkpoint step {step} at {path} cannot be restored "
            f"({type(error).__name__}: {str(error)[:500]}). Its files are damaged, or it was "
            f"written by a different model/config. To continue, {fix}.")

    def restore_config(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{CONFIG: ocp.args.JsonRestore()}))
        return restored[CONFIG]

    def wait_until_finished(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(self._in_flight, e) from e
        self._in_flight = None

    def close(self) -> None:
        self.manager.close()


def _first_line(error: Exception) -> str:
    """The first line of the error, its middle elided when long: tensorstore puts the paths
    first and the operating system's reason ("No space left on device") last."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 400 else f"{line[:150]} ... {line[-240:]}"


def restore_newest(checkpointer: Checkpointer, restore: Callable[[int], T], *,
                   attempts: int = 20) -> tuple[int, T]:
    """`(step, restore(step))` for the latest complete step, for readers beside a running job.

    If the job deletes that step (it keeps the last N) before `restore` has read it, takes the
    then latest step; any other failure, or a step that still exists, raises at once.
    """
    for attempt in range(attempts):
        checkpointer.reload()
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {checkpointer.directory}")
        try:
            return step, restore(step)
        except Exception as e:
            if (checkpointer.directory / str(step)).exists():
                raise
            if attempt == attempts - 1:
                raise FileNotFoundError(
                    f"the job writing {checkpointer.directory} deleted each of the last "
                    f"{attempts} latest steps (up to step {step}) before this reader could read "
                    "it: it saves faster than a restore takes. Start the job with more "
                    "--config.train.keep_checkpoints, or read while it evaluates or after "
                    "it stops.") from e
        time.sleep(0.1)
    raise AssertionError("not reached")


def abstract_like(state: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of a state, for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
