"""ONNX export of trained usvl models (``usvl export``) and prediction from the exported file.

Needs the ``export`` extra (``pip install 'usvl[export]'``: onnx, onnxruntime, onnxscript).
"""

from usvl.export.graph import ClassificationGraph, SegmentationGraph, build_graph
from usvl.export.load import load_task
from usvl.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportReport, ParityError, export_run, export_task
from usvl.export.runtime import OnnxModel, read_metadata

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ClassificationGraph",
    "ExportReport",
    "OnnxModel",
    "ParityError",
    "SegmentationGraph",
    "build_graph",
    "export_run",
    "export_task",
    "load_task",
    "read_metadata",
]
