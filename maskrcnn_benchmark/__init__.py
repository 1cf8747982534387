"""Dynamic ATSS / ATSS / AutoAssign / FreeAnchor detection toolkit (maskrcnn-benchmark layout)."""
import torch  # noqa: F401  (loads libtorch/libc10 before the compiled extension maskrcnn_benchmark._C)

__version__ = "0.1.0"
