"""Grain input pipeline: prepared ArrayRecord pairs -> per-host numpy batches (docs/data.md).

    tfds ArrayRecord data source -> grain MapDataset -> [shuffle per epoch, repeat] -> [this
    host's rows of each global batch] -> decode, same crop for both images, per-image
    photometric jitter, tokenize, pad -> batch -> [mp_prefetch workers]

Batch (B = per-host batch size, S = image_size):
    ref, main       uint8[B, S, S]   question_ids  int32[B, Lq] (left-padded with pad_id)
    question_mask   int32[B, Lq]     answer_ids    int32[B, La] (answer + EOS, right-padded)
    answer_mask     int32[B, La]     question_type int32[B] (index into vocab.QUESTION_TYPES)
    index           int64[B] (record index in the split; -1 on padding)   valid bool[B]

Training iterators are infinite, reshuffled every epoch, deterministic for a seed, and
checkpointable (`get_state`/`set_state`, or Orbax `grain.checkpoint.CheckpointSave/Restore`).
Evaluation iterators go once over the split in order and pad the last batch with valid=False.
Truncated questions/answers are counted up front for the whole training split (one log line)
and per element (`stats()`); each truncated record is logged once per iterator, however many
epochs meet it; unreadable records and images are counted, logged with their ids and skipped up to
a budget (`max_bad_images`, config `data.max_bad_images`), past which training stops. The count
is part of the iterator's state, so it is checkpointed with the model and a resumed run goes on
counting from it; each grain worker process (or the host process, without workers) keeps its own.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np

from data_pipeline.images import ImageDecodeError, decode_gray, pair_crop, photometric_jitter
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.vocab import QUESTION_TYPE_INDEX, QUESTION_TYPES

log = logging.getLogger(__name__)
_STATS: collections.Counter = collections.Counter()  # per process (each grain worker has its own)
PIPELINE_MAX_PIXELS = 16_000_000
UNREADABLE = "unreadable"  # key of the stand-in for a record that cannot be read
MAX_TRUNCATION_LOGS = 10  # truncated records logged by name per iterator and kind
SKIPPED = "skipped"  # key of a training example dropped as unreadable (`_SkipUnreadable`)


def stats() -> dict[str, int]:
    """Counters of this process: question_truncated, answer_truncated, bad_image, examples."""
    return dict(_STATS)


def _manifest(data_dir: str | Path) -> dict:
    p = Path(data_dir) / "prepare.json"
    if not p.exists():
        raise FileNotFoundError(
            f"{data_dir} is not a prepared data directory (no prepare.json). Create it with "
            "`python -m data_pipeline.prepare --questions CSV --images DIR --metadata CSV "
            f"--out {data_dir}` (or `python -m data_pipeline.synthetic` first for synthetic data).")
    return json.loads(p.read_text())


def load_tokenizer(data_dir: str | Path, gpt2_dir: str | Path | None = None) -> Tokenizer:
    """GPT-2's tokenizer from the local `gpt2_dir` if given, else the BPE saved by prepare."""
    if gpt2_dir:
        return Tokenizer.from_gpt2_dir(gpt2_dir)
    _manifest(data_dir)
    return Tokenizer.load(Path(data_dir) / "tokenizer")


def encode_question(tokenizer: Tokenizer, question: str, max_tokens: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """A question as the model reads it: `(ids int32[Lq], mask int32[Lq], untruncated length)`,
    left-padded with `pad_id` and cut to its first `max_tokens` tokens."""
    ids = tokenizer.encode(question)
    length = len(ids)
    ids = ids[:max_tokens]
    out = np.full(max_tokens, tokenizer.pad_id, np.int32)
    mask = np.zeros(max_tokens, np.int32)
    if ids:
        out[-len(ids):], mask[-len(ids):] = ids, 1
    return out, mask, length


class Records:
    """Text and ids of one split, by record index: `records[i] -> {study_id, subject_id, ref_id,
    question_type, question, answer, row}` (from DATA_DIR/index/{split}.jsonl)."""

    def __init__(self, data_dir: str | Path, split: str):
        _manifest(data_dir)
        path = Path(data_dir) / "index" / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"split {split!r} not prepared in {data_dir} (no {path})")
        with open(path) as f:
            self._rows = [json.loads(line) for line in f]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._rows[int(index)]


def load_records(data_dir: str | Path, split: str) -> Records:
    """Text and ids by record index, for evaluation to look up `batch['index']`."""
    return Records(data_dir, split)


def _source(data_dir: str | Path, split: str):
    import tensorflow_datasets as tfds

    m = _manifest(data_dir)
    builder = tfds.builder_from_directory(m["builder_dir"])
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {m['builder_dir']} "
                         f"(has {list(builder.info.splits)})")
    return builder.as_data_source(split)


class _Subset:
    """Grain source: records `indices` of a data source, with 'index' added (-1 = padding)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        if j < 0:
            return {"index": -1}
        try:
            return {**self.source[j], "index": j}
        except Exception as e:  # noqa: BLE001 -- a damaged record: PairTransform counts it
            return {"index": j, UNREADABLE: f"unreadable record: {type(e).__name__}: {e}"}


def _select(data_dir, split, question_types, n_source: int) -> np.ndarray:
    records = load_records(data_dir, split)
    if len(records) != n_source:
        raise RuntimeError(f"{data_dir}: index/{split}.jsonl has {len(records)} rows but the "
                           f"ArrayRecord split has {n_source}; rerun data_pipeline.prepare --force")
    if not question_types:
        return np.arange(n_source, dtype=np.int64)
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown question_types {sorted(unknown)}; choose from {QUESTION_TYPES}")
    keep = set(question_types)
    return np.array([i for i in range(n_source) if records[i]["question_type"] in keep],
                    dtype=np.int64)


def count_truncations(data_dir, split, tokenizer: Tokenizer, question_max_tokens: int,
                      answer_max_tokens: int, indices: np.ndarray | None = None) -> dict[str, int]:
    """Exact number of questions longer than Lq and answers longer than La - 1 in a split."""
    records = load_records(data_dir, split)
    idx = range(len(records)) if indices is None else indices
    q = tokenizer.encode_batch([records[i]["question"] for i in idx])
    a = tokenizer.encode_batch([records[i]["answer"] for i in idx])
    return {"questions": len(q),
            "question_truncated": sum(len(t) > question_max_tokens for t in q),
            "answer_truncated": sum(len(t) > answer_max_tokens - 1 for t in a)}


class PairTransform(grain.transforms.RandomMap):
    """record -> example dict (one element of the batch format above), or None to skip it.

    train=True: random crop (same for both images) + per-image jitter (if `jitter`); a bad image
    gives `{SKIPPED: its record's ids}`, which `_SkipUnreadable` drops and counts against
    `max_bad_images` (in the iterator's state, so the count survives a resume).
    train=False: center crop, no jitter; bad images and padding give valid=False examples.
    """

    def __init__(self, tokenizer: Tokenizer, image_size: int, question_max_tokens: int,
                 answer_max_tokens: int, train: bool, jitter: bool = True):
        self.tok, self.size = tokenizer, image_size
        self.lq, self.la = question_max_tokens, answer_max_tokens
        self.train, self.jitter = train, jitter
        self.bad_ids: list[str] = []
        # (what, record index) -> times truncated by this transform: a record met again (the
        # next epoch) is counted, not logged again
        self.truncated: collections.Counter = collections.Counter()
        self.truncated_records: collections.Counter = collections.Counter()  # what -> records

    def random_map(self, record: dict, rng: np.random.Generator) -> dict | None:
        if record["index"] < 0:
            return self._empty(-1)
        if UNREADABLE in record:
            return self._bad(record, record[UNREADABLE])
        try:
            ref = decode_gray(record["ref_image"], PIPELINE_MAX_PIXELS)
            main = decode_gray(record["main_image"], PIPELINE_MAX_PIXELS)
        except ImageDecodeError as e:
            return self._bad(record, e)
        ref, main = pair_crop(ref, main, self.size, rng if self.train else None)
        if self.train and self.jitter:
            ref, main = photometric_jitter(ref, rng), photometric_jitter(main, rng)
        q_ids, q_mask = self._question(record)
        a_ids, a_mask = self._answer(record)
        _STATS["examples"] += 1
        return {"ref": ref, "main": main, "question_ids": q_ids, "question_mask": q_mask,
                "answer_ids": a_ids, "answer_mask": a_mask,
                "question_type": np.int32(QUESTION_TYPE_INDEX[_text(record["question_type"])]),
                "index": np.int64(record["index"]), "valid": np.bool_(True)}

    def map(self, record: dict) -> dict | None:  # evaluation: deterministic
        return self.random_map(record, None)

    def _question(self, record):
        ids, mask, length = encode_question(self.tok, _text(record["question"]), self.lq)
        if length > self.lq:
            self._truncated("question", record, length)
        return ids, mask

    def _answer(self, record):
        ids = self.tok.encode(_text(record["answer"]))
        if len(ids) > self.la - 1:
            self._truncated("answer", record, len(ids))
            ids = ids[: self.la - 1]
        ids = ids + [self.tok.eos_id]
        out = np.full(self.la, self.tok.pad_id, np.int32)
        mask = np.zeros(self.la, np.int32)
        out[: len(ids)], mask[: len(ids)] = ids, 1
        return out, mask

    def _truncated(self, what: str, record: dict, n: int) -> None:
        """Counts a truncated question or answer. Each record is logged once per transform (an
        iterator's, across its epochs), up to `MAX_TRUNCATION_LOGS` records of each kind; the
        counts of every truncation are in `stats()`."""
        _STATS[f"{what}_truncated"] += 1
        key = (what, int(record["index"]))
        self.truncated[key] += 1
        if self.truncated[key] > 1:
            return
        self.truncated_records[what] += 1
        records = self.truncated_records[what]
        if records > MAX_TRUNCATION_LOGS:
            return
        fit = self.lq if what == "question" else self.la - 1
        more = ("; further ones are counted, not logged (data_pipeline.pipeline.stats())"
                if records == MAX_TRUNCATION_LOGS else "")
        log.warning("%s of record %d (study %s) has %d tokens, %d fit: truncated (logged once; "
                    "%d %s(s) truncated by this iterator so far%s)", what, key[1],
                    record.get("study_id"), n, fit, records, what, more)

    def _bad(self, record: dict, err: Exception | str) -> dict | None:
        _STATS["bad_image"] += 1
        rid = (f"record {record['index']} (study {record.get('study_id', '?')}, "
               f"ref {record.get('ref_id', '?')})")
        self.bad_ids.append(rid)
        log.warning("unreadable image in %s: %s; skipped", rid, err)
        if not self.train:
            return self._empty(int(record["index"]))
        return {SKIPPED: rid}

    def _empty(self, index: int) -> dict:
        s = self.size
        return {"ref": np.zeros((s, s), np.uint8), "main": np.zeros((s, s), np.uint8),
                "question_ids": np.full(self.lq, self.tok.pad_id, np.int32),
                "question_mask": np.zeros(self.lq, np.int32),
                "answer_ids": np.full(self.la, self.tok.pad_id, np.int32),
                "answer_mask": np.zeros(self.la, np.int32), "question_type": np.int32(0),
                "index": np.int64(index), "valid": np.bool_(False)}


class _SkipUnreadable(grain.IterDataset):
    """Drops the training examples `PairTransform` marked unreadable (`SKIPPED`) and counts
    them; past `max_bad` a RuntimeError names them. The count is in the iterator's state:
    counted where the example is consumed, not where a read-ahead thread decoded it, so the
    saved count is exactly that of the examples before the checkpoint."""

    def __init__(self, parent: grain.IterDataset, max_bad: int):
        super().__init__(parent)
        self._max_bad = max_bad

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipUnreadableIterator(self._parent.__iter__(), self._max_bad)

    def __str__(self) -> str:
        return f"_SkipUnreadable(max_bad={self._max_bad})"


class _SkipUnreadableIterator(grain.DatasetIterator):
    NAMED = 20  # record ids kept for the error message

    def __init__(self, parent: grain.DatasetIterator, max_bad: int):
        super().__init__(parent)
        self._max_bad, self._count, self._ids = max_bad, 0, []

    def __next__(self) -> dict:
        while True:
            element = next(self._parent)
            if SKIPPED not in element:
                return element
            self._count += 1
            if len(self._ids) < self.NAMED:
                self._ids.append(element[SKIPPED])
            if self._count > self._max_bad:
                raise RuntimeError(
                    f"{self._count} unreadable records/images exceed the budget "
                    f"data.max_bad_images={self._max_bad} (per data process, counted over the "
                    f"run): {', '.join(self._ids)}{' ...' if self._count > len(self._ids) else ''}"
                    "; re-prepare the dataset (python -m data_pipeline.prepare --force) or raise "
                    "data.max_bad_images")

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "bad_images": self._count,
                "bad_ids": list(self._ids)}

    def set_state(self, state: dict) -> None:
        if "bad_images" not in state:  # saved before the count was part of the state
            self._parent.set_state(state)
            self._count, self._ids = 0, []
            return
        self._parent.set_state(state["parent"])
        self._count, self._ids = int(state["bad_images"]), list(state["bad_ids"])


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _per_host(batch_size: int, shard_index: int, shard_count: int) -> int:
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if batch_size % shard_count:
        raise ValueError(f"batch size {batch_size} not divisible by shard_count {shard_count}")
    return batch_size // shard_count


class _HostRows(grain.MapDataset):
    """This host's rows of every global batch: element j of the host is element
    (j // P) * P * shard_count + shard_index * P + j % P of the global sequence (P = per host).

    Lazy: only this host's elements are ever read, decoded and augmented. An element the
    transform skips (unreadable image) shortens only this host's batch stream, so exact
    cross-host-count equivalence holds on data without unreadable images.
    """

    def __init__(self, parent: grain.MapDataset, per_host: int, shard_index: int,
                 shard_count: int):
        super().__init__(parent)
        self._per_host, self._shard, self._count = per_host, shard_index, shard_count
        self._length = len(parent) // shard_count

    def __len__(self) -> int:
        return self._length

    def _global_index(self, index: int) -> int:
        batch, row = divmod(index, self._per_host)
        return (batch * self._count + self._shard) * self._per_host + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._global_index(index)]

    def __str__(self) -> str:
        return f"_HostRows(per_host={self._per_host}, shard={self._shard}/{self._count})"


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """grain worker init: the worker exits once its parent is gone. A training process that is
    SIGKILLed (`kill -9`, the OOM killer) cannot stop its workers, which otherwise live on,
    blocked on their output queues, holding their memory."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def _mark_flags_parsed() -> None:
    from absl import flags

    # grain's mp_prefetch reads absl flags (docs/design.md section 4)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _types(data: ml_collections.ConfigDict) -> list[str] | None:
    return list(data.question_types) or None


def make_train_iterator(
    data: ml_collections.ConfigDict, tokenizer: Tokenizer, *, global_batch_size: int, seed: int,
    shard_index: int = 0, shard_count: int = 1,
) -> grain.DatasetIterator:
    """Infinite per-host training iterator (checkpointable grain DatasetIterator).

    `data` is the config's data section: the split `data.train_split` of `data.dir`, selected by
    `data.question_types`, cropped to `data.image_size` (jittered if `data.jitter`), tokenised to
    `data.question_max_tokens` / `data.answer_max_tokens`, with `data.num_workers` grain workers,
    `data.prefetch_examples` examples prepared ahead, and `data.max_bad_images` unreadable
    records skipped before it gives up.

    The whole split is shuffled every epoch (seed) into one global sequence of examples, each
    with its own random crop and jitter (seeded by its global position); global batch k is
    elements [k*G, (k+1)*G) of it, and host `shard_index` yields rows
    [shard_index*P, (shard_index+1)*P) of every global batch (P = G // shard_count). So the
    global batch (hosts' batches concatenated in process order, as the data-parallel mesh lays
    them out) is the same for any number of hosts, and each host decodes only its own rows.
    An unreadable record that is skipped shifts the later examples of its stream by one, so
    after a skip the batches are no longer those slices; with `data.num_workers` > 0 each
    worker batches a slice of its own, so which examples form later batches after a skip then
    depends on the number of workers (a resumed run still continues exactly: the skips are in
    the iterator's state).
    """
    data_dir, split, question_types = data.dir, data.train_split, _types(data)
    question_max_tokens, answer_max_tokens = data.question_max_tokens, data.answer_max_tokens
    per_host = _per_host(global_batch_size, shard_index, shard_count)
    src = _source(data_dir, split)
    idx = _select(data_dir, split, question_types, len(src))
    if len(idx) < global_batch_size:
        raise ValueError(f"{split}: {len(idx)} examples < global batch {global_batch_size}")
    trunc = count_truncations(data_dir, split, tokenizer, question_max_tokens,
                              answer_max_tokens, idx)
    if trunc["question_truncated"] or trunc["answer_truncated"]:
        log.warning("%s/%s: of %d examples, %d questions are longer than %d tokens and %d answers "
                    "longer than %d (+ EOS): truncated (data.question_max_tokens, "
                    "data.answer_max_tokens)", data_dir, split, trunc["questions"],
                    trunc["question_truncated"], question_max_tokens, trunc["answer_truncated"],
                    answer_max_tokens - 1)
    transform = PairTransform(tokenizer, data.image_size, question_max_tokens, answer_max_tokens,
                              train=True, jitter=data.jitter)
    ds = grain.MapDataset.source(_Subset(src, idx)).shuffle(seed=seed).repeat(None)
    ds = ds.random_map(transform, seed=seed * 1000)
    ds = _HostRows(ds, per_host, shard_index, shard_count)
    read = grain.ReadOptions(prefetch_buffer_size=data.prefetch_examples)
    it_ds = _SkipUnreadable(ds.to_iter_dataset(read), data.max_bad_images)
    it_ds = it_ds.batch(per_host, drop_remainder=True)
    if data.num_workers > 0:
        _mark_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers),
                                  worker_init_fn=_exit_with_parent)
    it = iter(it_ds)
    it.truncations = trunc  # exact counts over the split, for the training log
    return it


def make_eval_iterator(
    data: ml_collections.ConfigDict, tokenizer: Tokenizer, *, split: str, batch_size: int,
    shard_index: int = 0, shard_count: int = 1, num_workers: int = 0,
) -> grain.DatasetIterator:
    """One pass over `split` of `data.dir` (the first `data.eval_limit` selected records when
    > 0), in order, center crops; the other settings as in `make_train_iterator`.

    `batch_size` is global: each host gets batch_size // shard_count examples per batch, from
    the strided shard `selected[shard_index::shard_count]`; every host yields the same number of
    batches, padded with valid=False examples (index -1).
    """
    data_dir, question_types = data.dir, _types(data)
    limit = data.eval_limit if data.eval_limit > 0 else None
    per_host = _per_host(batch_size, shard_index, shard_count)
    src = _source(data_dir, split)
    idx = _select(data_dir, split, question_types, len(src))
    if limit is not None:
        idx = idx[:limit]
    n_batches = math.ceil(math.ceil(len(idx) / shard_count) / per_host)
    host_idx = idx[shard_index::shard_count]
    host_idx = np.concatenate([host_idx, -np.ones(n_batches * per_host - len(host_idx), np.int64)])
    transform = PairTransform(tokenizer, data.image_size, data.question_max_tokens,
                              data.answer_max_tokens, train=False)
    ds = grain.MapDataset.source(_Subset(src, host_idx)).map(transform.map).batch(per_host)
    it_ds = ds.to_iter_dataset()
    if num_workers > 0:
        _mark_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                                  worker_init_fn=_exit_with_parent)
    return iter(it_ds)
