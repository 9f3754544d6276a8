"""DDTI: Digital Database of Thyroid Images, thyroid nodules with TI-RADS scores and nodule outlines.

Pedraza, Vargas, Narváez, Durán, Muñoz, Romero, "An open access thyroid ultrasound image database", Proc. SPIE
9287, 92870W, 2015, doi:10.1117/12.2073532.

Two releases are read (option ``version``):

* ``original``: 99 cases / 134 B-mode JPEGs from CIM@LAB, Universidad Nacional de Colombia
  (cimalab.intec.co/applications/thyroid/; mirror kaggle.com/datasets/dasmehdixtr/ddti-thyroid-ultrasound-images).
  One XML per case (``<case>.xml`` next to ``<case>_<k>.jpg``) with metadata (age, sex, composition, echogenicity,
  margins, calcifications, ``tirads``) and per image a ``<mark>`` with ``<image>k</image>`` and ``<svg>``, a JSON
  list of nodule polygons ``[{"points": [{"x": .., "y": ..}, ...]}, ...]``. Polygons are rasterised (union of all
  nodules of the image) into 0/255 PNG masks in the cache (``<cache>/derived/ddti/<hash>/``). Label from TI-RADS:
  2-3 benign (0), 4a-5 malignant (1) (the usual rule; the release's "bening"/"maling" folders are not used);
  ``label_name`` keeps the raw TI-RADS string. ``patient`` is the case number.
* ``processed``: the 637-image single-nodule version of the TN-SCUI 2020 winners
  (github.com/WAMAWAMA/TNSCUI2020-Seg-Rank1st), ``DDTI/1_or_data/{image,mask}/0000.PNG``; or TRFE's
  ``DDTI/{image,mask}/*.png``. Segmentation only: its ``category.csv`` is documented as forged, so labels are -1.
  Images were renumbered, so there is no patient id (images of one case may fall into different splits).

No official split in either version (``split`` None). Licence: "open access", no explicit licence found.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from usvl.data.datamodule import UltrasoundDataModule
from usvl.data.manifest import make_manifest
from usvl.data.sources.common import derived_dir, file_key, find_by_stem, list_images, not_found, save_png_atomic

log = logging.getLogger(__name__)

DDTI_URL = ("cimalab.intec.co/applications/thyroid/ (doi:10.1117/12.2073532; mirror "
            "kaggle.com/datasets/dasmehdixtr/ddti-thyroid-ultrasound-images; processed 637-image version: "
            "github.com/WAMAWAMA/TNSCUI2020-Seg-Rank1st)")
DDTI_CLASSES = ("benign", "malignant")
DDTI_LAYOUT = "<case>.xml + <case>_<k>.jpg (original), or 1_or_data/{image,mask}/ or {image,mask}/ (processed)"

BENIGN_TIRADS = frozenset({"1", "2", "3"})
MALIGNANT_TIRADS = frozenset({"4", "4a", "4b", "4c", "5"})


def tirads_label(tirads: str | None) -> int:
    """0 for TI-RADS 1-3, 1 for 4/4a/4b/4c/5, -1 for anything else (missing or unknown)."""
    value = (tirads or "").strip().lower().replace("tr", "").replace(" ", "")
    if value in BENIGN_TIRADS:
        return 0
    if value in MALIGNANT_TIRADS:
        return 1
    return -1


def processed_folder(root: Path) -> Path | None:
    """The folder holding ``image/`` and ``mask/`` of the processed release, or None."""
    for candidate in (root, root / "1_or_data", root / "DDTI", root / "DDTI" / "1_or_data"):
        if (candidate / "image").is_dir() and (candidate / "mask").is_dir():
            return candidate
    return None


def original_folder(root: Path) -> Path | None:
    """The folder holding the case XML files of the original release, or None."""
    for candidate in (root, root / "DDTI", root / "DDTI_original"):
        if candidate.is_dir() and any(p.suffix.lower() == ".xml" for p in candidate.iterdir()):
            return candidate
    return None


def parse_polygons(svg: str | None) -> list[list[tuple[float, float]]]:
    """Polygons of a ``<svg>`` element's JSON text; empty when the text is empty or not a polygon list."""
    if not svg or not svg.strip():
        return []
    try:
        shapes = json.loads(svg)
    except json.JSONDecodeError:
        return []
    polygons = []
    for shape in shapes if isinstance(shapes, list) else []:
        points = shape.get("points") if isinstance(shape, dict) else None
        try:
            polygon = [(float(p["x"]), float(p["y"])) for p in points or []]
        except (KeyError, TypeError, ValueError):
            continue
        if len(polygon) >= 3:
            polygons.append(polygon)
    return polygons


def render_mask(polygons: list[list[tuple[float, float]]], size: tuple[int, int], target: Path) -> Path:
    """Fill the polygons (union) into a 0/255 mask of ``size`` (width, height) at ``target`` (reused if present)."""
    if target.is_file():
        return target
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon(polygon, fill=255, outline=255)
    return save_png_atomic(np.asarray(canvas), target)


def _case_image(folder: Path, stem: str, index: str) -> Path:
    base = f"{stem}_{index}"
    for extension in (".jpg", ".JPG", ".jpeg", ".png", ".PNG"):
        if (folder / f"{base}{extension}").is_file():
            return folder / f"{base}{extension}"
    found = find_by_stem(folder, base)
    return found if found is not None else folder / f"{base}.jpg"


def read_ddti_original(folder: Path) -> list[dict[str, Any]]:
    """Rows of the original release: one per ``<mark>`` of every case XML.

    Raises:
        ValueError: An XML file cannot be parsed; the message names the file and line.
    """
    rows = []
    for xml_path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file()):
        try:
            case = ET.parse(xml_path).getroot()
        except ET.ParseError as error:
            raise ValueError(f"{xml_path}:{error.position[0]}: cannot parse the case XML ({error})") from error
        number = (case.findtext("number") or "").strip() or xml_path.stem
        tirads = case.findtext("tirads")
        tirads = tirads.strip() if tirads is not None and tirads.strip() else None
        marks: dict[str, list[list[tuple[float, float]]]] = {}
        for mark in case.iter("mark"):
            index = (mark.findtext("image") or "").strip()
            if not index:
                log.warning("%s: a <mark> without an <image> number is skipped", xml_path)
                continue
            marks.setdefault(index, []).extend(parse_polygons(mark.findtext("svg")))
        for index, polygons in marks.items():
            image = _case_image(folder, xml_path.stem, index)
            mask = None
            if polygons and image.is_file():
                try:
                    with Image.open(image) as opened:
                        size = opened.size
                except (OSError, ValueError):
                    size = None
                if size is not None:
                    target = derived_dir("ddti", file_key(xml_path), file_key(image)) / f"{image.stem}_mask.png"
                    mask = render_mask(polygons, size, target)
            rows.append({
                "name": image.name,
                "image": str(image.resolve()),
                "mask": str(mask) if mask is not None else None,
                "label": tirads_label(tirads),
                "label_name": tirads,
                "patient": number,
            })
    return rows


def read_ddti_processed(folder: Path) -> list[dict[str, Any]]:
    """Rows of the processed release: ``image/<n>.<ext>`` with ``mask/<n>.<ext>``, unlabelled."""
    rows = []
    for image in list_images(folder / "image"):
        mask = find_by_stem(folder / "mask", image.stem)
        rows.append({
            "name": image.name,
            "image": str(image.resolve()),
            "mask": str(mask.resolve()) if mask is not None else None,
        })
    return rows


def read_ddti_manifest(root: str | Path,
                       version: Literal["auto", "original", "processed"] = "auto") -> pd.DataFrame:
    """Read DDTI into a manifest.

    Args:
        root: Folder of either release (or its parent ``DDTI`` folder).
        version: ``original`` (case XML files), ``processed`` (637-image ``image/`` + ``mask/``), or ``auto``
            (processed when its folders exist, else original).

    Returns:
        One row per image; ``split`` None. Original: TI-RADS labels, case ``patient``, rendered masks (None when
        a mark has no valid polygon or its image is missing). Processed: labels -1, ``patient`` None.

    Raises:
        DatasetNotFoundError: The folders of the requested release are missing.
        ValueError: A case XML cannot be parsed.
    """
    root = Path(root)
    if version not in ("auto", "original", "processed"):
        raise ValueError(f"version must be auto, original or processed, got {version!r}")
    if version in ("auto", "processed"):
        folder = processed_folder(root)
        if folder is not None:
            return make_manifest(read_ddti_processed(folder))
        if version == "processed":
            raise not_found(root / "1_or_data" / "image", "DDTI (processed 637-image version)", DDTI_URL,
                            "1_or_data/{image,mask}/ or {image,mask}/", root)
    folder = original_folder(root)
    if folder is None:
        raise not_found(root / "<case>.xml", "DDTI", DDTI_URL, DDTI_LAYOUT, root)
    return make_manifest(read_ddti_original(folder))


class DDTIDataModule(UltrasoundDataModule):
    """DDTI thyroid nodules: the original XML release or the processed 637-image segmentation release.

    Pedraza et al., SPIE 9287, 2015 (cimalab.intec.co/applications/thyroid/). The original release gives rendered
    masks, TI-RADS labels and case ids. No official split: the base module assigns seeded (patient-grouped, for the
    original release) splits.

    Args:
        root: Folder of either release.
        version: ``auto``, ``original`` or ``processed`` (see :func:`read_ddti_manifest`).
        task: ``segmentation`` (default; both releases) or ``classification`` (original release only).
        **kwargs: Arguments of :class:`~usvl.data.datamodule.UltrasoundDataModule` (``image_size``,
            ``batch_size``, ...).
    """

    def __init__(self, root: str, version: Literal["auto", "original", "processed"] = "auto",
                 task: Literal["classification", "segmentation"] = "segmentation", **kwargs: Any) -> None:
        super().__init__(task=task, class_names=DDTI_CLASSES, **kwargs)
        self.root = root
        self.version = version

    def prepare_data(self) -> None:
        """Render the XML polygons into cached masks once (one process per node)."""
        self.read_manifest()

    def read_manifest(self) -> pd.DataFrame:
        """Read the release (rendering XML polygons into cached masks)."""
        return read_ddti_manifest(self.root, version=self.version)


__all__ = ["DDTIDataModule", "read_ddti_manifest", "tirads_label"]
