from .build import build_transforms  # noqa: F401
from .transforms import (  # noqa: F401
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    ToTensor,
    get_size,
)
