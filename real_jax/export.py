"""Command line: export a trained ReAl checkpoint as a PyTorch folder.

    python -m real_jax.export --workdir runs/real --out exported [--step N] \\
        [--data_dir DIR] [--gpt2_dir DIR]

Writes OUT as described in `real_jax/interop/export.py`; load it in PyTorch with
`real_jax.interop.torch_model.TorchReAl.load(OUT)`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from real_jax.interop.export import export_checkpoint


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real_jax.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="training workdir (holds checkpoints/)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--data_dir", default=None,
                        help="prepared data dir holding the tokenizer (default: config's data.dir)")
    parser.add_argument("--gpt2_dir", default=None,
                        help="GPT-2 tokenizer dir (default: config's pretrained.gpt2_dir)")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.workdir, args.out, args.step, args.data_dir, args.gpt2_dir)
    print(f"exported {args.workdir} to {out}")


if __name__ == "__main__":
    main()
