from yacs.config import CfgNode  # noqa: F401  (the node type of a module's own config node)

from .defaults import _C as cfg  # noqa: F401
from .loading import add_config_args, cfg_from_args, config_differences, setup_cfg  # noqa: F401
from .registration import CONFIG_NODES, register_config_node  # noqa: F401
