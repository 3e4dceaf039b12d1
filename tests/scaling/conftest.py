"""Scratch directories for the multi-process tests, inside the session's own temporary
directory (`suite_root`, tests/conftest.py)."""

from pathlib import Path

import pytest


@pytest.fixture
def scratch(suite_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for one test."""
    path = suite_root / "scratch" / request.node.name
    path.mkdir(parents=True)
    return path
