"""Command line: how a training run went (scores beside the text-only prior, outputs, next steps).

    python -m real_jax.summary --workdir=runs/synthetic [--config=configs/real.py:synthetic]

The work is `real_jax.evaluation.summary.run_summary`; this module only parses the flags.
"""

import argparse
from collections.abc import Sequence

from real_jax.evaluation.summary import run_summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real_jax.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training workdir")
    parser.add_argument("--config", default="configs/real.py:synthetic",
                        help="the run's --config, for the commands it suggests")
    args = parser.parse_args(argv)
    print(run_summary(args.workdir, config_flag=args.config))


if __name__ == "__main__":
    main()
