"""Imported first by the commands that never use PyTorch (`real_jax.main`, `real_jax.predict`).

transformers, imported for FlaxGPT2, loads torch whenever it is installed: 6 of the 10 s that
each start spent importing on a 2-core machine. `USE_TORCH=0` (unless the user set it) stops
that, but only when one of those modules is the program (`python -m real_jax.main`): imported
into another process (a test, a notebook) it would also reach transformers' PyTorch models there
and every subprocess it starts, such as export, which needs them.
"""

import os
import sys

COMMANDS = ("real_jax.main", "real_jax.predict")

_program = getattr(sys.modules.get("__main__"), "__spec__", None)
if _program is not None and _program.name in COMMANDS:
    os.environ.setdefault("USE_TORCH", "0")
