"""Box container used across the detector: boxes plus per-box fields of the same length."""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch

FLIP_LEFT_RIGHT = 0
FLIP_TOP_BOTTOM = 1


class BoxList:
    """A set of ``N`` boxes of one image in continuous ``x1, y1, x2, y2`` pixels (no "+1").

    Args:
        bbox: Tensor[N, 4] (or anything ``torch.as_tensor`` accepts), xyxy or xywh.
        image_size: ``(width, height)`` of the image the boxes live in.
        mode: ``"xyxy"`` (stored as is) or ``"xywh"`` (converted to xyxy on construction).

    Extra per-box data (``labels``: Tensor[N] int64, ``scores``: Tensor[N], ...) lives in fields,
    each of which must have ``N`` rows.
    """

    def __init__(self, bbox, image_size: Tuple[int, int], mode: str = "xyxy"):
        device = bbox.device if isinstance(bbox, torch.Tensor) else torch.device("cpu")
        bbox = torch.as_tensor(bbox, dtype=torch.float32 if not isinstance(bbox, torch.Tensor)
                               or not bbox.is_floating_point() else bbox.dtype, device=device)
        if bbox.numel() == 0:
            bbox = bbox.reshape(0, 4)
        if bbox.ndim != 2 or bbox.shape[-1] != 4:
            raise ValueError(f"BoxList: bbox must have shape [N, 4], got {tuple(bbox.shape)}")
        if mode not in ("xyxy", "xywh"):
            raise ValueError(f"BoxList: mode must be 'xyxy' or 'xywh', got {mode!r}")
        if mode == "xywh":
            x, y, w, h = bbox.unbind(-1)
            bbox = torch.stack([x, y, x + w, y + h], dim=-1)
        self.bbox = bbox
        self.size = (int(image_size[0]), int(image_size[1]))
        self.mode = "xyxy"
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

    def fields(self) -> Iterable[str]:
        return list(self.extra_fields.keys())

    def _copy_with(self, bbox: torch.Tensor, size=None, fields=None) -> "BoxList":
        out = BoxList(bbox, size if size is not None else self.size)
        for k, v in (fields if fields is not None else self.extra_fields).items():
            out.extra_fields[k] = v
        return out

    # ---- geometry -----------------------------------------------------------------------
    def convert(self, mode: str) -> "BoxList":
        if mode != "xyxy":
            raise ValueError("BoxList stores xyxy only; use .xywh() for the xywh view")
        return self

    def xywh(self) -> torch.Tensor:
        """Tensor[N, 4] of x, y, w, h."""
        x1, y1, x2, y2 = self.bbox.unbind(-1)
        return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)

    def area(self) -> torch.Tensor:
        """Tensor[N] of box areas (0 for degenerate boxes)."""
        wh = (self.bbox[:, 2:] - self.bbox[:, :2]).clamp(min=0)
        return wh[:, 0] * wh[:, 1]

    def resize(self, size: Tuple[int, int]) -> "BoxList":
        """Rescale the boxes to a new ``(width, height)`` image size."""
        rw = float(size[0]) / self.size[0]
        rh = float(size[1]) / self.size[1]
        scale = self.bbox.new_tensor([rw, rh, rw, rh])
        return self._copy_with(self.bbox * scale, size)

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

    def clip_to_image(self, remove_empty: bool = True) -> "BoxList":
        """Clamp boxes to ``[0, w] x [0, h]``; optionally drop boxes left with no area."""
        w, h = self.size
        bbox = torch.stack([self.bbox[:, 0].clamp(0, w), self.bbox[:, 1].clamp(0, h),
                            self.bbox[:, 2].clamp(0, w), self.bbox[:, 3].clamp(0, h)], dim=-1)
        out = self._copy_with(bbox)
        if remove_empty:
            keep = (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
            return out[keep]
        return out

    def to(self, device) -> "BoxList":
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                  for k, v in self.extra_fields.items()}
        return self._copy_with(self.bbox.to(device), fields=fields)

    def __getitem__(self, item) -> "BoxList":
        fields = {k: (v[item] if isinstance(v, torch.Tensor) and v.ndim > 0 else v)
                  for k, v in self.extra_fields.items()}
        return self._copy_with(self.bbox[item].reshape(-1, 4), fields=fields)

    def __len__(self) -> int:
        return self.bbox.shape[0]

    def __repr__(self) -> str:
        return (f"BoxList(num_boxes={len(self)}, image_width={self.size[0]}, "
                f"image_height={self.size[1]}, fields={sorted(self.extra_fields)})")


def cat_boxlist(boxlists) -> BoxList:
    """Concatenate BoxLists of the same image size and the same fields."""
    boxlists = list(boxlists)
    if not boxlists:
        raise ValueError("cat_boxlist: empty list")
    size = boxlists[0].size
    names = set(boxlists[0].fields())
    for b in boxlists:
        if b.size != size or set(b.fields()) != names:
            raise ValueError("cat_boxlist: BoxLists differ in image size or fields")
    out = BoxList(torch.cat([b.bbox for b in boxlists], 0), size)
    for n in names:
        out.add_field(n, torch.cat([b.get_field(n) for b in boxlists], 0))
    return out
