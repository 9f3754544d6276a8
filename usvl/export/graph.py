"""The inference graph that is exported: raw image batch in, class probabilities or a lesion map out.

The graph holds the task's adapted encoder and head and runs its own code (``prepare_images``, ``encode_image``,
the head), with the projected class text computed once and baked in as a constant. Input: ``image``, float32
``[B, 3, H, W]`` with values in 0..255 (grey images repeated over the three channels, as the tasks do).
"""

from __future__ import annotations

import torch
from torch import nn

from usvl.tasks.base import AdaptedEncoderTask
from usvl.tasks.classification import ClassificationTask
from usvl.tasks.segmentation import SegmentationTask

INPUT_NAME = "image"
"""Name of the graph's input."""


def task_kind(task: AdaptedEncoderTask) -> str:
    """``classification`` or ``segmentation``.

    Raises:
        TypeError: Another kind of task (only those two have an inference graph).
    """
    if isinstance(task, ClassificationTask):
        return "classification"
    if isinstance(task, SegmentationTask):
        return "segmentation"
    raise TypeError(f"No export for {type(task).__name__}: only ClassificationTask and SegmentationTask export")


class ClassificationGraph(nn.Module):
    """``image -> (logits [B, K], probabilities [B, K])``, as ``ClassificationTask`` predicts them.

    ``probabilities`` are calibrated with the task's stored temperature (``softmax(logits / T)``; T = 1 without a
    calibration record) and averaged with those of the mirrored image when the task has ``test_time_flip`` on, as
    in its ``predict_step``; ``logits`` are the plain logits of the image itself.
    """

    output_names = ("logits", "probabilities")

    def __init__(self, task: ClassificationTask) -> None:
        super().__init__()
        self.task = task
        self.test_time_flip = bool(task.test_time_flip)
        self.temperature = float(getattr(task, "temperature", 1.0))
        bias = getattr(task, "calibration_bias", None)
        self.register_buffer("bias", None if bias is None else torch.tensor(bias, dtype=torch.float32),
                             persistent=False)
        text = task.class_text().detach().float() if task.uses_text else None
        self.register_buffer("class_text", text, persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch."""
        features = self.task.encoder.encode_image(self.task.prepare_images(images))
        return self.task.head(features, self.class_text)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and (flip-averaged) probabilities."""
        logits = self.logits(image)
        probabilities = self.calibrated(logits).softmax(dim=-1)
        if self.test_time_flip:
            probabilities = (probabilities + self.calibrated(self.logits(image.flip(-1))).softmax(dim=-1)) / 2
        return logits.float(), probabilities

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Float logits divided by the temperature, plus the class biases when stored (as they are otherwise)."""
        logits = logits.float() if self.temperature == 1.0 else logits.float() / self.temperature
        return logits if self.bias is None else logits + self.bias


class SegmentationGraph(nn.Module):
    """``image -> probability [B, 1, H, W]``: the lesion probability map at the input size, as ``predict_step``."""

    output_names = ("probability",)

    def __init__(self, task: SegmentationTask) -> None:
        super().__init__()
        self.task = task
        text = task.lesion_text().detach().float() if task.uses_text else None
        self.register_buffer("lesion_text", text, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the head's lesion logits."""
        features = self.task.encoder.encode_image(self.task.prepare_images(image))
        logits = self.task.head(features, self.lesion_text, tuple(image.shape[-2:]))
        return logits.float().sigmoid()


def build_graph(task: AdaptedEncoderTask) -> ClassificationGraph | SegmentationGraph:
    """The export graph of ``task`` in eval mode, in the contiguous memory format (ONNX has no channels-last).

    The task is changed in place (eval mode, memory format), so build the graph after any PyTorch reference run.
    """
    graph = ClassificationGraph(task) if task_kind(task) == "classification" else SegmentationGraph(task)
    task.memory_format = torch.contiguous_format
    task.encoder.to(memory_format=torch.contiguous_format)
    return graph.eval()
