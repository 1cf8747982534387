"""Box container used across the detector: boxes plus per-box fields of the same length."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

FLIP_LEFT_RIGHT = 0
FLIP_TOP_BOTTOM = 1


class BoxList:
    """A set of ``N`` boxes of one image in continuous ``x1, y1, x2, y2`` pixels (no "+1").

    Args:
        bbox: Tensor[N, 4] xyxy (or anything ``torch.as_tensor`` accepts).
        image_size: ``(width, height)`` of the image the boxes live in (``size``; note that
            ``ImageList.image_sizes`` are ``(height, width)``).

    Extra per-box data (``labels``: Tensor[N] int64, ``scores``: Tensor[N], ...) lives in fields,
    each of which must have ``N`` rows.
    """

    def __init__(self, bbox, image_size: Tuple[int, int]):
        device = bbox.device if isinstance(bbox, torch.Tensor) else torch.device("cpu")
        bbox = torch.as_tensor(bbox, dtype=torch.float32 if not isinstance(bbox, torch.Tensor)
                               or not bbox.is_floating_point() else bbox.dtype, device=device)
        if bbox.numel() == 0:
            bbox = bbox.reshape(0, 4)
        if bbox.ndim != 2 or bbox.shape[-1] != 4:
            raise ValueError(f"BoxList: bbox must have shape [N, 4], got {tuple(bbox.shape)}")
        self.bbox = bbox
        self.size = (int(image_size[0]), int(image_size[1]))  # (w, h)
        self.extra_fields: Dict[str, torch.Tensor] = {}

    # ---- fields -------------------------------------------------------------------------
    def add_field(self, name: str, value) -> None:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] != len(self):
            raise ValueError(f"BoxList: field {name!r} has {value.shape[0]} rows, expected {len(self)}")
        self.extra_fields[name] = value

    def get_field(self, name: str):
        if name not in self.extra_fields:
            raise KeyError(f"BoxList has no field {name!r} (fields: {sorted(self.extra_fields)})")
        return self.extra_fields[name]

    def has_field(self, name: str) -> bool:
        return name in self.extra_fields

    def _copy_with(self, bbox: torch.Tensor, size=None, fields=None) -> "BoxList":
        out = BoxList(bbox, size if size is not None else self.size)
        for k, v in (fields if fields is not None else self.extra_fields).items():
            out.extra_fields[k] = v
        return out

    # ---- geometry -----------------------------------------------------------------------
    def xywh(self) -> torch.Tensor:
        """Tensor[N, 4] of x, y, w, h."""
        x1, y1, x2, y2 = self.bbox.unbind(-1)
        return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)

    def resize(self, size: Tuple[int, int], legacy_plus_one: bool = False) -> "BoxList":
        """Rescale the boxes to a new ``(width, height)`` image size: every coordinate times the ratio.

        ``legacy_plus_one``: as the original maskrcnn-benchmark did in its "+1" frame, where the far
        edges are the inclusive pixel indices ``x2 - 1``, ``y2 - 1`` that it scaled as well: ``x2 ->
        (x2 - 1) * rw + 1`` (``MODEL.LEGACY_PLUS_ONE``; see utils/legacy_plus_one.py)."""
        rw = float(size[0]) / self.size[0]
        rh = float(size[1]) / self.size[1]
        scale = self.bbox.new_tensor([rw, rh, rw, rh])
        bbox = self.bbox * scale
        if legacy_plus_one:
            bbox = bbox + self.bbox.new_tensor([0.0, 0.0, 1.0 - rw, 1.0 - rh])
        return self._copy_with(bbox, size)

    def transpose(self, method: int) -> "BoxList":
        """Flip the boxes horizontally (FLIP_LEFT_RIGHT) or vertically (FLIP_TOP_BOTTOM)."""
        w, h = self.size
        x1, y1, x2, y2 = self.bbox.unbind(-1)
        if method == FLIP_LEFT_RIGHT:
            bbox = torch.stack([w - x2, y1, w - x1, y2], dim=-1)
        elif method == FLIP_TOP_BOTTOM:
            bbox = torch.stack([x1, h - y2, x2, h - y1], dim=-1)
        else:
            raise ValueError(f"BoxList.transpose: unknown method {method}")
        return self._copy_with(bbox)

    def to(self, device, non_blocking: bool = False) -> "BoxList":
        """The boxes and tensor fields on ``device``; ``non_blocking`` (from pinned memory) does
        not wait for the copies."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "BoxList":
        """The boxes and tensor fields in page-locked host memory (``DataLoader(pin_memory=True)``)."""
        return self._map_tensors(lambda t: t.pin_memory())

    def _map_tensors(self, fn) -> "BoxList":
        fields = {k: (fn(v) if isinstance(v, torch.Tensor) else v) for k, v in self.extra_fields.items()}
        return self._copy_with(fn(self.bbox), fields=fields)

    def __getitem__(self, item) -> "BoxList":
        fields = {k: (v[item] if isinstance(v, torch.Tensor) and v.ndim > 0 else v)
                  for k, v in self.extra_fields.items()}
        return self._copy_with(self.bbox[item].reshape(-1, 4), fields=fields)

    def __len__(self) -> int:
        return self.bbox.shape[0]

    def __repr__(self) -> str:
        return (f"BoxList(num_boxes={len(self)}, image_width={self.size[0]}, "
                f"image_height={self.size[1]}, fields={sorted(self.extra_fields)})")
