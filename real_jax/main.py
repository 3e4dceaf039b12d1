"""Command line: train ReAl, or evaluate / predict with a saved checkpoint.

    python -m real_jax.main --config=configs/real.py:synthetic --workdir=runs/synthetic
    python -m real_jax.main --config=configs/real.py --workdir=runs/real --mode=evaluate \\
        --split=test [--step=N]

Training resumes by itself from the workdir's latest checkpoint. Multi-host runs (SLURM,
Open MPI, TPU pods, or `--coordinator_address`) are set up by `real_jax.distributed`; see
`launch/` and docs/scaling.md.
"""

import real_jax.no_torch  # noqa: F401, I001  (first: it keeps transformers from loading torch)

import logging as std_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from real_jax import cli
from real_jax.apps import driver as train
from real_jax.distributed import runtime as distributed

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file (path[:preset]).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and evaluations.")
    flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"],
                      "train (and evaluate periodically); evaluate a checkpoint; or only write "
                      "its predictions (no scoring, no Java needed).")
    flags.DEFINE_string("split", None,
                        "Split for --mode=evaluate/predict (default: data.eval_split).")
    flags.DEFINE_integer("step", None, "Checkpoint step for evaluate/predict (default: latest).")
    flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
    """Drops Orbax's per-save INFO chatter; its warnings and errors still show."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    distributed.initialize_from_flags()  # multi-host: before anything touches the devices
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    if FLAGS.mode == "train":
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
        train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, step=FLAGS.step,
                                  split=FLAGS.split, score=FLAGS.mode == "evaluate")


if __name__ == "__main__":
    cli.run(main, define_flags)
