"""Untrusted and damaged input: decompression bombs are refused at ingestion and at train-time
decode; an undecodable image or an unreadable record (bit rot inside an ArrayRecord file) is
counted, logged with its record id and skipped by the training iterator, up to
`max_bad_images` (config `data.max_bad_images`), past which a clear error stops training."""

import logging
import struct
import zlib

import numpy as np
import pytest

from configs.real import get_config
from data_pipeline.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_gray
from data_pipeline.pipeline import (
    PIPELINE_MAX_PIXELS,
    SKIPPED,
    PairTransform,
    _source,
    load_records,
    load_tokenizer,
    make_train_iterator,
)
from data_pipeline.tfds_builder import load_and_resize
from tests.reliability.conftest import (
    BAD_RECORD,
    array_record_files,
    copy_dataset,
    replace_image,
)

GARBAGE_JPEG = b"\xff\xd8\xff\xe0 this is no longer a jpeg" * 4


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A valid PNG header announcing width x height 8-bit gray pixels (3.6 Gpx) with a few bytes
    of zlib data: decoding it in full would need gigabytes, opening it costs nothing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_at_ingestion_and_train_time(prepared, tmp_path):
    bomb = bomb_png()
    with pytest.raises(ImageDecodeError, match="exceeds (max_pixels|limit)"):
        decode_gray(bomb, PIPELINE_MAX_PIXELS)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    data, reason = load_and_resize((str(path), 68, DEFAULT_MAX_PIXELS))
    assert data is None and "exceeds" in reason and str(path) in reason

    tokenizer = load_tokenizer(prepared)
    record = {**_source(prepared, "train")[0], "index": 0, "main_image": bomb}
    transform = PairTransform(tokenizer, 64, 16, 32, train=True)
    assert list(transform.random_map(record, np.random.default_rng(0))) == [SKIPPED]
    assert len(transform.bad_ids) == 1 and "record 0" in transform.bad_ids[0]


def flip_bytes(data_dir, split: str, offset: int) -> set[int]:
    """Bit rot: inverts 64 bytes of the split's ArrayRecord file at `offset` (inside the
    compressed chunk of some record, whose stored hash then no longer matches). Returns the
    indices of the records that can no longer be read."""
    from array_record.python.array_record_module import ArrayRecordReader

    (path,) = array_record_files(data_dir, split)
    data = bytearray(path.read_bytes())
    data[offset:offset + 64] = bytes(b ^ 0xFF for b in data[offset:offset + 64])
    path.write_bytes(bytes(data))
    reader = ArrayRecordReader(str(path))
    broken = set()
    for index in range(reader.num_records()):
        try:
            reader.read([index])
        except RuntimeError:
            broken.add(index)
    reader.close()
    return broken


def test_unreadable_image_and_record_are_skipped_logged_then_budget_stops(
        prepared, tmp_path, caplog):
    damaged = copy_dataset(prepared, tmp_path / "damaged")
    replace_image(damaged, "train", 1, "main_image", GARBAGE_JPEG)
    broken = flip_bytes(damaged, "train", 40_000)
    assert len(broken) == 1 and 1 not in broken, broken
    (rotten,) = broken
    with pytest.raises(RuntimeError, match="hash mismatch"):
        _source(damaged, "train")[rotten]
    study = load_records(damaged, "train")[1]["study_id"]

    tokenizer = load_tokenizer(damaged)
    data = get_config("tiny").data
    data.update(dict(dir=str(damaged), question_types=(), num_workers=0, max_bad_images=2))
    iterator = make_train_iterator(data, tokenizer, global_batch_size=8, seed=0)
    seen: list[int] = []
    caplog.set_level(logging.WARNING, logger="data_pipeline.pipeline")
    with pytest.raises(RuntimeError) as error:  # 29 records, 2 bad: the 2nd epoch is over budget
        for _ in range(20):
            seen.extend(next(iterator)["index"].tolist())
    assert "3 unreadable records/images exceed the budget data.max_bad_images=2" in str(
        error.value)
    assert len(seen) >= 24 and not {1, rotten} & set(seen)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"record 1 (study {study}" in logged and f"record {rotten} (study ?" in logged
    assert "hash mismatch" in logged


def test_bad_image_count_is_saved_with_the_iterator_and_survives_a_resume(damaged):
    """`damaged` has one undecodable training image: with a budget of 1 the run stops when it
    meets it the second time (next epoch). A job resumed from the iterator state saved just
    before that batch stops at its first batch; a count restarting at 0 would let it train on."""
    tokenizer = load_tokenizer(damaged)
    data = get_config("tiny").data
    data.update(dict(dir=str(damaged), num_workers=0, max_bad_images=1))
    start = lambda: make_train_iterator(data, tokenizer, global_batch_size=4, seed=0)
    straight, good_batches = start(), 0
    with pytest.raises(RuntimeError, match="2 unreadable records/images exceed the budget"):
        while good_batches < 30:  # 29 records: the second epoch starts in batch 8
            state = straight.get_state()
            next(straight)
            good_batches += 1
    assert 7 <= good_batches < 15, good_batches  # met once in each of the first two epochs

    resumed = start()
    resumed.set_state(state)
    with pytest.raises(RuntimeError, match=rf"2 unreadable .* record {BAD_RECORD} \(study"):
        next(resumed)
