"""Predicted masks as DICOM Segmentation objects (highdicom), referencing the DICOM image they were predicted on.

One binary Segmentation instance per source instance, with one segment: ``prostate`` (SNOMED CT Anatomical Structure
/ Prostate) when the model segments the prostate gland, otherwise ``lesion`` (Morphologically Abnormal Structure /
Lesion), its label naming the model's lesion classes. The mask of a frame is placed back into the full frame at the
ultrasound region it was predicted on (:mod:`usvl.data.dicom`), so the segmentation has the source's rows and
columns. It references the source instance (``ReferencedSOPInstanceUID``) and, for a frame of a cine loop, that
frame (``ReferencedFrameNumber``). Cine frames are written one Segmentation each, as they are predicted (ultrasound
cine loops have no frame of reference, for which highdicom writes only single-frame segmentations; one per frame also
keeps ``usvl predict``'s memory flat). The region's pixel spacing, when calibrated, is carried into the
Segmentation's pixel measures (``PixelSpacing``, row and column, mm).

highdicom is in the ``dicom`` extra (``pip install "usvl[dicom]"``); it is imported only when a segmentation is
written. This module depends only on :mod:`usvl.data.dicom` in :mod:`usvl.data`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from usvl.data.dicom import dicom_info, read_dataset
from usvl.utils.errors import UserError

ORGANS = ("prostate",)
"""Class names segmented as an anatomical structure (the gland), not as a lesion."""

SEG_SUFFIX = ".seg.dcm"
"""File name ending of the DICOM Segmentation files written next to ``predictions.csv``."""


class DicomSegUnavailableError(UserError, ImportError):
    """highdicom is not installed; the message says how to install it."""


def _highdicom():
    try:
        import highdicom
    except ImportError as error:
        raise DicomSegUnavailableError('--output_format dicom-seg needs highdicom: pip install "usvl[dicom]"') \
            from error
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger("highdicom").level))  # per-file INFO
    return highdicom


def _usvl_version() -> str:
    try:
        return version("usvl")
    except PackageNotFoundError:
        return "unknown"


US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
"""Ultrasound Multi-frame Image Storage."""
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
"""Ultrasound Image Storage."""
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""Secondary Capture Image Storage."""


def _single_frame_stand_in(dataset) -> str:
    """Make a (header-only) multi-frame dataset look like one frame of its single-frame class; returns that class.

    highdicom writes segmentations of a multi-frame source only when it has a frame of reference, which ultrasound
    cine loops lack; as one frame of the single-frame class (Ultrasound Image, else Secondary Capture) it writes the
    segmentation of that frame, whose references :func:`write_dicom_seg` then points back at the loop and frame.
    """
    stand_in = US_IMAGE if str(dataset.SOPClassUID) == US_MULTIFRAME else SECONDARY_CAPTURE
    del dataset.NumberOfFrames
    for keyword in ("FrameIncrementPointer", "FrameTime", "FrameTimeVector", "SharedFunctionalGroupsSequence",
                    "PerFrameFunctionalGroupsSequence"):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.SOPClassUID = stand_in
    return stand_in


def new_series_uid() -> str:
    """A new UID for the Segmentation series of one ``usvl predict`` run.

    Raises:
        DicomSegUnavailableError: highdicom is not installed (so ``--output_format dicom-seg`` stops before predicting).
    """
    return str(_highdicom().UID())


def segment_description(class_names: Sequence[str]):
    """The one segment of a usvl segmentation: the prostate gland, or a lesion named by ``class_names``.

    Args:
        class_names: The model's lesion classes (``SegmentationTask.lesion_classes``).

    Returns:
        A ``highdicom.seg.SegmentDescription`` (segment number 1, automatic, algorithm ``usvl``).
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    names = [str(name) for name in class_names]
    if names and all(name.lower() in ORGANS for name in names):
        label, category, kind = names[0].lower(), codes.SCT.AnatomicalStructure, codes.SCT.Prostate
    else:
        label = "lesion" + (f" ({', '.join(names)})" if names else "")
        category, kind = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    algorithm = hd.AlgorithmIdentificationSequence(name="usvl", version=_usvl_version(),
                                                   family=codes.cid7162.ArtificialIntelligence)
    return hd.seg.SegmentDescription(segment_number=1, segment_label=label[:64], segmented_property_category=category,
                                     segmented_property_type=kind,
                                     algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                     algorithm_identification=algorithm)


def write_dicom_seg(source: str | os.PathLike, frame: int | None, mask: np.ndarray, target: str | os.PathLike,
                    class_names: Sequence[str], series_instance_uid: str | None = None) -> Path:
    """Write the predicted mask of one DICOM image (or cine frame) as a binary DICOM Segmentation referencing it.

    Args:
        source: The DICOM image the mask was predicted on.
        frame: Its frame number (from 1) in a cine loop; None (or 0) for a single-frame image.
        mask: Boolean mask of the frame's ultrasound region (the size the prediction was written at).
        target: The file to write (``*.seg.dcm``).
        class_names: The model's lesion classes, for the segment (see :func:`segment_description`).
        series_instance_uid: The Segmentation series (one per ``usvl predict`` run); a new one when None.

    Returns:
        ``target``.

    Raises:
        DicomSegUnavailableError: highdicom is not installed.
        ValueError: The source cannot be read, or the mask does not fit its region or names a frame it lacks.
    """
    hd = _highdicom()
    dataset = read_dataset(source)
    info = dicom_info(dataset, source)
    region = info.region
    width, height = region.size
    number = int(frame or 0)
    if np.shape(mask) != (height, width) or number > info.frames or (info.frames > 1 and number < 1):
        raise ValueError(f"A mask of shape {np.shape(mask)} for frame {frame} does not fit {os.fspath(source)} "
                         f"({info.frames} frame(s), region {width}x{height})")
    full = np.zeros((info.rows, info.columns), dtype=bool)
    full[region.top:region.bottom, region.left:region.right] = np.asarray(mask, dtype=bool)
    source_class = str(dataset.SOPClassUID)
    stand_in = _single_frame_stand_in(dataset) if info.frames > 1 else None
    measures = None
    if region.spacing_mm is not None:
        measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in region.spacing_mm], slice_thickness=1.0)
    segmentation = hd.seg.Segmentation(
        source_images=[dataset],
        pixel_array=full,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(class_names)],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="usvl",
        manufacturer_model_name="usvl predict",
        software_versions=_usvl_version(),
        device_serial_number="none",
        series_description="usvl predicted segmentation",
        pixel_measures=measures,
        omit_empty_frames=False,
    )
    if stand_in is not None:  # reference the cine loop and the frame, not the single-frame stand-in
        references = [item for series in segmentation.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence]
        for group in segmentation.PerFrameFunctionalGroupsSequence:
            for derivation in group.DerivationImageSequence:
                for item in derivation.SourceImageSequence:
                    item.ReferencedFrameNumber = number
                    references.append(item)
        for item in references:
            if str(item.ReferencedSOPClassUID) == stand_in:
                item.ReferencedSOPClassUID = source_class
    segmentation.save_as(target)
    return Path(target)


__all__ = ["ORGANS", "SEG_SUFFIX", "DicomSegUnavailableError", "new_series_uid", "segment_description",
           "write_dicom_seg"]
