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

Descriptors (original release only): :func:`read_ddti_descriptors` maps each case's ``<composition>``,
``<echogenicity>``, ``<margins>`` and ``<calcifications>`` to the ACR TI-RADS vocabulary of :mod:`usvl.lexicon`
(:data:`DDTI_VALUES`; matching ignores case, repeated spaces and hyphens), the same for every image of the case, so
that :class:`usvl.data.descriptors.DDTIDescriptorDataModule` can train lexicon heads on them. There is no official
list of the XML values; the table holds those seen in public code that parses the release:

* composition: ``solid``, ``cystic``, ``spongiform`` as they are; ``predominantly solid`` and ``predominantly
  cystic`` -> ``mixed`` (ACR's "mixed cystic and solid");
* echogenicity: ``hyperechogenicity`` / ``isoechogenicity`` / ``hypoechogenicity`` -> ``hyperechoic`` /
  ``isoechoic`` / ``hypoechoic``; ``marked hypoechogenicity`` -> ``very_hypoechoic``;
* margins -> margin: ``well defined`` -> ``smooth``; ``ill defined`` (also ``ill- defined``) -> ``ill_defined``;
  ``microlobulated``, ``macrolobulated``, ``spiculated`` -> ``lobulated_irregular``;
* calcifications -> echogenic_foci: ``non`` / ``none`` -> ``none``; ``microcalcification(s)`` -> ``punctate``;
  ``macrocalcification(s)`` -> ``macrocalcification``.

DDTI records no shape, so ``shape`` stays missing. An empty field is missing. A value outside the table (e.g.
composition ``dense``) is skipped: that descriptor is missing for the case's images, and one warning per read
counts the skipped values and names their XML files.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
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
DDTI_ORIGINAL_LAYOUT = "<case>.xml + <case>_<k>.jpg"
DDTI_LAYOUT = f"{DDTI_ORIGINAL_LAYOUT} (original), or 1_or_data/{{image,mask}}/ or {{image,mask}}/ (processed)"

BENIGN_TIRADS = frozenset({"1", "2", "3"})
MALIGNANT_TIRADS = frozenset({"4", "4a", "4b", "4c", "5"})

DDTI_FIELDS: Mapping[str, str] = {"composition": "composition", "echogenicity": "echogenicity", "margins": "margin",
                                  "calcifications": "echogenic_foci"}
"""DDTI's descriptor elements of a case XML and the ACR TI-RADS descriptor each one gives (no shape element)."""

DDTI_VALUES: Mapping[str, Mapping[str, str]] = {
    "composition": {
        "solid": "solid",
        "cystic": "cystic",
        "spongiform": "spongiform",
        "predominantly solid": "mixed",
        "predominantly cystic": "mixed",
    },
    "echogenicity": {
        "hyperechogenicity": "hyperechoic",
        "isoechogenicity": "isoechoic",
        "hypoechogenicity": "hypoechoic",
        "marked hypoechogenicity": "very_hypoechoic",
    },
    "margins": {
        "well defined": "smooth",
        "ill defined": "ill_defined",
        "microlobulated": "lobulated_irregular",
        "macrolobulated": "lobulated_irregular",
        "spiculated": "lobulated_irregular",
    },
    "calcifications": {
        "non": "none",
        "none": "none",
        "microcalcification": "punctate",
        "microcalcifications": "punctate",
        "macrocalcification": "macrocalcification",
        "macrocalcifications": "macrocalcification",
    },
}
"""The ACR TI-RADS value (:data:`usvl.lexicon.TIRADS`) of each DDTI XML value, per XML element; keys are spelled as
:func:`ddti_key` writes them."""

SKIPPED_FILES_LISTED = 10
"""How many XML files the warning about skipped descriptor values names per value."""


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


@dataclass(frozen=True)
class DDTICase:
    """One case XML of the original release, as :func:`read_ddti_case` reads it.

    Attributes:
        path: The XML file.
        number: The case number (``<number>``; the file stem when that is empty).
        tirads: The ``<tirads>`` text, None when empty or absent.
        fields: The text of each descriptor element of :data:`DDTI_FIELDS` (stripped; ``""`` when empty or absent).
        marks: Per image number (``<image>`` of a ``<mark>``), the nodule polygons of its marks, in file order.
        unnumbered_marks: How many ``<mark>`` elements had no ``<image>`` number (they are skipped).
    """

    path: Path
    number: str
    tirads: str | None
    fields: dict[str, str] = field(default_factory=dict)
    marks: dict[str, list[list[tuple[float, float]]]] = field(default_factory=dict)
    unnumbered_marks: int = 0


def case_xml_files(folder: Path) -> list[Path]:
    """The case XML files of the original release in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file())


def read_ddti_case(xml_path: Path) -> DDTICase:
    """Read one case XML: number, TI-RADS, descriptor fields and nodule polygons per image.

    Raises:
        ValueError: The file cannot be parsed; the message names the file and line.
    """
    try:
        case = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{xml_path}:{error.position[0]}: cannot parse the case XML ({error})") from error
    marks: dict[str, list[list[tuple[float, float]]]] = {}
    unnumbered = 0
    for mark in case.iter("mark"):
        index = (mark.findtext("image") or "").strip()
        if index:
            marks.setdefault(index, []).extend(parse_polygons(mark.findtext("svg")))
        else:
            unnumbered += 1
    return DDTICase(path=xml_path, number=(case.findtext("number") or "").strip() or xml_path.stem,
                    tirads=(case.findtext("tirads") or "").strip() or None,
                    fields={element: (case.findtext(element) or "").strip() for element in DDTI_FIELDS},
                    marks=marks, unnumbered_marks=unnumbered)


def case_image(folder: Path, stem: str, index: str) -> Path:
    """The image ``<stem>_<index>`` of a case (``.jpg`` when no file of that stem exists)."""
    base = f"{stem}_{index}"
    for extension in (".jpg", ".JPG", ".jpeg", ".png", ".PNG"):
        if (folder / f"{base}{extension}").is_file():
            return folder / f"{base}{extension}"
    found = find_by_stem(folder, base)
    return found if found is not None else folder / f"{base}.jpg"


def _rendered_mask(xml_path: Path, image: Path, polygons: list[list[tuple[float, float]]]) -> Path | None:
    """The cached mask of an image's polygons; None without polygons or when the image cannot be opened."""
    if not polygons or not image.is_file():
        return None
    try:
        with Image.open(image) as opened:
            size = opened.size
    except (OSError, ValueError):
        return None
    target = derived_dir("ddti", file_key(xml_path), file_key(image)) / f"{image.stem}_mask.png"
    return render_mask(polygons, size, target)


def read_ddti_original(folder: Path) -> list[dict[str, Any]]:
    """Rows of the original release: one per image number of every case XML (its ``<mark>`` elements).

    Raises:
        ValueError: An XML file cannot be parsed; the message names the file and line.
    """
    rows = []
    for case in map(read_ddti_case, case_xml_files(folder)):
        if case.unnumbered_marks:
            log.warning("%s: %d <mark> without an <image> number skipped", case.path, case.unnumbered_marks)
        for index, polygons in case.marks.items():
            image = case_image(folder, case.path.stem, index)
            mask = _rendered_mask(case.path, image, polygons)
            rows.append({
                "name": image.name,
                "image": str(image.resolve()),
                "mask": str(mask) if mask is not None else None,
                "label": tirads_label(case.tirads),
                "label_name": case.tirads,
                "patient": case.number,
            })
    return rows


def ddti_key(text: str | None) -> str:
    """A DDTI XML value as :data:`DDTI_VALUES` spells it: lower case, each run of spaces and hyphens one space.

    ``"Ill- defined"`` -> ``"ill defined"``, ``" Marked  hypoechogenicity"`` -> ``"marked hypoechogenicity"``;
    None -> ``""``.
    """
    return re.sub(r"[\s\-_]+", " ", (text or "").lower()).strip()


def ddti_descriptor_value(element: str, text: str | None) -> str | None:
    """The ACR TI-RADS value of a DDTI XML value of ``element`` (``composition``, ``margins``, ...).

    Returns:
        The value in the TI-RADS vocabulary; None when the text is empty or not in :data:`DDTI_VALUES`.

    Raises:
        KeyError: ``element`` is not a descriptor element of :data:`DDTI_FIELDS`.
    """
    return DDTI_VALUES[element].get(ddti_key(text))


def case_descriptors(case: DDTICase) -> tuple[dict[str, str], dict[str, str]]:
    """A case's ACR TI-RADS descriptors, and its XML values outside :data:`DDTI_VALUES`.

    Returns:
        ``(descriptors, unknown)``: descriptor name -> TI-RADS value for the mapped fields; XML element -> its text
        for the fields whose value the table lacks. Empty fields are in neither.
    """
    descriptors, unknown = {}, {}
    for element, descriptor in DDTI_FIELDS.items():
        text = case.fields.get(element, "")
        if not ddti_key(text):
            continue
        value = ddti_descriptor_value(element, text)
        if value is None:
            unknown[element] = text
        else:
            descriptors[descriptor] = value
    return descriptors, unknown


def skipped_values_message(folder: Path, skipped: Mapping[tuple[str, str], list[str]]) -> str:
    """The warning about XML values outside the mapping: per (element, value), its count and XML files."""
    parts = []
    for (element, value), files in sorted(skipped.items()):
        listed = ", ".join(files[:SKIPPED_FILES_LISTED])
        more = len(files) - SKIPPED_FILES_LISTED
        parts.append(f"{element} {value!r}: {len(files)} ({listed}{f', and {more} more' if more > 0 else ''})")
    total = sum(len(files) for files in skipped.values())
    return (f"DDTI descriptors in {folder}: {total} XML value(s) have no ACR TI-RADS equivalent and are skipped (that "
            f"descriptor is missing for the case's images): {'; '.join(parts)}. The mapping is "
            "usvl.data.sources.ddti.DDTI_VALUES; a descriptor_file can give these images' values.")


def read_ddti_descriptors(root: str | Path) -> dict[str, dict[str, str]]:
    """ACR TI-RADS descriptors of every image of the original release, from its case XML files.

    Every image of a case gets the case's descriptors (mapped by :data:`DDTI_VALUES`); a descriptor whose field is
    empty, or whose value the table lacks, is left out. Values the table lacks are counted and named, with their
    XML files, in one warning.

    Args:
        root: Folder of the original release (or its parent, as for :func:`read_ddti_manifest`).

    Returns:
        Image name (as in the manifest, e.g. ``2_1.jpg``) -> descriptor name -> value, e.g.
        ``{"composition": "mixed", "echogenicity": "hypoechoic", "margin": "smooth", "echogenic_foci": "none"}``.
        No image has ``shape`` (DDTI does not record it).

    Raises:
        DatasetNotFoundError: No case XML file is found under ``root``.
        ValueError: A case XML cannot be parsed.
    """
    folder = original_folder(Path(root))
    if folder is None:
        raise not_found(Path(root) / "<case>.xml", "DDTI (original release)", DDTI_URL, DDTI_ORIGINAL_LAYOUT, root)
    found: dict[str, dict[str, str]] = {}
    skipped: dict[tuple[str, str], list[str]] = {}
    for case in map(read_ddti_case, case_xml_files(folder)):
        descriptors, unknown = case_descriptors(case)
        for element, value in unknown.items():
            skipped.setdefault((element, ddti_key(value)), []).append(case.path.name)
        for index in case.marks:
            found[case_image(folder, case.path.stem, index).name] = dict(descriptors)
    if skipped:
        log.warning(skipped_values_message(folder, skipped))
    return found


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


def ddti_release(root: str | Path, version: Literal["auto", "original", "processed"] = "auto"
                 ) -> tuple[Literal["original", "processed"], Path]:
    """The release that ``version`` reads under ``root``, and its folder.

    Args:
        root: Folder of either release (or its parent ``DDTI`` folder).
        version: ``original``, ``processed``, or ``auto`` (processed when its folders exist, else original).

    Raises:
        ValueError: ``version`` is none of those.
        DatasetNotFoundError: The folders of the requested release are missing.
    """
    root = Path(root)
    if version not in ("auto", "original", "processed"):
        raise ValueError(f"version must be auto, original or processed, got {version!r}")
    if version in ("auto", "processed"):
        folder = processed_folder(root)
        if folder is not None:
            return "processed", folder
        if version == "processed":
            raise not_found(root / "1_or_data" / "image", "DDTI (processed 637-image version)", DDTI_URL,
                            "1_or_data/{image,mask}/ or {image,mask}/", root)
    folder = original_folder(root)
    if folder is None:
        raise not_found(root / "<case>.xml", "DDTI", DDTI_URL, DDTI_LAYOUT, root)
    return "original", folder


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
    release, folder = ddti_release(root, version)
    return make_manifest(read_ddti_processed(folder) if release == "processed" else read_ddti_original(folder))


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


__all__ = ["DDTIDataModule", "DDTI_FIELDS", "DDTI_VALUES", "DDTICase", "ddti_descriptor_value", "ddti_release",
           "read_ddti_case", "read_ddti_descriptors", "read_ddti_manifest", "tirads_label"]
