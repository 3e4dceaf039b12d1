"""Imported first by the commands that never use PyTorch (`real_jax.main`, `real_jax.predict`,
and `real_jax.bench` unless its command line asks for `--torch`).

transformers, imported for FlaxGPT2, loads torch whenever it is installed: most of a command's
start-up import time on a small CPU machine (docs/training.md). `USE_TORCH=0` (unless the user
set it) stops that, but only when one of those modules is the program (`python -m
real_jax.main`): imported into another process (a test, a notebook) it would also reach
transformers' PyTorch models there and every subprocess it starts, such as export, which needs
them.
"""

import os
import re
import sys

COMMANDS = ("real_jax.main", "real_jax.predict")
BENCH = "real_jax.bench"
_TORCH_FLAG = re.compile(r"--?torch(=(?P<value>.*))?")


def may_need_torch(argv: list[str]) -> bool:
    """Whether a benchmark command line may ask for PyTorch: `--torch` (any true value), or a
    flag file, whose contents are not read here."""
    for arg in argv:
        match = _TORCH_FLAG.fullmatch(arg)
        if match and (match["value"] or "true").lower() not in ("false", "0"):
            return True
        if arg.startswith(("--flagfile", "-flagfile")):
            return True
    return False


_program = getattr(sys.modules.get("__main__"), "__spec__", None)
if _program is not None and (_program.name in COMMANDS or (
        _program.name == BENCH and not may_need_torch(sys.argv[1:]))):
    os.environ.setdefault("USE_TORCH", "0")
