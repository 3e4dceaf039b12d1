"""A small prepared synthetic dataset for the tiny preset, made once per session in-process
(multi-host runs refuse to generate one themselves), and scratch directories.

Both live in this session's own temporary directory rather than pytest's `tmp_path`: pytest
deletes all but its three newest base directories, so a concurrent pytest run (another checkout
on the same machine) could delete them while the long multi-process tests still use them.
"""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.real import get_config

SUBJECTS, IMAGE_SIZE = 16, 80


@pytest.fixture(scope="session")
def scratch_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="real_jax_scaling_tests_"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch(scratch_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for one test."""
    path = scratch_root / request.node.name
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def tiny_data(scratch_root: Path) -> tuple[Path, list[str]]:
    """(prepared data dir, the `--config.data.*` flags that point the tiny preset at it)."""
    from real_jax.experiment import ensure_dataset

    root = scratch_root / "data"
    config = get_config("tiny")
    config.data.dir = str(root / "prepared")
    config.data.synthetic_source = str(root / "raw")
    config.data.synthetic_subjects = SUBJECTS
    config.data.synthetic_image_size = IMAGE_SIZE
    ensure_dataset(config)
    return root / "prepared", [
        f"--config.data.dir={root / 'prepared'}",
        f"--config.data.synthetic_source={root / 'raw'}",
        f"--config.data.synthetic_subjects={SUBJECTS}",
        f"--config.data.synthetic_image_size={IMAGE_SIZE}",
    ]
