"""Ultrasound DICOM files written in the tests with pydicom, with a known region calibration, and the wheel's examples.

Only example files that ship inside the installed pydicom wheel are used (``pydicom.data.get_testdata_file`` with
``download=False`` finds them in the package); files pydicom would download on demand are never asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"

REGION = (10, 6, 57, 41)
"""``RegionLocationMinX0, MinY0, MaxX1, MaxY1`` (inclusive) of the written files: a 48 x 36 B-mode region."""
DELTA_CM = (0.012, 0.008)
"""``PhysicalDeltaX, PhysicalDeltaY`` of the written files in cm: 0.12 mm per column, 0.08 mm per row."""
SPACING_MM = (0.08, 0.12)
"""The written files' (row, column) spacing in mm."""


def wheel_file(name: str) -> Path:
    """An example file inside the installed pydicom wheel (skips the test when this pydicom lacks it)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in the installed pydicom wheel")
    return Path(path)


def region_item(region: tuple[int, int, int, int] = REGION, delta_cm: tuple[float, float] = DELTA_CM,
                units: int = 3):
    """One ``SequenceOfUltrasoundRegions`` item: a 2D tissue region with the given box and cm per pixel."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat = 1
    item.RegionDataType = 1
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = region
    item.PhysicalUnitsXDirection = units
    item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta_cm
    item.ReferencePixelX0 = 0
    item.ReferencePixelY0 = 0
    return item


def write_us_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", regions: list | None = None,
                   bits_stored: int | None = None) -> Path:
    """Write an uncompressed ultrasound DICOM (Explicit VR Little Endian).

    Args:
        path: The file.
        pixels: ``[H, W]`` or ``[H, W, 3]`` for one frame, ``[F, H, W]`` or ``[F, H, W, 3]`` for a cine loop
            (written as Ultrasound Multi-frame Image Storage when ``F`` > 1 or the array is 4-D); ``uint8`` or
            ``uint16``.
        photometric: ``PhotometricInterpretation``; 3 samples for ``RGB``/``YBR_FULL``.
        regions: ``SequenceOfUltrasoundRegions`` items; None: one region at :data:`REGION` with :data:`DELTA_CM`;
            ``[]``: none.
        bits_stored: ``BitsStored`` (default: all bits of the dtype).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    colour = photometric in ("RGB", "YBR_FULL")
    multi = pixels.ndim == (4 if colour else 3)
    frames = pixels.shape[0] if multi else 1
    sop_class = US_MULTIFRAME if multi else US_IMAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "usvl-test", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20250101", "120000", "1", ""
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.Manufacturer = "usvl tests"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored or bits, (bits_stored or bits) - 1
    ds.PixelRepresentation = 0
    if multi:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063
    ds.SequenceOfUltrasoundRegions = [region_item()] if regions is None else regions
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
