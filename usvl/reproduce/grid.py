"""Grid files: datasets x methods x seeds x few-shot fractions, expanded into runnable cells.

A grid file (``configs/reproduce/*.yaml``) names its ``output`` folder, the ``datasets`` (an experiment config and
its task), the ``methods`` (config files and dotted-key arguments layered on the experiment, optionally different
per task) and one or more ``blocks``, each a product of some datasets, methods, seeds and few-shot fractions with
its own extra arguments (and, like a method, ``classification:`` / ``segmentation:`` arguments for one task only,
e.g. fewer epochs for segmentation). ``test_sets`` (optional) lists further test sets every run is tested on after
training (:mod:`usvl.reproduce.test_sets`: train once, test on N). ``include:`` pulls in another grid file whose
keys the including file overrides, so the grids share one list of datasets and methods.

A cell's command line is ``--config <experiment> [--config <file> ...] [--<key> <value> ...] --seed_everything <seed>
[--data.init_args.few_shot <fraction>]``; a fraction of 100 (or none) trains on the whole training split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from usvl.utils.errors import UserError

TASKS = ("classification", "segmentation")


class GridError(UserError, ValueError):
    """A grid file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Cell:
    """One training run of a grid.

    Attributes:
        index: Position in the grid's run order (the SLURM array index).
        block: Name of the block it comes from.
        dataset: Dataset name (a key of the grid's ``datasets``).
        method: Method name (a key of the grid's ``methods``).
        task: ``classification`` or ``segmentation``.
        seed: ``seed_everything`` of the run.
        fraction: Percentage of the training split (100: all of it).
        args: The ``usvl fit`` arguments of the run (without the output location).
    """

    index: int
    block: str
    dataset: str
    method: str
    task: str
    seed: int
    fraction: float
    args: tuple[str, ...] = field(repr=False)

    @property
    def fraction_tag(self) -> str:
        """``all`` for the whole training split, else ``fs<percent>`` (e.g. ``fs10``, ``fs2.5``)."""
        return "all" if self.fraction >= 100 else f"fs{self.fraction:g}"

    @property
    def label(self) -> str:
        """``dataset / method / fraction / seed N`` for progress lines."""
        return f"{self.dataset} / {self.method} / {self.fraction_tag} / seed {self.seed}"


@dataclass(frozen=True)
class Grid:
    """A parsed grid file.

    Attributes:
        name: Grid name (``quick``, ``embedded``, ...).
        path: The grid file.
        output: Folder of its runs, tables and plots.
        description: What the grid is for (shown by ``--dry-run``).
        datasets: Dataset specs by name (``config``, ``task``, ``label``).
        methods: Method specs by name (``label``).
        cells: Every run, in order.
        test_sets: Further test sets every run is tested on (``usvl.reproduce.test_sets``), by name:
            ``{"label": str, "args": tuple of usvl test arguments}``; empty for a plain grid.
    """

    name: str
    path: Path
    output: Path
    description: str
    datasets: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    cells: tuple[Cell, ...]
    test_sets: dict[str, dict[str, Any]] = field(default_factory=dict)


def cli_value(value: Any) -> str:
    """A YAML value as one command-line argument: ``None`` -> ``null``, lists and dicts as flow-style JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def layer_arguments(layer: Mapping[str, Any], where: str) -> list[str]:
    """``--config`` files then ``--key value`` pairs of one layer (``configs:`` list, ``args:`` mapping)."""
    unknown = set(layer) - {"configs", "args", "label", "config", "task", *TASKS}
    if unknown:
        raise GridError(f"{where}: unknown keys {sorted(unknown)}; use configs, args (and classification/segmentation)")
    configs = layer.get("configs") or []
    if isinstance(configs, str):
        configs = [configs]
    arguments: list[str] = []
    for config in configs:
        arguments += ["--config", str(config)]
    for key, value in (layer.get("args") or {}).items():
        arguments += [f"--{key}", cli_value(value)]
    return arguments


def parse_test_sets(data: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The ``test_sets`` of a grid file: name -> ``{"label": str, "args": tuple of command-line arguments}``.

    A test set's ``args`` (dotted keys, like a method's) turn a run's data into the test set, e.g.
    ``{data.init_args.test_acquisition: low_freq}``; without ``args`` it is the run's own test split.

    Raises:
        GridError: ``test_sets`` is not a mapping, or an entry has keys other than ``label`` and ``args``.
    """
    raw = data.get("test_sets") or {}
    if not isinstance(raw, dict):
        raise GridError(f"{path}: test_sets must map names to {{label, args}}")
    parsed: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        spec = spec or {}
        unknown = set(spec) - {"label", "args"}
        if unknown:
            raise GridError(f"{path}: test set '{name}': unknown keys {sorted(unknown)}; use label and args")
        arguments = layer_arguments({"args": spec.get("args") or {}}, f"{path}: test set '{name}'")
        parsed[str(name)] = {"label": str(spec.get("label") or name), "args": tuple(arguments)}
    return parsed


def read_grid_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The grid file's mapping with its ``include:`` resolved (the including file's keys win)."""
    path = path.resolve()
    if path in seen:
        raise GridError(f"{path}: include cycle through {[str(p) for p in seen]}")
    if not path.is_file():
        raise GridError(f"Grid file {path} not found; the shipped grids are in configs/reproduce/")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise GridError(f"{path}: expected a mapping at the top level")
    include = data.pop("include", None)
    if include is None:
        return data
    base = read_grid_file((path.parent / include), (*seen, path))
    merged = {**base, **data}
    for key in ("datasets", "methods"):
        if key in base and key in data:
            merged[key] = {**base[key], **data[key]}
    return merged


def load_grid(path: str | Path, output: str | Path | None = None) -> Grid:
    """Read a grid file and expand its blocks into cells.

    Args:
        path: The grid file.
        output: Overrides the file's ``output`` folder.

    Raises:
        GridError: The file is malformed: unknown dataset or method in a block, a task that is not
            classification/segmentation, a fraction outside (0, 100], no blocks.
    """
    path = Path(path)
    data = read_grid_file(path)
    name = str(data.get("name") or path.stem)
    datasets = data.get("datasets") or {}
    methods = data.get("methods") or {}
    blocks = data.get("blocks") or []
    if not blocks:
        raise GridError(f"{path}: no blocks; a block lists datasets, methods, seeds and fractions")
    for dataset_name, spec in datasets.items():
        if not isinstance(spec, dict) or "config" not in spec or spec.get("task") not in TASKS:
            raise GridError(f"{path}: dataset '{dataset_name}' needs a config and a task in {TASKS}")
    cells: list[Cell] = []
    for number, block in enumerate(blocks):
        block_name = str(block.get("name") or f"block{number}")
        where = f"{path}: block '{block_name}'"
        for key in ("datasets", "methods"):
            known = datasets if key == "datasets" else methods
            unknown = [item for item in block.get(key) or [] if item not in known]
            if unknown or not block.get(key):
                raise GridError(f"{where}: {key} {unknown or '(none)'} not defined; defined: {sorted(known)}")
        seeds = [int(seed) for seed in block.get("seeds") or [0]]
        fractions = [100.0 if f is None else float(f) for f in block.get("fractions") or [None]]
        bad = [f for f in fractions if not 0 < f <= 100]
        if bad:
            raise GridError(f"{where}: fractions {bad} outside (0, 100]")
        block_arguments = layer_arguments({k: v for k, v in block.items() if k in ("configs", "args")}, where)
        block_task_arguments = {task: layer_arguments(block.get(task) or {}, f"{where} ({task})") for task in TASKS}
        for dataset_name in block["datasets"]:
            dataset = datasets[dataset_name]
            task = dataset["task"]
            dataset_arguments = ["--config", str(dataset["config"]),
                                 *layer_arguments({k: v for k, v in dataset.items() if k == "args" or
                                                   k == "configs"}, f"{path}: dataset '{dataset_name}'")]
            for method_name in block["methods"]:
                method = methods[method_name] or {}
                method_where = f"{path}: method '{method_name}'"
                method_arguments = layer_arguments({k: v for k, v in method.items() if k not in TASKS}, method_where)
                method_arguments += layer_arguments(method.get(task) or {}, f"{method_where} ({task})")
                for fraction in fractions:
                    for seed in seeds:
                        arguments = [*dataset_arguments, *block_arguments, *block_task_arguments[task],
                                     *method_arguments,
                                     "--seed_everything", str(seed)]
                        if fraction < 100:
                            arguments += ["--data.init_args.few_shot", f"{fraction:g}"]
                        cells.append(Cell(len(cells), block_name, dataset_name, method_name, task, seed, fraction,
                                          tuple(arguments)))
    output_folder = Path(output if output is not None else data.get("output") or f"results/{name}")
    return Grid(name, path, output_folder, str(data.get("description") or ""), dict(datasets), dict(methods),
                tuple(cells), parse_test_sets(data, path))
