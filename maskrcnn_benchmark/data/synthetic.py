"""A small, seedable, COCO-format detection dataset of coloured shapes on textured backgrounds.

Six categories (``CATEGORIES``): filled circle, filled square, triangle, ring, cross (plus sign)
and elongated ellipse, each in a random saturated colour that contrasts with the background
under it. Object sizes (the longer side of the box) are log-uniform between
``min_object_size`` px and ``max_object_frac`` of the image's shorter side. Objects may overlap
(IoU <= ``max_iou``, and at most ``max_covered`` of an earlier object's box under a later one,
later objects drawn on top); the box annotation is the full extent of the shape, occluded or not.
Backgrounds are low-contrast gradients, smooth colour noise or stripes, plus pixel noise.

Layout written by :func:`generate_synthetic_coco`::

    <out_dir>/train/train_000001.jpg ...        <out_dir>/annotations/instances_train.json
    <out_dir>/val/val_000001.jpg ...            <out_dir>/annotations/instances_val.json

:func:`generate_synthetic_voc` writes the same images in the Pascal VOC layout instead::

    <out_dir>/JPEGImages/train_000001.jpg ...   <out_dir>/Annotations/train_000001.xml ...
    <out_dir>/ImageSets/Main/train.txt, val.txt, trainval.txt

(each box as the 1-based inclusive pixels it touches: ``xmin = floor(x1) + 1``, ``xmax = ceil(x2)``,
which :mod:`maskrcnn_benchmark.data.datasets.voc` reads back as ``floor(x1), ..., ceil(x2)``).

Same arguments -> byte-identical files: image ``i`` of a split draws from its own generator
seeded with ``(seed, split, i)``. Generation is atomic: everything is written into a temporary
sibling folder that is renamed to ``out_dir`` at the end, so ``out_dir`` either does not exist
or is complete.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from maskrcnn_benchmark.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["CATEGORIES", "SyntheticConfig", "render_image", "generate_split", "generate_synthetic_coco",
           "ensure_synthetic_coco", "split_paths", "generate_split_voc", "generate_synthetic_voc", "voc_xml"]

CATEGORIES: Tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "ellipse")
SPLITS = {"train": 0, "val": 1}
_SHIFT = 4  # cv2 sub-pixel bits for polygon vertices
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class SyntheticConfig:
    """Generation parameters (sizes in pixels)."""

    image_size: int = 256  # image sides are drawn from [min_side_frac * image_size, image_size]
    min_side_frac: float = 0.75
    min_objects: int = 1
    max_objects: int = 6
    min_object_size: float = 12.0  # smallest longer box side
    max_object_frac: float = 0.6  # largest longer box side, as a fraction of the image's shorter side
    max_iou: float = 0.5  # max IoU between two objects' boxes
    max_covered: float = 0.4  # max fraction of an earlier box covered by a later one
    noise_std: float = 4.0  # pixel noise (0..255 scale)
    min_contrast: float = 70.0  # wanted mean |object colour - background| over channels (0..255)
    image_format: str = "jpg"  # "jpg" (quality jpeg_quality) or "png"
    jpeg_quality: int = 95


# ---- drawing -------------------------------------------------------------------------------
def _hsv_colour(rng: np.random.Generator, s_range, v_range) -> np.ndarray:
    """One random BGR colour float[3] in 0..255 from HSV ranges (fractions)."""
    hsv = np.uint8([[[rng.integers(0, 180), round(255 * rng.uniform(*s_range)),
                      round(255 * rng.uniform(*v_range))]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32[h, w, 3] BGR 0..255: a gradient, smooth colour noise or stripes of muted colours."""
    base = _hsv_colour(rng, (0.0, 0.35), (0.3, 0.8))
    other = np.clip(base + rng.uniform(-45, 45, size=3), 0, 255).astype(np.float32)
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # linear gradient in a random direction
        a = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 1:  # smooth noise: a coarse random grid upsampled
        gh, gw = rng.integers(3, 9, size=2)
        t = cv2.resize(rng.uniform(0, 1, size=(gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
    else:  # stripes
        a = rng.uniform(0, np.pi)
        period = rng.uniform(8, 48)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(a) + yy * np.sin(a)) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi))
    return base[None, None] * (1 - t[..., None]) + other[None, None] * t[..., None]


def _shape_polygons(name: str, w: float, h: float,
                    rng: np.random.Generator) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(filled polygons, hole polygons) as float[P, 2] xy in a box ``[0, w] x [0, h]``."""
    def ellipse(cx, cy, rx, ry, n=48):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)

    if name in ("circle", "ellipse"):
        return [ellipse(w / 2, h / 2, w / 2, h / 2)], []
    if name == "square":
        return [np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)], []
    if name == "triangle":
        return [np.array([[w / 2, 0], [w, h], [0, h]], dtype=np.float64)], []
    if name == "ring":
        inner = rng.uniform(0.45, 0.6)
        return [ellipse(w / 2, h / 2, w / 2, h / 2)], [ellipse(w / 2, h / 2, inner * w / 2, inner * h / 2)]
    if name == "cross":
        a = w * rng.uniform(0.3, 0.38) / 2
        cx, cy = w / 2, h / 2
        return [np.array([[cx - a, 0], [cx + a, 0], [cx + a, cy - a], [w, cy - a], [w, cy + a], [cx + a, cy + a],
                          [cx + a, h], [cx - a, h], [cx - a, cy + a], [0, cy + a], [0, cy - a], [cx - a, cy - a]],
                         dtype=np.float64)], []
    raise ValueError(f"unknown shape {name!r}")


def _shape_size(name: str, size: float, rng: np.random.Generator) -> Tuple[float, float]:
    """(w, h) of a shape whose longer side is ``size``."""
    if name == "triangle":
        return size, size * 0.87
    if name == "ellipse":
        short = size * rng.uniform(0.4, 0.55)
        return (size, short) if rng.random() < 0.5 else (short, size)
    return size, size


def _mask(name: str, w: float, h: float, ox: float, oy: float, mw: int, mh: int, rng) -> np.ndarray:
    """float32[mh, mw] coverage 0..1 of the shape placed at offset (ox, oy) in an mw x mh patch."""
    fills, holes = _shape_polygons(name, w, h, rng)
    mask = np.zeros((mh, mw), np.uint8)
    # continuous coordinates -> cv2 pixel-centre coordinates (-0.5), fixed point with _SHIFT bits
    to_cv = lambda p: np.round((p + [ox - 0.5, oy - 0.5]) * _ONE).astype(np.int32)  # noqa: E731
    cv2.fillPoly(mask, [to_cv(p) for p in fills], 255, cv2.LINE_AA, _SHIFT)
    if holes:
        cv2.fillPoly(mask, [to_cv(p) for p in holes], 0, cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255.0


def _iou_and_cover(box: np.ndarray, others: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """IoU of xyxy ``box`` with ``others[N, 4]``, and the fraction of each other box it covers."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / (area + areas - inter), inter / areas


def render_image(rng: np.random.Generator,
                 cfg: SyntheticConfig = SyntheticConfig()) -> Tuple[np.ndarray, List[Tuple[int, List[float]]]]:
    """Draw one image.

    Returns:
        image: uint8[H, W, 3] BGR.
        objects: list of ``(category index 0..5, [x, y, w, h])`` in continuous pixels, in drawing order.
    """
    lo = int(round(cfg.min_side_frac * cfg.image_size))
    width, height = (int(v) for v in rng.integers(lo, cfg.image_size + 1, size=2))
    img = _background(rng, height, width)
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    max_size = cfg.max_object_frac * min(width, height)
    boxes = np.zeros((0, 4))
    objects: List[Tuple[int, List[float]]] = []
    for _ in range(n_objects):
        cat = int(rng.integers(0, len(CATEGORIES)))
        name = CATEGORIES[cat]
        for _attempt in range(30):
            size = float(np.exp(rng.uniform(np.log(cfg.min_object_size), np.log(max_size))))
            w, h = _shape_size(name, size, rng)
            x = float(rng.uniform(0, width - w))
            y = float(rng.uniform(0, height - h))
            box = np.array([x, y, x + w, y + h])
            if len(boxes):
                iou, cover = _iou_and_cover(box, boxes)
                if (iou > cfg.max_iou).any() or (cover > cfg.max_covered).any():
                    continue
            break
        else:
            continue
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        x1, y1 = min(int(math.ceil(x + w)) + 1, width), min(int(math.ceil(y + h)) + 1, height)
        alpha = _mask(name, w, h, x - x0, y - y0, x1 - x0, y1 - y0, rng)[..., None]
        patch = img[y0:y1, x0:x1]
        bg_mean = (patch * alpha).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
        best, best_contrast = None, -1.0
        for _c in range(12):  # saturated colour that stands out from the background under the shape
            colour = _hsv_colour(rng, (0.55, 1.0), (0.45, 1.0))
            contrast = float(np.abs(colour - bg_mean).mean())
            if contrast > best_contrast:
                best, best_contrast = colour, contrast
            if contrast >= cfg.min_contrast:
                break
        img[y0:y1, x0:x1] = patch * (1 - alpha) + best[None, None] * alpha
        boxes = np.concatenate([boxes, box[None]], axis=0)
        objects.append((cat, [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]))
    if cfg.noise_std > 0:
        img += rng.normal(0.0, cfg.noise_std, size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


# ---- writing -------------------------------------------------------------------------------
def split_paths(out_dir: str, split: str) -> Dict[str, str]:
    """``{"root": image folder, "ann_file": json path}`` of a split under ``out_dir``."""
    return {"root": os.path.join(out_dir, split),
            "ann_file": os.path.join(out_dir, "annotations", f"instances_{split}.json")}


def _encode(image: np.ndarray, cfg: SyntheticConfig) -> bytes:
    if cfg.image_format in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)])
    elif cfg.image_format == "png":
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {cfg.image_format!r}")
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def generate_split(out_dir: str, split: str, num_images: int, seed: int,
                   cfg: SyntheticConfig = SyntheticConfig()) -> dict:
    """Write ``num_images`` images of ``split`` under ``out_dir`` and their COCO json; return the json dict."""
    paths = split_paths(out_dir, split)
    os.makedirs(paths["root"], exist_ok=True)
    ext = "jpg" if cfg.image_format in ("jpg", "jpeg") else "png"
    images, annotations = [], []
    for i in range(1, num_images + 1):
        rng = np.random.default_rng([int(seed), SPLITS[split], i])
        image, objects = render_image(rng, cfg)
        file_name = f"{split}_{i:06d}.{ext}"
        with open(os.path.join(paths["root"], file_name), "wb") as f:
            f.write(_encode(image, cfg))
        images.append({"id": i, "file_name": file_name, "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        for cat, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat + 1,
                                "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0})
    data = {
        "info": {"description": f"synthetic shapes ({split})", "seed": int(seed), "config": asdict(cfg)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CATEGORIES)],
    }
    atomic_write_json(paths["ann_file"], data)
    return data


def generate_synthetic_coco(out_dir: str, num_train: int = 600, num_val: int = 100, seed: int = 0,
                            cfg: Optional[SyntheticConfig] = None, overwrite: bool = False,
                            **config_overrides) -> Dict[str, Dict[str, str]]:
    """Generate train and val splits into ``out_dir`` atomically.

    Args:
        out_dir: final folder; must not exist unless ``overwrite``.
        num_train, num_val: images per split.
        seed: the same seed gives byte-identical files.
        cfg: generation parameters; ``config_overrides`` (e.g. ``image_size=192``) replace fields.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``{"train": split_paths(out_dir, "train"), "val": ...}``.
    """
    cfg = SyntheticConfig(**{**asdict(cfg or SyntheticConfig()), **config_overrides})
    out_dir = os.path.abspath(out_dir)
    start = time.perf_counter()
    _generate_atomically(out_dir, overwrite, lambda tmp: [generate_split(tmp, split, n, seed, cfg)
                                                          for split, n in (("train", num_train), ("val", num_val))])
    logger.info("generated synthetic COCO (%d train, %d val images, seed %d) in %s in %.1f s",
                num_train, num_val, seed, out_dir, time.perf_counter() - start)
    return {s: split_paths(out_dir, s) for s in SPLITS}


def _generate_atomically(out_dir: str, overwrite: bool, write) -> None:
    """Call ``write(tmp)`` on a temporary sibling folder of ``out_dir``, then rename it to ``out_dir``
    (replacing an existing one only with ``overwrite``); on any error nothing is left behind."""
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        write(tmp)
        if overwrite and os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "d"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)  # fails if another process created out_dir meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def voc_xml(file_name: str, width: int, height: int, objects) -> str:
    """A VOC annotation: ``objects`` = [(class name, (x, y, w, h) continuous px)], written as the
    1-based inclusive pixels each box touches (``xmin = floor(x) + 1``, ``xmax = ceil(x + w)``, clipped)."""
    rows = [f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{file_name}</filename>\n"
            f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n"
            f"  </size>\n  <segmented>0</segmented>"]
    for name, (x, y, w, h) in objects:
        xmin, ymin = min(max(int(math.floor(x)) + 1, 1), width), min(max(int(math.floor(y)) + 1, 1), height)
        xmax = min(max(int(math.ceil(x + w)), xmin), width)
        ymax = min(max(int(math.ceil(y + h)), ymin), height)
        rows.append(f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n"
                    f"    <truncated>0</truncated>\n    <difficult>0</difficult>\n    <bndbox>\n"
                    f"      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n      <xmax>{xmax}</xmax>\n"
                    f"      <ymax>{ymax}</ymax>\n    </bndbox>\n  </object>")
    return "\n".join(rows) + "\n</annotation>\n"


def generate_split_voc(out_dir: str, split: str, num_images: int, seed: int,
                       cfg: SyntheticConfig = SyntheticConfig()) -> List[str]:
    """Write ``num_images`` images of ``split`` (the same as :func:`generate_split`'s) in the VOC layout
    under ``out_dir`` and ``ImageSets/Main/<split>.txt``; return the image ids."""
    if cfg.image_format not in ("jpg", "jpeg"):
        raise ValueError(f"the VOC layout stores JPEGImages: image_format must be 'jpg', got {cfg.image_format!r}")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    ids = []
    for i in range(1, num_images + 1):
        rng = np.random.default_rng([int(seed), SPLITS[split], i])
        image, objects = render_image(rng, cfg)
        img_id = f"{split}_{i:06d}"
        with open(os.path.join(out_dir, "JPEGImages", img_id + ".jpg"), "wb") as f:
            f.write(_encode(image, cfg))
        xml = voc_xml(img_id + ".jpg", int(image.shape[1]), int(image.shape[0]),
                      [(CATEGORIES[cat], box) for cat, box in objects])
        with open(os.path.join(out_dir, "Annotations", img_id + ".xml"), "w", encoding="utf-8") as f:
            f.write(xml)
        ids.append(img_id)
    with open(os.path.join(out_dir, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{i}\n" for i in ids))
    return ids


def generate_synthetic_voc(out_dir: str, num_train: int = 600, num_val: int = 100, seed: int = 0,
                           cfg: Optional[SyntheticConfig] = None, overwrite: bool = False,
                           **config_overrides) -> Dict[str, str]:
    """The synthetic train and val splits in the Pascal VOC layout (see the module docstring), atomically.

    Returns:
        ``{"train": "<out_dir>:train", "val": "<out_dir>:val", "trainval": ...}``: DATASETS entries.
    """
    cfg = SyntheticConfig(**{**asdict(cfg or SyntheticConfig()), **config_overrides})
    out_dir = os.path.abspath(out_dir)
    start = time.perf_counter()

    def write(tmp: str) -> None:
        ids = [i for split, n in (("train", num_train), ("val", num_val))
               for i in generate_split_voc(tmp, split, n, seed, cfg)]
        with open(os.path.join(tmp, "ImageSets", "Main", "trainval.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{i}\n" for i in ids))

    _generate_atomically(out_dir, overwrite, write)
    logger.info("generated synthetic VOC (%d train, %d val images, seed %d) in %s in %.1f s",
                num_train, num_val, seed, out_dir, time.perf_counter() - start)
    return {s: f"{out_dir}:{s}" for s in ("train", "val", "trainval")}


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive advisory lock on ``path`` (POSIX flock; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_synthetic_coco(out_dir: str, num_train: int = 600, num_val: int = 100, seed: int = 0,
                          **config_overrides) -> Dict[str, Dict[str, str]]:
    """Generate the dataset into ``out_dir`` unless it is already there; safe across processes.

    Processes serialise on the lock file ``<out_dir>.lock``: the first generates, the others wait
    and then find the finished folder. (Without locks, the atomic rename still guarantees that a
    process sees either nothing or a complete folder.) Delete ``out_dir`` to regenerate.
    """
    out_dir = os.path.abspath(out_dir)
    paths = {s: split_paths(out_dir, s) for s in SPLITS}
    if all(os.path.isfile(p["ann_file"]) for p in paths.values()):
        return paths
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    with _file_lock(out_dir + ".lock"):
        if all(os.path.isfile(p["ann_file"]) for p in paths.values()):
            return paths
        if os.path.exists(out_dir):
            raise FileExistsError(f"{out_dir} exists but is not a complete synthetic dataset "
                                  f"(missing annotations/instances_*.json); delete it to regenerate")
        logger.info("generating the synthetic COCO dataset into %s (first use)", out_dir)
        try:
            return generate_synthetic_coco(out_dir, num_train, num_val, seed, **config_overrides)
        except OSError:
            if all(os.path.isfile(p["ann_file"]) for p in paths.values()):
                return paths  # another process without the lock finished first
            raise
