"""Session fixtures: generate a small synthetic dataset, plant faults, ingest it once."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from data_pipeline import prepare, synthetic
from data_pipeline.pipeline import load_tokenizer

SUBJECTS, IMAGE_SIZE, RESIZE = 8, 96, 72


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory):
    """Synthetic dataset with a planted missing image, a corrupt JPEG and a malformed row.

    Returns (path, planted) where planted = {"missing": study_id, "corrupt": study_id}."""
    out = tmp_path_factory.mktemp("raw")
    synthetic.generate(out, subjects=SUBJECTS, seed=3, image_size=IMAGE_SIZE, workers=1)
    dicoms = prepare.select_frontal(out / synthetic.METADATA_CSV)
    with open(out / synthetic.QUESTIONS_CSV) as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"]
    # plant faults on the main study of the first and the last training pair
    missing, corrupt = int(train[0]["study_id"]), int(train[-1]["study_id"])
    subject = {int(r["study_id"]): int(r["subject_id"]) for r in rows}
    synthetic.image_path(out, subject[missing], missing, dicoms[missing]).unlink()
    synthetic.image_path(out, subject[corrupt], corrupt, dicoms[corrupt]).write_bytes(
        b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    with open(out / synthetic.QUESTIONS_CSV, "a", newline="") as f:
        csv.writer(f).writerow([train[1]["study_id"], train[1]["subject_id"], train[1]["ref_id"],
                                "nonsense_type", "what?", "this.", "train"])
    return out, {"missing": missing, "corrupt": corrupt, "rows": len(rows) + 1}


@pytest.fixture(scope="session")
def data_dir(raw_dir, tmp_path_factory):
    raw, _ = raw_dir
    out = tmp_path_factory.mktemp("prepared")
    prepare.prepare(questions=raw / synthetic.QUESTIONS_CSV, images=raw,
                    metadata=raw / synthetic.METADATA_CSV, out=out, resize_shorter=RESIZE,
                    workers=2, vocab_size=600)
    return out


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    return load_tokenizer(data_dir)


def read_metadata(raw):
    with gzip.open(raw / synthetic.METADATA_CSV, "rt") as f:
        return list(csv.DictReader(f))


def manifest(data_dir):
    return json.loads((data_dir / "prepare.json").read_text())
