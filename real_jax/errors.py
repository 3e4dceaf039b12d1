"""The errors the commands report in one line (`real_jax.cli`); every module may import this one.

`UserError` is a `ValueError`, so code that catches bad values keeps catching it. Raise it (or
a subclass: `ConfigError`, `ClusterEnvironmentError`, `ImageFileError`) for a mistake in what
the user gave: a flag, a config, an input file, a dataset. `RunFailure` marks a failure of a
run's surroundings (`CheckpointSaveError`, `LostProcessError`): the command stops at once.
"""


class UserError(ValueError):
    """A mistake in the user's input; the commands print `error: <message>` and exit 2."""


class RunFailure(Exception):
    """The run's surroundings failed (storage, another process); the commands print
    `error: <message>` and exit 1 at once, without waiting at JAX's shutdown barrier."""
