"""A command (`python -m real_jax.X ARGS`) run in the test's own process: no second JAX start-up.

The command's flags are defined for the call and removed after it (commands define theirs when
run, see `real_jax.cli`; two commands' required flags must not meet in one process), parsed
from ARGS, and its `main` runs through the entry helper's `real_jax.cli.call`, so user errors
end as they do for users: one `error:` line and status 2.
"""

from types import ModuleType

from absl import flags

from real_jax import cli


def call_command(command: ModuleType, *args: str) -> int:
    """Runs `command`'s `main` with ARGS; returns the exit status (0: success)."""
    before = set(flags.FLAGS)
    command.define_flags()
    added = set(flags.FLAGS) - before
    argv = [command.__name__, *args]
    try:
        flags.FLAGS(argv)
        cli.call(command.main, argv[:1])
    except SystemExit as exit_info:
        return exit_info.code or 0
    finally:
        flags.FLAGS.unparse_flags()
        for name in added:
            delattr(flags.FLAGS, name)
    return 0
