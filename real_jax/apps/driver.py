"""Training driver: `train_and_evaluate(config, workdir)` and `evaluate_checkpoint(...)`.

Builds the model, mesh, optimizer and sharded state; resumes from the workdir's latest complete
checkpoint (state and data iterator); runs the jitted step with periodic logging, evaluation and
asynchronous checkpoints. Non-finite losses stop the run (or, with
`train.nonfinite_policy="skip"`, the step is dropped and counted in the state). Only process 0
writes logs and evaluation files; checkpoints are written collectively through Orbax.

Stopping early, on purpose or not (docs/reliability.md):
- SIGTERM / SIGINT (preemption, `scancel`, Ctrl-C) set a flag; the loop sees it after the step in
  flight, saves a checkpoint at that step, waits for it to be written and returns (exit 0). On
  several processes the flag is agreed (any process signalled -> all stop at the same step) every
  `train.stop_check_every_steps` steps, so the collective save happens on every process.
- `train.stop_after_steps=K` ends this job at step K with a checkpoint; the schedule still spans
  `num_train_steps`, so the next job continues exactly where this one stopped.
- A second SIGINT while stopping aborts at once (KeyboardInterrupt).
- Another process dying (multi-process runs) makes the next collective fail here within
  seconds: `LostProcessError` names the failure and the checkpoint to resume from, and the CLI
  exits at once instead of waiting at JAX's shutdown barrier for the dead process. A process
  blocked elsewhere (inside a checkpoint's barrier) is ended by JAX's coordination service after
  `--heartbeat_timeout_seconds` (real_jax/distributed/runtime.py). A checkpoint write that fails
  because its collective with the other processes failed is that same `LostProcessError`, not a
  storage error.
- A checkpoint that cannot be written stops the run with `CheckpointSaveError`
  (`real_jax.training.checkpointing`); the previous checkpoint stays the latest.
"""

import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from data_pipeline.pipeline import make_train_iterator
from real_jax.apps.dataset import ensure_dataset
from real_jax.config_checks import validate_config
from real_jax.distributed import sharding as shd
from real_jax.distributed.runtime import LostProcessError, wait_for_all_processes
from real_jax.evaluation.loop import Evaluator
from real_jax.experiment import Experiment, build_experiment
from real_jax.training.checkpointing import Checkpointer, CheckpointSaveError, restore_newest
from real_jax.training.metric_writer import MetricWriter, Progress
from real_jax.training.state import MODEL_INPUT_KEYS, TrainState


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or infinite."""


class StopRequest:
    """SIGTERM/SIGINT -> a flag the training loop polls; the previous handlers come back on exit.

    Handlers can only be installed from the main thread; elsewhere (a test calling
    `train_and_evaluate` from a worker thread) the signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.by_other_process = False  # another process was signalled (multi-process runs)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the checkpoint
        self.signum = signum
        logging.warning("received %s: will save a checkpoint after the current step and stop",
                        signal.Signals(signum).name)

    def agreed(self, step: int, every: int) -> bool:
        """Whether to stop now. Single process: the local flag. Several: every process calls
        this at each step, and at steps divisible by `every` they all learn whether any of them
        was signalled (an all-gather; between those steps the answer is False everywhere)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if step % every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
        self.by_other_process = bool(np.any(flags)) and self.signum is None
        return bool(np.any(flags))


def variables_of(state: TrainState) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.batch_stats}


def init_from_pretrained(state: TrainState, shardings: TrainState,
                         pretrained: ml_collections.ConfigDict) -> TrainState:
    """Loads `pretrained.resnet50` into both encoders and `pretrained.gpt2_dir` into the decoder
    (real_jax/interop) and places them like the fresh state. Projectors stay as initialised."""
    if not (pretrained.resnet50 or pretrained.gpt2_dir):
        return state
    from real_jax.interop.torch_weights import load_pretrained

    params, batch_stats = load_pretrained(state.params, state.batch_stats, pretrained)
    place = lambda tree, target: jax.tree.map(
        lambda x, sharding: x if isinstance(x, jax.Array) else jax.device_put(x, sharding),
        tree, target)
    logging.info("initialised from pretrained weights: resnet50=%r gpt2_dir=%r",
                 pretrained.resnet50, pretrained.gpt2_dir)
    return state.replace(params=place(params, shardings.params),
                         batch_stats=place(batch_stats, shardings.batch_stats))


def _host_metrics(step: int, metrics: dict[str, Any], policy: str,
                  checkpointer: Checkpointer) -> dict[str, float]:
    host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    if not host["finite"] and policy == "stop":
        checkpointer.wait_until_finished()
        parts = ", ".join(f"{k}={v:.6g}" for k, v in host.items() if k.startswith("loss"))
        raise NonFiniteLossError(
            f"non-finite loss or gradients at step {step}: {parts}, "
            f"grad_norm={host['grad_norm']:.6g}. The latest checkpoint is step "
            f"{checkpointer.latest_step()} (untouched). Lower optim.learning_rate, check the "
            "data, or set train.nonfinite_policy=skip to drop such steps.")
    if host["skipped"]:
        logging.warning("step %d: non-finite loss or gradients, update skipped (%d skipped so "
                        "far): %s", step, host["skipped_total"], host)
    return host


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (resuming from `workdir` if it holds checkpoints); returns the last eval metrics.

    Returns early, with a checkpoint at the step reached, on SIGTERM/SIGINT or at
    `train.stop_after_steps` (module docstring).
    """
    with StopRequest() as stop:
        try:
            return _train(config, Path(workdir), stop)
        except (jax.errors.JaxRuntimeError, CheckpointSaveError) as e:
            if jax.process_count() == 1 or not _is_collective_failure(e):
                raise
            # a failed save's own message blames the storage: report what it failed on
            reason = e.__cause__ if isinstance(e, CheckpointSaveError) and e.__cause__ else e
            raise _lost_process(reason, Path(workdir)) from e


# How a failed collective between processes reads (gloo on CPUs, NCCL on GPUs, JAX's
# coordination service for barriers) when it surfaces inside a checkpoint write: Orbax syncs the
# processes around each save and reports the failure as its own error.
COLLECTIVE_FAILURE_MARKERS = ("Gloo", "NCCL", "coordination service", "Connection reset by peer")


def _is_collective_failure(error: Exception) -> bool:
    """A multi-process run's failure that another process's death explains: any error of a
    collective in the step, or a checkpoint write whose cause names a failed collective."""
    if isinstance(error, jax.errors.JaxRuntimeError):
        return True
    cause = str(error.__cause__ or "")
    return any(marker in cause for marker in COLLECTIVE_FAILURE_MARKERS)


def _lost_process(error: Exception, workdir: Path) -> LostProcessError:
    """The error a surviving process reports when a collective with the others failed."""
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    resume = f"step {steps[-1]}" if steps else "the start (no complete checkpoint yet)"
    reason = " ".join(str(error).split())[:1000]  # whole: the first line may not say why
    return LostProcessError(
        f"process {jax.process_index()} of {jax.process_count()}: a collective with the other "
        f"processes failed ({reason}); another process has most likely died. Stopping; start "
        f"all {jax.process_count()} processes again with the same command to resume from "
        f"{resume} in {workdir / 'checkpoints'}.")


def _compiled_on_every_process(train_step: Any, state: TrainState, batch: dict[str, Any],
                               rng: jax.Array) -> Any:
    """The train step compiled for these shapes, once every process has compiled it.

    The first collective starts gloo's context, which gives up after a fixed 30 s; a process
    that finds the step in the compilation cache would otherwise wait there while another
    compiles it for minutes."""
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, rng).compile()
    logging.info("train step compiled (or loaded from the cache) in %.1f s",
                 time.perf_counter() - start)
    wait_for_all_processes("real_jax_train_step_compiled")
    return compiled


def build_checked(config: ml_collections.ConfigDict) -> Experiment:
    """The experiment of a run: the config checked first (a bad one fails in seconds, before
    any data is generated), then the dataset made ready, then the factory."""
    validate_config(config, jax.device_count(), jax.process_count())
    ensure_dataset(config)
    return build_experiment(config, check=False)


def _train(config: ml_collections.ConfigDict, workdir: Path, stop: StopRequest) -> dict[str, Any]:
    exp = build_checked(config)
    train = config.train
    rng = jax.random.key(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    train_iter = make_train_iterator(
        config.data, exp.tokenizer, global_batch_size=train.global_batch_size, seed=config.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count())
    wait_for_all_processes("real_jax_before_checkpointer")
    checkpointer = Checkpointer(workdir / "checkpoints", keep=train.keep_checkpoints,
                                best_metric=train.best_metric)
    latest = checkpointer.latest_step()
    if latest is not None:
        # Restored straight into its sharded places: no initialiser is compiled or run.
        abstract, shardings = exp.abstract_state()
        state = checkpointer.restore(latest, abstract, train_iter)
        logging.info("resumed from %s at step %d", workdir / "checkpoints", latest)
    else:
        state, shardings = exp.init_state(init_rng)
        state = init_from_pretrained(state, shardings, config.pretrained)
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
            # With the checkpoints, enough to answer new questions (`real_jax.predict`) on a
            # machine without the training data.
            exp.tokenizer.save(workdir / "tokenizer")

    train_step = exp.train_step(shardings)
    evaluator = Evaluator(exp, config.data.eval_split)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0,
                          resume_step=int(state.step))
    step = int(state.step)
    end = exp.total_steps
    if 0 < train.stop_after_steps < end:
        end = train.stop_after_steps
    progress = Progress(exp.total_steps, step)
    logging.info("training steps %d..%d of %d on %d devices (%d processes), global batch %d",
                 step, max(step, end), exp.total_steps, jax.device_count(), jax.process_count(),
                 train.global_batch_size)
    eval_metrics: dict[str, Any] = {}
    pending = None  # the previous step's metrics, checked after the next step is dispatched
    next_batch = lambda: shd.make_global_batch(next(train_iter), exp.mesh, MODEL_INPUT_KEYS)
    batch = next_batch() if step < end else None
    if batch is not None:
        train_step = _compiled_on_every_process(train_step, state, batch, train_rng)
    while step < end:
        batch = next_batch() if batch is None else batch
        state, metrics = train_step(state, batch, train_rng)
        batch = None
        if pending is not None:
            _host_metrics(*pending, train.nonfinite_policy, checkpointer)
        step += 1
        pending = (step, metrics)
        last = step == exp.total_steps
        stopping = stop.agreed(step, train.stop_check_every_steps) or step == end
        do_eval = step % train.eval_every_steps == 0 or last
        do_save = step % train.checkpoint_every_steps == 0 or do_eval or stopping
        if step % train.log_every_steps == 0 or do_save:
            host = _host_metrics(*pending, train.nonfinite_policy, checkpointer)
            pending = None
            writer.write(step, host, "train/")
            if jax.process_index() == 0:
                progress.log(step, host)
        if do_eval:
            eval_dir = workdir / "eval" / f"step_{step}"
            eval_metrics = evaluator.evaluate(variables_of(state), eval_dir)
            writer.write(step, eval_metrics, "eval/")
        if do_save:
            checkpointer.save(step, state, train_iter, config, eval_metrics if do_eval else None)
        if stopping and not last:
            break
    checkpointer.wait_until_finished()
    checkpointer.close()
    writer.close()
    if step < exp.total_steps:
        if stop.signum is not None:
            reason = f"received {signal.Signals(stop.signum).name}"
        elif stop.by_other_process:
            reason = "another process received SIGTERM or SIGINT"
        else:
            reason = f"train.stop_after_steps={train.stop_after_steps}"
        logging.warning("%s: stopped at step %d of %d with a complete checkpoint in %s; run the "
                        "same command again to continue", reason, step, exp.total_steps,
                        workdir / "checkpoints")
    return eval_metrics


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | Path, *,
                        step: int | None = None, split: str | None = None,
                        score: bool = True) -> dict[str, Any]:
    """Evaluates (or, without `score`, only writes predictions for) a saved checkpoint.

    Writes into `workdir/eval_{split}/step_{N}/`; returns the metrics.
    """
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    exp = build_checked(config)
    # Read-only: the workdir may belong to a job that is training and saving right now.
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                best_metric=config.train.best_metric, read_only=True)
    abstract = exp.abstract_state()[0]
    if step is None:
        step, state = restore_newest(checkpointer, lambda s: checkpointer.restore(s, abstract))
    else:
        state = checkpointer.restore(step, abstract)
    checkpointer.close()
    split = split or config.data.eval_split
    evaluator = Evaluator(exp, split)
    return evaluator.evaluate(variables_of(state), workdir / f"eval_{split}" / f"step_{step}",
                              score=score)
