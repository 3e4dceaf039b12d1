"""Command line: answer questions about new pairs of studies with a trained run.

One pair (prints the answer; `--heatmap` also writes the saliency figure):

    python -m real_jax.predict --workdir=runs/synthetic --ref=old.dcm --main=new.png \
        [--question="what has changed compared to the reference image?"] [--heatmap=fig.png]

Many pairs from a csv with columns `ref`, `main` and optionally `question` and `id` (relative
paths are taken from the csv's folder); writes one JSON line per row:

    python -m real_jax.predict --workdir=runs/synthetic --pairs=pairs.csv --output=answers.jsonl \
        [--heatmap_dir=figures/]

The work is `real_jax.apps.predictor.predict`; this module only parses the flags.
"""

import real_jax.no_torch  # noqa: F401, I001  (first: it keeps transformers from loading torch)

from absl import app, flags

from real_jax import cli
from real_jax.apps.predictor import DEFAULT_QUESTION, predict

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
    flags.DEFINE_string("ref", None, "Reference (earlier) study: PNG, JPEG or DICOM.")
    flags.DEFINE_string("main", None, "Main (later) study: PNG, JPEG or DICOM.")
    flags.DEFINE_string("question", DEFAULT_QUESTION, "Question about the pair.")
    flags.DEFINE_string("pairs", None, "CSV with columns ref,main[,question][,id] (batch mode).")
    flags.DEFINE_string("output", None, "JSONL output (batch mode; default: answers.jsonl "
                        "beside the csv).")
    flags.DEFINE_string("heatmap", None, "Single pair: write the saliency figure to this PNG.")
    flags.DEFINE_string("heatmap_dir", None,
                        "Batch mode: write one saliency figure per pair here.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_bool("best", False, "Use the checkpoint with the best train.best_metric.")
    flags.DEFINE_integer("batch_size", 8, "Pairs per generation call.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    return predict(workdir=FLAGS.workdir, ref=FLAGS.ref, main=FLAGS.main,
                   question=FLAGS.question, pairs=FLAGS.pairs, output=FLAGS.output,
                   heatmap=FLAGS.heatmap, heatmap_dir=FLAGS.heatmap_dir, step=FLAGS.step,
                   best=FLAGS.best, batch_size=FLAGS.batch_size)


if __name__ == "__main__":
    cli.run(main, define_flags)
