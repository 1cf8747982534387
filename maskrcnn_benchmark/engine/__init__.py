"""Training loop, inference and evaluation entry points."""
from .inference import compute_on_dataset, inference, run_test  # noqa: F401
from .trainer import do_train, train  # noqa: F401
