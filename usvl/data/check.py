"""``usvl data check``: read a dataset source and report its counts, image and mask statistics and every problem.

Each problem names the files it concerns (manifest ``name``s), with a severity fixed per kind:

============================ ======== ================================================================
kind                         severity meaning
============================ ======== ================================================================
``duplicate-name``           error    two manifest rows share a name (split files and reports key on it)
``missing-file``             error    a listed image or mask file does not exist
``unreadable``               error    Pillow cannot open or fully decode the image or mask (truncated,
                                      corrupt)
``missing-mask``             error    segmentation: the image has no mask (classification: a warning,
                                      when other images have masks)
``size-mismatch``            error    the mask's aspect ratio differs from the image's: it does not
                                      belong to the image (or one was cropped or rotated)
``mask-loads-empty``         error    the mask file is not empty, but usvl's mask decoder makes it empty
``unknown-label``            error    classification: label outside ``0..len(class_names)-1``
                                      (segmentation: a warning, when other images have labels)
``no-labels``                error    classification: no image has a label (one problem, no names)
``skipped-file``             error    the reader skipped a file (symlink loop, broken symlink)
``mask-size-differs``        warning  mask and image sizes differ but share the aspect ratio (e.g. a
                                      half-resolution mask): resized together
``mask-encoding``            warning  grey levels in the mask (anti-aliasing, JPEG artefacts; binarised
                                      at half the maximum), two levels other than 0/255 (e.g. 0/1), or
                                      a colour mask (maximum channel used)
``mask-full``                warning  the mask covers the whole image (inverted, or another file?)
``high-bit-depth``           warning  a 16-bit or float image (scaled to 8 bit when loaded)
``image-encoding``           warning  an image with an alpha channel, or with colour content (Doppler,
                                      coloured overlays); converted to grey. RGB with equal channels is
                                      fine and not reported
``cross-split-duplicate``    warning  identical (``exact``) or near-identical (``near``, dHash) images in
                                      more than one split: leakage that inflates test scores
``duplicate``                warning  a duplicate group within one split or without splits (a random
                                      split may separate it)
``duplicate-label-conflict`` warning  a duplicate group whose members carry different labels
``patient-in-two-splits``    warning  one patient's images lie in several splits (leakage)
============================ ======== ================================================================

For a classification check the mask problems (``size-mismatch``, ``mask-loads-empty``, and ``missing-file`` or
``unreadable`` for a mask) are warnings, since classification does not load masks.

``no-labels`` (error, classification) replaces the per-image ``unknown-label`` errors when no image has a label
at all (e.g. DDTI's processed release): the source has no class labels, so check it with ``--task segmentation``.
``skipped-file`` (error) lists files the reader skipped (a symbolic link that loops or points nowhere).

Errors are what would break or silently corrupt training: the data module refuses these images (or leaves them out
with ``on_bad_file="skip"``). Warnings are worth a look, but a run can go on. Images and masks are decoded by
:mod:`usvl.data.decode`, the loader's own decoder, so the checker and training agree.
Empty masks are counted in the statistics, not reported as problems (BUSI's normal images have empty masks).

Tests and scripts can ask ``report.names("unreadable")`` for the file names under one problem kind.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from usvl.data.decode import (
    check_mask_size,
    decode_mask,
    default_threads,
    grey_array,
    is_high_bit_depth,
    mask_values,
    open_image,
    original_grey,
)
from usvl.data.dicom import is_dicom_path
from usvl.data.duplicates import DEFAULT_THRESHOLD, Fingerprint, duplicate_groups, fingerprint_array, hamming
from usvl.data.manifest import SPLITS, cell_paths, derive_class_names, normalise_manifest, skipped_files
from usvl.data.sources.registry import read_source, source_options
from usvl.utils.atomic import write_text_atomic

Severity = Literal["error", "warning"]

SEVERITY: dict[str, Severity] = {
    "duplicate-name": "error",
    "missing-file": "error",
    "unreadable": "error",
    "missing-mask": "error",
    "size-mismatch": "error",
    "mask-loads-empty": "error",
    "unknown-label": "error",
    "no-labels": "error",
    "skipped-file": "error",
    "mask-encoding": "warning",
    "mask-size-differs": "warning",
    "mask-full": "warning",
    "high-bit-depth": "warning",
    "image-encoding": "warning",
    "cross-split-duplicate": "warning",
    "duplicate": "warning",
    "duplicate-label-conflict": "warning",
    "patient-in-two-splits": "warning",
}


COLOUR_SPREAD = 16
"""Channel spread (max - min over R, G, B) above which a pixel counts as coloured."""
COLOUR_FRACTION = 0.005
"""Fraction of coloured pixels above which an image is reported as having colour content."""
_PLAIN_MASK_MODES = ("1", "L", "P", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


MASK_ONLY_KINDS = ("size-mismatch", "mask-loads-empty")
"""Error kinds about masks; for classification (masks unused) they, and unreadable or missing mask files, are
warnings."""


@dataclass(frozen=True)
class Problem:
    """One problem: its kind (see the module docstring), the files it names, a detail and its severity.

    Attributes:
        kind: Problem kind, a key of :data:`SEVERITY`.
        names: Manifest names of the files concerned.
        detail: What was found.
        severity: ``error`` or ``warning`` (:data:`SEVERITY` of the kind, or ``warning`` for a mask problem of a
            classification check).
    """

    kind: str
    names: tuple[str, ...]
    detail: str
    severity: Severity = "error"

    def format(self) -> str:
        """One line: severity, kind, names, detail."""
        names = f"{', '.join(self.names)}: " if self.names else ""
        return f"{self.severity.upper():<8} {self.kind:<26} {names}{self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"severity": self.severity, "kind": self.kind, "names": list(self.names), "detail": self.detail}


@dataclass
class CheckReport:
    """Result of :func:`check_manifest`.

    Attributes:
        task: ``classification`` or ``segmentation``.
        class_names: Class names in label order (given or derived from the manifest).
        images: Number of manifest rows.
        counts: Images per split (``unassigned`` when the source has none) and class name (``unknown`` for
            labels outside the classes).
        image_sizes: Width/height summary and the most common sizes of the readable images.
        image_modes: PIL modes of the readable images and how often each occurs.
        masks: Mask statistics (count, empty, area fraction summary, value sets, modes).
        duplicates: Number of exact/near duplicate groups, and how many span splits.
        problems: Every problem found, errors first.
        source: Where the manifest came from (free text, e.g. ``busi:/data/BUSI``).
        classes_derived: The class names were derived from the manifest, not given.
    """

    task: str
    class_names: list[str]
    images: int
    counts: dict[str, dict[str, int]]
    image_sizes: dict[str, Any]
    image_modes: dict[str, int]
    masks: dict[str, Any]
    duplicates: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    classes_derived: bool = False

    @property
    def errors(self) -> list[Problem]:
        """Problems of severity ``error``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems of severity ``warning``."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors."""
        return not self.errors

    def names(self, kind: str) -> set[str]:
        """File names listed under problems of ``kind``."""
        return {name for p in self.problems if p.kind == kind for name in p.names}

    def kinds(self, name: str) -> set[str]:
        """Problem kinds that list the file ``name``."""
        return {p.kind for p in self.problems if name in p.names}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``problems`` as dicts, plus ``n_errors`` and ``n_warnings``)."""
        data = asdict(self)
        data["problems"] = [p.to_dict() for p in self.problems]
        data["n_errors"] = len(self.errors)
        data["n_warnings"] = len(self.warnings)
        return data

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (creating parent folders)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    def format(self) -> str:
        """Human-readable report: counts, sizes, masks, then every problem, one per line."""
        derived = " (derived from the labels; pass --class-names to check against the real ones)"
        lines = [f"Dataset check{f' of {self.source}' if self.source else ''}: task {self.task}, "
                 f"classes {self.class_names}{derived if self.classes_derived else ''}", f"Images: {self.images}"]
        columns = [*self.class_names, "unknown"]
        columns = [c for c in columns if c != "unknown" or any("unknown" in v for v in self.counts.values())]
        width = max([len(c) for c in columns] + [5]) + 1
        lines.append("  " + f"{'split':<11}" + "".join(f"{c:>{width}}" for c in [*columns, "total"]))
        for split, per_class in self.counts.items():
            cells = [per_class.get(c, 0) for c in columns]
            lines.append("  " + f"{split:<11}" + "".join(f"{n:>{width}}" for n in [*cells, sum(cells)]))
        sizes = self.image_sizes
        if sizes.get("readable"):
            common = ", ".join(f"{s} ({n})" for s, n in sizes["most_common"])
            lines.append(f"Image sizes ({sizes['readable']} readable): width {sizes['width']['min']}-"
                         f"{sizes['width']['max']} (median {sizes['width']['median']:g}), height "
                         f"{sizes['height']['min']}-{sizes['height']['max']} (median {sizes['height']['median']:g}); "
                         f"most common {common}")
        lines.append("Image modes: " + (", ".join(f"{m} {n}" for m, n in self.image_modes.items()) or "-"))
        masks = self.masks
        if masks.get("listed"):
            area = masks.get("area_fraction") or {}
            area_text = (f"area fraction min {area['min']:.4f}, median {area['median']:.4f}, mean {area['mean']:.4f}, "
                         f"max {area['max']:.4f}" if area else "no readable masks")
            lines.append(f"Masks: {masks['listed']} listed, {masks['readable']} readable, {masks['empty']} empty; "
                         f"{area_text}")
            lines.append("  value sets: " + (", ".join(f"{k} {v}" for k, v in masks["value_sets"].items()) or "-")
                         + "; modes: " + (", ".join(f"{k} {v}" for k, v in masks["modes"].items()) or "-"))
        else:
            lines.append("Masks: none listed")
        dup = self.duplicates
        lines.append(f"Duplicates: {dup['exact']} exact and {dup['near']} near groups; "
                     f"{dup['cross_split']} span splits")
        per_kind = Counter(p.kind for p in self.problems)
        lines.append(f"Problems: {len(self.errors)} errors, {len(self.warnings)} warnings"
                     + (" (" + ", ".join(f"{k} {n}" for k, n in per_kind.items()) + ")" if per_kind else ""))
        lines += ["  " + p.format() for p in self.problems]
        return "\n".join(lines)


@dataclass
class _FileInfo:
    """What decoding one row found."""

    image_error: str | None = None
    image_missing: bool = False
    size: tuple[int, int] | None = None
    mode: str | None = None
    fingerprint: Fingerprint | None = None
    mask_error: str | None = None
    mask_missing: list[str] = field(default_factory=list)
    mask_size: tuple[int, int] | None = None
    mask_mode: str | None = None
    mask_values: str | None = None
    mask_distinct: int = 0
    mask_area: float | None = None
    mask_nonzero: bool = False
    size_error: str | None = None
    mask_rescaled: bool = False
    colour: str | None = None


def _colour_note(image: Image.Image) -> str | None:
    """Why an image's colour or alpha channels matter, or None (grey, or RGB with equal channels)."""
    if image.mode in ("1", "L", "I", "F") or image.mode.startswith("I;"):
        return None
    converted = image.convert("RGBA") if image.mode in ("P", "PA", "LA", "La", "RGBa") else image
    if converted.mode not in ("RGB", "RGBA"):
        return f"image mode {image.mode}; converted to grey"
    array = np.asarray(converted)
    notes = []
    if converted.mode == "RGBA" and image.mode != "P" or "transparency" in image.info:
        alpha = array[..., 3]
        transparent = float((alpha < 255).mean())
        notes.append(f"alpha channel ({transparent:.1%} of pixels not opaque; composited over black)"
                     if transparent else "alpha channel (fully opaque)")
    colour = array[..., :3].astype(np.int16)
    spread = colour.max(axis=-1) - colour.min(axis=-1)
    coloured = float((spread > COLOUR_SPREAD).mean())
    if coloured > COLOUR_FRACTION:
        notes.append(f"colour content in {coloured:.1%} of pixels (Doppler, overlays?); converted to grey")
    return f"image mode {image.mode}: " + "; ".join(notes) if notes else None


def _value_set(values: np.ndarray) -> str:
    """Name of a mask's value set.

    ``{0}``, ``{0,1}``, ``{0,255}``, ``{0,N}`` (another two-level mask), ``{N}`` (one level) or ``grey`` (three or
    more levels).
    """
    levels = np.unique(values)
    if len(levels) > 2:
        return "grey"
    text = ",".join(str(int(v)) if float(v).is_integer() else f"{float(v):g}" for v in levels)
    return "{" + text + "}"


def _describe(error: BaseException) -> str:
    """``Type: message`` of the decoder's underlying error (the report names the file already)."""
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}"


def _inspect_row(image_path: str | None, mask_cell: Any) -> _FileInfo:
    info = _FileInfo()
    if image_path is None or not Path(image_path).is_file():
        info.image_missing = True
    else:
        try:
            if is_dicom_path(image_path):  # its ultrasound region, as training reads it (a cine loop is an error)
                grey = original_grey(image_path)[0]
                info.size, info.mode = (grey.shape[1], grey.shape[0]), "DICOM"
                info.fingerprint = fingerprint_array(grey)
            else:
                image, info.size = open_image(image_path, "image")
                with image:
                    info.mode = image.mode
                    info.fingerprint = fingerprint_array(grey_array(image))
                    info.colour = _colour_note(image)
        except Exception as error:  # noqa: BLE001 - any decoder failure is reported, never raised
            info.image_error = _describe(error)
    masks = cell_paths(mask_cell)
    if not masks:
        return info
    info.mask_missing = [m for m in masks if not Path(m).is_file()]
    if info.mask_missing:
        return info
    try:
        levels: list[np.ndarray] = []
        for path in masks:
            mask, size = open_image(path, "mask")
            with mask:
                info.mask_size = info.mask_size or size
                info.mask_mode = info.mask_mode or mask.mode
                levels.append(mask_values(mask))
        # What training sees: usvl's own mask decoder, at (about) full resolution.
        decoded = decode_mask(masks if len(masks) > 1 else masks[0], max(info.mask_size))  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001
        info.mask_error = _describe(error)
        return info
    values = np.concatenate([v.ravel() for v in levels])
    info.mask_values = _value_set(values)
    info.mask_distinct = int(len(np.unique(values)))
    info.mask_nonzero = bool(values.max() > 0)
    info.mask_area = float(decoded.array.mean())
    if info.size is not None:
        try:
            info.mask_rescaled = check_mask_size(image_path, info.size, masks, decoded.source_size)  # type: ignore[arg-type]
        except ValueError as error:
            info.size_error = str(error)
    return info


def _summary(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"min": float(array.min()), "median": float(np.median(array)), "mean": float(array.mean()),
            "max": float(array.max())}


def check_manifest(manifest: pd.DataFrame, task: str = "classification", class_names: Sequence[str] | None = None,
                   near_threshold: int = DEFAULT_THRESHOLD, threads: int | None = None, source: str = "",
                   ) -> CheckReport:
    """Decode every image and mask of a manifest once and report statistics and every problem.

    Args:
        manifest: Manifest rows (``name, image, mask, label, split, patient, label_name``; the last four may be
            absent).
        task: ``classification`` (labels must be known) or ``segmentation`` (masks must exist).
        class_names: Class names in label order; derived from ``label``/``label_name`` when None.
        near_threshold: Largest dHash Hamming distance (of 64) of a near duplicate; negative: exact only.
        threads: Decoding threads (default :func:`default_threads`).
        source: Free text naming where the manifest came from, shown in the report.

    Returns:
        The report; ``report.ok`` is False when any error was found.
    """
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    skipped = skipped_files(manifest)
    manifest = normalise_manifest(manifest)
    names = manifest["name"].astype(str).tolist()
    classes = list(class_names) if class_names is not None else derive_class_names(manifest)
    problems: list[Problem] = []

    def add(kind: str, row_names: Sequence[str], detail: str, about_mask: bool = False) -> None:
        severity = SEVERITY[kind]
        if task == "classification" and (about_mask or kind in MASK_ONLY_KINDS):
            severity = "warning"
            detail += " (masks are not used for classification)"
        elif task == "segmentation" and kind == "unknown-label":
            severity = "warning"
            detail += " (labels are not used for segmentation)"
        problems.append(Problem(kind, tuple(row_names), detail, severity))

    for name, reason in skipped:
        add("skipped-file", [name], f"skipped by the reader: {reason}")
    for name, count in Counter(names).items():
        if count > 1:
            splits = manifest.loc[manifest["name"] == name, "split"].tolist()
            add("duplicate-name", [name], f"{count} rows share this name (splits {splits})")

    masks = manifest["mask"].tolist()
    any_mask = any(cell_paths(cell) for cell in masks)
    images = [next(iter(cell_paths(cell)), None) for cell in manifest["image"]]
    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        infos = list(pool.map(_inspect_row, images, masks))

    for name, image_path, mask_cell, info in zip(names, images, masks, infos, strict=True):
        if info.image_missing:
            add("missing-file", [name], f"image {image_path} does not exist")
        elif info.image_error:
            add("unreadable", [name], f"image {image_path}: {info.image_error}")
        elif is_high_bit_depth(info.mode or ""):
            add("high-bit-depth", [name], f"image mode {info.mode}; scaled to 8 bit when loaded")
        if info.colour:
            add("image-encoding", [name], info.colour)
        mask_text = ", ".join(cell_paths(mask_cell))
        if not mask_text:
            if task == "segmentation" or any_mask:
                add("missing-mask", [name], "no mask for this image", about_mask=True)
            continue
        if info.mask_missing:
            add("missing-file", [name], f"mask {', '.join(info.mask_missing)} does not exist", about_mask=True)
            continue
        if info.mask_error:
            add("unreadable", [name], f"mask {mask_text}: {info.mask_error}", about_mask=True)
            continue
        if info.size_error:
            add("size-mismatch", [name], info.size_error)
        elif info.mask_rescaled:
            add("mask-size-differs", [name], f"mask {info.mask_size[0]}x{info.mask_size[1]}, image "  # type: ignore[index]
                f"{info.size[0]}x{info.size[1]}: same aspect ratio, resized with the image")  # type: ignore[index]
        if info.mask_nonzero and not info.mask_area:
            add("mask-loads-empty", [name], f"mask values {info.mask_values} are not empty, but usvl's mask decoder "
                "turns the mask into an empty one")
        elif info.mask_values == "grey":
            add("mask-encoding", [name], f"{info.mask_distinct} grey levels (not a two-level mask); binarised at "
                "half the maximum")
        elif info.mask_values not in ("{0}", "{0,255}") and info.mask_area != 1.0:
            add("mask-encoding", [name], f"values {info.mask_values} instead of 0/255; usvl binarises at half the "
                "maximum, but tools thresholding at 128 see an empty mask")
        if info.mask_mode not in _PLAIN_MASK_MODES:
            add("mask-encoding", [name], f"mask mode {info.mask_mode} (colour); the maximum over colour channels "
                "is used")
        if info.mask_area == 1.0:
            add("mask-full", [name], "the mask covers the whole image (inverted, or not this image's mask?)")

    if task == "classification" and len(manifest) and not (manifest["label"] >= 0).any() \
            and manifest["label_name"].isna().all():
        add("no-labels", [], f"the source has no class labels ({len(manifest)} images, none labelled); pass "
                             "--task segmentation to check its masks, or give it labels")
    elif task == "classification" or (manifest["label"] >= 0).any():
        for name, label, label_name in zip(names, manifest["label"], manifest["label_name"], strict=True):
            if not 0 <= int(label) < len(classes):
                raw = f" (label_name {label_name!r})" if label_name is not None else ""
                add("unknown-label", [name], f"label {int(label)}{raw} is not one of {classes}")

    # Duplicates.
    fingerprints = [info.fingerprint for info in infos]
    groups = duplicate_groups(fingerprints, near_threshold)
    splits = manifest["split"].tolist()
    labels = manifest["label"].tolist()
    cross = 0
    for kind, positions in groups:
        members = [names[p] for p in positions]
        if kind == "near":
            first = fingerprints[positions[0]]
            distance = max(hamming(first.dhash, fingerprints[p].dhash) for p in positions)  # type: ignore[union-attr]
            kind = f"near (dHash distance <= {distance} of 64)"
        member_splits = [splits[p] if splits[p] is not None else "unassigned" for p in positions]
        described = ", ".join(f"{n} [{s}]" for n, s in zip(members, member_splits, strict=True))
        if len({splits[p] for p in positions if splits[p] is not None}) > 1:
            cross += 1
            add("cross-split-duplicate", members, f"{kind} duplicates across splits: {described}")
        else:
            add("duplicate", members, f"{kind} duplicates: {described}")
        member_labels = {int(labels[p]) for p in positions}
        if len(member_labels) > 1:
            shown = ", ".join(f"{names[p]}={labels[p]}" for p in positions)
            add("duplicate-label-conflict", members, f"{kind} duplicates with different labels: {shown}")

    # Patients in several splits.
    assigned = manifest[manifest["patient"].notna() & manifest["split"].notna()]
    for patient, rows in assigned.groupby("patient", sort=True):
        if rows["split"].nunique() > 1:
            per_split = {s: int(n) for s, n in rows["split"].value_counts().items()}
            add("patient-in-two-splits", rows["name"].astype(str).tolist(),
                f"patient {patient} has images in {per_split}")

    problems.sort(key=lambda p: (p.severity != "error", p.kind, p.names))
    return CheckReport(
        task=task,
        class_names=classes,
        images=len(manifest),
        counts=_counts(manifest, classes),
        image_sizes=_size_summary([info.size for info in infos if info.size is not None]),
        image_modes=dict(Counter(info.mode for info in infos if info.mode is not None).most_common()),
        masks=_mask_summary(masks, infos),
        duplicates={"exact": sum(k == "exact" for k, _ in groups), "near": sum(k == "near" for k, _ in groups),
                    "cross_split": cross},
        problems=problems,
        source=source,
        classes_derived=class_names is None,
    )


def _counts(manifest: pd.DataFrame, classes: Sequence[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    order = [*SPLITS, "unassigned"]
    for split, label in zip(manifest["split"], manifest["label"], strict=True):
        key = split if split is not None else "unassigned"
        name = classes[int(label)] if 0 <= int(label) < len(classes) else "unknown"
        counts.setdefault(key, {}).setdefault(name, 0)
        counts[key][name] += 1
    return {s: counts[s] for s in order if s in counts}


def _size_summary(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {"readable": 0}
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return {
        "readable": len(sizes),
        "width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)},
        "height": {"min": min(heights), "median": float(np.median(heights)), "max": max(heights)},
        "distinct": len(set(sizes)),
        "most_common": [(f"{w}x{h}", n) for (w, h), n in Counter(sizes).most_common(5)],
    }


def _mask_summary(masks: list[Any], infos: list[_FileInfo]) -> dict[str, Any]:
    readable = [info for info in infos if info.mask_area is not None]
    areas = [info.mask_area for info in readable]
    return {
        "listed": sum(bool(cell_paths(m)) for m in masks),
        "readable": len(readable),
        "empty": sum(1 for a in areas if a == 0),
        "area_fraction": _summary(areas) if areas else {},  # type: ignore[arg-type]
        "value_sets": dict(Counter(info.mask_values for info in readable).most_common()),
        "modes": dict(Counter(info.mask_mode for info in readable).most_common()),
    }


def parse_option(text: str) -> tuple[str, str]:
    """``key=value`` -> ``(key, value)``; the reader registry converts the value to the reader's type.

    Raises:
        ValueError: No ``=`` or an empty key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option expects key=value, got {text!r}")
    return key.strip(), value


def read_source_manifest(source: str, root: str, task: str | None = None, class_names: Sequence[str] | None = None,
                         **options: Any) -> pd.DataFrame:
    """Read a source through :func:`usvl.data.sources.registry.read_source`.

    ``task`` and ``class_names`` are passed on when the source's reader takes them and ``options`` does not set
    them (e.g. the release layout reads the split files of its task and maps label names to classes).
    """
    accepted = source_options(source)
    for key, value in (("task", task), ("class_names", None if class_names is None else list(class_names))):
        if value is not None and key in accepted and key not in options:
            options[key] = value
    return read_source(source, root, **options)


def check_source(source: str, root: str, options: dict[str, Any] | None = None, task: str = "classification",
                 class_names: Sequence[str] | None = None, near_threshold: int = DEFAULT_THRESHOLD,
                 threads: int | None = None) -> CheckReport:
    """Read a registered source and check it (see :func:`check_manifest`).

    Args:
        source: Registered source name.
        root: Folder of the dataset.
        options: Extra keyword options of the source's reader.
        task: ``classification`` or ``segmentation``.
        class_names: Class names in label order; derived from the manifest when None.
        near_threshold: Near-duplicate dHash threshold.
        threads: Decoding threads.
    """
    manifest = read_source_manifest(source, root, task, class_names, **(options or {}))
    return check_manifest(manifest, task, class_names, near_threshold, threads, source=f"{source}:{root}")

