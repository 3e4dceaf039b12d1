"""Imported first by the commands that never use PyTorch (`real_jax.main`, `real_jax.predict`).

transformers, imported for FlaxGPT2, loads torch whenever it is installed: 6 of the 10 s that
each start spent importing on a 2-core machine. `USE_TORCH=0` (unless the user set it) stops
that. Not set by the library itself: export and the benchmark use transformers' PyTorch GPT-2 in
the same process.
"""

import os

os.environ.setdefault("USE_TORCH", "0")
