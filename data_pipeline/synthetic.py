"""Synthetic longitudinal chest X-ray dataset in exactly the MIMIC-Diff-VQA + MIMIC-CXR-JPG layout.

    python -m data_pipeline.synthetic --out DIR [--subjects N] [--seed S] [--image_size P]
        [--changes mixed|persistent]

writes
    DIR/mimic_pair_questions.csv         study_id, subject_id, ref_id, question_type, question,
                                         answer, split  (split by subject)
    DIR/mimic-cxr-2.0.0-metadata.csv.gz  MIMIC-CXR-JPG's metadata columns (lateral views included)
    DIR/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg

Each subject has 2-4 studies; findings (`data_pipeline.vocab.FINDINGS`) appear, disappear or
change level from one study to the next; pairs are consecutive studies (ref = previous study).
How findings evolve is `changes` (`CHANGES`):

- `mixed`: a finding resolves (25 %) or changes level (25 %), and 0-2 new ones appear per study.
  Most difference answers then name findings that are present in one study only, and the main
  image alone tells much of the answer (a finding in it is usually new).
- `persistent`: every subject starts with 1-3 findings that mostly stay; from one study to the
  next each changes level by one step (45 %) or resolves (10 %), and a new one appears in 15 % of
  studies. Most answers are then "the level of X has changed from A to B" or "nothing has
  changed" about findings present in both studies, which only a comparison of the two answers:
  the dataset for measuring what the reference contributes (`launch/ablation.py`).
Images are rendered by `data_pipeline.synthetic_images`. Deterministic for a seed: all random
choices come from `numpy.random.SeedSequence(seed)` children, one per subject, so the output does
not depend on the number of worker processes.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import os
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline import synthetic_images as si
from data_pipeline.vocab import FINDINGS, difference_answer, location_text

QUESTIONS_CSV = "mimic_pair_questions.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
QUESTION_COLUMNS = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer",
                    "split")
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def image_path(root: str | Path, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """MIMIC-CXR-JPG path: files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg."""
    s = str(subject_id)
    return Path(root) / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / f"{dicom_id}.jpg"


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5, dtype=np.uint64))


CHANGES = ("mixed", "persistent")


def _evolve(rng: np.random.Generator, state: dict, changes: str = "mixed") -> dict:
    """Next study's findings: each may disappear or change level; new ones may appear."""
    if changes == "persistent":
        return _evolve_persistent(rng, state)
    new = {}
    for name, f in state.items():
        r = rng.random()
        if r < 0.25:
            continue  # resolved
        if r < 0.5 and len(FINDINGS[name]["levels"]) > 1:
            lvl = int(np.clip(f["level"] + rng.choice([-1, 1]), 0, 2))
            f = {**f, "level": lvl if lvl != f["level"] else 2 - f["level"]}
        new[name] = f
    n_new = rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15])
    for name in rng.permutation(list(FINDINGS))[:n_new]:
        name = str(name)
        if name not in new:
            new[name] = _new_finding(rng, name)
    return new


def _evolve_persistent(rng: np.random.Generator, state: dict) -> dict:
    """`persistent` changes (module docstring): one-step level changes of lasting findings."""
    new = {}
    for name, f in state.items():
        r = rng.random()
        if r < 0.10:
            continue  # resolved
        if r < 0.55:
            step = int(rng.choice([-1, 1]))
            if not 0 <= f["level"] + step <= 2:
                step = -step
            f = {**f, "level": f["level"] + step}
        new[name] = f
    if rng.random() < 0.15:
        absent = [str(n) for n in FINDINGS if n not in state]  # not one that just resolved
        if absent:
            name = str(rng.choice(absent))
            new[name] = _new_finding(rng, name)
    return new


def _new_finding(rng: np.random.Generator, name: str) -> dict:
    spec = FINDINGS[name]
    side = str(rng.choice(["left", "right", "bilateral"])) if spec["lateral"] else "bilateral"
    return {"level": int(rng.integers(0, 3)), "side": side,
            "type": str(rng.choice(spec["types"]))}


def _subject_plan(seed_seq: np.random.SeedSequence, subject_id: int, split: str,
                  study_ids: list[int], changes: str = "mixed") -> dict:
    """All random choices for one subject: studies, dicoms, findings, acquisitions, questions."""
    rng = np.random.default_rng(seed_seq)
    anat = si.random_anatomy(rng)
    n_studies = int(rng.integers(2, 5))
    assert len(study_ids) >= n_studies
    date = datetime.date(2100 + int(rng.integers(0, 60)), int(rng.integers(1, 13)), 1)
    first = rng.integers(1, 4) if changes == "persistent" else rng.integers(0, 3)
    state = {str(n): _new_finding(rng, str(n)) for n in rng.permutation(list(FINDINGS))[:first]}
    studies = []
    for k in range(n_studies):
        if k:
            state = _evolve(rng, state, changes)
            date += datetime.timedelta(days=int(rng.integers(1, 400)))
        view = "PA" if rng.random() < 0.6 else "AP"
        dicoms = [{"dicom_id": _dicom_id(rng), "view": view, "acq": si.random_acquisition(rng),
                   "meaning": VIEW_MEANING[view] if rng.random() > 0.05 else ""}]
        if view == "PA" and rng.random() < 0.7 and dicoms[0]["meaning"]:
            lat = {"dicom_id": _dicom_id(rng), "view": "LATERAL", "meaning": "lateral",
                   "acq": si.random_acquisition(rng)}
            dicoms.insert(int(rng.integers(0, 2)), lat)  # lateral first sometimes
        studies.append({"study_id": study_ids[k], "date": int(date.strftime("%Y%m%d")),
                        "time": float(np.dot(rng.integers(0, [24, 60, 60]), [10000, 100, 1])
                                      + rng.random()), "view": view,
                        "findings": {k2: dict(v2) for k2, v2 in state.items()},
                        "dicoms": dicoms, "render_seed": int(rng.integers(0, 2**31))})
    rows = []
    for k in range(1, n_studies):
        rows += _questions(rng, subject_id, split, studies[k - 1], studies[k])
    return {"subject_id": subject_id, "anat": anat, "studies": studies, "rows": rows}


def _questions(rng, subject_id: int, split: str, ref: dict, main: dict) -> list[dict]:
    """One pair's rows, all seven question types, with the dataset's templates."""
    fm, fr = main["findings"], ref["findings"]
    qa = []
    present = sorted(fm)
    qa.append(("abnormality", str(rng.choice(["what abnormalities are seen in this image?",
                                              "what diseases are included in the image?"])),
               ", ".join(present) if present else "no finding"))
    absent = sorted(set(FINDINGS) - set(fm))
    for name, ans in ([(str(rng.choice(present)), "yes")] if present else []) + (
            [(str(rng.choice(absent)), "no")] if absent else []):
        tmpl = str(rng.choice(["is there evidence of {} in this image?", "is there {}?"]))
        qa.append(("presence", tmpl.format(name), ans))
    if rng.random() < 0.5:
        qa.append(("view", "which view is this image taken?", f"{main['view']} view"))
    else:
        v = str(rng.choice(["PA", "AP"]))
        qa.append(("view", f"is this {v} view?", "yes" if v == main["view"] else "no"))
    if present:
        name = str(rng.choice(present))
        f = fm[name]
        tmpl = str(rng.choice(["where in the image is the {} located?", "where is the {}?"]))
        qa.append(("location", tmpl.format(name), location_text(name, f["side"])))
        qa.append(("level", f"what level is the {name}?", FINDINGS[name]["levels"][f["level"]]))
        qa.append(("type", f"what type is the {name}?", f["type"]))
    added = sorted(set(fm) - set(fr))
    missing = sorted(set(fr) - set(fm))
    changed = [(n, FINDINGS[n]["levels"][fr[n]["level"]], FINDINGS[n]["levels"][fm[n]["level"]])
               for n in sorted(set(fm) & set(fr)) if fm[n]["level"] != fr[n]["level"]]
    qa.append(("difference", str(rng.choice(["what has changed compared to the reference image?",
                                             "what has changed in the main image?"])),
               difference_answer(added, missing, changed)))
    return [{"study_id": main["study_id"], "subject_id": subject_id, "ref_id": ref["study_id"],
             "question_type": t, "question": q, "answer": a, "split": split} for t, q, a in qa]


def _render_subject(args: tuple[dict, str, int]) -> int:
    """Render and write all JPEGs of one subject; returns the number of images written."""
    plan, out, width = args
    n = 0
    for st in plan["studies"]:
        rng = np.random.default_rng(st["render_seed"])
        for d in st["dicoms"]:
            if d["view"] == "LATERAL":
                img = si.render_lateral(width, plan["anat"], d["acq"], rng)
            else:
                img = si.render_frontal(width, plan["anat"], d["acq"], st["findings"], rng)
            path = image_path(out, plan["subject_id"], st["study_id"], d["dicom_id"])
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode="L").save(path, quality=92)
            n += 1
    return n


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    n_test = max(1, round(0.1 * n)) if n >= 3 else 0
    names = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return [names[i] for i in rng.permutation(n)]


def generate(out: str | Path, subjects: int = 1000, seed: int = 0, image_size: int = 512,
             workers: int | None = None, changes: str = "mixed") -> dict:
    """Write the dataset into `out`; returns counts {subjects, studies, images, rows, pairs}."""
    if changes not in CHANGES:
        raise ValueError(f"changes={changes!r} not in {CHANGES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    top = np.random.default_rng(root.spawn(1)[0])
    subject_ids = 10_000_000 + top.choice(9_000_000, size=subjects, replace=False)
    splits = _splits(subjects, top)
    study_ids = (50_000_000 + top.choice(10_000_000, size=(subjects, 4), replace=False)).tolist()
    plans = [_subject_plan(ss, int(sid), sp, st, changes)
             for ss, sid, sp, st in zip(root.spawn(subjects + 1)[1:], subject_ids, splits,
                                        study_ids, strict=True)]
    workers = workers or os.cpu_count() or 1
    jobs = [(p, str(out), image_size) for p in plans]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            n_images = sum(pool.imap(_render_subject, jobs, chunksize=4))
    else:
        n_images = sum(map(_render_subject, jobs))
    rows = [r for p in plans for r in p["rows"]]
    with open(out / QUESTIONS_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=QUESTION_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    h, w_ = si.image_shape(image_size)
    with gzip.GzipFile(out / METADATA_CSV, "wb", mtime=0) as gz:
        text = _metadata_text(plans, h, w_)
        gz.write(text.encode())
    n_pairs = sum(len(p["studies"]) - 1 for p in plans)
    return {"subjects": subjects, "studies": sum(len(p["studies"]) for p in plans),
            "images": n_images, "rows": len(rows), "pairs": n_pairs}


def _metadata_text(plans: list[dict], h: int, w: int) -> str:
    import io

    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(METADATA_COLUMNS)
    for p in plans:
        for st in p["studies"]:
            desc = "CHEST (PA AND LAT)" if st["view"] == "PA" else "CHEST (PORTABLE AP)"
            for d in st["dicoms"]:
                orient = "Erect" if st["view"] == "PA" else "Recumbent"
                wr.writerow([d["dicom_id"], p["subject_id"], st["study_id"], desc, d["view"], h, w,
                             st["date"], f"{st['time']:.3f}", desc, d["meaning"], orient])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image_size", type=int, default=512, help="image width in px (height 1.2x)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    ap.add_argument("--changes", default="mixed", choices=CHANGES,
                    help="how findings evolve between studies (module docstring)")
    a = ap.parse_args(argv)
    t = time.time()
    counts = generate(a.out, a.subjects, a.seed, a.image_size, a.workers, a.changes)
    print(f"wrote {counts} to {a.out} in {time.time() - t:.1f}s")


if __name__ == "__main__":
    main()
