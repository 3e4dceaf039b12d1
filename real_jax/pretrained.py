"""Command line: fetch the pretrained ResNet-50 and GPT-2 that the paper config starts from.

    python -m real_jax.pretrained --out=weights                  # online: downloads both
    python -m real_jax.pretrained --out=weights --resnet_source=resnet50.pth \\
        --gpt2_source=path/to/gpt2                               # offline: from local copies

Then `python -m real_jax.main --config=configs/real.py ...` finds them where the paper config
looks (`pretrained.resnet50`, `pretrained.gpt2_dir`). The work is
`real_jax.interop.pretrained.fetch_pretrained`; this module only parses the flags.
"""

from absl import app, flags

from real_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", "weights", "Output folder.")
    flags.DEFINE_string("resnet_source", None,
                        "A torchvision resnet50 .pth state_dict (default: download).")
    flags.DEFINE_string("gpt2_source", "gpt2",
                        "A local HF GPT-2 folder (default: download the hub's gpt2).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from real_jax.interop.pretrained import fetch_pretrained  # after the flags: it loads torch

    paths = fetch_pretrained(FLAGS.out, resnet_source=FLAGS.resnet_source,
                             gpt2_source=FLAGS.gpt2_source)
    print(f"wrote {paths['resnet50']} and {paths['gpt2_dir']}/ (the paper config's "
          "pretrained.resnet50 and pretrained.gpt2_dir)")


if __name__ == "__main__":
    cli.run(main, define_flags, jax_command=False)
