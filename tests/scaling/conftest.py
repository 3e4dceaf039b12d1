"""A small prepared synthetic dataset for the tiny preset, made once per session in-process
(multi-host runs refuse to generate one themselves)."""

from pathlib import Path

import pytest

from configs.real import get_config

SUBJECTS, IMAGE_SIZE = 16, 80


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, list[str]]:
    """(prepared data dir, the `--config.data.*` flags that point the tiny preset at it)."""
    from real_jax.train import ensure_dataset

    root = tmp_path_factory.mktemp("scaling_data")
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
