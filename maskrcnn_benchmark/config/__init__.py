from .defaults import _C as cfg  # noqa: F401
from .loading import add_config_args, cfg_from_args, config_differences, setup_cfg  # noqa: F401
