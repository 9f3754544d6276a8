"""Reading ultrasound DICOM: frames as 8-bit grey, the B-mode region and its pixel spacing in mm.

Ultrasound arrives as DICOM single frames and multi-frame cine loops. Their calibration is not in ``PixelSpacing``
but in the ultrasound region calibration, ``SequenceOfUltrasoundRegions``: one item per region of the screen
(B-mode image, Doppler strip, ...) with its bounds and the physical size of one pixel. This module reads them with
pydicom (a default dependency); compressed transfer syntaxes other than JPEG baseline need the pylibjpeg plugins of
the ``dicom`` extra (``pip install "usvl[dicom]"``).

Rules (:func:`read_dicom_info`, :func:`read_dicom_frame`):

* **Region.** Of the items with ``RegionSpatialFormat`` 1 (2D), tissue regions (``RegionDataType`` 1) are preferred,
  then the largest. Its box ``RegionLocationMinX0, MinY0, MaxX1, MaxY1`` (inclusive pixel indices, clipped to the
  image by at most one pixel) is what is read: the B-mode image without the scanner's text, scales and other
  regions. A region reaching further outside the image (one resized after it was calibrated) is not used. Its spacing is
  ``PhysicalDeltaY`` (rows) and ``PhysicalDeltaX`` (columns) when ``PhysicalUnitsY/XDirection`` is 3 (cm), in mm
  (x 10). A region in other units is cropped without a spacing.
* **No region.** The whole frame is read; its spacing is ``PixelSpacing`` (row, column; mm) when present, else
  unknown (areas and distances stay in pixels). Neither is an error.
* **Frames.** ``NumberOfFrames`` > 1 is a cine loop; frames are numbered from 1, as DICOM numbers them
  (``ReferencedFrameNumber``), and read one at a time (:func:`pydicom.pixels.pixel_array` with ``index``), so a long
  loop is never decoded whole.
* **Grey levels** (to match PNG/JPEG, :mod:`usvl.data.decode`): ``RGB`` and ``YBR_FULL``/``YBR_FULL_422`` (converted
  to RGB by pydicom) and ``PALETTE COLOR`` become grey by ITU-R 601 luma (Pillow's ``convert("L")``); ``MONOCHROME1``
  is inverted (``2**BitsStored - 1 - value``), so bright means echogenic as in ``MONOCHROME2``; more than 8 bits
  are scaled by ``BitsStored`` (``value * 255 / (2**BitsStored - 1)``), signed data min-max.
* **Bad files.** A file that is not DICOM, holds no pixel data, has a transfer syntax no installed decoder reads, or
  cannot be decoded raises ``ValueError`` naming the file and what to do; a missing file ``FileNotFoundError``.

This module depends on nothing else in :mod:`usvl.data`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
"""File extensions (lower case) read as DICOM."""

CENTIMETRE = 3
"""``PhysicalUnitsX/YDirection`` code of centimetres."""
SPATIAL_2D = 1
"""``RegionSpatialFormat`` code of a 2D (B-mode) region."""
TISSUE = 1
"""``RegionDataType`` code of tissue."""
INSTALL_HINT = 'install the DICOM decoders with pip install "usvl[dicom]" (pylibjpeg plugins)'

PathLike = str | os.PathLike


def is_dicom_path(path: PathLike) -> bool:
    """Whether a path names a DICOM file by its extension (``.dcm``, ``.dicom``; the file is not opened)."""
    return Path(os.fspath(path)).suffix.lower() in DICOM_EXTENSIONS


@dataclass(frozen=True)
class UltrasoundRegion:
    """The region of a frame that is read: a half-open pixel box and the size of one pixel in mm.

    Attributes:
        left: First column.
        top: First row.
        right: One past the last column.
        bottom: One past the last row.
        spacing_mm: ``(row, column)`` size of one pixel in mm, or None when unknown.
        calibrated: Whether the box and spacing come from ``SequenceOfUltrasoundRegions``.
    """

    left: int
    top: int
    right: int
    bottom: int
    spacing_mm: tuple[float, float] | None
    calibrated: bool

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the box."""
        return self.right - self.left, self.bottom - self.top


@dataclass(frozen=True)
class DicomInfo:
    """What the header of a DICOM image says (read without its pixel data).

    Attributes:
        frames: Number of frames (1 for a single frame).
        rows: Rows of a frame.
        columns: Columns of a frame.
        photometric: ``PhotometricInterpretation``.
        region: What is read of each frame (see :class:`UltrasoundRegion`).
        sop_instance_uid: The instance's ``SOPInstanceUID``.
    """

    frames: int
    rows: int
    columns: int
    photometric: str
    region: UltrasoundRegion
    sop_instance_uid: str


@dataclass(frozen=True)
class DicomFrame:
    """One frame, cropped to its region and converted to grey.

    Attributes:
        array: ``uint8 [height, width]`` grey levels of the region.
        info: The file's header information (region and spacing included).
    """

    array: np.ndarray
    info: DicomInfo

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """``(row, column)`` mm per pixel of :attr:`array`, or None."""
        return self.info.region.spacing_mm


def _pydicom():
    import pydicom

    return pydicom


def _dataset_errors() -> tuple[type[BaseException], ...]:
    from pydicom.errors import InvalidDicomError

    return (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError)


def read_dataset(path: PathLike, pixels: bool = False) -> Any:
    """Read a DICOM file with pydicom: the header only, or with its pixel data element deferred (``pixels``).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not DICOM or is unreadable; the message names it.
    """
    pydicom = _pydicom()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such DICOM file: {os.fspath(path)}")
    try:
        if pixels:
            return pydicom.dcmread(path, defer_size="1 KB")  # large values are read when (if ever) used
        return pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise
    except _dataset_errors() as error:
        raise ValueError(f"Cannot read DICOM {os.fspath(path)}: not a readable DICOM file ({error})") from error


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def ultrasound_region(dataset: Any, rows: int, columns: int) -> UltrasoundRegion:
    """The region to read and its spacing, by the module's rules (region calibration, else ``PixelSpacing``)."""
    candidates = []
    for item in dataset.get("SequenceOfUltrasoundRegions", None) or []:
        if int(item.get("RegionSpatialFormat", 0) or 0) != SPATIAL_2D:
            continue
        bounds = [item.get(key) for key in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1",
                                            "RegionLocationMaxY1")]
        if any(value is None for value in bounds):
            continue
        x0, y0, x1, y1 = (int(value) for value in bounds)
        if min(x0, y0, x1, y1) < 0 or max(x0, x1) > columns or max(y0, y1) > rows:
            continue  # not inside this pixel matrix (an image resized after calibration): neither box nor spacing hold
        left, top = min(x0, x1), min(y0, y1)
        right, bottom = min(columns, max(x0, x1) + 1), min(rows, max(y0, y1) + 1)
        if right <= left or bottom <= top:
            continue
        spacing = None
        units = (int(item.get("PhysicalUnitsYDirection", 0) or 0), int(item.get("PhysicalUnitsXDirection", 0) or 0))
        deltas = (_number(item.get("PhysicalDeltaY")), _number(item.get("PhysicalDeltaX")))
        if units == (CENTIMETRE, CENTIMETRE) and all(d is not None and d != 0 for d in deltas):
            spacing = (abs(deltas[0]) * 10.0, abs(deltas[1]) * 10.0)
        tissue = int(item.get("RegionDataType", 0) or 0) == TISSUE
        candidates.append(((tissue, spacing is not None, (right - left) * (bottom - top)),
                           UltrasoundRegion(left, top, right, bottom, spacing, True)))
    if candidates:
        return max(candidates, key=lambda pair: pair[0])[1]
    spacing = None
    pixel_spacing = dataset.get("PixelSpacing", None)
    if pixel_spacing is not None and len(pixel_spacing) == 2:
        values = (_number(pixel_spacing[0]), _number(pixel_spacing[1]))
        if all(v is not None and v > 0 for v in values):
            spacing = (float(values[0]), float(values[1]))
    return UltrasoundRegion(0, 0, columns, rows, spacing, False)


def dicom_info(dataset: Any, path: PathLike) -> DicomInfo:
    """:class:`DicomInfo` of a dataset read by :func:`read_dataset`.

    Raises:
        ValueError: The dataset holds no image (no ``Rows``/``Columns`` or pixel data); the message names the file.
    """
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not rows or not columns:
        raise ValueError(f"Cannot read DICOM {os.fspath(path)}: it holds no image (no Rows/Columns; SOP class "
                         f"{dataset.get('SOPClassUID', 'unknown')})")
    frames = int(_number(dataset.get("NumberOfFrames", 1)) or 1)
    return DicomInfo(max(frames, 1), int(rows), int(columns), str(dataset.get("PhotometricInterpretation", "")),
                     ultrasound_region(dataset, int(rows), int(columns)), str(dataset.get("SOPInstanceUID", "")))


def read_dicom_info(path: PathLike) -> DicomInfo:
    """The header information of a DICOM image file (no pixel data is read).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not DICOM, unreadable, or no image; the message names the file.
    """
    return dicom_info(read_dataset(path), path)


def to_grey_uint8(pixels: np.ndarray, photometric: str, bits_stored: int) -> np.ndarray:
    """A frame's pixels (``[H, W]`` or ``[H, W, 3]`` RGB) as ``uint8`` grey, by the module's rules."""
    values = np.asarray(pixels)
    if values.dtype.kind == "f":
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros(values.shape)
        values = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
    elif values.dtype != np.uint8:
        if values.dtype.kind == "i" and values.min(initial=0) < 0:
            low, high = int(values.min()), int(values.max())
            span = max(high - low, 1)
            values = np.clip(np.rint((values.astype(np.float64) - low) * (255.0 / span)), 0, 255).astype(np.uint8)
        else:
            top = max(int(values.max(initial=0)), 1)
            bits = bits_stored if 8 < bits_stored <= 32 and top < 2**bits_stored else int(np.ceil(np.log2(top + 1)))
            scale = 255.0 / (2 ** max(bits, 8) - 1)
            values = np.clip(np.rint(values.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        bits_stored = 8
    if values.ndim == 3:
        if values.shape[-1] == 1:
            values = values[..., 0]
        else:
            values = np.asarray(Image.fromarray(np.ascontiguousarray(values[..., :3]), mode="RGB").convert("L"))
    elif photometric == "MONOCHROME1":
        values = np.uint8(255) - values
    return np.ascontiguousarray(values, dtype=np.uint8)


def _decode_frame(dataset: Any, path: PathLike, index: int) -> np.ndarray:
    """Pixels of frame ``index`` (0-based), RGB for colour; ``ValueError`` naming the file and the fix."""
    from pydicom.pixels import apply_color_lut, pixel_array

    syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(dataset, "file_meta") else "unknown"
    name = getattr(syntax, "name", str(syntax))
    try:
        pixels = pixel_array(os.fspath(path), index=index)
    except (NotImplementedError, RuntimeError, ImportError) as error:
        raise ValueError(f"Cannot decode DICOM {os.fspath(path)}: its transfer syntax {name} ({syntax}) needs a "
                         f"decoder that is not installed; {INSTALL_HINT}, or convert the file to an uncompressed "
                         f"transfer syntax ({error})") from error
    except _dataset_errors() as error:
        raise ValueError(f"Cannot decode DICOM {os.fspath(path)} (transfer syntax {name}): {error}") from error
    if str(dataset.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    return pixels


def read_dicom_frame(path: PathLike, frame: int | None = None) -> DicomFrame:
    """Read one frame of a DICOM image, cropped to its ultrasound region and converted to ``uint8`` grey.

    Args:
        path: The DICOM file.
        frame: Frame number, from 1 (DICOM's numbering); None for a single-frame image.

    Returns:
        The grey region and the header information (spacing in mm, when calibrated).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not DICOM, no image, a frame out of range, a multi-frame image read without a frame number, or
            pixel data that cannot be decoded (the message says which decoder to install); it names the file.
    """
    dataset = read_dataset(path, pixels=True)
    info = dicom_info(dataset, path)
    if not any(key in dataset for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"Cannot read DICOM {os.fspath(path)}: it holds no pixel data")
    if frame is None:
        if info.frames > 1:
            raise ValueError(f"{os.fspath(path)} is a multi-frame DICOM ({info.frames} frames): training and test "
                             "read single frames; `usvl predict` predicts every frame of a cine loop")
        index = 0
    else:
        if not 1 <= frame <= info.frames:
            raise ValueError(f"{os.fspath(path)} has {info.frames} frame(s); frame {frame} does not exist")
        index = frame - 1
    pixels = _decode_frame(dataset, path, index)
    region = info.region
    pixels = pixels[region.top:region.bottom, region.left:region.right]
    bits = int(_number(dataset.get("BitsStored", 8)) or 8)
    return DicomFrame(to_grey_uint8(pixels, info.photometric, bits), info)


FRAME_MARK = "#frame"
"""What separates an image's name from its frame number in the name of one frame of a cine loop."""


def frame_name(name: str, frame: int) -> str:
    """The name of one frame of a cine loop: ``<name>#frame003`` (frames numbered from 1)."""
    return f"{name}{FRAME_MARK}{frame:03d}"


def output_stem(name: str) -> str:
    """The stem of the files written for an image or frame: ``a/b.png`` -> ``b``; ``c.dcm#frame003`` -> ``c_frame003``.

    Returns:
        The stem.
    """
    base, mark, frame = name.rpartition(FRAME_MARK)
    if mark and frame.isdigit():
        return f"{Path(base).stem}_frame{frame}"
    return Path(name).stem


__all__ = ["DICOM_EXTENSIONS", "FRAME_MARK", "DicomFrame", "DicomInfo", "UltrasoundRegion", "dicom_info", "frame_name",
           "is_dicom_path", "output_stem", "read_dataset", "read_dicom_frame", "read_dicom_info", "to_grey_uint8",
           "ultrasound_region"]
