"""Tokenizer for questions and answers: GPT-2's (from a local directory) or a small byte-level BPE.

With a pretrained GPT-2 decoder, use its tokenizer (`Tokenizer.from_gpt2_dir(local_dir)`, local
files only, never a download). Without one, ingestion trains a byte-level BPE on the training
split's question + answer text (`Tokenizer.train`), with `<|endoftext|>` as EOS and padding token,
and saves it into the prepared data directory; `data_pipeline.pipeline.load_tokenizer` loads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "real_tokenizer.json"


class Tokenizer:
    """`encode(str) -> list[int]`, `decode(list[int]) -> str`, `eos_id`, `pad_id`, `vocab_size`.

    Wraps a `tokenizers.Tokenizer` (picklable, so grain workers can use it). `pad_id == eos_id`
    as with GPT-2; masks, not the pad id, tell padding from EOS.
    """

    def __init__(self, backend: tokenizers.Tokenizer, kind: str, vocab_size: int | None = None):
        self.backend = backend
        self.kind = kind
        self.eos_id: int = backend.token_to_id(EOS_TOKEN)
        if self.eos_id is None:
            raise ValueError(f"tokenizer has no {EOS_TOKEN!r} token")
        self.pad_id: int = self.eos_id
        self.vocab_size: int = vocab_size or backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json and real_tokenizer.json (kind, eos/pad id, vocab size)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(d / TOKENIZER_FILE))
        meta = {"kind": self.kind, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "vocab_size": self.vocab_size}
        (d / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a tokenizer written by `save`."""
        d = Path(directory)
        if not (d / TOKENIZER_FILE).exists():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {d} (data_pipeline.prepare writes it)")
        meta = json.loads((d / META_FILE).read_text()) if (d / META_FILE).exists() else {}
        backend = tokenizers.Tokenizer.from_file(str(d / TOKENIZER_FILE))
        return cls(backend, meta.get("kind", "bpe"), meta.get("vocab_size"))

    @classmethod
    def from_gpt2_dir(cls, directory: str | Path) -> Tokenizer:
        """GPT-2's tokenizer from a local HF directory (vocab.json + merges.txt or
        tokenizer.json); never downloads. vocab_size is len(tokenizer) (50257 for GPT-2)."""
        from transformers import GPT2TokenizerFast

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"GPT-2 tokenizer directory {d} does not exist")
        tok = GPT2TokenizerFast.from_pretrained(str(d), local_files_only=True)
        return cls(tok.backend_tokenizer, "gpt2", len(tok))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2000) -> Tokenizer:
        """Train a byte-level BPE (GPT-2 style pre-tokenization) with EOS `<|endoftext|>`."""
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, "bpe")
