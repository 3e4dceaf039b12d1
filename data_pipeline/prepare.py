"""Ingest MIMIC-Diff-VQA (or the synthetic dataset) into ArrayRecord files via TFDS.

    python -m data_pipeline.prepare --questions mimic_pair_questions.csv \\
        --images MIMIC_CXR_JPG_DIR --metadata mimic-cxr-2.0.0-metadata.csv.gz --out DATA_DIR \\
        [--question_types difference,...] [--resize_shorter 544] [--workers N]

Mistakes in the inputs (a missing file, a csv without the expected columns, unknown question
types, a split whose every row is rejected) end with one `error:` line and exit status 2.

Per study it takes the first dicom whose ViewCodeSequence_CodeMeaning is postero-anterior or
antero-posterior, else the study's first dicom (lateral views are skipped that way). It writes

    DATA_DIR/mimic_diff_vqa/1.0.0/...   TFDS ArrayRecord dataset (see data_pipeline.tfds_builder)
    DATA_DIR/index/{split}.jsonl        ids + text per record, in record order
    DATA_DIR/tokenizer/                 byte-level BPE trained on the train split's text
    DATA_DIR/ingest_report.csv          every csv row not ingested, with the reason
    DATA_DIR/prepare.json               the inputs' fingerprint and the counts

Re-running with the same inputs and options reuses the dataset; anything else rebuilds it from
scratch (no duplicated data). Decode + resize uses a process pool (all cores by default).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from data_pipeline.images import DEFAULT_MAX_PIXELS
from data_pipeline.synthetic import QUESTION_COLUMNS, image_path
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.vocab import QUESTION_TYPES, SPLITS
from real_jax import cli
from real_jax.errors import UserError

FRONTAL = {"postero-anterior", "antero-posterior"}
BUILDER_DIR = "mimic_diff_vqa"
MANIFEST = "prepare.json"
REPORT = "ingest_report.csv"
FLAGS = flags.FLAGS


class NothingIngestedError(UserError):
    """Every csv row of a split was rejected; `ingest_report.csv` says why, row by row."""


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def select_frontal(metadata: str | Path) -> dict[int, str]:
    """study_id -> dicom_id: first frontal (PA/AP) dicom of the study, else its first dicom."""
    path = Path(metadata)
    first: dict[int, str] = {}
    frontal: dict[int, str] = {}
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        need = {"dicom_id", "study_id", "ViewCodeSequence_CodeMeaning"}
        if not need <= set(reader.fieldnames or ()):
            missing = sorted(need - set(reader.fieldnames or ()))
            raise UserError(f"{path}: missing columns {missing}")
        for line, r in enumerate(reader, start=2):
            try:
                study = int(r["study_id"])
            except (TypeError, ValueError):
                raise UserError(f"{path}:{line}: bad study_id {r['study_id']!r}") from None
            first.setdefault(study, r["dicom_id"])
            if (r["ViewCodeSequence_CodeMeaning"] or "").strip().lower() in FRONTAL:
                frontal.setdefault(study, r["dicom_id"])
    return {s: frontal.get(s, d) for s, d in first.items()}


def read_questions(path: str | Path, question_types: set[str] | None, dicoms: dict[int, str]):
    """Parse and validate the csv. Returns (rows_by_split, bad_rows, n_excluded_by_type).

    Each row is {row, study_id, subject_id, ref_id, question_type, question, answer, split};
    bad_rows are (row_dict_or_raw, reason) for malformed rows and rows whose study has no dicom.
    """
    path = Path(path)
    rows_by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    bad, excluded = [], 0
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = set(QUESTION_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{path}: missing columns {sorted(missing)}; need {QUESTION_COLUMNS}")
        for i, r in enumerate(reader):
            rec = {"row": i, **{k: r.get(k) for k in QUESTION_COLUMNS}}
            reason = _validate(rec)
            if reason is None and question_types and rec["question_type"] not in question_types:
                excluded += 1
                continue
            if reason is None:
                for key in ("study_id", "ref_id"):
                    if rec[key] not in dicoms:
                        reason = f"no dicom in metadata for {key} {rec[key]}"
                        break
            if reason:
                bad.append((rec, reason))
            else:
                rows_by_split[rec["split"]].append(rec)
    return rows_by_split, bad, excluded


def _validate(rec: dict) -> str | None:
    if None in rec.values() or rec.get(None):
        return "malformed row: wrong number of fields"
    for key in ("study_id", "subject_id", "ref_id"):
        try:
            rec[key] = int(rec[key])
        except ValueError:
            return f"malformed row: {key} {rec[key]!r} is not an integer"
    if rec["question_type"] not in QUESTION_TYPES:
        return f"malformed row: unknown question_type {rec['question_type']!r}"
    if rec["split"] not in SPLITS:
        return f"malformed row: unknown split {rec['split']!r}"
    if not rec["question"].strip() or not rec["answer"].strip():
        return "malformed row: empty question or answer"
    return None


def _fingerprint(questions: Path, images: Path, metadata: Path, question_types, resize_shorter: int,
                 max_pixels: int, vocab_size: int) -> dict:
    def stat(p):
        s = Path(p).stat()
        return {"path": str(Path(p).resolve()), "size": s.st_size, "mtime": s.st_mtime}

    return {"questions": stat(questions), "metadata": stat(metadata),
            "images": str(Path(images).resolve()),
            "question_types": sorted(question_types or []),
            "resize_shorter": resize_shorter, "max_pixels": max_pixels,
            "vocab_size": vocab_size}


def prepare(*, questions: str | Path, images: str | Path, metadata: str | Path, out: str | Path,
            question_types: Sequence[str] | None = None, resize_shorter: int = 544,
            max_pixels: int = DEFAULT_MAX_PIXELS, vocab_size: int = 2000,
            workers: int | None = None, force: bool = False) -> dict:
    """Runs ingestion (module docstring); returns the manifest (counts included).

    Args:
      questions, images, metadata: `mimic_pair_questions.csv`, the MIMIC-CXR-JPG root (holds
        `files/`), `mimic-cxr-2.0.0-metadata.csv[.gz]`.
      out: the prepared data directory.
      question_types: the subset of `vocab.QUESTION_TYPES` to keep (default all).
      resize_shorter: stored shorter side in px, a little above the crop (544 for 512).
      max_pixels: source images above this many pixels are refused (decompression bombs).
      vocab_size: size of the BPE vocabulary trained on the train split.
      workers: decode processes (default all cores).
      force: rebuild even if the inputs and options are unchanged.
    Raises:
      FileNotFoundError: an input does not exist. UserError: unknown question types, a csv
        without the expected columns. NothingIngestedError: every row of a split rejected.
    """
    question_types = list(question_types) if question_types else None
    unknown = set(question_types or ()) - set(QUESTION_TYPES)
    if unknown:
        raise UserError(f"unknown question types {sorted(unknown)}; choose from "
                         f"{QUESTION_TYPES}")
    for name, path in (("questions", questions), ("metadata", metadata), ("images", images)):
        if not Path(path).exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
    out = Path(out)
    fp = _fingerprint(questions, images, metadata, question_types, resize_shorter, max_pixels,
                      vocab_size)
    key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not force:
        m = json.loads(manifest_path.read_text())
        if m.get("key") == key and (out / BUILDER_DIR).is_dir():
            print(f"{out} already prepared from these inputs; reusing it (--force rebuilds)")
            return m
    for name in (BUILDER_DIR, "index", "tokenizer", REPORT, MANIFEST):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    dicoms = select_frontal(metadata)
    rows_by_split, bad, excluded = read_questions(questions, question_types, dicoms)
    image_root = Path(images)

    def path_of(subject: int, study: int) -> Path:
        return image_path(image_root, subject, study, dicoms[study])

    report = open(out / REPORT, "w", newline="")  # noqa: SIM115 (closed in the finally below)
    writer = csv.writer(report)
    writer.writerow(["row", "study_id", "ref_id", "question_type", "split", "reason"])
    counts = {"bad": {}}

    def on_bad_row(rec: dict, reason: str) -> None:
        writer.writerow([rec.get("row"), rec.get("study_id"), rec.get("ref_id"),
                         rec.get("question_type"), rec.get("split"), reason])
        kind = reason.split(" ")[0] if not reason.startswith("malformed") else "malformed"
        counts["bad"][kind] = counts["bad"].get(kind, 0) + 1

    for rec, reason in bad:
        on_bad_row(rec, reason)

    import tensorflow_datasets as tfds

    from data_pipeline.tfds_builder import MimicDiffVqa

    workers = workers or os.cpu_count() or 1
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        builder = MimicDiffVqa(
            data_dir=str(out), rows_by_split=rows_by_split, image_path=path_of, pool=pool,
            resize_shorter=resize_shorter, max_pixels=max_pixels,
            on_bad_row=on_bad_row, index_dir=str(out / "index"))
        try:
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(
                    download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
        except AssertionError as e:
            if "No examples were yielded" not in str(e):
                raise
            raise NothingIngestedError(f"{e}: every row of that split was rejected; see "
                               f"{out / REPORT} for the reasons") from None
    finally:
        report.close()
        if pool:
            pool.close()
            pool.join()

    train_text = (t for r in rows_by_split["train"] for t in (r["question"], r["answer"]))
    tok = Tokenizer.train(train_text, vocab_size=vocab_size)
    tok.save(out / "tokenizer")

    ingested = {s: builder.info.splits[s].num_examples if s in builder.info.splits else 0
                for s in SPLITS}
    in_csv = {s: len(rows_by_split[s]) for s in SPLITS}
    n_bad = sum(counts["bad"].values())
    manifest = {"key": key, "inputs": fp, "builder_dir": str(Path(builder.data_dir).resolve()),
                "ingested": ingested, "valid_rows": in_csv, "rejected": n_bad,
                "rejected_by_reason": counts["bad"], "excluded_by_question_type": excluded,
                "tokenizer_vocab_size": tok.vocab_size, "seconds": round(time.time() - t0, 1)}
    total_rows = sum(ingested.values()) + n_bad + excluded
    manifest["csv_rows"] = total_rows
    manifest_path.write_text(json.dumps(manifest, indent=1))
    print(f"ingested {ingested} (total {sum(ingested.values())}); rejected {n_bad} "
          f"{counts['bad']} -> {out / REPORT}; excluded by --question_types {excluded}; "
          f"tokenizer vocab {tok.vocab_size}; {manifest['seconds']}s")
    return manifest


def define_flags() -> None:
    flags.DEFINE_string("questions", None, "mimic_pair_questions.csv")
    flags.DEFINE_string("images", None, "MIMIC-CXR-JPG root (holds files/)")
    flags.DEFINE_string("metadata", None, "mimic-cxr-2.0.0-metadata.csv[.gz]")
    flags.DEFINE_string("out", None, "Prepared data directory.")
    flags.DEFINE_list("question_types", [],
                      f"Comma-separated subset of {','.join(QUESTION_TYPES)} (default: all).")
    flags.DEFINE_integer("resize_shorter", 544,
                         "Stored shorter side in px (a little above the crop; 544 for 512).")
    flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS,
                         "Refuse source images above this many pixels (decompression bombs).")
    flags.DEFINE_integer("vocab_size", 2000, "Trained BPE vocabulary size.")
    flags.DEFINE_integer("workers", None, "Decode processes (default: all cores).")
    flags.DEFINE_bool("force", False, "Rebuild even if the inputs are unchanged.")
    flags.mark_flags_as_required(["questions", "images", "metadata", "out"])


def main(argv: list[str]) -> None:
    """The command line: calls `prepare` with the flags (bad inputs: one `error:` line, exit 2,
    by `real_jax.cli`)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    types = [t.strip() for t in FLAGS.question_types if t.strip()]
    prepare(questions=FLAGS.questions, images=FLAGS.images, metadata=FLAGS.metadata,
            out=FLAGS.out, question_types=types or None, resize_shorter=FLAGS.resize_shorter,
            max_pixels=FLAGS.max_pixels, vocab_size=FLAGS.vocab_size, workers=FLAGS.workers,
            force=FLAGS.force)


if __name__ == "__main__":
    cli.run(main, define_flags, jax_command=False)
