"""Grain pipeline: batch format, pair alignment, sharding, determinism, checkpoint, tokenizer."""

from __future__ import annotations

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import IMAGE_SIZE
from PIL import Image

from configs.real import get_config
from data_pipeline import images
from data_pipeline.pipeline import (
    SKIPPED,
    PairTransform,
    load_records,
    load_tokenizer,
    make_eval_iterator,
    make_train_iterator,
)
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.vocab import QUESTION_TYPES

S, LQ, LA = 64, 16, 48


ITERATOR_ARGS = ("global_batch_size", "batch_size", "seed", "shard_index", "shard_count")


def _data_config(data_dir, **fields):
    """The config's data section for this test dataset: all question types, no eval limit."""
    data = get_config("tiny").data
    data.update(dict(dir=str(data_dir), image_size=S, question_max_tokens=LQ,
                     answer_max_tokens=LA, num_workers=0, question_types=(), eval_limit=-1))
    data.update(fields)
    return data


def _split_args(kw):
    args = {k: kw.pop(k) for k in list(kw) if k in ITERATOR_ARGS}
    return args, kw


def _train(data_dir, tok, **kw):
    args, fields = _split_args(dict(kw))
    args = dict(global_batch_size=4, seed=0, shard_index=0, shard_count=1) | args
    return make_train_iterator(_data_config(data_dir, **fields), tok, **args)


def _eval(data_dir, tok, split="train", **kw):
    args, fields = _split_args(dict(kw))
    args = dict(batch_size=5, shard_index=0, shard_count=1) | args
    return make_eval_iterator(_data_config(data_dir, **fields), tok, split=split, **args)


def test_batch_format(data_dir, tokenizer):
    b = next(_train(data_dir, tokenizer))
    expect = {"ref": (np.uint8, (4, S, S)), "main": (np.uint8, (4, S, S)),
              "question_ids": (np.int32, (4, LQ)), "question_mask": (np.int32, (4, LQ)),
              "answer_ids": (np.int32, (4, LA)), "answer_mask": (np.int32, (4, LA)),
              "question_type": (np.int32, (4,)), "index": (np.int64, (4,)),
              "valid": (np.bool_, (4,))}
    assert {k: (v.dtype.type, v.shape) for k, v in b.items()} == expect
    records = load_records(data_dir, "train")
    for i in range(4):
        rec = records[b["index"][i]]
        qm, am = b["question_mask"][i], b["answer_mask"][i]
        assert qm[-1] == 1 and np.all(np.diff(qm) >= 0)  # left padded
        assert am[0] == 1 and np.all(np.diff(am) <= 0)  # right padded
        assert tokenizer.decode(b["question_ids"][i][qm == 1]) == rec["question"]
        ans = b["answer_ids"][i][am == 1]
        assert ans[-1] == tokenizer.eos_id and tokenizer.decode(ans[:-1]) == rec["answer"]
        assert QUESTION_TYPES[b["question_type"][i]] == rec["question_type"]
    assert b["valid"].all()


def test_pair_crops_aligned(data_dir, tokenizer):
    """Same study as ref and main: zero residual before jitter, with random crops; different
    image sizes still get one common crop."""
    from data_pipeline.pipeline import _source

    rec = dict(_source(data_dir, "train")[0])
    rec["ref_image"] = rec["main_image"]
    rec["index"] = 0
    t = PairTransform(tokenizer, S, LQ, LA, train=True, jitter=False)
    for seed in range(5):
        ex = t.random_map(dict(rec), np.random.default_rng(seed))
        assert np.abs(images.residual(ex["ref"], ex["main"])).max() == 0.0
    big = images.decode_gray(rec["main_image"])
    up = np.asarray(Image.fromarray(big).resize((big.shape[1] * 2, big.shape[0] * 2)))
    r, m = images.pair_crop(big, up, S, np.random.default_rng(1))
    assert np.abs(images.residual(r, m)).mean() < 0.03
    # with jitter the pair differs photometrically only
    tj = PairTransform(tokenizer, S, LQ, LA, train=True, jitter=True)
    ex = tj.random_map(dict(rec), np.random.default_rng(0))
    assert np.corrcoef(ex["ref"].ravel(), ex["main"].ravel())[0, 1] > 0.9


def test_train_deterministic_and_epochs(data_dir, tokenizer):
    a = [next(it) for it in [_train(data_dir, tokenizer)] for _ in range(6)]
    it = _train(data_dir, tokenizer)
    b = [next(it) for _ in range(6)]
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    c = next(_train(data_dir, tokenizer, seed=1))
    assert not np.array_equal(a[0]["index"], c["index"])


def test_checkpoint_restore_resumes(data_dir, tokenizer, tmp_path):
    it = _train(data_dir, tokenizer)
    for _ in range(3):
        next(it)
    mgr = ocp.CheckpointManager(tmp_path / "ckpt")
    mgr.save(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    expected = [next(it) for _ in range(2)]
    fresh = _train(data_dir, tokenizer)
    mgr.restore(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(fresh)))
    for e in expected:
        got = next(fresh)
        for k in e:
            np.testing.assert_array_equal(e[k], got[k])


def test_two_hosts_disjoint_and_cover(data_dir, tokenizer):
    seen = []
    for host in range(2):
        idx = [b["index"][b["valid"]] for b in _eval(data_dir, tokenizer, "train", batch_size=4,
                                                     shard_index=host, shard_count=2)]
        seen.append(set(np.concatenate(idx).tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(len(load_records(data_dir, "train"))))
    t0 = next(_train(data_dir, tokenizer, shard_index=0, shard_count=2))
    t1 = next(_train(data_dir, tokenizer, shard_index=1, shard_count=2))
    assert t0["ref"].shape[0] == 2 and not set(t0["index"]) & set(t1["index"])
    with pytest.raises(ValueError, match="not divisible"):
        _train(data_dir, tokenizer, global_batch_size=5, shard_count=2)


def test_eval_pads_last_batch_and_truncation_counted(data_dir, tokenizer):
    n = len(load_records(data_dir, "val"))
    batches = list(_eval(data_dir, tokenizer, "val", batch_size=n + 1))
    assert len(batches) == 1 and batches[0]["valid"].sum() == n and not batches[0]["valid"][-1]
    np.testing.assert_array_equal(batches[0]["index"][:n], np.arange(n))
    it = _train(data_dir, tokenizer, answer_max_tokens=4)
    b = next(it)
    assert it.truncations["answer_truncated"] > 0
    assert b["answer_mask"].sum(1).max() <= 4


def test_bad_image_skipped_with_budget(data_dir, tokenizer):
    from data_pipeline.pipeline import _source

    rec = {**_source(data_dir, "train")[0], "index": 0}
    rec["ref_image"] = b"garbage"
    t = PairTransform(tokenizer, S, LQ, LA, train=True)
    skipped = t.random_map(dict(rec), np.random.default_rng(0))  # dropped by the iterator
    assert list(skipped) == [SKIPPED] and skipped[SKIPPED].startswith("record 0 (study")
    e = PairTransform(tokenizer, S, LQ, LA, train=False).map(dict(rec))
    assert not e["valid"]


def test_workers_match_in_process(data_dir, tokenizer):
    a = next(_train(data_dir, tokenizer, num_workers=0))
    b = next(_train(data_dir, tokenizer, num_workers=1))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_tokenizer_roundtrip_and_gpt2_dir(tokenizer, tmp_path):
    text = "the main image has additional findings of edema, and pleural effusion than the "
    assert tokenizer.decode(tokenizer.encode(text)) == text
    tokenizer.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.encode(text) == tokenizer.encode(text) and again.eos_id == tokenizer.eos_id
    # a GPT-2 style HF directory (saved locally by the test) loads through transformers
    from transformers import GPT2TokenizerFast

    hf = GPT2TokenizerFast(tokenizer_object=tokenizer.backend, eos_token="<|endoftext|>")
    hf.save_pretrained(tmp_path / "gpt2")
    g = load_tokenizer("/nonexistent", gpt2_dir=tmp_path / "gpt2")
    assert g.kind == "gpt2" and g.decode(g.encode(text)) == text and g.pad_id == g.eos_id


def test_missing_data_dir_is_clear(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="python -m data_pipeline.prepare"):
        _train(tmp_path / "nope", tokenizer)
    assert IMAGE_SIZE >= S


def _truncation_warnings(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(f"{what} of record ")]


def test_truncated_record_logged_once_and_counted(data_dir, tokenizer, caplog):
    """A record truncated again (the next epoch) is counted in `stats()` but not logged again;
    past `MAX_TRUNCATION_LOGS` records only the counts grow; a new iterator logs afresh."""
    from data_pipeline.pipeline import MAX_TRUNCATION_LOGS, _source, stats

    source, text = _source(data_dir, "train"), load_records(data_dir, "train")
    long = [i for i in range(len(text)) if len(tokenizer.encode(text[i]["answer"])) > 1]
    records = [{**source[i], "index": i} for i in long[:MAX_TRUNCATION_LOGS + 2]]
    caplog.set_level("WARNING", logger="data_pipeline.pipeline")
    before = stats().get("answer_truncated", 0)
    t = PairTransform(tokenizer, S, LQ, 2, train=True)  # one answer token + EOS: all truncate
    for epoch in range(3):
        t.random_map(dict(records[0]), np.random.default_rng(epoch))
    logged = _truncation_warnings(caplog, "answer")
    first = records[0]["index"]
    assert len(logged) == 1 and f"answer of record {first} " in logged[0] and "1 fit" in logged[0]
    assert stats()["answer_truncated"] - before == 3 and t.truncated[("answer", first)] == 3

    for r in records[1:]:
        t.random_map(dict(r), np.random.default_rng(0))
    logged = _truncation_warnings(caplog, "answer")
    assert len(logged) == MAX_TRUNCATION_LOGS
    assert "further ones are counted" in logged[-1]
    assert t.truncated_records["answer"] == len(records)
    assert stats()["answer_truncated"] - before == 3 + len(records) - 1

    PairTransform(tokenizer, S, LQ, 2, train=False).map(dict(records[0]))
    assert len(_truncation_warnings(caplog, "answer")) == MAX_TRUNCATION_LOGS + 1


def test_train_iterator_logs_each_truncated_record_once_across_epochs(data_dir, tokenizer,
                                                                       caplog):
    """Over more than two epochs, the iterator names each of its few truncated records once."""
    records = load_records(data_dir, "train")
    lengths = [len(tokenizer.encode(records[i]["answer"])) for i in range(len(records))
               if records[i]["question_type"] == "difference"]
    # the answer budget that truncates the fewest answers, at least one
    fit = max(t for t in set(lengths) if sum(n > t for n in lengths) > 0)
    truncated = sum(n > fit for n in lengths)
    assert 0 < truncated < 10
    caplog.set_level("WARNING", logger="data_pipeline.pipeline")
    it = _train(data_dir, tokenizer, answer_max_tokens=fit + 1, question_types=("difference",))
    assert it.truncations == {"questions": len(lengths), "question_truncated": 0,
                              "answer_truncated": truncated}
    counted = [m for m in (r.getMessage() for r in caplog.records)
               if f"of {len(lengths)} examples" in m]
    assert len(counted) == 1 and f"{truncated} answers longer than {fit} " in counted[0]
    for _ in range(2 * len(lengths) // 4 + 1):  # more than two epochs of batches of 4
        next(it)
    logged = _truncation_warnings(caplog, "answer")
    assert len(logged) == truncated
    assert len({m.split(" (study")[0] for m in logged}) == truncated
