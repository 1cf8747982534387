"""The optional packages of the ``deploy`` extra, imported on demand with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "DEPLOY_PACKAGES"]

#: import name -> pip package of the ``deploy`` extra.
DEPLOY_PACKAGES = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxconverter_common": "onnxconverter-common",
    "onnxslim": "onnxslim",
}


def require(module: str, feature: str = "") -> ModuleType:
    """Import ``module`` (one of :data:`DEPLOY_PACKAGES`), or raise ImportError naming the pip
    package to install and the extra that has it; ``feature`` says what needed it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = DEPLOY_PACKAGES.get(module, module)
        need = f" (needed for {feature})" if feature else ""
        raise ImportError(f"the optional package {package!r} is not installed{need}: "
                          f"pip install {package}, or pip install -e \".[deploy]\" for all the "
                          f"deployment packages") from e
