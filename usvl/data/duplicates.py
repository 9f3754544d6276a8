"""Exact and near-duplicate images, within a dataset and across its splits.

* **Exact duplicates** share the SHA-1 of their decoded 8-bit grey pixels (and shape; decoded by
  :func:`usvl.data.decode.grey_array`, the loader's grey conversion, alpha composited), so a copy re-encoded
  losslessly (another PNG compression, BMP, TIFF, an RGB copy of a grey image) matches too.
* **Near duplicates** have 64-bit difference hashes (dHash: the grey image box-resized to 9x8, one bit per
  horizontally adjacent pair, ``left > right``) within a Hamming distance ``threshold`` (default 4 of 64). This finds
  JPEG re-encodings, light noise, small brightness changes and rescaled copies. Near groups are the connected
  components of "within threshold", so a chain A~B~C forms one group even when A and C are further apart.

Duplicates that span splits inflate test scores (BUSI is known to hold many, see ``reference/datasets.md``); the
data module treats each group as one patient when it assigns splits (:func:`merge_duplicate_patients`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from usvl.data.decode import original_grey

DEFAULT_THRESHOLD = 4
GROUP_COLUMNS = ("group", "kind", "name", "split", "label", "patient", "distance")


def pixel_hash(grey: np.ndarray) -> str:
    """SHA-1 of an 8-bit array's shape and bytes (the exact-duplicate key)."""
    array = np.ascontiguousarray(grey, dtype=np.uint8)
    digest = hashlib.sha1(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def dhash(grey: np.ndarray) -> int:
    """64-bit difference hash of an 8-bit grey array (box-resized to 9x8; bit = left neighbour brighter)."""
    small = np.asarray(Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8)).resize((9, 8), Image.BOX),
                       dtype=np.int16)
    bits = (small[:, :-1] > small[:, 1:]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


@dataclass(frozen=True)
class Fingerprint:
    """Exact and perceptual keys of one image."""

    exact: str
    dhash: int


def fingerprint_array(grey: np.ndarray) -> Fingerprint:
    """Fingerprint of decoded 8-bit grey pixels."""
    return Fingerprint(pixel_hash(grey), dhash(grey))


def fingerprint_file(path: str) -> Fingerprint:
    """Decode an image file (at full size, by :mod:`usvl.data.decode`) and fingerprint its grey pixels.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be decoded; the message names it.
    """
    return fingerprint_array(original_grey(path)[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return int(a ^ b).bit_count()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def duplicate_groups(fingerprints: Sequence[Fingerprint | None], threshold: int = DEFAULT_THRESHOLD,
                     ) -> list[tuple[str, list[int]]]:
    """Groups of duplicate positions.

    Args:
        fingerprints: One per image; None for images that could not be decoded (never grouped).
        threshold: Largest dHash Hamming distance of a near duplicate; negative disables near duplicates.

    Returns:
        ``(kind, positions)`` pairs: ``"exact"`` groups share one pixel hash; ``"near"`` groups are connected
        components of dHash distance ``<= threshold`` that hold at least two different pixel hashes (so an image
        can be in one exact and one near group). Positions are sorted; groups are ordered by first position.
    """
    valid = [i for i, f in enumerate(fingerprints) if f is not None]
    groups: list[tuple[str, list[int]]] = []
    by_hash: dict[str, list[int]] = {}
    for i in valid:
        by_hash.setdefault(fingerprints[i].exact, []).append(i)  # type: ignore[union-attr]
    groups += [("exact", members) for members in by_hash.values() if len(members) > 1]
    if threshold >= 0 and len(by_hash) > 1:
        representatives = [members[0] for members in by_hash.values()]
        hashes = np.array([fingerprints[i].dhash for i in representatives], dtype=np.uint64)  # type: ignore[union-attr]
        forest = _UnionFind(len(representatives))
        for i in range(len(representatives) - 1):
            distances = np.bitwise_count(hashes[i + 1:] ^ hashes[i])
            for j in np.flatnonzero(distances <= threshold):
                forest.union(i, i + 1 + int(j))
        components: dict[int, list[int]] = {}
        for k in range(len(representatives)):
            components.setdefault(forest.find(k), []).append(k)
        for members in components.values():
            if len(members) > 1:
                positions = sorted(p for k in members for p in by_hash[fingerprints[representatives[k]].exact])  # type: ignore[union-attr]
                groups.append(("near", positions))
    return sorted(groups, key=lambda g: (g[1][0], g[0]))


def groups_frame(groups: Iterable[tuple[str, list[int]]], manifest: pd.DataFrame,
                 fingerprints: Sequence[Fingerprint | None]) -> pd.DataFrame:
    """Long table of duplicate groups: one row per member with the columns of ``GROUP_COLUMNS``.

    ``distance`` is the member's dHash Hamming distance to the group's first member.
    """
    rows = []
    for number, (kind, positions) in enumerate(groups):
        first = fingerprints[positions[0]]
        for p in positions:
            row = manifest.iloc[p]
            rows.append({
                "group": number,
                "kind": kind,
                "name": row["name"],
                "split": row.get("split"),
                "label": row.get("label"),
                "patient": row.get("patient"),
                "distance": hamming(first.dhash, fingerprints[p].dhash),  # type: ignore[union-attr]
            })
    frame = pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
    for column in ("split", "patient"):
        frame[column] = pd.Series([None if pd.isna(v) else v for v in frame[column]], dtype=object,
                                  index=frame.index)
    return frame


def fingerprint_files(paths: Sequence[str], threads: int = 4) -> list[Fingerprint | None]:
    """Fingerprints of image files, None for files that are missing or cannot be decoded."""
    def one(path: str) -> Fingerprint | None:
        try:
            return fingerprint_file(path)
        except (ValueError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, paths))


def find_duplicates(manifest: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD, threads: int = 4,
                    fingerprints: Sequence[Fingerprint | None] | None = None) -> pd.DataFrame:
    """Exact and near-duplicate groups among a manifest's images.

    Args:
        manifest: Rows with ``name`` and ``image`` (``split``, ``label``, ``patient`` are copied when present).
        threshold: Largest dHash Hamming distance of a near duplicate (of 64 bits); negative: exact only.
        threads: Decoding threads.
        fingerprints: Precomputed fingerprints, one per row (skips decoding); None entries are ignored.

    Returns:
        One row per group member, columns ``group, kind, name, split, label, patient, distance`` (see
        :func:`groups_frame`). Unreadable or missing files are ignored here (``usvl data check`` reports them).
    """
    manifest = manifest.reset_index(drop=True)
    if fingerprints is None:
        fingerprints = fingerprint_files(manifest["image"].tolist(), threads)
    if len(fingerprints) != len(manifest):
        raise ValueError(f"{len(fingerprints)} fingerprints for {len(manifest)} manifest rows")
    return groups_frame(duplicate_groups(fingerprints, threshold), manifest, fingerprints)


def cross_split_duplicates(duplicates: pd.DataFrame, threshold: int = DEFAULT_THRESHOLD,
                           threads: int = 4) -> pd.DataFrame:
    """The duplicate groups whose members lie in more than one split.

    Args:
        duplicates: A table from :func:`find_duplicates`, or a manifest (then :func:`find_duplicates` runs first
            with ``threshold`` and ``threads``).
        threshold: Near-duplicate threshold when ``duplicates`` is a manifest.
        threads: Decoding threads when ``duplicates`` is a manifest.

    Returns:
        The rows of the groups that span splits (members without a split are kept with their group).
    """
    if "group" not in duplicates.columns:
        duplicates = find_duplicates(duplicates, threshold, threads)
    if duplicates.empty:
        return duplicates
    spans = duplicates.dropna(subset=["split"]).groupby("group")["split"].nunique()
    crossing = set(spans[spans > 1].index)
    return duplicates[duplicates["group"].isin(crossing)].reset_index(drop=True)


def merge_duplicate_patients(manifest: pd.DataFrame, fingerprints: Sequence[Fingerprint | None],
                             threshold: int = DEFAULT_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give every duplicate group one patient id, so split assignment keeps the group in one split.

    Rows are joined when they are in one exact or near duplicate group, or share a patient id; each joined set
    that holds a duplicate group gets the patient id ``duplicates:<first name>`` (its rows' own patient ids are
    replaced, so those patients move together too). Other rows keep their patient id. Blank images (dHash 0: flat,
    e.g. empty slices at a volume's ends) are not grouped, since they say nothing of whose image it is and would
    join unrelated patients.

    Args:
        manifest: Normalised manifest (``name``, ``patient``, ...).
        fingerprints: One per row; None for rows that could not be decoded (never grouped).
        threshold: Near-duplicate threshold (see :func:`duplicate_groups`).

    Returns:
        A copy of ``manifest`` with the merged patient ids, and the merged duplicate groups (one row per member,
        see :func:`groups_frame`).
    """
    manifest = manifest.reset_index(drop=True)
    informative = [f if f is not None and f.dhash != 0 else None for f in fingerprints]
    groups = duplicate_groups(informative, threshold)
    out = manifest.copy()
    if not groups:
        return out, groups_frame([], manifest, fingerprints)
    forest = _UnionFind(len(manifest))
    for _, positions in groups:
        for p in positions[1:]:
            forest.union(positions[0], p)
    first_of_patient: dict[str, int] = {}
    for position, patient in enumerate(manifest["patient"]):
        if patient is not None:
            forest.union(first_of_patient.setdefault(str(patient), position), position)
    roots = {forest.find(p) for _, positions in groups for p in positions}
    names = manifest["name"].astype(str).tolist()
    members: dict[int, list[int]] = {}
    for position in range(len(manifest)):
        root = forest.find(position)
        if root in roots:
            members.setdefault(root, []).append(position)
    patients = out["patient"].tolist()
    for positions in members.values():
        key = "duplicates:" + min(names[p] for p in positions)
        for p in positions:
            patients[p] = key
    out["patient"] = pd.Series(patients, dtype=object, index=out.index)
    return out, groups_frame(groups, manifest, fingerprints)
