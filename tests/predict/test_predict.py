"""`python -m real_jax.predict`: answers for new pairs of studies, from files a user has."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.image_files import ImageFileError
from real_jax import predict
from real_jax.apps.predictor import (
    DEFAULT_QUESTION,
    Predictor,
    predict_pairs,
    read_pairs_csv,
)
from real_jax.evaluation.heatmap import heatmap_figure_size
from tests.commands import call_command
from tests.dicom_files import make_dicom, save_dicom


@pytest.fixture(scope="module")
def predictor(trained_workdir) -> Predictor:
    return Predictor.load(trained_workdir, batch_size=2)


def write_dicom(path: Path, pixels: np.ndarray, *, monochrome1: bool = False,
                twelve_bit: bool = False) -> Path:
    """A DICOM that displays as `pixels` (uint8[H, W]): 8-bit as is, or 12-bit stored values
    with a rescale and a window that maps them back; MONOCHROME1 stores the inverse."""
    shown = 255 - pixels if monochrome1 else pixels
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    if twelve_bit:
        # Stored s -> value 2 s - 1000 = 16 p + 8 for display value p; the window [0, 4096)
        # maps that back to p.
        ds = make_dicom(shown.astype(np.uint16) * 8 + 504, photometric=photometric,
                        bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                        WindowCenter=2048, WindowWidth=4096)
    else:
        ds = make_dicom(shown, photometric=photometric)
    return Path(save_dicom(ds, path))


def test_dicom_gives_the_same_answer_as_the_same_pixels_as_png(predictor, study_images,
                                                               tmp_path):
    ref, main = study_images
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(main).save(tmp_path / "main.png")
    from_png = predictor.prepare(tmp_path / "ref.png", tmp_path / "main.png")
    variants = {
        "8-bit": write_dicom(tmp_path / "main8.dcm", main),
        "12-bit windowed MONOCHROME1": write_dicom(tmp_path / "main12.dcm", main,
                                                   monochrome1=True, twelve_bit=True),
    }
    pairs = [from_png]
    for path in variants.values():
        pairs.append(predictor.prepare(write_dicom(tmp_path / "ref.dcm", ref), path))
    np.testing.assert_array_equal(pairs[1].main, from_png.main)
    assert np.abs(pairs[2].main.astype(int) - from_png.main).max() <= 1
    answers = [a.answer for a in predictor.answer(pairs)]
    assert answers[0], "the model produced an empty answer"
    assert answers == [answers[0]] * 3, dict(zip(["png", *variants], answers, strict=True))


def run_command(*args: str) -> int:
    """`python -m real_jax.predict ARGS`, in this process; returns the exit status."""
    return call_command(predict, *args)


def test_single_pair_command_prints_the_answer_and_writes_the_heatmap(trained_workdir,
                                                                      predictor, study_images,
                                                                      tmp_path, capsys):
    ref, main = study_images
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(main).save(tmp_path / "main.jpg", quality=95)
    figure = tmp_path / "figures" / "pair.png"
    assert run_command(f"--workdir={trained_workdir}", f"--ref={tmp_path / 'ref.png'}",
                       f"--main={tmp_path / 'main.jpg'}", f"--heatmap={figure}",
                       "--batch_size=2") == 0
    expected = predictor.answer([predictor.prepare(tmp_path / "ref.png",
                                                   tmp_path / "main.jpg")])[0].answer
    assert capsys.readouterr().out.strip().splitlines()[-1] == expected
    assert Image.open(figure).size == heatmap_figure_size(predictor.config.data.image_size)


def test_batch_mode_writes_one_line_per_row_and_counts_the_failures(predictor, study_images,
                                                                    tmp_path):
    ref, main = study_images
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(main).save(tmp_path / "main.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "pairs.csv").write_text(
        "id,ref,main,question\n"
        "a,ref.png,main.png,\n"
        "b,ref.png,main.png,what has changed in the main image?\n"
        "c,ref.png,missing.png,\n"
        "d,notes.png,main.png,\n"
        "e,main.png,ref.png,\n"
        "f,ref.png,,\n")
    rows = read_pairs_csv(tmp_path / "pairs.csv")
    answered, failed = predict_pairs(predictor, rows, tmp_path / "out.jsonl",
                                     heatmap_dir=tmp_path / "maps")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert (answered, failed) == (3, 3)
    by_id = {line["id"]: line for line in lines}
    assert sorted(by_id) == ["a", "b", "c", "d", "e", "f"]
    assert "line 7: empty ref or main" in by_id["f"]["error"]
    assert by_id["a"]["question"] == DEFAULT_QUESTION
    assert "missing.png" in by_id["c"]["error"] and "no such file" in by_id["c"]["error"]
    assert "notes.png" in by_id["d"]["error"]
    size = heatmap_figure_size(predictor.config.data.image_size)
    for key in "abe":
        assert Image.open(by_id[key]["heatmap"]).size == size


def test_pairs_csv_without_the_image_columns_is_refused(tmp_path):
    (tmp_path / "pairs.csv").write_text("reference,followup\na.png,b.png\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['main', 'ref'\]"):
        read_pairs_csv(tmp_path / "pairs.csv")


@pytest.mark.parametrize("case", ["missing", "not an image", "1x1", "huge"])
def test_bad_input_files_get_errors_naming_the_file(predictor, study_images, tmp_path, case):
    good = tmp_path / "good.png"
    Image.fromarray(study_images[0]).save(good)
    bad = tmp_path / f"bad_{case.replace(' ', '_')}.png"
    if case == "not an image":
        bad.write_text("PATIENT NAME, STUDY DATE\n")
    elif case == "1x1":
        Image.fromarray(np.zeros((1, 1), np.uint8)).save(bad)
    elif case == "huge":
        # A 9000 x 9000 PNG of zeros compresses to ~80 kB but would decode to 81 Mpx; the
        # header alone is enough to refuse it.
        Image.new("L", (9000, 9000)).save(bad, optimize=False, compress_level=9)
    reason = {"missing": "no such file", "not an image": "not a readable image",
              "1x1": "1x1", "huge": "max_pixels"}[case]
    with pytest.raises(ImageFileError, match=reason) as error:
        predictor.prepare(good, bad)
    assert bad.name in str(error.value)


@pytest.mark.parametrize("args", [["--ref=a.png"], ["--main=b.png", "--pairs=p.csv"], []])
def test_command_needs_both_images_or_a_pairs_csv(args, capsys):
    assert run_command("--workdir=unused", *args) == 2
    assert capsys.readouterr().err.startswith("error: give either --ref and --main")


def test_command_reports_a_missing_workdir_without_a_traceback(tmp_path, capsys):
    assert run_command(f"--workdir={tmp_path / 'nothing'}", "--ref=a.png", "--main=b.png") == 2
    assert capsys.readouterr().err.strip().endswith("has no checkpoints/ folder: not a "
                                                    "training workdir of real_jax.main")
