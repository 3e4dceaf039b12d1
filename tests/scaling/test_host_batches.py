"""Per-host training batches concatenate to the same global batch for 1, 2 or 4 hosts."""

import numpy as np
import pytest

from configs.real import get_config
from data_pipeline.pipeline import load_tokenizer, make_train_iterator

GLOBAL_BATCH, STEPS = 8, 5


def data_config(data_dir):
    data = get_config("tiny").data
    data.update(dict(dir=str(data_dir), num_workers=0, question_types=("difference",)))
    return data


def host_iterators(data_dir, tokenizer, shard_count: int, seed: int = 0):
    return [make_train_iterator(data_config(data_dir), tokenizer,
                                global_batch_size=GLOBAL_BATCH, seed=seed, shard_index=i,
                                shard_count=shard_count)
            for i in range(shard_count)]


def global_batches(data_dir, tokenizer, shard_count: int, seed: int = 0) -> list[dict]:
    iterators = host_iterators(data_dir, tokenizer, shard_count, seed)
    out = []
    for _ in range(STEPS):
        parts = [next(it) for it in iterators]
        assert all(p["ref"].shape[0] == GLOBAL_BATCH // shard_count for p in parts)
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def test_global_batch_independent_of_host_count(tiny_data):
    data_dir, _ = tiny_data
    tokenizer = load_tokenizer(data_dir)
    one = global_batches(data_dir, tokenizer, 1)
    # STEPS * GLOBAL_BATCH examples cross at least one epoch boundary of the small split
    indices = np.concatenate([b["index"] for b in one])
    assert len(set(indices.tolist())) < len(indices), "no epoch boundary crossed"
    for hosts in (2, 4):
        many = global_batches(data_dir, tokenizer, hosts)
        for a, b in zip(one, many, strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{hosts} hosts: {key}")
    other_seed = global_batches(data_dir, tokenizer, 2, seed=1)
    assert not np.array_equal(one[0]["index"], other_seed[0]["index"])


def test_hosts_read_disjoint_rows(tiny_data):
    data_dir, _ = tiny_data
    tokenizer = load_tokenizer(data_dir)
    first = [next(it)["index"] for it in host_iterators(data_dir, tokenizer, 2)]
    assert not set(first[0].tolist()) & set(first[1].tolist())
    with pytest.raises(ValueError, match="not divisible"):
        make_train_iterator(data_config(data_dir), tokenizer, global_batch_size=5, seed=0,
                            shard_index=0, shard_count=2)
