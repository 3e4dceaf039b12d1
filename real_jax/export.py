"""Command line: export a trained ReAl checkpoint as a PyTorch folder.

    python -m real_jax.export --workdir=runs/real --out=exported [--step=N] \\
        [--data_dir=DIR] [--gpt2_dir=DIR]

Writes OUT as described in `real_jax/interop/export.py`; load it in PyTorch with
`real_jax.interop.torch_model.TorchReAl.load(OUT)`. The work is
`real_jax.apps.export.export_checkpoint`; this module only parses the flags.
"""

from __future__ import annotations

from absl import app, flags

from real_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("data_dir", None,
                        "Prepared data dir holding the tokenizer (default: the one the run saved "
                        "in its workdir, else the config's data.dir).")
    flags.DEFINE_string("gpt2_dir", None,
                        "GPT-2 tokenizer dir (default: the config's pretrained.gpt2_dir).")
    flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from real_jax.apps.export import export_checkpoint  # after the flags: it loads jax and torch

    out = export_checkpoint(FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.data_dir, FLAGS.gpt2_dir)
    print(f"exported {FLAGS.workdir} to {out}")


if __name__ == "__main__":
    cli.run(main, define_flags)
