"""`python -m real_jax`: lists the commands, each with the first line of its documentation.

The commands' own modules are read, not imported (importing them loads JAX), so the list
costs nothing and cannot drift from the commands' docstrings.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

# In the order a user meets them; `python -m NAME --help` tells each one's flags.
COMMANDS = ("data_pipeline.prepare", "real_jax.pretrained", "real_jax.main", "real_jax.summary",
            "real_jax.predict", "real_jax.export", "real_jax.bench")


def summary_line(module: str) -> str:
    """The first line of `module`'s docstring, without a leading `Command line: `."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"command module {module} is missing")
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    first = first.removeprefix("Command line: ")
    return first[:1].upper() + first[1:]


def listing() -> str:
    width = max(len(f"python -m {m}") for m in COMMANDS)
    lines = ["real_jax commands (each takes --help):", ""]
    lines += [f"  {'python -m ' + m:<{width}}  {summary_line(m)}" for m in COMMANDS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(listing())
