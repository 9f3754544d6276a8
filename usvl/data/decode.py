"""THE decoding rule for images and masks: the loader, the checker, the duplicate finder and the sources call it.

Decoding rules (``decode_image``, ``decode_mask``; ``load_image`` and ``load_mask`` return their arrays;
``open_image``, ``grey_array``, ``mask_values`` and ``read_binary_mask`` are the steps, for callers that need
the file's own resolution):

* **Orientation.** The EXIF orientation is applied (``ImageOps.exif_transpose``) to images and masks alike,
  so a mask drawn on the displayed picture matches it.
* **Images to 8-bit grey.** ``1``/``L``/``P``/``RGB``/``YCbCr``/``CMYK``/``LAB``/``HSV`` are converted to grey
  by Pillow (ITU-R 601 luma). An alpha channel (``LA``, ``RGBA``, ``PA``, ``P`` with transparency) is
  composited over black, the background of a B-mode image (``to_grey``; the duplicate finder hashes these
  pixels). High-bit-depth images (``I;16*``, ``I``, ``F``) are scaled
  **by bit depth**: non-negative integers are divided by ``2**bits - 1`` with ``bits`` the smallest of
  8, 10, 12, 14, 16, 24, 32 that holds the image's maximum (so 12-bit data in a 16-bit container is not
  darkened 16-fold, and images from one scanner keep comparable brightness); floats in ``[0, 1]`` are
  multiplied by 255; anything else (negative integers, other floats) is min-max scaled.
* **Masks to {0, 1}.** A colour mask takes the maximum over its colour channels, so a lesion drawn in any one
  channel counts; the alpha channel is ignored unless the colour channels are all zero and the alpha is not
  constant (a mask drawn only in alpha). The mask is then thresholded at **half its own maximum** when the
  maximum is above zero (``> max / 2``): {0, 1}, {0, 255}, anti-aliased grey, 16-bit and JPEG masks with
  compression noise all binarise correctly; an all-zero mask stays empty. (Multi-label maps such as {0, 1, 2}
  are not binary masks; convert them in the dataset reader.)
* **Large files.** JPEGs are decoded at a reduced DCT scale (``Image.draft``) no smaller than the target, and
  any image still more than twice the target is box-reduced (``Image.reduce``) before the final resize.
* **Resizing to ``size x size``.** Images: bilinear (antialiased). Masks: area (box) resampling of the binary
  mask to a coverage fraction, then ``coverage >= 0.5``; a mask that is not empty but would vanish entirely
  (a lesion thinner than the reduction) keeps its best-covered pixels (``coverage >= max / 2``, or the pixel
  under its centroid when it is below 1/255 of every output pixel). Area keeps
  thin structures at half coverage and does not alias the way nearest-neighbour sampling does.
* **Bad files.** A corrupt, truncated or undecodable file raises ``ValueError`` naming it (Pillow's truncated
  image errors included; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set). A missing file raises
  ``FileNotFoundError``.
* **DICOM.** ``.dcm``/``.dicom`` images are read by :mod:`usvl.data.dicom`: one frame (``frame``, numbered from 1,
  for a cine loop), cropped to the B-mode region of its ultrasound region calibration, as 8-bit grey by the same
  luma rule; the size is the region's and ``spacing_mm`` its pixel size. Then resized as above.
* **Mask size.** ``check_mask_size``: a mask whose size differs from its image's but has the same aspect ratio
  (within 2 %, e.g. a half-resolution mask) is accepted, since both are resized to the same square; any other
  size is an error naming both files.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageOps

from usvl.data.dicom import is_dicom_path, read_dicom_frame
from usvl.utils.threads import available_cores

DECODER_VERSION = 2
"""Bumped whenever decoding changes its output, so cached decoded arrays are rebuilt."""

PathLike = str | os.PathLike
MASK_ASPECT_TOLERANCE = 0.02
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
"""What Pillow raises for a corrupt, truncated or undecodable file."""
HIGH_BIT_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
"""Pillow modes of 16-bit, 32-bit and float images (scaled to 8 bit by :func:`scale_to_uint8`)."""


def is_high_bit_depth(mode: str) -> bool:
    """Whether a Pillow mode holds more than 8 bits per pixel (see :data:`HIGH_BIT_MODES`)."""
    return mode in HIGH_BIT_MODES or mode.startswith("I;")


@dataclass(frozen=True)
class Decoded:
    """A decoded, resized array and the size of the file it came from.

    Attributes:
        array: ``uint8 [size, size]``: grey levels for an image, {0, 1} for a mask.
        source_size: ``(width, height)`` of the file after EXIF orientation, before any reduction (of a DICOM: of
            its ultrasound region).
        spacing_mm: ``(row, column)`` size of one source pixel in mm (DICOM with a calibration), else None.
    """

    array: np.ndarray
    source_size: tuple[int, int]
    spacing_mm: tuple[float, float] | None = None


def open_image(path: PathLike, kind: str = "image", size: int | None = None,
               draft_mode: str | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open, draft (JPEG, when ``size`` is given), fully decode and orient one file.

    Args:
        path: The file.
        kind: ``image`` or ``mask``, for error messages.
        size: Target side length: a JPEG is decoded at the smallest DCT scale still at least this; None: full size.
        draft_mode: Mode asked of the JPEG draft (``L`` for images).

    Returns:
        The loaded, oriented image and its oriented size before any reduction.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise
    except DECODE_ERRORS as error:
        raise ValueError(f"Cannot read {kind} {os.fspath(path)}: {error}") from error
    try:
        original = image.size
        if size is not None:
            image.draft(draft_mode, (size, size))  # JPEG: smallest DCT scale still >= size; others no-op
        image.load()
        decoded = image.size
        ImageOps.exif_transpose(image, in_place=True)
    except DECODE_ERRORS as error:
        image.close()
        raise ValueError(f"Cannot read {kind} {os.fspath(path)}: {error}") from error
    swapped = image.size != decoded  # the orientation swapped the (non-square) axes
    return image, ((original[1], original[0]) if swapped else original)


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth grey array to ``uint8`` (by bit depth; see the module docstring)."""
    values = np.asarray(array)
    if values.dtype.kind == "f":
        values = np.where(np.isfinite(values), values, 0).astype(np.float32)
        low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        if low >= 0.0 and high <= 1.0:
            return np.rint(values * 255.0).astype(np.uint8)
    else:
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        if low >= 0:
            bits = next((b for b in (8, 10, 12, 14, 16, 24, 32) if high < 2**b), 64)
            scaled = values.astype(np.float64 if bits > 24 else np.float32) * (255.0 / (2**bits - 1))
            return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        values = values.astype(np.float64)
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / span)), 0, 255).astype(np.uint8)


def to_grey(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``L`` (alpha composited over black, high bit depths scaled)."""
    mode = image.mode
    if mode == "L":
        return image
    if is_high_bit_depth(mode):
        return Image.fromarray(scale_to_uint8(np.asarray(image)), mode="L")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode not in ("1", "RGB", "RGBA", "YCbCr"):
        image = image.convert("RGB")  # CMYK, LAB, HSV, ...
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        grey = image.convert("RGB").convert("L")
        return grey if alpha.getextrema() == (255, 255) else ImageChops.multiply(grey, alpha)
    return image.convert("L")


def grey_array(image: Image.Image) -> np.ndarray:
    """The ``uint8`` grey pixels of a loaded image, by :func:`to_grey`."""
    return np.asarray(to_grey(image), dtype=np.uint8)


def _reduce(image: Image.Image, size: int) -> Image.Image:
    """Box-reduce ``image`` by an integer factor per axis while it stays at least twice ``size``."""
    factors = (max(1, image.width // (2 * size)), max(1, image.height // (2 * size)))
    return image.reduce(factors) if factors != (1, 1) else image


def original_grey(path: PathLike, frame: int | None = None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """An image at its own size as ``uint8`` grey, and its pixel size in mm when known (DICOM; see the rules).

    Args:
        path: Image file; a DICOM is read by :func:`usvl.data.dicom.read_dicom_frame` (its region only).
        frame: Frame number (from 1) of a multi-frame DICOM; None otherwise.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    if is_dicom_path(path):
        dicom = read_dicom_frame(path, frame)
        return dicom.array, dicom.spacing_mm
    image, _ = open_image(path)
    with image:
        try:
            return grey_array(image), None
        except DECODE_ERRORS as error:
            raise ValueError(f"Cannot convert image {os.fspath(path)} (mode {image.mode}) to grey: {error}") from error


def decode_image(path: PathLike, size: int, frame: int | None = None) -> Decoded:
    """Decode an image as 8-bit grey, resized to ``size x size`` (bilinear), following the module's rules.

    Args:
        path: Image file (any format Pillow reads, or DICOM; non-ASCII names are fine).
        size: Output side length.
        frame: Frame number (from 1) of a multi-frame DICOM; None for any other image.

    Returns:
        The ``uint8 [size, size]`` array, the file's oriented size and, for a calibrated DICOM, its pixel size.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    spacing = None
    if is_dicom_path(path):
        dicom = read_dicom_frame(path, frame)
        grey, spacing = Image.fromarray(dicom.array), dicom.spacing_mm
        source_size = grey.size
    else:
        image, source_size = open_image(path, "image", size, "L")
        with image:
            try:
                grey = to_grey(image)
            except DECODE_ERRORS as error:
                raise ValueError(f"Cannot convert image {os.fspath(path)} (mode {image.mode}) to grey: "
                                 f"{error}") from error
    grey = _reduce(grey, size)
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.BILINEAR)
    return Decoded(np.asarray(grey, dtype=np.uint8), source_size, spacing)


def mask_values(image: Image.Image) -> np.ndarray:
    """A mask's value per pixel before binarisation.

    The maximum over the colour channels; the alpha channel only when the colour is empty and the alpha is not
    constant (a mask drawn only in alpha).
    """
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if mode == "L" or is_high_bit_depth(mode):
        return np.asarray(image)
    if mode == "P":
        image = image.convert("RGBA")
    elif mode in ("La", "PA"):
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode not in ("LA", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    array = np.asarray(image)
    has_alpha = image.mode in ("LA", "RGBA")
    values = array[..., :-1].max(axis=-1) if has_alpha else array.max(axis=-1)
    if has_alpha and not values.any():
        alpha = array[..., -1]
        if alpha.min() != alpha.max():
            values = alpha
    return values


def binarise_mask(values: np.ndarray) -> np.ndarray:
    """Foreground where a value exceeds half the mask's maximum; all background when the maximum is <= 0.

    Returns:
        A boolean array of the same shape.
    """
    top = values.max(initial=0)
    if top <= 0:
        return np.zeros(values.shape, dtype=bool)
    return values > top / 2


def _read_binary_mask(path: PathLike, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    image, source_size = open_image(path, "mask", size, None)
    with image:
        try:
            values = mask_values(image)
        except DECODE_ERRORS as error:
            raise ValueError(f"Cannot read mask {os.fspath(path)} (mode {image.mode}): {error}") from error
    return binarise_mask(values), source_size


def read_binary_mask(path: PathLike) -> np.ndarray:
    """A mask file as a boolean array at its own (oriented) resolution, by the loader's rule.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    return _read_binary_mask(path, None)[0]


def resize_mask(binary: np.ndarray, size: int) -> np.ndarray:
    """Area-resize a boolean mask to ``size x size`` and threshold its coverage (see the module docstring).

    Returns:
        ``uint8 [size, size]`` in {0, 1}.
    """
    if binary.shape == (size, size):
        return binary.astype(np.uint8)
    # Coverage in 1/255 steps (an 8-bit box resize is several times faster than a float one): >= 128 is >= 0.5.
    coverage_image = _reduce(Image.fromarray(binary.astype(np.uint8) * np.uint8(255), mode="L"), size)
    coverage = np.asarray(coverage_image.resize((size, size), Image.BOX))
    out = coverage >= 128
    if not out.any() and binary.any():
        top = int(coverage.max())
        out = coverage >= max((top + 1) // 2, 1) if top > 0 else _centroid_pixel(binary, size)
    return out.astype(np.uint8)


def _centroid_pixel(binary: np.ndarray, size: int) -> np.ndarray:
    """The output pixel under the foreground's centroid: a lesion too small to reach 1/255 coverage anywhere."""
    out = np.zeros((size, size), dtype=bool)
    rows, cols = np.nonzero(binary)
    out[int(rows.mean() * size / binary.shape[0]), int(cols.mean() * size / binary.shape[1])] = True
    return out


def decode_mask(path: PathLike | Sequence[PathLike], size: int) -> Decoded:
    """Decode a mask, binarise it and resize it to ``size x size``, following the module's rules.

    Args:
        path: Mask file, or several masks of one image (e.g. BUSI's ``_mask_1.png``), OR-merged.
        size: Output side length.

    Returns:
        The ``uint8 [size, size]`` array in {0, 1} and the file's oriented size.

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: A file cannot be decoded, or several masks of one image differ in size; the message names
            the file(s).
    """
    paths = list(path) if isinstance(path, list | tuple) else [path]
    if not paths:
        raise ValueError("decode_mask needs at least one mask path")
    binary, source_size = _read_binary_mask(paths[0], size)
    for other in paths[1:]:
        extra, extra_size = _read_binary_mask(other, size)
        if extra.shape != binary.shape or extra_size != source_size:
            raise ValueError(
                f"Masks of one image differ in size: {os.fspath(paths[0])} is {source_size[0]}x{source_size[1]}, "
                f"{os.fspath(other)} is {extra_size[0]}x{extra_size[1]}"
            )
        binary |= extra
    return Decoded(resize_mask(binary, size), source_size)


def check_mask_size(image_path: PathLike, image_size: tuple[int, int], mask_path: PathLike | Sequence[PathLike],
                    mask_size: tuple[int, int], tolerance: float = MASK_ASPECT_TOLERANCE) -> bool:
    """Check that a mask fits its image: the same size, or the same aspect ratio (within ``tolerance``).

    Returns:
        ``True`` when the sizes differ but the aspect ratio matches (the mask is rescaled with the image).

    Raises:
        ValueError: Unrelated sizes; the message names both files and their sizes.
    """
    if tuple(mask_size) == tuple(image_size):
        return False
    (image_w, image_h), (mask_w, mask_h) = image_size, mask_size
    scale_x, scale_y = mask_w / max(image_w, 1), mask_h / max(image_h, 1)
    if abs(scale_x - scale_y) <= tolerance * max(scale_x, scale_y):
        return True
    mask_name = ", ".join(map(os.fspath, mask_path)) if isinstance(mask_path, list | tuple) else os.fspath(mask_path)
    raise ValueError(
        f"Mask {mask_name} is {mask_w}x{mask_h} but its image {os.fspath(image_path)} is {image_w}x{image_h}; "
        f"the aspect ratios differ, so the mask does not belong to this image (or one of them was cropped or rotated)"
    )


def load_image(path: PathLike, size: int) -> np.ndarray:
    """Decode an image as 8-bit grey resized to ``size x size``; see :func:`decode_image`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    return decode_image(path, size).array


def load_mask(path: PathLike | Sequence[PathLike], size: int) -> np.ndarray:
    """Decode a mask to {0, 1} resized to ``size x size``; see :func:`decode_mask`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    return decode_mask(path, size).array


def default_threads() -> int:
    """Decoding threads: ``USVL_THREADS`` or the available cores, at most 8."""
    return max(1, min(8, int(os.environ.get("USVL_THREADS", 0)) or available_cores()))
