"""The dataset a config names, ready before the factory builds: the synthetic one is generated
and prepared on first use; a real one (MIMIC-Diff-VQA) is prepared by `python -m
data_pipeline.prepare` and only checked for (`real_jax.config_checks`).
"""

from pathlib import Path

import ml_collections
from absl import logging

from data_pipeline import prepare, synthetic


def ensure_dataset(config: ml_collections.ConfigDict) -> None:
    """Generates and prepares the synthetic dataset when the config names one and it is absent."""
    data = config.data
    if not data.synthetic_source or (Path(data.dir) / "prepare.json").is_file():
        return

    source = Path(data.synthetic_source)
    if not (source / synthetic.QUESTIONS_CSV).is_file():
        logging.info("generating the synthetic dataset (%d subjects) into %s",
                     data.synthetic_subjects, source)
        synthetic.generate(source, subjects=data.synthetic_subjects, seed=config.seed,
                           image_size=data.synthetic_image_size, changes=data.synthetic_changes)
    logging.info("preparing %s into %s", source, data.dir)
    prepare.prepare(
        questions=source / synthetic.QUESTIONS_CSV, images=source,
        metadata=source / synthetic.METADATA_CSV, out=Path(data.dir),
        resize_shorter=data.image_size + data.image_size // 16,
        question_types=tuple(data.question_types) or None)

