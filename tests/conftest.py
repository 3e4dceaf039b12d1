"""Suite-wide setup, made before JAX starts a backend and inherited by every subprocess:

- a persistent XLA compilation cache shared by the tests and their subprocesses, so identical
  programs compile once per suite run;
- one small prepared dataset for the tiny preset (`tiny_data`), shared by the tests that train;
- with `REAL_JAX_TEST_CPU_LOG=FILE`, one JSON line per test in FILE: its wall time and the CPU
  seconds of the test process and of the subprocesses it waited for (`os.times`);
- cheaper XLA:CPU code generation. The suite is mostly compilation of tiny models whose steps
  run in milliseconds, so less LLVM optimisation and XLA's older elemental emitters instead of
  its MLIR fusion emitters (one MLIR pass pipeline per fusion) compile it several times faster
  (docs/testing.md has the figures). The program (HLO) is the same; its float32 results can
  differ from the default build's in the last bits (instruction selection), which no test
  depends on: every comparison is between runs under these same flags or within a rounding
  tolerance. Users' runs keep XLA's defaults, and `make rehearsal` checks the paper
  configuration under them;
- the flags the commands add to `XLA_FLAGS` (`real_jax.cli.set_gpu_xla_flags`), in the test
  processes too: every `--xla` flag is part of a program's cache key, so without them a program
  compiled inside a test and the same program in a command the suite starts (the benchmark's,
  the scaling script's) would be two cache entries, each compiled.
"""

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import pytest

from configs.real import get_config
from real_jax.cli import set_gpu_xla_flags

TINY_DATA_SUBJECTS, TINY_DATA_IMAGE_SIZE = 16, 80

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true",
                      "--xla_cpu_use_fusion_emitters=false")

CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "real_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ["XLA_FLAGS"] = " ".join(
    [*os.environ.get("XLA_FLAGS", "").split(),
     *(f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", ""))])
set_gpu_xla_flags()
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def suite_root() -> Iterator[Path]:
    """This session's own temporary directory, rather than pytest's `tmp_path`: pytest deletes
    all but its three newest base directories, so a concurrent pytest run (another checkout on
    the same machine) could delete them while long multi-process tests still use them."""
    root = Path(tempfile.mkdtemp(prefix="real_jax_tests_"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(suite_root: Path) -> tuple[Path, list[str]]:
    """One small synthetic dataset prepared as `configs/real.py:tiny` prepares it
    (`ensure_dataset`), for every test that trains the tiny preset: the same data gives the same
    vocabulary, so their processes share compiled programs through the cache.

    Returns (prepared data dir, the `--config.data.*` flags that point the tiny preset at it);
    the generated source images are in its sibling `raw/`."""
    from real_jax.apps.dataset import ensure_dataset

    root = suite_root / "tiny_data"
    config = get_config("tiny")
    config.data.dir = str(root / "prepared")
    config.data.synthetic_source = str(root / "raw")
    config.data.synthetic_subjects = TINY_DATA_SUBJECTS
    config.data.synthetic_image_size = TINY_DATA_IMAGE_SIZE
    ensure_dataset(config)
    return root / "prepared", [f"--config.data.dir={root / 'prepared'}",
                               "--config.data.synthetic_source="]


# Modules handed to the pytest workers first, longest first (by the wall time of a cold run,
# docs/testing.md). `make test` runs xdist with
# `--no-loadscope-reorder`, which keeps this order; by default xdist hands out the modules with
# the most tests first, so these (most hold one long multi-process test) ran last, with one
# core idle while the other finished them. The rest keep their collection order.
SLOWEST_MODULES = (
    "scaling/test_bench.py", "reliability/test_chaos.py", "model/test_train_step.py",
    "scaling/test_process_failures.py", "predict/test_predict.py",
    "reliability/test_preemption_resume.py", "training/test_end_to_end.py",
    "scaling/test_multihost.py", "reliability/test_readers_beside_job.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {f"tests/{name}": i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Appends `{"test", "wall_s", "cpu_s"}` to `$REAL_JAX_TEST_CPU_LOG` when it is set: on two
    cores the suite keeps both busy throughout, so its wall time follows its CPU time, and this
    says which tests spend it (setup, call and teardown together)."""
    log = os.environ.get("REAL_JAX_TEST_CPU_LOG")
    if not log:
        yield
        return
    before, start = os.times(), time.monotonic()
    yield
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user, system, children's user and system
    with open(log, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "wall_s": round(time.monotonic() - start, 2),
                            "cpu_s": round(cpu, 2)}) + "\n")
