"""TFDS builder writing MIMIC-Diff-VQA (or the synthetic twin) as ArrayRecord, without TensorFlow.

One record per csv row (question), in csv order within each split (`disable_shuffling`), so a
record index is stable. Features (no `tfds.features.Image`, so TensorFlow is never needed):

| feature | type | meaning |
|---|---|---|
| `ref_image`, `main_image` | bytes | JPEG bytes, shorter side resized at ingestion |
| `study_id`, `subject_id`, `ref_id`, `row` | int64 | ids; `row` = 0-based data row of the csv |
| `question_type`, `question`, `answer` | text | verbatim from the csv |

Decode + resize runs in a process pool over the unique studies of each chunk of rows; rows whose
images cannot be used are reported by `data_pipeline.prepare`, never dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipeline.images import ImageDecodeError, encode_jpeg, open_gray, resize_shorter

CHUNK_ROWS = 4096
INDEX_DIR = "index"  # DATA_DIR/index/{split}.jsonl: text + ids per record, same order


def load_and_resize(job: tuple[str, int, int]) -> tuple[bytes | None, str | None]:
    """Pool worker: (path, shorter, max_pixels) -> (jpeg bytes, None) or (None, reason)."""
    path, shorter, max_pixels = job
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, f"missing image {path}"
    except OSError as e:
        return None, f"unreadable image {path}: {e}"
    try:
        img = open_gray(data, max_pixels, draft_shorter=shorter)
        if min(img.size) <= shorter and data[:2] == b"\xff\xd8" and img.mode == "L":
            return data, None  # already small 8-bit JPEG: keep the bytes (no generation loss)
        return encode_jpeg(resize_shorter(img, shorter)), None
    except ImageDecodeError as e:
        return None, f"unreadable image {path}: {e}"


class MimicDiffVqa(tfds.core.GeneratorBasedBuilder):
    """MIMIC-Diff-VQA pairs as ArrayRecord; inputs come from `data_pipeline.prepare`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "csv rows + frontal JPEGs resized once."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default resolves the module through `importlib_resources`, a package that is not
        # a dependency here; the builder's file is known, so give it directly.
        return epath.Path(__file__)

    def __init__(self, *, rows_by_split: dict | None = None, image_path: Callable | None = None,
                 pool=None, resize_shorter: int = 544, max_pixels: int = 64_000_000,
                 on_bad_row: Callable | None = None, index_dir: str | None = None, **kwargs):
        self._rows_by_split = rows_by_split or {}
        self._image_path = image_path
        self._pool = pool
        self._shorter = resize_shorter
        self._max_pixels = max_pixels
        self._on_bad_row = on_bad_row
        self._index_dir = index_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        b = tfds.features.Tensor(shape=(), dtype=np.object_)
        i = tfds.features.Scalar(dtype=np.int64)
        t = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "ref_image": b, "main_image": b, "study_id": i, "subject_id": i, "ref_id": i,
                "row": i, "question_type": t, "question": t, "answer": t}),
            disable_shuffling=True,
            homepage="https://physionet.org/content/medical-diff-vqa/1.0.1/",
        )

    # TFDS announces a download of "Unknown size" and then its "Subsequent calls will reuse this
    # data"; nothing is downloaded here, so say what is really done instead.
    def _log_download_bytes(self) -> None:
        counts = ", ".join(f"{split} {len(rows)}" for split, rows in self._rows_by_split.items())
        workers = getattr(self._pool, "_processes", 1) if self._pool else 1
        print(f"writing question rows ({counts}) with their images resized to a shorter side "
              f"of {self._shorter} px into {self.data_dir} ({workers} decode processes)",
              flush=True)

    def _log_download_done(self) -> None:
        pass  # prepare() prints the counts of what was written and rejected

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s, rows)
                for s, rows in self._rows_by_split.items() if rows}

    def _generate_examples(self, split: str, rows: list[dict]) -> Iterator[tuple[int, dict]]:
        index = None
        if self._index_dir:
            Path(self._index_dir).mkdir(parents=True, exist_ok=True)
            index = open(Path(self._index_dir) / f"{split}.jsonl.tmp", "w")  # noqa: SIM115
        n = 0
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start:start + CHUNK_ROWS]
            studies = sorted({(r["subject_id"], s) for r in chunk for s in (r["study_id"],
                                                                            r["ref_id"])})
            jobs = [(str(self._image_path(sub, st)), self._shorter, self._max_pixels)
                    for sub, st in studies]
            results = (self._pool.map(load_and_resize, jobs, chunksize=8) if self._pool
                       else list(map(load_and_resize, jobs)))
            images = {st: res for (_, st), res in zip(studies, results, strict=True)}
            for r in chunk:
                (ref, ref_err), (main, main_err) = images[r["ref_id"]], images[r["study_id"]]
                if ref is None or main is None:
                    self._on_bad_row(r, "; ".join(e for e in (main_err, ref_err) if e))
                    continue
                ex = {k: r[k] for k in ("study_id", "subject_id", "ref_id", "row",
                                        "question_type", "question", "answer")}
                if index:
                    index.write(json.dumps(ex) + "\n")
                yield n, {**ex, "ref_image": ref, "main_image": main}
                n += 1
        if index:
            index.close()
            Path(index.name).rename(Path(self._index_dir) / f"{split}.jsonl")
