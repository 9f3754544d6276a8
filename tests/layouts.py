"""Miniature copies of the real dataset layouts, for tests (``import layouts`` from a test module).

Each ``write_<source>(root, quirks=False)`` writes a handful of small (64 px) speckled images with dark lesion-like
blobs and their masks in the source's real on-disk layout, enough for train/val/test of a ``fast_dev_run``, and
returns ``(root, problems)``. ``root`` is what ``--data.init_args.root`` takes. With ``quirks=True`` it also plants
known problems and ``problems`` maps each planted kind (see :data:`PROBLEM_KINDS`) to the manifest ``name`` of every
affected image (for a duplicate: both copies); kinds that do not apply to a layout are absent. Without quirks
``problems`` is empty.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from usvl.data.datamodule import UltrasoundDataModule

PROBLEM_KINDS = (
    "truncated_image",  # file cut short: cannot be decoded
    "size_mismatch",  # mask size differs from the image size
    "unknown_label",  # label not among the classes (label -1, label_name set)
    "missing_mask",  # image without a mask file / annotation
    "duplicate",  # exact byte copy under another name
    "mask_01",  # mask stored with values {0, 1} instead of {0, 255}
    "grey_mask",  # anti-aliased mask with intermediate grey values
    "rgba_image",  # image stored as RGBA
    "image_16bit",  # image stored as 16-bit grey
    "non_ascii",  # file name with non-ASCII characters
    "multi_mask",  # BUSI: extra lesions in _mask_1 / _mask_2 files (merged by the reader)
    "rgb_mask",  # BUSI: mask stored as RGB / RGBA
)

SIZE = 64
NON_ASCII = "bénin_良性_ü"


# ---------------------------------------------------------------------------------------------------------------------
# Images


def lesion(seed: int, kind: str = "benign", size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A speckled B-mode-like image with a dark blob and its boolean mask (empty for ``normal``).

    Malignant blobs have an irregular, lobulated outline; benign ones are smooth ellipses.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    depth = 1.0 - 0.5 * yy / size
    image = rng.gamma(2.0, 45.0, (size, size)).astype(np.float32) * depth
    mask = np.zeros((size, size), dtype=bool)
    if kind != "normal":
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        ry, rx = rng.uniform(0.12, 0.22, 2) * size
        angle = np.arctan2(yy - cy, xx - cx)
        radius = np.hypot((yy - cy) / ry, (xx - cx) / rx)
        if kind == "malignant":
            radius = radius / (1.0 + 0.25 * np.sin(5 * angle + rng.uniform(0, 6.28)))
        mask = radius <= 1.0
        image[mask] *= 0.3
    return np.clip(image, 0, 255).astype(np.uint8), mask


def ellipse(cy: float, cx: float, radius: float, size: int = SIZE) -> np.ndarray:
    """A boolean disc mask."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def polygon(mask: np.ndarray, points: int = 24) -> list[dict[str, float]]:
    """Outline of a blob mask as DDTI-style polygon points (centroid rays to the boundary)."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    outline = []
    for angle in np.linspace(0, 2 * np.pi, points, endpoint=False):
        r = 0.0
        while True:
            y, x = int(round(cy + (r + 0.5) * np.sin(angle))), int(round(cx + (r + 0.5) * np.cos(angle)))
            if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]) or not mask[y, x]:
                break
            r += 0.5
        outline.append({"x": round(float(cx + r * np.cos(angle)), 1), "y": round(float(cy + r * np.sin(angle)), 1)})
    return outline


def save(path: Path, array: np.ndarray) -> Path:
    """Write a ``uint8`` (or bool) array as PNG / JPEG by extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=92)
    else:
        image.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Quirk planters


def truncate(path: Path) -> None:
    """Cut a file to a third of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: max(8, len(data) // 3)])


def resize_mask(path: Path, mask: np.ndarray) -> None:
    """Rewrite a mask at another size than its image."""
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((SIZE - 16, SIZE - 8), Image.NEAREST)
    save(path, np.asarray(small))


def mask_01(path: Path, mask: np.ndarray) -> Path:
    """Rewrite a mask with values {0, 1} (as PNG, so the values survive)."""
    path.unlink(missing_ok=True)
    target = path.with_suffix(".png")
    save(target, mask.astype(np.uint8))
    return target


def grey_mask(path: Path, mask: np.ndarray) -> None:
    """Rewrite a mask with anti-aliased (blurred) edges."""
    blurred = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(2))
    save(path, np.asarray(blurred))


def rgba(path: Path, image: np.ndarray) -> Path:
    """Rewrite an image as RGBA PNG (same stem)."""
    path.unlink(missing_ok=True)
    target = path.with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([image, image, image, np.full_like(image, 255)], axis=-1), "RGBA").save(target)
    return target


def sixteen_bit(path: Path, image: np.ndarray) -> Path:
    """Rewrite an image as 16-bit grey PNG (same stem)."""
    path.unlink(missing_ok=True)
    target = path.with_suffix(".png")
    Image.fromarray(image.astype(np.uint16) * 257).save(target)
    return target


def _kinds(problems: dict[str, list[str]]) -> dict[str, list[str]]:
    return {kind: names for kind, names in problems.items() if names}


# ---------------------------------------------------------------------------------------------------------------------
# BUSI


def write_busi(root: Path, quirks: bool = False, counts: tuple[int, int, int] = (8, 6, 4)
               ) -> tuple[Path, dict[str, list[str]]]:
    """``Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (i).png`` + ``_mask.png`` (and ``_mask_N``)."""
    root = Path(root)
    folder = root / "Dataset_BUSI_with_GT"
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for class_index, (name, count) in enumerate(zip(("benign", "malignant", "normal"), counts, strict=True)):
        for i in range(1, count + 1):
            image, mask = lesion(100 * class_index + i, name)
            save(folder / name / f"{name} ({i}).png", image)
            save(folder / name / f"{name} ({i})_mask.png", mask)
            data[f"{name} ({i})"] = (image, mask)
    if not quirks:
        return root, {}
    b, m = folder / "benign", folder / "malignant"
    problems: dict[str, list[str]] = {}
    # two extra lesions of benign (2), one of malignant (2)
    corners = ((8, 8), (8, SIZE - 9))
    for stem, extra in (("benign (2)", 2), ("malignant (2)", 1)):
        for k in range(1, extra + 1):
            save(folder / stem.split()[0] / f"{stem}_mask_{k}.png", ellipse(*corners[k - 1], 5))
    problems["multi_mask"] = ["benign/benign (2).png", "malignant/malignant (2).png"]
    image, mask = data["benign (3)"]
    Image.fromarray(np.stack([mask.astype(np.uint8) * 255] * 3, axis=-1), "RGB").save(b / "benign (3)_mask.png")
    image, mask = data["malignant (3)"]
    alpha = np.full(mask.shape, 255, np.uint8)
    Image.fromarray(np.stack([mask.astype(np.uint8) * 255] * 3 + [alpha], axis=-1), "RGBA").save(
        m / "malignant (3)_mask.png")
    problems["rgb_mask"] = ["benign/benign (3).png", "malignant/malignant (3).png"]
    truncate(m / "malignant (4).png")
    problems["truncated_image"] = ["malignant/malignant (4).png"]
    resize_mask(b / "benign (4)_mask.png", data["benign (4)"][1])
    problems["size_mismatch"] = ["benign/benign (4).png"]
    (b / "benign (5)_mask.png").unlink()
    problems["missing_mask"] = ["benign/benign (5).png"]
    shutil.copyfile(b / "benign (6).png", m / f"malignant ({counts[1] + 1}).png")
    shutil.copyfile(b / "benign (6)_mask.png", m / f"malignant ({counts[1] + 1})_mask.png")
    problems["duplicate"] = ["benign/benign (6).png", f"malignant/malignant ({counts[1] + 1}).png"]
    mask_01(m / "malignant (5)_mask.png", data["malignant (5)"][1])
    problems["mask_01"] = ["malignant/malignant (5).png"]
    grey_mask(b / "benign (7)_mask.png", data["benign (7)"][1])
    problems["grey_mask"] = ["benign/benign (7).png"]
    rgba(m / "malignant (6).png", data["malignant (6)"][0])
    problems["rgba_image"] = ["malignant/malignant (6).png"]
    sixteen_bit(b / "benign (8).png", data["benign (8)"][0])
    problems["image_16bit"] = ["benign/benign (8).png"]
    image, mask = lesion(777, "benign")
    save(b / f"{NON_ASCII} (9).png", image)
    save(b / f"{NON_ASCII} (9)_mask.png", mask)
    problems["non_ascii"] = [f"benign/{NON_ASCII} (9).png"]
    return root, _kinds(problems)


# ---------------------------------------------------------------------------------------------------------------------
# TN3K


def write_tn3k(root: Path, quirks: bool = False, trainval: int = 12, test: int = 6
               ) -> tuple[Path, dict[str, list[str]]]:
    """``tn3k/{trainval,test}-{image,mask}/NNNN.jpg``, fold JSONs and ``label4{trainval,test}.csv``."""
    root = Path(root)
    folder = root / "tn3k"
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labels: dict[str, list[str]] = {"trainval": [], "test": []}
    for group, count in (("trainval", trainval), ("test", test)):
        for i in range(count):
            label = i % 2
            image, mask = lesion(1000 * (group == "test") + i, ("benign", "malignant")[label])
            save(folder / f"{group}-image" / f"{i:04d}.jpg", image)
            save(folder / f"{group}-mask" / f"{i:04d}.jpg", mask)
            data[f"{group}/{i:04d}"] = (image, mask)
            labels[group].append(f"{i:04d}.jpg,{label}")
    cut = trainval * 3 // 4
    folds = {0: {"train": list(range(cut)), "val": list(range(cut, trainval))},
             1: {"train": list(range(trainval - cut, trainval)), "val": list(range(trainval - cut))}}
    for fold, lists in folds.items():
        (folder / f"tn3k-trainval-fold{fold}.json").write_text(json.dumps(lists))
    problems: dict[str, list[str]] = {}
    if quirks:
        labels["trainval"][2] = "0002.jpg,7"
        problems["unknown_label"] = ["trainval-image/0002.jpg"]
        truncate(folder / "test-image" / "0000.jpg")
        problems["truncated_image"] = ["test-image/0000.jpg"]
        resize_mask(folder / "trainval-mask" / "0001.jpg", data["trainval/0001"][1])
        problems["size_mismatch"] = ["trainval-image/0001.jpg"]
        (folder / "test-mask" / "0001.jpg").unlink()
        problems["missing_mask"] = ["test-image/0001.jpg"]
        shutil.copyfile(folder / "trainval-image" / "0003.jpg", folder / "test-image" / "0002.jpg")
        shutil.copyfile(folder / "trainval-mask" / "0003.jpg", folder / "test-mask" / "0002.jpg")
        problems["duplicate"] = ["trainval-image/0003.jpg", "test-image/0002.jpg"]
        mask_01(folder / "trainval-mask" / "0004.jpg", data["trainval/0004"][1])
        problems["mask_01"] = ["trainval-image/0004.jpg"]
        grey_mask(folder / "trainval-mask" / "0005.jpg", data["trainval/0005"][1])
        problems["grey_mask"] = ["trainval-image/0005.jpg"]
        rgba(folder / "test-image" / "0003.jpg", data["test/0003"][0])
        problems["rgba_image"] = ["test-image/0003.png"]
        sixteen_bit(folder / "test-image" / "0004.jpg", data["test/0004"][0])
        problems["image_16bit"] = ["test-image/0004.png"]
        image, mask = lesion(4242, "malignant")
        save(folder / "test-image" / f"{NON_ASCII}.jpg", image)
        save(folder / "test-mask" / f"{NON_ASCII}.jpg", mask)
        labels["test"].append(f"{NON_ASCII}.jpg,1")
        problems["non_ascii"] = [f"test-image/{NON_ASCII}.jpg"]
    for group, rows in labels.items():
        (folder / f"label4{group}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root, _kinds(problems)


# ---------------------------------------------------------------------------------------------------------------------
# DDTI


def write_ddti(root: Path, quirks: bool = False, count: int = 14) -> tuple[Path, dict[str, list[str]]]:
    """The processed 637-image release: ``DDTI/1_or_data/{image,mask}/NNNN.PNG`` + a (forged) ``category.csv``."""
    root = Path(root)
    folder = root / "DDTI" / "1_or_data"
    data = {}
    for i in range(count):
        image, mask = lesion(2000 + i, ("benign", "malignant")[i % 2])
        save(folder / "image" / f"{i:04d}.PNG", image)
        save(folder / "mask" / f"{i:04d}.PNG", mask)
        data[i] = (image, mask)
    (folder / "category.csv").write_text("ID,CATE\n" + "".join(f"{i:04d}.PNG,{i % 2}\n" for i in range(count)))
    if not quirks:
        return root, {}
    image_dir, mask_dir = folder / "image", folder / "mask"
    problems: dict[str, list[str]] = {}
    truncate(image_dir / "0000.PNG")
    problems["truncated_image"] = ["0000.PNG"]
    resize_mask(mask_dir / "0001.PNG", data[1][1])
    problems["size_mismatch"] = ["0001.PNG"]
    (mask_dir / "0002.PNG").unlink()
    problems["missing_mask"] = ["0002.PNG"]
    shutil.copyfile(image_dir / "0003.PNG", image_dir / f"{count:04d}.PNG")
    shutil.copyfile(mask_dir / "0003.PNG", mask_dir / f"{count:04d}.PNG")
    problems["duplicate"] = ["0003.PNG", f"{count:04d}.PNG"]
    save(mask_dir / "0004.PNG", data[4][1].astype(np.uint8))
    problems["mask_01"] = ["0004.PNG"]
    grey_mask(mask_dir / "0005.PNG", data[5][1])
    problems["grey_mask"] = ["0005.PNG"]
    image = data[6][0]
    Image.fromarray(np.stack([image, image, image, np.full_like(image, 255)], axis=-1), "RGBA").save(
        image_dir / "0006.PNG")
    problems["rgba_image"] = ["0006.PNG"]
    Image.fromarray(data[7][0].astype(np.uint16) * 257).save(image_dir / "0007.PNG")
    problems["image_16bit"] = ["0007.PNG"]
    image, mask = lesion(5151, "benign")
    save(image_dir / f"{NON_ASCII}.PNG", image)
    save(mask_dir / f"{NON_ASCII}.PNG", mask)
    problems["non_ascii"] = [f"{NON_ASCII}.PNG"]
    return root, problems


DDTI_TIRADS = ("2", "3", "4a", "4b", "4c", "5")

DDTI_FIELDS = (
    # composition, echogenicity, margins, calcifications of cases 1, 2, ... (cycling), spelled as the release does
    ("solid", "hypoechogenicity", "well defined", "non"),
    ("predominantly solid", "Isoechogenicity", "ill- defined", "microcalcifications"),
    ("cystic", "hyperechogenicity", "microlobulated", "none"),
    ("spongiform", "marked hypoechogenicity", "spiculated", "macrocalcification"),
    ("predominantly cystic", "hypoechogenicity", "macrolobulated", "microcalcification"),
    ("Solid ", "marked  hypoechogenicity", "ill defined", "macrocalcifications"),
    ("dense", "isoechogenicity", "well-defined", "non"),  # dense: outside the ACR TI-RADS mapping
    ("solid", "", "well defined", "none"),  # empty echogenicity
)
"""The descriptor fields of the original release's cases: every mapped spelling, one unknown value, one empty field."""


def _ddti_case(folder: Path, stem: str, number: str, tirads: str, marks: list[tuple[int, list[list[dict]]]],
               fields: tuple[str, str, str, str] = DDTI_FIELDS[0]) -> None:
    xml_marks = "".join(
        f"<mark><image>{index}</image><svg>{json.dumps([{'points': p, 'annotationType': 'freehand'} for p in polys])}"
        "</svg></mark>" if polys is not None else f"<mark><image>{index}</image><svg></svg></mark>"
        for index, polys in marks)
    composition, echogenicity, margins, calcifications = fields
    (folder / f"{stem}.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<case><number>{number}</number><age>50</age><sex>F</sex>'
        f"<composition>{composition}</composition><echogenicity>{echogenicity}</echogenicity><margins>{margins}"
        f"</margins><calcifications>{calcifications}</calcifications><tirads>{tirads}</tirads><reportbacaf>"
        f"</reportbacaf><reporteco></reporteco>{xml_marks}</case>\n", encoding="utf-8")


def write_ddti_xml(root: Path, quirks: bool = False, cases: int = 10) -> tuple[Path, dict[str, list[str]]]:
    """The original release: ``<case>.xml`` (TI-RADS + SVG polygons) next to ``<case>_<k>.jpg``.

    Case 2 has two images, case 1 an image with two nodules (their masks are merged). TI-RADS cycles through
    2, 3, 4a, 4b, 4c, 5, so labels are benign (0) for 2-3 and malignant (1) for 4a-5. The descriptor fields cycle
    through :data:`DDTI_FIELDS` (case 7: composition ``dense``, outside the mapping; case 8: empty echogenicity).
    """
    root = Path(root)
    folder = root / "DDTI"
    folder.mkdir(parents=True, exist_ok=True)
    problems: dict[str, list[str]] = {}
    for case in range(1, cases + 1):
        tirads = DDTI_TIRADS[(case - 1) % len(DDTI_TIRADS)]
        marks = []
        for index in range(1, 3 if case == 2 else 2):
            image, mask = lesion(3000 + 10 * case + index, "malignant" if tirads[0] in "45" else "benign")
            polys = [polygon(mask)]
            if case == 1:
                second = ellipse(9, 9, 6) & ~mask
                image = image.copy()
                image[second] = image[second] // 3
                polys.append(polygon(second))
            save(folder / f"{case}_{index}.jpg", image)
            marks.append((index, polys))
        if quirks and case == 4:
            tirads = "4d"
            problems["unknown_label"] = ["4_1.jpg"]
        if quirks and case == 6:
            marks = [(index, None) for index, _ in marks]
            problems["missing_mask"] = ["6_1.jpg"]
        _ddti_case(folder, str(case), str(case), tirads, marks, DDTI_FIELDS[(case - 1) % len(DDTI_FIELDS)])
    if quirks:
        truncate(folder / "3_1.jpg")
        problems["truncated_image"] = ["3_1.jpg"]
        dup = cases + 1
        shutil.copyfile(folder / "5_1.jpg", folder / f"{dup}_1.jpg")
        text = (folder / "5.xml").read_text(encoding="utf-8").replace("<number>5</number>", f"<number>{dup}</number>")
        (folder / f"{dup}.xml").write_text(text, encoding="utf-8")
        problems["duplicate"] = ["5_1.jpg", f"{dup}_1.jpg"]
        image, mask = lesion(6060, "benign")
        save(folder / f"{NON_ASCII}_1.jpg", image)
        _ddti_case(folder, NON_ASCII, "99", "3", [(1, [polygon(mask)])])
        problems["non_ascii"] = [f"{NON_ASCII}_1.jpg"]
    return root, problems


# ---------------------------------------------------------------------------------------------------------------------
# Micro-US prostate


def _volume(seed: int, shape: tuple[int, int, int], gland: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A (x, y, z) volume in 0-254 with a dark ellipsoidal gland, and its 0/1 label volume."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    cx, cy = rng.uniform(0.4, 0.6, 2) * np.array(shape[:2])
    label = ((x - cx) / (shape[0] * 0.25)) ** 2 + ((y - cy) / (shape[1] * 0.25)) ** 2 + (
        (z - shape[2] / 2) / (shape[2] * 0.9)) ** 2 <= 1.0
    volume = rng.gamma(2.0, 40.0, shape).astype(np.float32)
    volume[label] *= 0.4
    return np.clip(volume, 0, 254).astype(np.uint8), label.astype(np.uint8)


def _save_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def write_prostate(root: Path, quirks: bool = False, train: int = 4, test: int = 2, slices: int = 4,
                   ) -> tuple[Path, dict[str, list[str]]]:
    """``Micro_Ultrasound_Prostate_Segmentation_Dataset/{train,test}/{micro_ultrasound_scans,expert_annotations,
    non_expert_annotations}/*.nii.gz`` with (x=64, y=48, z=slices) volumes; scans and masks paired by number.

    Problem names are scan names (the manifest's ``patient``; slice rows are named ``<split>/<scan>/<slice>``, an
    unreadable scan's single row ``<split>/<scan>``).
    """
    root = Path(root)
    folder = root / "Micro_Ultrasound_Prostate_Segmentation_Dataset"
    shape = (SIZE, SIZE - 16, slices)
    for split, count in (("train", train), ("test", test)):
        for i in range(1, count + 1):
            volume, label = _volume(7000 * (split == "test") + i, shape)
            _save_nifti(folder / split / "micro_ultrasound_scans" / f"microUS_{split}_{i:02d}.nii.gz", volume)
            _save_nifti(folder / split / "expert_annotations" / f"expert_annotation_{split}_{i:02d}.nii.gz", label)
            if split == "train":
                _save_nifti(folder / split / "non_expert_annotations" / f"non_expert_annotation_{split}_{i:02d}.nii.gz",
                            np.roll(label, 1, axis=0))
    if not quirks:
        return root, {}
    problems: dict[str, list[str]] = {}
    scans = folder / "train" / "micro_ultrasound_scans"
    broken = scans / f"microUS_train_{train:02d}.nii.gz"
    with gzip.open(broken, "rb") as handle:
        raw = handle.read()
    with gzip.open(broken, "wb") as handle:
        handle.write(raw[: len(raw) // 3])
    problems["truncated_image"] = [f"microUS_train_{train:02d}"]
    (folder / "test" / "expert_annotations" / f"expert_annotation_test_{test:02d}.nii.gz").unlink()
    problems["missing_mask"] = [f"microUS_test_{test:02d}"]
    _, label = _volume(99, (SIZE - 8, SIZE - 16, slices))
    _save_nifti(folder / "train" / "expert_annotations" / "expert_annotation_train_01.nii.gz", label)
    problems["size_mismatch"] = ["microUS_train_01"]
    number = train + 1
    volume, label = _volume(555, shape)
    _save_nifti(scans / f"microUS_{NON_ASCII}_{number:02d}.nii.gz", volume)
    _save_nifti(folder / "train" / "expert_annotations" / f"expert_annotation_train_{number:02d}.nii.gz", label)
    problems["non_ascii"] = [f"microUS_{NON_ASCII}_{number:02d}"]
    return root, problems


# ---------------------------------------------------------------------------------------------------------------------
# NextGen-UIA release and plain folders (shared image set)


def _labelled_set(count: int, seed: int) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(file name, split, image, mask)`` with half-half benign/malignant, 50/25/25 % train/val/test."""
    items = []
    for i in range(count):
        label = ("benign", "malignant")[i % 2]
        split = "train" if i < count // 2 else "val" if i < 3 * count // 4 else "test"
        image, mask = lesion(seed + i, label)
        items.append((f"case_{i:03d}.png", split, image, mask))
    return items


def _plant_common(image_dir: Path, mask_dir: Path, items: list, names: dict[str, str], labels: dict[str, str],
                  unknown: str) -> dict[str, list[str]]:
    """Plant the generic problems on an images/ + masks/ layout; ``names`` maps file name -> manifest name."""
    files = [item[0] for item in items]
    problems: dict[str, list[str]] = {}
    truncate(image_dir / files[0])
    problems["truncated_image"] = [names[files[0]]]
    resize_mask(mask_dir / files[1], items[1][3])
    problems["size_mismatch"] = [names[files[1]]]
    labels[files[2]] = unknown
    problems["unknown_label"] = [names[files[2]]]
    (mask_dir / files[3]).unlink()
    problems["missing_mask"] = [names[files[3]]]
    save(mask_dir / files[4], items[4][3].astype(np.uint8))
    problems["mask_01"] = [names[files[4]]]
    grey_mask(mask_dir / files[5], items[5][3])
    problems["grey_mask"] = [names[files[5]]]
    image = items[6][2]
    Image.fromarray(np.stack([image, image, image, np.full_like(image, 255)], axis=-1), "RGBA").save(
        image_dir / files[6])
    problems["rgba_image"] = [names[files[6]]]
    Image.fromarray(items[7][2].astype(np.uint16) * 257).save(image_dir / files[7])
    problems["image_16bit"] = [names[files[7]]]
    return problems


def write_nextgen(root: Path, quirks: bool = False, dataset: str = "BUSI", count: int = 16
                  ) -> tuple[Path, dict[str, list[str]]]:
    """The release layout: ``all/{images,masks}``, ``{classification,segmentation}/<dataset>/{train,val,test}.txt``
    and ``classification/<dataset>/labels.csv`` (headerless ``name,0|1``)."""
    root = Path(root)
    image_dir, mask_dir = root / "all" / "images", root / "all" / "masks"
    items = _labelled_set(count, 8000)
    for name, _, image, mask in items:
        save(image_dir / name, image)
        save(mask_dir / name, mask)
    labels = {name: str(i % 2) for i, (name, *_) in enumerate(items)}
    splits = {name: split for name, split, *_ in items}
    problems: dict[str, list[str]] = {}
    if quirks:
        problems = _plant_common(image_dir, mask_dir, items, {n: n for n in splits}, labels, "7")
        duplicate = f"case_{count:03d}.png"
        shutil.copyfile(image_dir / items[8][0], image_dir / duplicate)
        shutil.copyfile(mask_dir / items[8][0], mask_dir / duplicate)
        splits[duplicate], labels[duplicate] = "test", labels[items[8][0]]
        problems["duplicate"] = [items[8][0], duplicate]
        odd = f"{NON_ASCII}.png"
        image, mask = lesion(9191, "malignant")
        save(image_dir / odd, image)
        save(mask_dir / odd, mask)
        splits[odd], labels[odd] = "train", "1"
        problems["non_ascii"] = [odd]
    for task in ("classification", "segmentation"):
        folder = root / task / dataset
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):
            (folder / f"{split}.txt").write_text(
                "".join(f"{n}\n" for n, s in splits.items() if s == split), encoding="utf-8")
    (root / "classification" / dataset / "labels.csv").write_text(
        "".join(f"{n},{label}\n" for n, label in labels.items()), encoding="utf-8")
    return root, problems


def write_folder(root: Path, quirks: bool = False, count: int = 16, with_splits: bool = True
                 ) -> tuple[Path, dict[str, list[str]]]:
    """``images/`` + ``masks/`` + ``labels.csv`` (header ``name,label,split,patient``; class-name labels, two images
    per patient, splits by patient when ``with_splits``)."""
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    items = _labelled_set(count, 9000)
    for name, _, image, mask in items:
        save(image_dir / name, image)
        save(mask_dir / name, mask)
    labels = {name: ("benign", "malignant")[i % 2] for i, (name, *_) in enumerate(items)}
    patients = {name: f"p{i // 2:02d}" for i, (name, *_) in enumerate(items)}
    splits = {name: items[2 * (i // 2)][1] for i, (name, *_) in enumerate(items)}
    problems: dict[str, list[str]] = {}
    if quirks:
        problems = _plant_common(image_dir, mask_dir, items, {n: n for n in labels}, labels, "indeterminate")
        duplicate = f"case_{count:03d}.png"
        shutil.copyfile(image_dir / items[8][0], image_dir / duplicate)
        shutil.copyfile(mask_dir / items[8][0], mask_dir / duplicate)
        labels[duplicate], patients[duplicate], splits[duplicate] = labels[items[8][0]], "p99", "test"
        problems["duplicate"] = [items[8][0], duplicate]
        odd = f"{NON_ASCII}.png"
        image, mask = lesion(9292, "malignant")
        save(image_dir / odd, image)
        save(mask_dir / odd, mask)
        labels[odd], patients[odd], splits[odd] = "malignant", "p98", "train"
        problems["non_ascii"] = [odd]
    header = "name,label,split,patient\n" if with_splits else "name,label,patient\n"
    rows = [f"{n},{labels[n]},{splits[n]},{patients[n]}\n" if with_splits else f"{n},{labels[n]},{patients[n]}\n"
            for n in labels]
    (root / "labels.csv").write_text(header + "".join(rows), encoding="utf-8")
    return root, problems


__all__ = ["PROBLEM_KINDS", "lesion", "write_busi", "write_ddti", "write_ddti_xml", "write_folder", "write_nextgen",
           "write_prostate", "write_tn3k"]


class ManifestModule(UltrasoundDataModule):
    """A data module over a ready manifest (for tests of the shared data-module machinery)."""

    def __init__(self, manifest: pd.DataFrame, **kwargs):
        super().__init__(**kwargs)
        self._manifest = manifest

    def read_manifest(self) -> pd.DataFrame:
        """A copy of the manifest given at construction."""
        return self._manifest.copy()
