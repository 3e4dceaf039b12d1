"""Command line: how a training run went (scores beside the text-only prior, outputs, next steps).

    python -m real_jax.summary --workdir=runs/synthetic [--config=configs/real.py:synthetic]

The work is `real_jax.apps.summary.run_summary`; this module only parses the flags.
"""

from absl import app, flags

from real_jax import cli
from real_jax.apps.summary import run_summary

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir.")
    # the text of --config, not the config: only quoted in the commands the summary suggests
    flags.DEFINE_string("config", "configs/real.py:synthetic",
                        "The run's --config, for the commands the summary suggests.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(run_summary(FLAGS.workdir, config_flag=FLAGS.config))


if __name__ == "__main__":
    cli.run(main, define_flags, jax_command=False)
