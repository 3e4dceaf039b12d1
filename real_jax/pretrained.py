"""Command line: fetch the pretrained ResNet-50 and GPT-2 that the paper config starts from.

    python -m real_jax.pretrained --out weights                  # online: downloads both
    python -m real_jax.pretrained --out weights --resnet_source resnet50.pth \
        --gpt2_source path/to/gpt2                               # offline: from local copies

Then `python -m real_jax.main --config=configs/real.py ...` finds them where the paper config
looks (`pretrained.resnet50`, `pretrained.gpt2_dir`). The work is
`real_jax.interop.pretrained.fetch_pretrained`; this module only parses the flags.
"""

import argparse
import sys
from collections.abc import Sequence

from real_jax.interop.pretrained import PretrainedUnavailable, fetch_pretrained


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m real_jax.pretrained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="weights", help="output folder (default: weights)")
    parser.add_argument("--resnet_source", default=None,
                        help="a torchvision resnet50 .pth state_dict (default: download)")
    parser.add_argument("--gpt2_source", default="gpt2",
                        help="a local HF GPT-2 folder (default: download the hub's gpt2)")
    args = parser.parse_args(argv)
    try:
        paths = fetch_pretrained(args.out, resnet_source=args.resnet_source,
                                 gpt2_source=args.gpt2_source)
    except (PretrainedUnavailable, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths['resnet50']} and {paths['gpt2_dir']}/ (the paper config's "
          "pretrained.resnet50 and pretrained.gpt2_dir)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
