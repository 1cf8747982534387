"""Deployment: ONNX export of the dense detectors (:mod:`.onnx`) and onnxruntime inference
(:mod:`.runtime`). The optional packages (``pip install -e ".[deploy]"``: onnx, onnxruntime,
onnxconverter-common, onnxslim) are imported only when a function needs them."""
from .deps import require  # noqa: F401

__all__ = ["require"]
