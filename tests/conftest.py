"""Suite-wide setup, made before JAX starts a backend and inherited by every subprocess:

- a persistent XLA compilation cache shared by the tests and their subprocesses, so identical
  programs compile once per suite run;
- less LLVM optimisation of the CPU machine code. The suite is mostly compilation of tiny models
  whose steps run in milliseconds: these flags cut XLA:CPU's compile time of the tiny train step
  from 25 s to 14 s and make its run 0.05 s -> 0.15 s. The program (HLO, fusions) is the same;
  its float32 results can differ from the default build's in the last bits (instruction
  selection), which no test depends on: every comparison is between runs under these same flags
  or within a rounding tolerance. Users' runs keep XLA's defaults.
"""

import os
import tempfile

import jax

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")

CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "real_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ["XLA_FLAGS"] = " ".join(
    [*os.environ.get("XLA_FLAGS", "").split(),
     *(f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", ""))])
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
