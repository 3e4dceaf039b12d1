"""Ingestion of a hand-written MIMIC-Diff-VQA + MIMIC-CXR-JPG fixture through
`data_pipeline.prepare.prepare`: the real csv headers and path layout written out literally here,
independent of `data_pipeline.synthetic` (whose constants `prepare` shares, so a wrong idea of
the real layout would pass every test built from the generator).

Each dicom's JPEG is a flat gray level of its own, so the image that ends up in a record says
which dicom the view rule chose."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline import prepare
from data_pipeline.images import decode_gray
from data_pipeline.pipeline import _source, load_records

# MIMIC-Diff-VQA v1.0.1, mimic_pair_questions.csv
QUESTIONS_HEADER = "study_id,subject_id,ref_id,question_type,question,answer,split"
# MIMIC-CXR-JPG v2.0.0, mimic-cxr-2.0.0-metadata.csv
METADATA_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,"
                   "Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,"
                   "ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning")

# (dicom_id, subject_id, study_id, view position, view meaning, gray level of its JPEG)
DICOMS = [
    # reference study: PA first, then lateral -> the PA
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA",
     "postero-anterior", 200),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL",
     "lateral", 20),
    # main study: lateral listed first -> the PA after it, not the first dicom
    ("e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c", "10000032", "53189527", "LATERAL",
     "lateral", 40),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "PA",
     "postero-anterior", 180),
    # a portable AP study after a lateral
    ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", "10000032", "53911762", "LL",
     "left lateral", 60),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000032", "53911762", "AP",
     "antero-posterior", 160),
    # second subject: lateral views only -> the study's first dicom
    ("9a5b1b33-4f0b2a9e-7c1d6b6e-0a7e8e3f-5d2c1b0a", "10000764", "57375967", "LATERAL",
     "lateral", 80),
    ("3c1f4b2e-8d7a6c5b-1e0f9a8b-7c6d5e4f-3a2b1c0d", "10000764", "57375967", "LL",
     "left lateral", 100),
    ("b2e4d6f8-1a3c5e7f-9b0d2f4a-6c8e0a2c-4e6a8c0e", "10000764", "58946316", "PA",
     "postero-anterior", 140),
    # third subject (test split)
    ("c0ffee00-1111aaaa-2222bbbb-3333cccc-4444dddd", "10000898", "50771383", "AP",
     "antero-posterior", 120),
    ("d00dfeed-5555eeee-6666ffff-77770000-88881111", "10000898", "54205396", "PA",
     "postero-anterior", 220),
]

DIFFERENCE = ("the main image has an additional finding of pneumothorax than the reference "
              "image. the main image is missing the findings of fracture, lung opacity, and "
              "pleural effusion than the reference image. ")
# (study_id, subject_id, ref_id, question_type, question, answer, split); main = study_id
QUESTIONS = [
    ("53189527", "10000032", "50414267", "difference",
     "what has changed compared to the reference image?", DIFFERENCE, "train"),
    ("53911762", "10000032", "53189527", "difference", "what has changed in the main image?",
     "nothing has changed.", "train"),
    ("53189527", "10000032", "50414267", "abnormality",
     "what abnormalities are seen in this image?", "atelectasis, lung opacity, pleural effusion",
     "train"),
    ("58946316", "10000764", "57375967", "difference",
     "what has changed compared to the reference image?",
     "the level of pleural effusion has changed from small to moderate. ", "val"),
    ("54205396", "10000898", "50771383", "difference",
     "what has changed compared to the reference image?",
     "the main image has additional findings of atelectasis, and edema than the reference "
     "image. ", "test"),
]
EXPECTED_DICOM = {  # study -> the dicom the view rule must take
    "50414267": "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
    "53189527": "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab",
    "53911762": "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714",
    "57375967": "9a5b1b33-4f0b2a9e-7c1d6b6e-0a7e8e3f-5d2c1b0a",
    "58946316": "b2e4d6f8-1a3c5e7f-9b0d2f4a-6c8e0a2c-4e6a8c0e",
    "50771383": "c0ffee00-1111aaaa-2222bbbb-3333cccc-4444dddd",
    "54205396": "d00dfeed-5555eeee-6666ffff-77770000-88881111",
}


def write_fixture(root: Path) -> None:
    """The two csv files and the JPEG tree, with the paths spelled as MIMIC-CXR-JPG spells them:
    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg."""
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as f:
        f.write(METADATA_HEADER + "\r\n")  # the release's line ending
        writer = csv.writer(f)
        for dicom, subject, study, position, meaning, _ in DICOMS:
            writer.writerow([dicom, subject, study, "CHEST (PA AND LAT)", position, 3056, 2544,
                             21800506, "213014.531", "CHEST (PA AND LAT)", meaning, "Erect"])
    with open(root / "mimic_pair_questions.csv", "w", newline="") as f:
        f.write(QUESTIONS_HEADER + "\n")
        csv.writer(f).writerows(QUESTIONS)
    for dicom, subject, study, _, _, level in DICOMS:
        path = root / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(np.full((48, 40), level, np.uint8)).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue())
    assert (root / "files/p10/p10000032/s50414267/"
            "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg").is_file()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic")
    write_fixture(root)
    out = root / "prepared"
    prepare.prepare(questions=root / "mimic_pair_questions.csv", images=root,
                    metadata=root / "mimic-cxr-2.0.0-metadata.csv", out=out, resize_shorter=32,
                    workers=1, vocab_size=300)
    return out


def test_view_rule_takes_the_first_frontal_dicom_else_the_studys_first(ingested):
    chosen = prepare.select_frontal(ingested.parent / "mimic-cxr-2.0.0-metadata.csv")
    assert {str(study): dicom for study, dicom in chosen.items()} == EXPECTED_DICOM


def test_hand_written_mimic_layout_ingests_every_pair_with_its_frontal_image(ingested):
    manifest = json.loads((ingested / "prepare.json").read_text())
    assert manifest["ingested"] == {"train": 3, "val": 1, "test": 1}
    assert manifest["rejected"] == 0
    level = {d[0]: d[5] for d in DICOMS}
    for split in ("train", "val", "test"):
        rows = [q for q in QUESTIONS if q[6] == split]
        records = load_records(ingested, split)
        source = _source(ingested, split)
        assert len(records) == len(source) == len(rows)
        for i, row in enumerate(rows):
            record, example = records[i], source[i]
            assert (str(record["study_id"]), str(record["subject_id"]), str(record["ref_id"]),
                    record["question_type"], record["question"], record["answer"]) == row[:6]
            assert example["answer"].decode() == row[5]  # verbatim: trailing space, ", and"
            for key, study in (("main_image", row[0]), ("ref_image", row[2])):
                pixels = decode_gray(example[key])
                assert min(pixels.shape) == 32  # resized once, shorter side
                # a flat JPEG decodes to its level (DC coefficients only), up to rounding
                assert abs(float(pixels.mean()) - level[EXPECTED_DICOM[study]]) <= 2, (
                    split, i, key)
