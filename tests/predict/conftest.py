"""A tiny trained run (with registration on) and image files of real synthetic studies, shared
by the prediction tests."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.real import get_config
from real_jax.apps import driver as train


@pytest.fixture(scope="session")
def raw_data(tiny_data) -> Path:
    """The generated source studies of the suite's tiny dataset (tests/conftest.py)."""
    return tiny_data[0].parent / "raw"


@pytest.fixture(scope="session")
def trained_workdir(tiny_data, tmp_path_factory) -> Path:
    """`configs/real.py:tiny` trained for 2 steps with `model.registration.enabled=True`."""
    config = get_config("tiny")
    out = tiny_data[0]
    config.data.dir = str(out)
    config.data.synthetic_source = ""
    config.model.registration.enabled = True
    config.model.registration.levels = 2
    config.model.registration.steps = 5
    # Stopped after 2 of 3 steps, with a checkpoint and without the last step's evaluation,
    # which no prediction test reads.
    config.train.num_train_steps = 3
    config.train.stop_after_steps = 2
    config.data.eval_limit = 8
    workdir = tmp_path_factory.mktemp("predict_run")
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def study_images(raw_data) -> tuple[np.ndarray, np.ndarray]:
    """The frontal images of one synthetic subject's first two studies, uint8[H, W] each."""
    subject = sorted(p for p in raw_data.glob("files/p*/p*") if p.is_dir())[0]
    studies = sorted(subject.glob("s*"))
    images = [np.asarray(Image.open(sorted(s.glob("*.jpg"))[0]).convert("L")) for s in studies]
    return images[0], images[1]
