"""Draw detections (boxes, class names, scores) on images with OpenCV and write PNG files."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from .io import atomic_write_bytes


def class_color(label: int) -> Tuple[int, int, int]:
    """A stable, well-spread BGR colour for class ``label``."""
    hue = (int(label) * 0.618033988749895) % 1.0
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: Optional[np.ndarray] = None,
                    class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.0,
                    thickness: int = 2) -> np.ndarray:
    """Draw boxes with ``"name score"`` captions on a copy of ``image``.

    Args:
        image: uint8 [H, W, 3] BGR (OpenCV order).
        boxes: [N, 4] x1, y1, x2, y2 in ``image`` pixels.
        labels: [N] int class ids (1..C); names from ``class_names[label]`` (index 0 is background).
        scores: [N] confidences or None (ground truth); boxes below ``score_threshold`` are skipped.
    Returns: the annotated uint8 [H, W, 3] BGR image.
    """
    import cv2

    out = np.ascontiguousarray(image.copy())
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, min(out.shape[:2]) / 1000.0)
    order = np.argsort(scores) if scores is not None else np.arange(len(boxes))  # best drawn last (on top)
    for i in order:
        if scores is not None and scores[i] < score_threshold:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        color = class_color(labels[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        name = class_names[labels[i]] if class_names is not None and 0 <= labels[i] < len(class_names) else str(labels[i])
        caption = name if scores is None else f"{name} {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(caption, font, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + base - 1), color, -1)
        cv2.putText(out, caption, (x1 + 1, ty - 1), font, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_boxlist(image: np.ndarray, boxlist, class_names: Optional[Sequence[str]] = None,
                 score_threshold: float = 0.0) -> np.ndarray:
    """:func:`draw_detections` for a BoxList (fields "labels", optional "scores") sized like ``image``;
    the boxes are rescaled if the BoxList's size differs from the image's."""
    h, w = image.shape[:2]
    if tuple(boxlist.size) != (w, h):
        boxlist = boxlist.resize((w, h))
    scores = boxlist.get_field("scores").detach().cpu().numpy() if boxlist.has_field("scores") else None
    return draw_detections(image, boxlist.bbox.detach().cpu().numpy(), boxlist.get_field("labels").cpu().numpy(),
                           scores, class_names, score_threshold)


def write_png(path: str, image: np.ndarray) -> None:
    """Encode ``image`` (uint8 BGR) as PNG and write it atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, buf.tobytes())


def denormalize_image(image, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                      to_bgr255: bool = True) -> np.ndarray:
    """Undo the ``ToTensor`` + ``Normalize`` test/train transforms: ``Tensor[3, H, W]`` -> uint8 [H, W, 3] BGR.

    ``to_bgr255`` True: the tensor is ``(bgr_0_255 - mean) / std``; False: ``(rgb_0_1 - mean) / std``.
    A uint8 tensor (the loaders' images, not normalised: the model does that) is BGR 0..255 already."""
    import torch

    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"denormalize_image: expected a [3, H, W] tensor, got shape {list(image.shape)}")
        return image.detach().cpu().permute(1, 2, 0).contiguous().numpy()

    x = image.detach().to("cpu", torch.float32)
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"denormalize_image: expected a [3, H, W] tensor, got shape {list(x.shape)}")
    x = x * x.new_tensor(pixel_std)[:, None, None] + x.new_tensor(pixel_mean)[:, None, None]
    if not to_bgr255:
        x = x[[2, 1, 0]] * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
