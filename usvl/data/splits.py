"""Leak-free train/val/test splits, nested few-shot subsets and split files.

Rules (what :func:`assign_splits` and :func:`few_shot_subset` guarantee):

* **Grouped by patient.** Rows that share a ``patient`` id always land in the same split (and are taken or left
  together by the few-shot subset); rows without a patient id are their own group.
* **Stratified by label**, at group level: a group counts for its most common label, and each label's groups are
  cut into the split fractions separately, so every split keeps about the class balance of the whole.
* **Deterministic** for a seed, and independent of the manifest's row order (groups are sorted by patient id or
  name before the seeded permutation).
* **Official splits are kept.** Only rows whose ``split`` is empty are assigned. They go to the splits that have no
  official rows, with the fractions renormalised (a source with only an official test split gets its train and val
  carved from the rest at the train:val ratio); when every split, or none, has official rows they go to all three.
  Unassigned rows of a patient who already has official rows follow that patient.
* **Nested few-shot subsets.** One seeded permutation of the training groups per class; a subset of ``p`` percent
  takes the first groups until it holds ``ceil(p/100 * n)`` of the class's ``n`` images (at least one group), so
  1 % ⊂ 2 % ⊂ 5 % ⊂ 10 % ⊂ 20 % ⊂ 50 % for one seed.

A split file is a CSV with the header ``name,split,patient``: one row per image, ``patient`` empty when unknown.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from usvl.data.manifest import SPLITS, is_empty, normalise_manifest, object_column
from usvl.utils.atomic import write_csv_atomic

log = logging.getLogger(__name__)

SPLIT_FILE_COLUMNS = ("name", "split", "patient")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, val, test)`` fractions.

    Raises:
        ValueError: Not three non-negative numbers summing to 1.
    """
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {tuple(fractions)}")
    return values  # type: ignore[return-value]


def group_keys(manifest: pd.DataFrame) -> list[str]:
    """Grouping key per row: ``patient:<id>`` when the row has a patient id, else ``name:<name>``."""
    patients = manifest["patient"] if "patient" in manifest.columns else [None] * len(manifest)
    return [f"name:{name}" if is_empty(patient) else f"patient:{patient}"
            for name, patient in zip(manifest["name"], patients, strict=True)]


def _group_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per group: key, majority label (ties: smallest), size and row positions; sorted by key."""
    frame = pd.DataFrame({"key": group_keys(manifest), "label": manifest["label"].to_numpy(dtype=int),
                          "position": np.arange(len(manifest))})
    if frame.empty:
        return pd.DataFrame(columns=["key", "label", "size", "positions"])
    votes = frame.groupby(["key", "label"], sort=False).size().reset_index(name="votes")
    majority = votes.sort_values(["key", "votes", "label"], ascending=[True, False, True]).drop_duplicates("key")
    members = frame.groupby("key", sort=True)["position"].agg(list)
    table = pd.DataFrame({"key": members.index, "positions": members.values})
    table["size"] = [len(p) for p in table["positions"]]
    table["label"] = table["key"].map(dict(zip(majority["key"], majority["label"], strict=True))).astype(int)
    return table[["key", "label", "size", "positions"]].reset_index(drop=True)


def assign_splits(manifest: pd.DataFrame, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> pd.DataFrame:
    """Fill the empty ``split`` values of a manifest, grouped by patient and stratified by label.

    See the module docstring for the rules. Rows that already have a split are returned unchanged.

    Args:
        manifest: Manifest rows (``name``, ``label``, ``split``, ``patient``; ``split``/``patient`` may be absent).
        fractions: Train, val and test fractions (non-negative, summing to 1).
        seed: Seed of the group permutation.

    Returns:
        A normalised copy (see :func:`usvl.data.manifest.normalise_manifest`) with every ``split`` filled.

    Raises:
        ValueError: Bad fractions, unknown split values, or rows to assign but only zero-fraction splits to take them.
    """
    fractions = check_fractions(fractions)
    out = normalise_manifest(manifest)
    unassigned = out["split"].isna().to_numpy()
    if not unassigned.any():
        return out
    official = {s for s in out["split"] if not is_empty(s)}
    targets = [s for s in SPLITS if s not in official] if 0 < len(official) < len(SPLITS) else list(SPLITS)
    weights = np.array([fractions[SPLITS.index(s)] for s in targets])
    if weights.sum() <= 0:
        raise ValueError(f"{int(unassigned.sum())} rows have no split, but the splits that can take them ({targets}) "
                         f"all have fraction 0 in {fractions}")
    weights = weights / weights.sum()
    bounds = np.cumsum(weights)
    bounds[-1] = np.inf

    splits = out["split"].tolist()
    # Unassigned rows of a patient with official rows follow that patient.
    patient_split: dict[str, str] = {}
    for patient, rows in out[~unassigned & out["patient"].notna()].groupby("patient"):
        counts = rows["split"].value_counts()
        if len(counts) > 1:
            log.warning("Patient %s has official rows in several splits: %s", patient, counts.to_dict())
        patient_split[str(patient)] = str(counts.index[0])
    todo = []
    for position in np.flatnonzero(unassigned):
        patient = out.at[position, "patient"]
        if not is_empty(patient) and patient in patient_split:
            splits[position] = patient_split[patient]
        else:
            todo.append(position)

    rng = np.random.default_rng(seed)
    if todo:
        sub = out.iloc[todo].reset_index(drop=True)
        groups = _group_table(sub)
        for _, stratum in groups.groupby("label", sort=True):
            order = stratum.iloc[rng.permutation(len(stratum))]
            sizes = order["size"].to_numpy(dtype=float)
            midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
            chosen = np.searchsorted(bounds, midpoints, side="right")
            for positions, index in zip(order["positions"], chosen, strict=True):
                for p in positions:
                    splits[todo[p]] = targets[int(index)]
    out["split"] = object_column(splits, out.index)
    return out


def few_shot_subset(manifest: pd.DataFrame, percent: float, seed: int = 0) -> pd.DataFrame:
    """Keep ``percent`` % of the training split, stratified per class, seeded and nested across percentages.

    Validation and test rows are kept unchanged. Per class (a patient group counts for its most common label) the
    training groups are permuted once with ``seed``; the subset takes groups in that order until it holds
    ``ceil(percent / 100 * n)`` of the class's ``n`` training images, and at least one group. Because the
    permutation does not depend on ``percent``, a smaller subset is always contained in a larger one.

    Args:
        manifest: Manifest with splits assigned.
        percent: Percentage of the training split to keep, ``0 < percent <= 100``.
        seed: Seed of the per-class permutation.

    Returns:
        The reduced manifest (original row order, fresh index).

    Raises:
        ValueError: ``percent`` is outside ``(0, 100]`` or the manifest has no training rows.
    """
    if not 0 < float(percent) <= 100:
        raise ValueError(f"few-shot percent must be in (0, 100], got {percent}")
    out = normalise_manifest(manifest)
    is_train = (out["split"] == "train").to_numpy()
    if not is_train.any():
        raise ValueError("The manifest has no training rows to take a few-shot subset of")
    train_positions = np.flatnonzero(is_train)
    train = out.iloc[train_positions].reset_index(drop=True)
    groups = _group_table(train)
    keep = np.zeros(len(out), dtype=bool)
    keep[~is_train] = True
    rng = np.random.default_rng(seed)
    for _, members in groups.groupby("label", sort=True):
        order = members.iloc[rng.permutation(len(members))]
        target = max(1, math.ceil(float(percent) * int(members["size"].sum()) / 100 - 1e-9))
        taken = 0
        for positions, size in zip(order["positions"], order["size"], strict=True):
            keep[train_positions[positions]] = True
            taken += int(size)
            if taken >= target:
                break
    return out[keep].reset_index(drop=True)


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The ``name,split,patient`` table of a manifest, as written to split files."""
    out = normalise_manifest(manifest)
    return pd.DataFrame({"name": out["name"].astype(str), "split": out["split"], "patient": out["patient"]},
                        columns=list(SPLIT_FILE_COLUMNS))


def write_split_file(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write the ``name,split,patient`` CSV of a manifest (creating parent folders).

    Args:
        manifest: Manifest with every split assigned.
        path: Output CSV path.

    Raises:
        ValueError: A row has no split, or names are not unique.
    """
    table = split_table(manifest)
    if table["split"].isna().any():
        raise ValueError(f"Cannot write split file {path}: {int(table['split'].isna().sum())} rows have no split, "
                         f"e.g. {table.loc[table['split'].isna(), 'name'].head(5).tolist()}")
    duplicated = sorted(set(table.loc[table["name"].duplicated(), "name"]))
    if duplicated:
        raise ValueError(f"Cannot write split file {path}: names are not unique: {duplicated[:20]}")
    return write_csv_atomic(path, table)  # a concurrent reader (another rank) sees the old file or the whole new one


def _load_split_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read split file {path}: {error}") from error
    missing = [c for c in ("name", "split") if c not in table.columns]
    if missing:
        raise ValueError(f"Split file {path} lacks columns {missing}; expected header {','.join(SPLIT_FILE_COLUMNS)}")
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"Split file {path} has unknown splits {bad}; expected {list(SPLITS)}")
    duplicated = sorted(set(table.loc[table["name"].duplicated(), "name"]))
    if duplicated:
        raise ValueError(f"Split file {path} lists names more than once: {duplicated[:20]}")
    if "patient" not in table.columns:
        table["patient"] = ""
    table["patient"] = object_column(table["patient"].tolist(), table.index)
    return table[list(SPLIT_FILE_COLUMNS)]


def _name_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_split_file(path: str | Path, manifest: pd.DataFrame | None = None,
                    ignore: Sequence[str] = ()) -> pd.DataFrame:
    """Read a split file, and apply it to a manifest when one is given.

    Args:
        path: CSV with the header ``name,split,patient``.
        manifest: When given, its ``split`` column is replaced by the file's (its ``patient`` column is kept).
        ignore: Names the file may list although the manifest lacks them (e.g. images skipped as bad files).

    Returns:
        The split table (``name``, ``split``, ``patient``) without ``manifest``, else a normalised copy of
        ``manifest`` with the file's splits.

    Raises:
        ValueError: The file is malformed, or names are in the file but not in the manifest or vice versa; the
            message names them.
    """
    path = Path(path)
    table = _load_split_table(path)
    if manifest is None:
        return table
    out = normalise_manifest(manifest)
    names = out["name"].astype(str)
    duplicated = sorted(set(names[names.duplicated()]))
    if duplicated:
        raise ValueError(f"Cannot apply split file {path}: manifest names are not unique: {_name_list(duplicated)}")
    in_file = set(table["name"])
    in_manifest = set(names)
    only_file = sorted(in_file - in_manifest - set(ignore))
    only_manifest = sorted(in_manifest - in_file)
    if only_file or only_manifest:
        parts = []
        if only_file:
            parts.append(f"{len(only_file)} names are in the split file but not in the manifest: "
                         f"{_name_list(only_file)}")
        if only_manifest:
            parts.append(f"{len(only_manifest)} names are in the manifest but not in the split file: "
                         f"{_name_list(only_manifest)}")
        raise ValueError(f"Split file {path} does not match the manifest. " + "; ".join(parts))
    mapping = dict(zip(table["name"], table["split"], strict=True))
    out["split"] = object_column([mapping[n] for n in names], out.index)
    return out


def split_differences(manifest: pd.DataFrame, path: str | Path) -> list[str]:
    """Names whose split differs between a manifest and a split file (including names only in one of them)."""
    table = _load_split_table(Path(path))
    current = dict(zip(split_table(manifest)["name"], split_table(manifest)["split"], strict=True))
    stored = dict(zip(table["name"], table["split"], strict=True))
    return sorted(n for n in set(current) | set(stored) if current.get(n) != stored.get(n))


def save_split_file(manifest: pd.DataFrame, path: str | Path, reused: str | Path | None = None) -> bool:
    """Write a split file unless an identical one exists; never overwrite a different one.

    Args:
        manifest: Manifest with every split assigned.
        path: Target CSV.
        reused: The split file the manifest's splits were read from, if any; an existing ``path`` that is this
            file is left alone.

    Returns:
        True when the file was written, False when an identical (or the reused) file was already there.

    Raises:
        ValueError: ``path`` exists with different splits; the message says how many names differ.
    """
    path = Path(path)
    if path.exists():
        if reused is not None and path.resolve() == Path(reused).resolve():
            return False
        differences = split_differences(manifest, path)
        if not differences:
            return False
        raise ValueError(f"Split file {path} already exists with different splits for {len(differences)} images "
                         f"({_name_list(differences, 10)}). Refusing to overwrite it: pass it as split_file to "
                         f"reuse it, or use another run folder.")
    write_split_file(manifest, path)
    return True
