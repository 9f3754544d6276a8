"""Prediction from an exported ONNX file with onnxruntime, inside ``usvl predict``.

:class:`OnnxModel` is a LightningModule whose ``predict_step`` returns what the PyTorch task's returns, so the
data modules and prediction writers of a run work unchanged::

    usvl predict --config RUN/config.yaml --model usvl.export.OnnxModel --model.init_args.path model.onnx
        --data usvl.data.FolderDataModule --data.root FOLDER

(one command line).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from usvl.export.onnx import inference_session, onnx_input
from usvl.metrics.lesion_gate import apply_lesion_gate

log = logging.getLogger(__name__)


def read_metadata(session: Any) -> dict[str, str]:
    """The ``metadata_props`` of an onnxruntime session's model."""
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxModel(pl.LightningModule):
    """An exported usvl model (``usvl export``) run by onnxruntime, for ``usvl predict``.

    Task kind, class names, input size, segmentation threshold and lesion gate, and a classifier's calibration
    (temperature inside the graph, decision threshold and record in the metadata) come from the file's metadata.
    The class text is inside the graph, so the ``TextEmbeddingCache`` callback of a run config has nothing to do
    (``uses_text`` is False). The arguments ``num_classes`` and ``class_names`` are linked from the data module by
    ``usvl``; the file's classes are the ones predicted, and a data module with other classes is reported in the log.

    Args:
        path: The ``.onnx`` file written by ``usvl export``.
        num_classes: Linked from the data module (checked against the file, not used).
        class_names: Linked from the data module (checked against the file, not used).
        threshold: Lesion probability threshold of segmentation masks; defaults to the exported model's.
        threads: onnxruntime intra-op threads; defaults to torch's thread count (``USVL_THREADS``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file has no usvl metadata (it was not written by ``usvl export``), or ``threshold`` is
            outside (0, 1).
    """

    uses_text = False

    def __init__(
        self,
        path: str,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        threshold: float | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX file {path} not found: write it with usvl export")
        self.path = str(path)
        self.session = inference_session(path, threads)
        self.metadata = read_metadata(self.session)
        if "usvl_task" not in self.metadata:
            raise ValueError(f"{path} has no usvl metadata: predict with a file written by usvl export")
        self.kind = self.metadata["usvl_task"]
        self.class_names = [str(name) for name in json.loads(self.metadata["class_names"])]
        self.num_classes = len(self.class_names)
        self.image_size = tuple(json.loads(self.metadata["image_size"]))
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.threshold = float(threshold if threshold is not None else self.metadata.get("threshold", 0.5))
        self.calibration = json.loads(self.metadata["calibration"]) if "calibration" in self.metadata else None
        self.decision_threshold = json.loads(self.metadata.get("decision_threshold", "null"))
        self.lesion_gate = json.loads(self.metadata["lesion_gate"]) if "lesion_gate" in self.metadata else None
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        linked = list(class_names) if class_names else None
        if (linked is not None and linked != self.class_names) or (num_classes not in (None, self.num_classes)):
            log.info("Predicting the classes of %s %s; the data module's (%s) are not used", path, self.class_names,
                     linked or num_classes)

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The file's outputs for a batch of uint8 or float images ``[B, 1|3, H, W]`` in 0..255, by output name.

        Raises:
            ValueError: The images are not at the exported size (set the data module's ``image_size``).
        """
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"{self.path} takes {self.image_size[0]}x{self.image_size[1]} images, the batch has "
                             f"{images.shape[-2]}x{images.shape[-1]}: set --data.init_args.image_size "
                             f"{self.image_size[0]}")
        outputs = self.session.run(None, {"image": onnx_input(images)})
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs, strict=True)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, K]`` (classification) or lesion probabilities ``[B, 1, H, W]`` (segmentation)."""
        outputs = self.run(images)
        return outputs["logits"] if self.kind == "classification" else outputs["probability"]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """What the PyTorch task's ``predict_step`` returns, from the ONNX file.

        Classification: names, (calibrated) class probabilities, the predicted class (at the exported decision
        threshold with two classes, else the argmax) and that threshold; segmentation: names, ``uint8`` masks at
        ``threshold`` (emptied by the exported lesion gate, when there is one) and lesion probabilities
        ``[B, 1, H, W]``.
        """
        outputs = self.run(batch["image"])
        if self.kind == "classification":
            probabilities = outputs["probabilities"]
            threshold = self.decision_threshold if probabilities.shape[1] == 2 else None
            prediction = (probabilities.argmax(dim=-1) if threshold is None
                          else (probabilities[:, 1] >= threshold).long())
            return {"name": batch["name"], "probabilities": probabilities, "prediction": prediction,
                    "threshold": threshold}
        probability = outputs["probability"]
        masks = probability > self.threshold
        if self.lesion_gate is not None:
            masks, _ = apply_lesion_gate(masks, probability, self.threshold, self.lesion_gate["threshold"])
        return {"name": batch["name"], "mask": masks.to(torch.uint8), "probability": probability}
