"""Read a user's image file (PNG, JPEG or DICOM) into uint8[H, W] grayscale for prediction.

`python -m real_jax.predict --ref A --main B` takes two image files from disk; this module turns
each into the representation the training pipeline decodes (`data_pipeline.images.decode_gray`):

- DICOM is recognised by content (the `DICM` magic at byte 128), whatever the file is called, and
  files named `.dcm` / `.dicom` without the magic are read with `pydicom.dcmread(force=True)`. It is
  displayed the way a viewer does: modality LUT (rescale slope/intercept), then the VOI LUT or the
  first window with its output range mapped linearly to 0..255 (unsigned 8-bit data without either
  are kept as they are; anything else is min-max scaled), then MONOCHROME1 is inverted so that
  bone is always bright. pydicom (the `dicom` extra) is imported only when a DICOM is read.
- Everything else goes through Pillow (`images.open_gray`: decompression-bomb guard, 16-bit PNGs
  rescaled to 8 bit, colour converted to luminance).

Every failure raises `ImageFileError`, whose message starts with the path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from data_pipeline.images import DEFAULT_MAX_PIXELS, ImageDecodeError, open_gray
from real_jax.errors import UserError

MIN_SIDE = 32  # px; smaller images are certainly not chest X-rays (and break the crop)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
_PLUGINS_HINT = (
    "install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or "
    "python-gdcm) or convert the image to PNG"
)


class ImageFileError(UserError):
    """An image file that cannot be used; the message starts with the path and says why."""


def read_image_file(
    path: str | os.PathLike, *, min_side: int = MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a PNG, JPEG (or other Pillow format) or DICOM file as grayscale uint8[H, W].

    Raises ImageFileError (message starting with `path`) for a missing file, something that is not
    a readable image, an image above `max_pixels` (refused before its pixels are decoded), a
    multi-frame DICOM, or an image with a side shorter than `min_side` px.
    """
    p = Path(path)
    if not p.is_file():
        what = " (it is a directory, not an image file)" if p.is_dir() else ""
        raise ImageFileError(f"{path}: no such file{what}")
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        if not head:
            raise ImageFileError(f"{path}: the file is empty")
        is_dicom = head[128:132] == b"DICM"
        if is_dicom or p.suffix.lower() in DICOM_SUFFIXES:
            img = _read_dicom(p, str(path), max_pixels, has_magic=is_dicom)
        else:
            img = np.asarray(open_gray(p.read_bytes(), max_pixels))
    except ImageDecodeError as e:
        if "max_pixels" in str(e) or "decompression bomb" in str(e):
            raise ImageFileError(f"{path}: image is larger than max_pixels={max_pixels} px; "
                                 "downscale it first") from e
        reason = re.sub(r" <_io\.BytesIO object at \w+>", "", str(e))
        raise ImageFileError(f"{path}: not a readable image ({reason}); expected PNG, JPEG or "
                             "DICOM") from e
    except OSError as e:
        raise ImageFileError(f"{path}: cannot read the file ({e})") from e
    h, w = img.shape
    if min(h, w) < min_side:
        raise ImageFileError(f"{path}: image is {w}x{h} px; each side must be at least "
                             f"{min_side} px")
    return img


def _read_dicom(p: Path, name: str, max_pixels: int, has_magic: bool) -> np.ndarray:
    """DICOM file -> uint8[H, W] (modality LUT, VOI LUT/window, MONOCHROME1 inverted)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    except ImportError as e:
        raise ImageFileError(f"{name}: this is a DICOM file, but pydicom is not installed; run "
                             "pip install 'real_jax[dicom]'") from e
    try:
        ds = pydicom.dcmread(p, force=not has_magic)
    except Exception as e:  # InvalidDicomError, struct errors, EOF in a truncated file, ...
        raise ImageFileError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        hint = "" if has_magic else " (and no DICM header: is it a DICOM file at all?)"
        raise ImageFileError(f"{name}: DICOM file has no PixelData, so no image{hint}")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageFileError(f"{name}: multi-frame DICOM with {frames} frames; only single-frame "
                             "images (one radiograph per file) are supported")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * cols > max_pixels:
        raise ImageFileError(f"{name}: image is {cols}x{rows} px, larger than "
                             f"max_pixels={max_pixels} px; downscale it first")
    spp = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if spp not in (1, 3) or photometric == "PALETTE COLOR":
        raise ImageFileError(f"{name}: unsupported DICOM pixels ({spp} samples per pixel, "
                             f"{photometric}); convert the image to PNG")
    if "TransferSyntaxUID" not in ds.file_meta:  # forced read of a bare dataset
        implicit, little = ds.original_encoding
        if little is False:
            raise ImageFileError(f"{name}: big-endian DICOM without file meta is not supported")
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder plugin, corrupt or truncated pixel data
        what = f"transfer syntax {tsyntax.name} ({tsyntax})"
        hint = f"; {_PLUGINS_HINT}" if tsyntax.is_compressed else ""
        raise ImageFileError(f"{name}: cannot decode the DICOM pixel data of {what}: "
                             f"{type(e).__name__}: {e}{hint}") from e
    try:
        out = _to_display(ds, arr, spp, apply_modality_lut, apply_voi_lut)
    except ImageFileError:
        raise
    except Exception as e:  # malformed LUT / window values
        raise ImageFileError(f"{name}: invalid DICOM rescale or VOI attributes "
                             f"({type(e).__name__}: {e})") from e
    if photometric == "MONOCHROME1":  # minimum value is white: invert so bone is bright
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_display(ds, arr: np.ndarray, spp: int, modality_lut, voi_lut) -> np.ndarray:
    """Stored pixels [H, W] or [H, W, 3] -> float64[H, W] display values in 0..255."""
    bits = int(ds.get("BitsStored") or 8)
    unsigned_8bit = bits <= 8 and int(ds.get("PixelRepresentation") or 0) == 0
    if spp == 3:  # RGB (pydicom converts YBR): ITU-R 601 luminance, as Pillow's convert("L")
        a = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return a if unsigned_8bit else _min_max(a)
    rescaled = ds.get("ModalityLUTSequence") or (
        float(ds.get("RescaleSlope", 1) or 1) != 1.0 or float(ds.get("RescaleIntercept") or 0) != 0)
    a = modality_lut(arr, ds)
    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        # integer inputs for the table; its output range is the table's own value range
        # (LUT Descriptor bit depths are often larger than the values the table holds)
        n, first = int(lut[0].LUTDescriptor[0]) or 2**16, int(lut[0].LUTDescriptor[1])
        a = np.clip(np.rint(a), first, first + n - 1).astype(np.int64)
        probe = np.arange(first, first + n)
    elif has_window:  # values far outside the window give its output range (y_min, y_max)
        probe = np.array([-np.inf, np.inf])
    elif unsigned_8bit and not rescaled:  # already display values: identical to the same PNG
        return a.astype(np.float64)
    else:
        return _min_max(a.astype(np.float64))
    ends = voi_lut(probe, ds)
    lo, hi = float(ends.min()), float(ends.max())
    a = voi_lut(a, ds).astype(np.float64)  # index 0: the first window / LUT if several
    return (a - lo) / max(hi - lo, 1e-12) * 255.0


def _min_max(a: np.ndarray) -> np.ndarray:
    """float[H, W] -> float[H, W] with min -> 0 and max -> 255 (constant images -> 0)."""
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-12) * 255.0
