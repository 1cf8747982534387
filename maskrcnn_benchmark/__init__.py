"""Dynamic ATSS / ATSS / AutoAssign / FreeAnchor detection toolkit (maskrcnn-benchmark layout)."""
__version__ = "0.1.0"
