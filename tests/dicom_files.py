"""DICOM files that tests write themselves with pydicom (the `dicom` extra)."""

from __future__ import annotations

import numpy as np
import pytest

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def make_dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
               bits_stored: int | None = None, signed: bool = False, **attrs):
    """A CR image pydicom Dataset holding `pixels` (uint8/uint16/int16 [H, W] or uint8 [H, W, 3]).

    Skips the calling test when pydicom (the `dicom` extra) is not installed."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def save_dicom(ds, path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)
