"""`read_image_file`: users' PNG / JPEG / DICOM files -> uint8[H, W], and every way it refuses."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from data_pipeline.image_files import MIN_SIDE, ImageFileError, read_image_file
from tests.dicom_files import make_dicom, save_dicom


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth uint8[h, w] test image (JPEG-friendly) with its full 0..255 range."""
    y, x = np.mgrid[0:h, 0:w]
    return np.round((x / (w - 1) * 0.7 + y / (h - 1) * 0.3) * 255).astype(np.uint8)


def save_png(pixels: np.ndarray, path) -> str:
    Image.fromarray(pixels).save(path)
    return str(path)


def test_png_reads_back_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    out = read_image_file(save_png(pixels, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    np.testing.assert_array_equal(out, pixels)


def test_jpeg_reads_back_close(tmp_path):
    pixels = gradient()
    path = tmp_path / "a.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    out = read_image_file(path)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    assert np.abs(out.astype(int) - pixels).max() <= 3


def test_8bit_monochrome2_dicom_equals_the_same_pixels_as_png(tmp_path):
    # 20..230: a min-max rescale (the fallback for other DICOMs) would change these pixels
    pixels = np.random.default_rng(1).integers(20, 231, (40, 50), dtype=np.uint8)
    dcm = read_image_file(save_dicom(make_dicom(pixels), tmp_path / "a.dcm"))
    png = read_image_file(save_png(pixels, tmp_path / "a.png"))
    assert dcm.dtype == np.uint8
    assert np.array_equal(dcm, png) and np.array_equal(dcm, pixels)


def test_12bit_dicom_rescale_then_first_window_maps_to_known_values(tmp_path):
    expected = np.random.default_rng(2).integers(0, 256, (40, 40)).astype(np.uint8)
    stored = (4 * expected.astype(np.uint16) + 1000)  # HU-like values 8 E + 976 after rescale
    stored[0, :3] = 0, 4000, 1000  # far below / above the window, and its lower edge
    want = expected.copy()
    want[0, :3] = 0, 255, 0
    # LINEAR window [976, 976 + 2040] (PS3.3 C.11.2.1.2: c - 0.5 -/+ (w - 1) / 2) -> E exactly;
    # the second window must be ignored
    ds = make_dicom(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                    WindowCenter=[1996.5, 40], WindowWidth=[2041, 80])
    out = read_image_file(save_dicom(ds, tmp_path / "a.dcm"))
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - want).max() <= 1


def test_voi_lut_sequence_output_range_is_the_tables_own_range(tmp_path):
    stored = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 2  # 0..3198
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # declares 16 bits, holds 12-bit values (common)
    item.add_new("LUTData", "US", list(range(4096)))
    ds = make_dicom(stored, bits_stored=12, WindowCenter=100, WindowWidth=10)  # LUT wins
    ds.VOILUTSequence = [item]
    out = read_image_file(save_dicom(ds, tmp_path / "a.dcm"))
    want = np.rint(stored / 4095 * 255)
    assert np.abs(out.astype(int) - want).max() <= 1


def test_monochrome1_is_inverted_relative_to_monochrome2(tmp_path):
    pixels = np.random.default_rng(3).integers(20, 231, (36, 36), dtype=np.uint8)
    m2 = read_image_file(save_dicom(make_dicom(pixels), tmp_path / "m2.dcm"))
    m1 = read_image_file(save_dicom(make_dicom(pixels, photometric="MONOCHROME1"),
                                    tmp_path / "m1.dcm"))
    assert np.array_equal(m1, 255 - m2)


def test_16bit_dicom_without_window_is_min_max_scaled(tmp_path):
    stored = np.linspace(300, 60000, 48 * 48).reshape(48, 48).astype(np.uint16)
    out = read_image_file(save_dicom(make_dicom(stored), tmp_path / "a.dcm"))
    assert out.min() == 0 and out.max() == 255
    want = np.rint((stored.astype(float) - 300) / (60000 - 300) * 255)
    assert np.abs(out.astype(int) - want).max() <= 1


def test_rgb_dicom_becomes_luminance(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    out = read_image_file(save_dicom(make_dicom(rgb, photometric="RGB"), tmp_path / "a.dcm"))
    want = np.asarray(Image.fromarray(rgb).convert("L"))
    assert out.shape == (32, 40) and np.abs(out.astype(int) - want).max() <= 1


@pytest.mark.parametrize("name", ["scan.png", "scan"])
def test_dicom_is_detected_by_content_not_by_name(tmp_path, name):
    pixels = np.random.default_rng(5).integers(0, 256, (33, 34), dtype=np.uint8)
    out = read_image_file(save_dicom(make_dicom(pixels, photometric="MONOCHROME1"),
                                     tmp_path / name))
    assert np.array_equal(out, 255 - pixels)  # only the DICOM path knows about MONOCHROME1


def test_dcm_without_preamble_is_read_with_force(tmp_path):
    pixels = np.random.default_rng(6).integers(20, 231, (33, 34), dtype=np.uint8)
    ds = make_dicom(pixels)
    del ds.file_meta
    path = tmp_path / "bare.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(read_image_file(path), pixels)


def assert_refused(path, *reasons, **kwargs):
    with pytest.raises(ImageFileError) as e:
        read_image_file(path, **kwargs)
    message = str(e.value)
    assert message.startswith(str(path)), message
    for reason in reasons:
        assert reason in message, message
    return message


def test_missing_file_and_directory_are_refused(tmp_path):
    assert_refused(tmp_path / "nope.png", "no such file")
    assert_refused(tmp_path, "no such file", "directory")


def test_text_or_empty_file_is_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("patient notes, not pixels\n")
    assert_refused(path, "not a readable image", "cannot identify image file")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert_refused(empty, "empty")


def test_tiny_image_is_refused(tmp_path):
    path = save_png(np.zeros((1, 1), np.uint8), tmp_path / "dot.png")
    assert_refused(path, "image is 1x1 px; each side must be at least 32 px")
    ok = save_png(np.zeros((MIN_SIDE, MIN_SIDE), np.uint8), tmp_path / "ok.png")
    assert read_image_file(ok).shape == (MIN_SIDE, MIN_SIDE)


def test_images_above_max_pixels_are_refused(tmp_path):
    png = save_png(np.zeros((200, 200), np.uint8), tmp_path / "big.png")
    assert_refused(png, "max_pixels=10000", max_pixels=10_000)
    dcm = save_dicom(make_dicom(np.zeros((200, 200), np.uint8)), tmp_path / "big.dcm")
    assert_refused(dcm, "200x200 px", "max_pixels=10000", max_pixels=10_000)
    # a header claiming 60000x60000 over 4 bytes of pixels: refused before decoding
    ds = make_dicom(np.zeros((2, 2), np.uint8), Rows=60000, Columns=60000)
    assert_refused(save_dicom(ds, tmp_path / "bomb.dcm"), "60000x60000 px", "max_pixels")


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(gradient(256, 256)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, "not a readable image", "truncated")


def test_dicom_without_pixel_data_is_refused(tmp_path):
    ds = make_dicom(np.zeros((40, 40), np.uint8))
    del ds.PixelData
    assert_refused(save_dicom(ds, tmp_path / "nopix.dcm"), "no PixelData")


def test_multi_frame_dicom_is_refused(tmp_path):
    ds = make_dicom(np.zeros((2 * 40, 40), np.uint8), Rows=40, NumberOfFrames=2)
    assert_refused(save_dicom(ds, tmp_path / "cine.dcm"), "multi-frame", "2 frames")


def test_compressed_dicom_without_decoder_names_the_transfer_syntax(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder
    from pydicom.uid import JPEGLSLossless

    if JPEGLSLosslessDecoder.is_available:
        pytest.skip("a JPEG-LS decoder plugin is installed")
    ds = make_dicom(np.zeros((40, 40), np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"])
    assert_refused(save_dicom(ds, tmp_path / "jls.dcm"), "JPEG-LS Lossless", "pip install")


def test_dicom_without_pydicom_says_which_extra_to_install(tmp_path, monkeypatch):
    path = save_dicom(make_dicom(np.zeros((40, 40), np.uint8)), tmp_path / "a.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    assert_refused(path, "pip install 'real_jax[dicom]'")
