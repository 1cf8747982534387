"""Root conftest: make the checkout importable (tests run against the in-place build)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))  # test helpers (dist_helpers.py)
if HERE not in sys.path:
    sys.path.append(HERE)
