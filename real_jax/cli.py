"""The entry helper every command runs through: absl flags, one-line user errors, and for the
JAX commands a persistent compilation cache and the GPU compiler flags.

    if __name__ == "__main__":
        cli.run(main)                                  # a JAX command
        cli.run(main, define_flags, jax_command=False) # a command that never starts JAX

- User mistakes end with one clear line, `error: ...` on stderr, and exit status 2: a flag or
  config that cannot be parsed (an unknown preset, a bad override, a missing required flag, a
  stray argument: `app.UsageError`), a `UserError` (`real_jax.errors`; `ConfigError`,
  `ImageFileError`, `ClusterEnvironmentError`, `PretrainedUnavailable` and the commands' own
  are ones), a missing file or workdir (`FileNotFoundError`). Real crashes keep their
  traceback.
- Failures of the run's surroundings (`real_jax.errors.RunFailure`: a checkpoint that cannot be
  written, another process of the job lost) end with one clear line and exit status 1, at
  once: the failed save's writers and JAX's shutdown barrier (which waits for every process,
  dead ones too) would otherwise keep the process alive for minutes.
- On GPUs, XLA's Triton GEMM fusion is off (`--xla_gpu_enable_triton_gemm=false` added to
  `XLA_FLAGS` unless it already names that flag): with jax 0.11.2 on an H200 it aborts the
  process while compiling the paper config's train step (`triton_tiling_propagation.cc: Check
  failed: subdim_size_accumulator == dim_size (4096 vs. 128)`,
  launch/results/gpu_check_paper/first_try_triton_crash); cuBLAS does those matmuls instead.
  BENCHMARKS.md section 3's H200 figures are with it off.
- Compiled XLA programs are kept on disk (`--compilation_cache_dir`, default
  `$XDG_CACHE_HOME/real_jax/xla` or `~/.cache/real_jax/xla`; `JAX_COMPILATION_CACHE_DIR` wins
  when set; `--nocompilation_cache` turns it off), so evaluating or predicting again with the
  same model and shapes starts in seconds instead of recompiling.

Commands define their flags in a `define_flags()` that `run` calls, not at import, so that
several commands can be imported into one process (the tests do) without their flag names
colliding (`bench` keeps its own at import: nothing else imports it). This module imports
neither JAX nor the library, so the data pipeline's command uses it too. `python -m real_jax`
lists the commands.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags, logging

from real_jax.errors import RunFailure, UserError

USAGE_STATUS = 2
FAILURE_STATUS = 1

_CACHE = flags.DEFINE_bool("compilation_cache", True,
                           "Keep compiled XLA programs on disk between runs.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Where (default: $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/real_jax/xla).")
# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_SECONDS = 1.0


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "real_jax" / "xla"


def use_compilation_cache(enabled: bool, directory: str | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at `directory` (see the module docstring);
    returns the directory in use, or None when off."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir())
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX opens its cache once, at the first compilation; forget one opened before this call.
    compilation_cache.reset_cache()
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    logging.info("XLA compilation cache: %s", path)
    return path


# ours: a workaround for an XLA GPU compiler crash (module docstring); a user's own setting wins.
GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


def set_gpu_xla_flags() -> str:
    """Adds `GPU_XLA_FLAGS` to `XLA_FLAGS` where their names are not there yet; returns the
    result. XLA reads the variable when the first backend starts, so call this before any
    array is made (the CLIs do it first thing)."""
    flags_now = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags_now}
    added = [f for f in GPU_XLA_FLAGS if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags_now + added)
    return os.environ["XLA_FLAGS"]


def fail(message: str) -> None:
    """Prints `error: message` to stderr and exits with the usage status."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_STATUS)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        # A config file that raised while loading reports its traceback inside the message;
        # its last line is the reason.
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else str(e)
        for prefix in ("ValueError: ", "KeyError: ", "AttributeError: ", "TypeError: "):
            reason = reason.removeprefix(prefix)
        fail(f"{reason} (--helpshort lists the flags)")
        raise  # not reached
    except (AttributeError, KeyError) as e:
        # ml_collections' answer to an override of a field the config lacks: the bare key
        key = str(e).strip("'\"")
        overrides = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
        named = [arg for arg in overrides if key in arg.split(".")]
        if not named:
            raise
        fail(f"{named[0]}: the config has no field {key!r} (fields renamed or moved since "
             "earlier versions: configs/upgrade.py)")
        raise  # not reached


# reported as one `error:` line with exit status 2 (module docstring)
USER_ERRORS = (UserError, FileNotFoundError)


def run(main: Callable[[list[str]], object], define_flags: Callable[[], None] | None = None,
        *, jax_command: bool = True) -> None:
    """`absl.app.run(main)` for every command (module docstring): defines the command's flags
    (`define_flags`, if given), parses them, and reports user mistakes in one line. `main`
    returning an int makes it the exit status. `jax_command=False` leaves JAX alone."""
    if define_flags is not None:
        define_flags()

    def guarded(argv: list[str]) -> None:
        if jax_command:
            set_gpu_xla_flags()
            use_compilation_cache(_CACHE.value, _CACHE_DIR.value)
        call(main, argv)

    app.run(guarded, flags_parser=_parse_flags)


def call(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """`main(argv)` with parsed flags, its errors reported as `run` reports them (module
    docstring); an int it returns becomes the exit status. Tests call commands through this."""
    try:
        status = main(argv)
    except (*USER_ERRORS, app.UsageError) as e:
        fail(str(e))
    except RunFailure as e:
        logging.flush()
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(FAILURE_STATUS)
    if isinstance(status, int):
        sys.exit(status)
