"""Fixtures: the suite's prepared synthetic dataset for the tiny preset and a copy with an
undecodable training image, and helpers that damage a copy of it the way real storage does (an
image payload that no longer decodes, bytes flipped inside an ArrayRecord file)."""

import json
import shutil
from pathlib import Path

import pytest

BAD_RECORD = 1  # the training record whose reference image `damaged` breaks


@pytest.fixture(scope="session")
def prepared(tiny_data) -> Path:
    """The suite's prepared synthetic dataset for the tiny preset (tests/conftest.py)."""
    return tiny_data[0]


@pytest.fixture(scope="session")
def damaged(prepared, tmp_path_factory) -> Path:
    """The prepared dataset with one training image that no longer decodes."""
    data_dir = copy_dataset(prepared, tmp_path_factory.mktemp("damaged") / "prepared")
    replace_image(data_dir, "train", BAD_RECORD, "ref_image", b"\xff\xd8\xff\xe0 broken" * 8)
    return data_dir


def copy_dataset(prepared: Path, destination: Path) -> Path:
    """A copy of a prepared directory, its manifest pointing at the copied builder files."""
    shutil.copytree(prepared, destination)
    manifest_path = destination / "prepare.json"
    manifest = json.loads(manifest_path.read_text())
    old = Path(manifest["builder_dir"])
    manifest["builder_dir"] = str(destination / old.relative_to(prepared))
    manifest_path.write_text(json.dumps(manifest))
    return destination


def array_record_files(data_dir: Path, split: str) -> list[Path]:
    builder_dir = Path(json.loads((data_dir / "prepare.json").read_text())["builder_dir"])
    return sorted(builder_dir.glob(f"*-{split}.array_record-*"))


def replace_image(data_dir: Path, split: str, index: int, field: str, data: bytes) -> None:
    """Rewrites record `index` of `split` with `field` set to `data` (e.g. garbage bytes): the
    record stays readable, its image does not decode, as after bit rot inside a JPEG. The file
    is rewritten with the options TFDS wrote it with."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    builder_dir = json.loads((data_dir / "prepare.json").read_text())["builder_dir"]
    features = tfds.builder_from_directory(builder_dir).info.features
    (path,) = array_record_files(data_dir, split)
    reader = ArrayRecordReader(str(path))
    options = reader.writer_options_string()
    records = reader.read_all()
    reader.close()
    example = features.deserialize_example_np(records[index])
    example[field] = data
    records[index] = features.serialize_example(example)
    writer = ArrayRecordWriter(str(path), options)
    for record in records:
        writer.write(record)
    writer.close()
