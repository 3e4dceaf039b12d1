"""Generator + ingestion: layout, determinism, frontal selection, report, counts, idempotence."""

from __future__ import annotations

import csv
import hashlib
import json
import sys

from conftest import SUBJECTS, manifest, read_metadata

from data_pipeline import prepare, synthetic
from data_pipeline.pipeline import load_records
from data_pipeline.vocab import QUESTION_TYPES
from tests.runs import run


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generator_layout_and_determinism(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthetic.generate(a, subjects=3, seed=7, image_size=64, workers=1)
    synthetic.generate(b, subjects=3, seed=7, image_size=64, workers=2)
    synthetic.generate(c, subjects=3, seed=8, image_size=64, workers=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    with open(a / synthetic.QUESTIONS_CSV) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == synthetic.QUESTION_COLUMNS
        rows = list(reader)
    assert {r["question_type"] for r in rows} <= set(QUESTION_TYPES)
    subjects_by_split = {}
    for r in rows:
        subjects_by_split.setdefault(r["subject_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in subjects_by_split.values())  # split by subject
    for m in read_metadata(a):
        assert synthetic.image_path(a, int(m["subject_id"]), int(m["study_id"]),
                                    m["dicom_id"]).exists()


def test_all_question_types_and_templates(raw_dir):
    raw, _ = raw_dir
    with open(raw / synthetic.QUESTIONS_CSV) as f:
        rows = [r for r in csv.DictReader(f) if r["question_type"] in QUESTION_TYPES]
    assert {r["question_type"] for r in rows} == set(QUESTION_TYPES)
    diff = [r["answer"] for r in rows if r["question_type"] == "difference"]
    assert all(a == "nothing has changed." or a.startswith("the ") for a in diff)
    assert any("than the reference image. " in a for a in diff)


def test_counts_report_and_lateral_skipped(raw_dir, data_dir):
    raw, planted = raw_dir
    m = manifest(data_dir)
    with open(data_dir / prepare.REPORT) as f:
        report = list(csv.DictReader(f))
    reasons = " | ".join(r["reason"] for r in report)
    assert "missing image" in reasons and "unreadable image" in reasons
    assert "unknown question_type 'nonsense_type'" in reasons
    bad_studies = {int(r["study_id"]) for r in report} | {int(r["ref_id"]) for r in report}
    assert {planted["missing"], planted["corrupt"]} <= bad_studies
    # every csv row is either ingested or reported, per split
    with open(raw / synthetic.QUESTIONS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == planted["rows"] == sum(m["ingested"].values()) + len(report)
    for split in ("train", "val", "test"):
        expected = sum(r["split"] == split for r in rows) - sum(r["split"] == split
                                                               for r in report)
        assert m["ingested"][split] == expected == len(load_records(data_dir, split))
    # lateral views exist in the metadata, none was picked
    meta = read_metadata(raw)
    assert any(r["ViewPosition"] == "LATERAL" for r in meta)
    chosen = set(prepare.select_frontal(raw / synthetic.METADATA_CSV).values())
    lateral = {r["dicom_id"] for r in meta if r["ViewPosition"] == "LATERAL"}
    assert not chosen & lateral
    assert SUBJECTS >= 6


def test_rerun_is_idempotent(raw_dir, data_dir, capsys):
    raw, _ = raw_dir
    before = manifest(data_dir)
    prepare.prepare(questions=raw / synthetic.QUESTIONS_CSV, images=raw,
                    metadata=raw / synthetic.METADATA_CSV, out=data_dir, resize_shorter=72,
                    workers=2, vocab_size=600)
    assert "reusing" in capsys.readouterr().out
    assert manifest(data_dir)["ingested"] == before["ingested"]
    assert len(list((data_dir / prepare.BUILDER_DIR).glob("*/*.array_record*"))) == 3


def test_question_types_filter_and_bomb_guard(raw_dir, tmp_path):
    """`python -m data_pipeline.prepare` as users run it: the filter, then a user error."""
    raw, _ = raw_dir
    out = tmp_path / "diff"
    command = [sys.executable, "-m", "data_pipeline.prepare",
               f"--questions={raw / synthetic.QUESTIONS_CSV}", f"--images={raw}",
               f"--metadata={raw / synthetic.METADATA_CSV}", f"--out={out}",
               "--question_types=difference", "--workers=1"]
    printed = run(command).stdout
    assert "writing question rows (train " in printed and "Unknown size" not in printed
    m = json.loads((out / prepare.MANIFEST).read_text())
    assert m["excluded_by_question_type"] > 0
    assert {r["question_type"] for r in load_records(out, "train")} == {"difference"}
    # every image is above a 1000-pixel limit: all rows reported, then one error line, status 2
    result = run([*command, "--max_pixels=1000"], ok=False)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "every row of that split was rejected" in last
    assert "Traceback" not in result.stderr
    with open(out / prepare.REPORT) as f:
        assert "exceeds" in f.read()  # Pillow: "exceeds limit ... decompression bomb"


def test_prepare_user_errors_are_one_line_with_status_2(raw_dir, tmp_path):
    raw, _ = raw_dir
    inputs = [f"--questions={raw / synthetic.QUESTIONS_CSV}", f"--images={raw}",
              f"--metadata={raw / synthetic.METADATA_CSV}", f"--out={tmp_path / 'out'}"]
    bad_header = tmp_path / "questions.csv"
    bad_header.write_text("study_id,question\n1,what?\n")
    for argv, message in [
        (inputs[1:], "--questions must have a value"),
        ([*inputs, "--question_types=difference,colour"], "unknown question types ['colour']"),
        ([*inputs[1:], f"--questions={tmp_path / 'none.csv'}"], "none.csv does not exist"),
        ([*inputs[1:], f"--questions={bad_header}"], "missing columns"),
    ]:
        result = run([sys.executable, "-m", "data_pipeline.prepare", *argv], ok=False)
        assert result.returncode == 2, result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
