"""ONNX export of a trained task (LoRA merged, class text baked in, dynamic batch) with a parity check.

:func:`export_run` is ``usvl export``: rebuild the task from the run's config and checkpoint, run PyTorch on a few
random images, merge LoRA, export the graph of :mod:`usvl.export.graph`, write the metadata and check with
onnxruntime that the file reproduces PyTorch within a tolerance, or fail (the file is removed).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import usvl
from usvl.export.graph import INPUT_NAME, build_graph, task_kind
from usvl.export.load import config_image_size, file_sha256, load_task, read_run_config
from usvl.models.adapters.lora import LoRAAdapter
from usvl.models.adapters.mona import FrequencyFilter
from usvl.tasks.base import AdaptedEncoderTask

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""ONNX opset of ``usvl export`` (the TorchScript exporter writes it; the dynamo exporter needs 18 or more)."""

DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference between onnxruntime and PyTorch outputs that the parity check accepts."""

PARITY_BATCH_SIZES = (1, 3)
"""Batch sizes of the parity check (two, so the dynamic batch axis is exercised)."""

EXPORTERS = ("auto", "torchscript", "dynamo")
"""``torch.onnx.export`` back-ends: TorchScript (``dynamo=False``, one self-contained file, about 5x faster to
export here) or ``torch.export`` (``dynamo=True``, needs ``onnxscript``)."""

PARITY_OUTPUTS = {"classification": ("logits", "probabilities"), "segmentation": ("probability",)}
"""Outputs compared per task kind."""


class ParityError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


class ExportError(RuntimeError):
    """``torch.onnx.export`` could not convert the model."""


@dataclass
class ExportReport:
    """What an export produced.

    Attributes:
        path: The ONNX file.
        task: ``classification`` or ``segmentation``.
        seconds: Time of ``torch.onnx.export`` and the metadata (not the parity check).
        size_bytes: Size of the file.
        merged_lora_layers: LoRA layers folded into their base weights before export.
        parity: Largest absolute difference per output over the parity batches (empty without a check).
        metadata: The metadata written into the file.
    """

    path: Path
    task: str
    seconds: float
    size_bytes: int
    merged_lora_layers: int
    parity: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        """Human-readable summary, several lines."""
        lines = [f"ONNX {self.task} model written to {self.path} ({self.size_bytes / 2**20:.1f} MiB, exported in "
                 f"{self.seconds:.1f} s; {self.merged_lora_layers} LoRA layers merged)"]
        if self.parity:
            diffs = ", ".join(f"{name} {value:.2e}" for name, value in self.parity.items())
            lines.append(f"Parity with PyTorch (onnxruntime, batch sizes {', '.join(map(str, PARITY_BATCH_SIZES))}): "
                         f"max abs difference {diffs}")
        return "\n".join(lines)


def parity_images(batch_size: int, image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Random grey uint8 images ``[B, 1, H, W]``, as the data modules deliver them (fixed seed)."""
    generator = torch.Generator().manual_seed(seed + batch_size)
    return torch.randint(0, 256, (batch_size, 1, *image_size), dtype=torch.uint8, generator=generator)


def onnx_input(images: torch.Tensor) -> np.ndarray:
    """The graph's input from a data-module batch: float32 ``[B, 3, H, W]`` in 0..255 (grey repeated)."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)


@torch.no_grad()
def torch_reference(task: AdaptedEncoderTask, images: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch outputs of the task's own prediction path, named like the graph's outputs.

    Classification: ``logits`` (``forward``) and ``probabilities`` (``predict_step``, flip-averaged when on);
    segmentation: ``probability`` (``predict_step``'s lesion map).
    """
    batch = {"image": images.to(task.device), "name": [f"{i}.png" for i in range(len(images))]}
    prediction = task.predict_step(batch, 0)
    if task_kind(task) == "classification":
        return {"logits": task(batch["image"]).float().cpu().numpy(),
                "probabilities": prediction["probabilities"].numpy()}
    return {"probability": prediction["probability"].numpy()}


def max_abs_differences(session: Any, references: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]
                        ) -> dict[str, float]:
    """Largest absolute difference per output between ``session`` and the references, over all batches.

    Args:
        session: An ``onnxruntime.InferenceSession`` of the exported file.
        references: batch size -> (graph input, PyTorch outputs by name).
    """
    worst: dict[str, float] = {}
    names = [output.name for output in session.get_outputs()]
    for inputs, expected in references.values():
        outputs = dict(zip(names, session.run(None, {INPUT_NAME: inputs}), strict=True))
        for name, reference in expected.items():
            if outputs[name].shape != reference.shape:
                raise ParityError(f"ONNX output {name} has shape {outputs[name].shape}, PyTorch {reference.shape}")
            difference = float(np.abs(outputs[name].astype(np.float64) - reference.astype(np.float64)).max())
            worst[name] = max(worst.get(name, 0.0), difference)
    return worst


def check_parity(differences: dict[str, float], tolerance: float) -> None:
    """Raise when any output differs by more than ``tolerance`` (NaN counts as a failure).

    Raises:
        ParityError: Names each output over the tolerance and its difference.
    """
    failed = {name: value for name, value in differences.items() if not value <= tolerance}
    if failed:
        listed = ", ".join(f"{name} {value:.3g}" for name, value in failed.items())
        raise ParityError(f"ONNX outputs differ from PyTorch by more than {tolerance:g} (max abs): {listed}")


def export_metadata(task: AdaptedEncoderTask, image_size: tuple[int, int], checkpoint: str | Path | None,
                    opset: int) -> dict[str, str]:
    """The ``metadata_props`` of the file: what the model is, what it expects and where it came from."""
    kind = task_kind(task)
    metadata = {
        "usvl_task": kind,
        "class_names": json.dumps(list(task.class_names)),
        "image_size": json.dumps(list(image_size)),
        "input": f"{INPUT_NAME}: float32 [batch, 3, {image_size[0]}, {image_size[1]}], pixel values 0..255 (grey "
                 "images repeated over the channels); normalisation is inside the graph",
        "encoder_id": str(task.encoder.encoder_id),
        "usvl_version": usvl.__version__,
        "torch_version": torch.__version__,
        "opset": str(opset),
    }
    if kind == "classification":
        metadata["outputs"] = ("logits: float32 [batch, classes]; probabilities: float32 [batch, classes], "
                               "softmax(logits / temperature + bias)")
        metadata["test_time_flip"] = json.dumps(bool(task.test_time_flip))
        calibration = getattr(task, "calibration", None)
        metadata["temperature"] = repr(float(getattr(task, "temperature", 1.0)))
        metadata["bias"] = json.dumps(getattr(task, "calibration_bias", None))
        metadata["decision_threshold"] = json.dumps(getattr(task, "decision_threshold", None))
        if calibration:
            metadata["calibration"] = json.dumps(calibration)
    else:
        metadata["outputs"] = (f"probability: float32 [batch, 1, {image_size[0]}, {image_size[1]}], lesion "
                               "probability per pixel")
        metadata["threshold"] = repr(float(task.threshold))
        metadata["lesion_classes"] = json.dumps(list(task.lesion_classes))
        if getattr(task, "lesion_gate", None):
            metadata["lesion_gate"] = json.dumps(task.lesion_gate)
    if checkpoint is not None:
        metadata["source_checkpoint"] = Path(checkpoint).name
        metadata["source_checkpoint_sha256"] = file_sha256(checkpoint)
    return metadata


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store ``metadata`` as the model's ``metadata_props`` (replacing entries of the same key)."""
    import onnx

    model = onnx.load(str(path))
    kept = [prop for prop in model.metadata_props if prop.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "usvl"
    model.producer_version = usvl.__version__
    onnx.save(model, str(path))


def torch_onnx_export(graph: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    """Run ``torch.onnx.export`` with a dynamic batch axis; one self-contained file either way.

    Raises:
        ValueError: Unknown exporter, or an opset the exporter cannot write.
        ExportError: The exporter failed (e.g. an operator without ONNX conversion).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if opset < DEFAULT_OPSET or (exporter == "dynamo" and opset < 18):
        raise ValueError(f"opset {opset} is not supported: use {DEFAULT_OPSET} or more (18 or more with dynamo)")
    names = dict(input_names=[INPUT_NAME], output_names=list(graph.output_names), opset_version=opset)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference kernel has no ONNX conversion; the plain path computes the same.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            if exporter == "torchscript":
                axes = {name: {0: "batch"} for name in (INPUT_NAME, *graph.output_names)}
                torch.onnx.export(graph, (example,), str(path), dynamo=False, dynamic_axes=axes, **names)
            else:
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(graph, (example,), str(path), dynamo=True, external_data=False,
                                  dynamic_shapes={INPUT_NAME: {0: batch}}, **names)
    except Exception as error:  # the exporters raise many kinds (unsupported operators, tracing, onnxscript)
        other = "dynamo" if exporter == "torchscript" else "torchscript"
        raise ExportError(f"torch.onnx.export ({exporter} exporter, opset {opset}) failed: "
                          f"{type(error).__name__}: {error}. Try --exporter {other}") from error
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def inference_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's count).

    Raises:
        ImportError: onnxruntime is not installed; says how to install it.
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("ONNX export and prediction need onnx and onnxruntime: pip install 'usvl[export]'") \
            from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def choose_exporter(task: torch.nn.Module) -> str:
    """The exporter for ``task``: ``dynamo`` when it computes FFTs, else ``torchscript``.

    Mona ``freq``/``hybrid`` compute FFTs, which the TorchScript exporter cannot convert (no ``rfft2``); it is
    otherwise about 15x faster to export and writes opset 17.
    """
    return "dynamo" if any(isinstance(module, FrequencyFilter) for module in task.modules()) else "torchscript"


def export_task(
    task: AdaptedEncoderTask,
    output: str | Path,
    image_size: int | Sequence[int],
    *,
    opset: int | None = None,
    exporter: str = "auto",
    checkpoint: str | Path | None = None,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    extra_metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export ``task`` to ONNX at ``image_size`` and check the file against PyTorch.

    The PyTorch reference runs first, on the task as it is (LoRA unmerged), on random grey images of
    :data:`PARITY_BATCH_SIZES`; then LoRA is merged into the base weights (in place: ``task`` is changed), the graph
    exported, the metadata written, and onnxruntime run on the same images.

    Args:
        task: A trained ``ClassificationTask`` or ``SegmentationTask`` (with its class text set if the head uses it).
        output: The ``.onnx`` file to write (its folder is created).
        image_size: The model's input size, ``int`` or ``(height, width)``: the size it was trained at.
        opset: ONNX opset; defaults to 17 with the TorchScript exporter, 18 with dynamo (its lowest).
        exporter: ``torchscript``, ``dynamo`` or ``auto`` (:func:`choose_exporter`; see :data:`EXPORTERS`).
        checkpoint: The source checkpoint, whose name and SHA-256 go into the metadata.
        verify: Run the parity check.
        tolerance: Largest accepted absolute difference of any output.
        extra_metadata: Further ``metadata_props`` entries.

    Returns:
        The :class:`ExportReport`.

    Raises:
        ParityError: The file's outputs differ from PyTorch's by more than ``tolerance``; the file is removed.
        ImportError: onnx / onnxruntime are missing.
    """
    import onnx  # noqa: F401  (fail early with the usual error when the extra is missing)

    size = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    exporter = choose_exporter(task) if exporter == "auto" else exporter
    opset = opset or (18 if exporter == "dynamo" else DEFAULT_OPSET)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    task.eval()
    references = {}
    if verify:
        for batch_size in PARITY_BATCH_SIZES:
            images = parity_images(batch_size, size)
            references[batch_size] = (onnx_input(images), torch_reference(task, images))
    merged = LoRAAdapter.merge(task.encoder)
    graph = build_graph(task).cpu()
    started = time.perf_counter()
    with torch.no_grad():
        torch_onnx_export(graph, torch.from_numpy(onnx_input(parity_images(2, size))), path, opset, exporter)
    metadata = {**export_metadata(task, size, checkpoint, opset), "exporter": exporter, **(extra_metadata or {})}
    write_metadata(path, metadata)
    seconds = time.perf_counter() - started
    report = ExportReport(path, task_kind(task), seconds, path.stat().st_size, merged, metadata=metadata)
    if verify:
        report.parity = max_abs_differences(inference_session(path), references)
        try:
            check_parity(report.parity, tolerance)
        except ParityError as error:
            path.unlink()
            other = "dynamo" if exporter == "torchscript" else "torchscript"
            raise ParityError(f"{error}. {path} was removed. Try --exporter {other}; if the difference stays, "
                              "report it as a bug of usvl export") from None
    return report


def export_run(
    config: str | Path,
    ckpt_path: str | Path,
    output: str | Path | None = None,
    *,
    image_size: int | Sequence[int] | None = None,
    **options: Any,
) -> ExportReport:
    """``usvl export``: the run's task (``config`` + ``ckpt_path``) to ONNX, checked against PyTorch.

    Args:
        config: The run's ``config.yaml``.
        ckpt_path: The checkpoint to export.
        output: The ``.onnx`` file; defaults to the checkpoint's path with the suffix ``.onnx``.
        image_size: Input size; defaults to the config's ``data.init_args.image_size``.
        **options: Keyword options of :func:`export_task` (``opset``, ``exporter``, ``verify``, ``tolerance``).

    Raises:
        ValueError: No image size in the config and none given.
    """
    size = image_size or config_image_size(read_run_config(config))
    if size is None:
        raise ValueError(f"{config} has no data.init_args.image_size: pass --image_size (the training size)")
    task = load_task(config, ckpt_path)
    target = Path(output) if output else Path(ckpt_path).with_suffix(".onnx")
    return export_task(task, target, size, checkpoint=ckpt_path, **options)
