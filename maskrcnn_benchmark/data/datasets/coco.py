"""COCO-format detection dataset (boxes only): the json read once into flat per-image records
(:class:`ImageRecords`; no pycocotools object kept for training), images read with OpenCV.

Annotation handling (decided once, at construction, and logged):

* category ids: the json ids sorted ascending map to contiguous labels ``1..K`` (0 is background);
* ``iscrowd=1`` boxes are never training targets;
* boxes with width or height <= 0, or a non-finite (NaN / inf) coordinate, are dropped (count logged);
* boxes partly outside the image are clipped to it (count logged); boxes entirely outside the
  image (nothing left after clipping) are dropped (count logged);
* with ``remove_images_without_annotations=True`` (training) images left with no box are dropped;
  otherwise (testing) every image in the json is kept, in json order.

Bad input raises errors that name the culprit: a malformed json (with line and column), a
missing key (with the key and the json), a duplicate image or annotation id, an ``iscrowd`` other
than 0 / 1 (e.g. the string ``"0"``; with the count), an image ``height`` / ``width``
that is not a positive integer (with the image and the field), missing image files (checked when
the dataset is built: the count and the first files, with the json; ``file_name`` entries that
leave the image folder get a counted warning), an image OpenCV cannot decode or a truncated JPEG / PNG (:class:`CorruptImageError`;
with ``skip_corrupt_images`` such images are skipped with a counted warning instead), or an
image whose size differs from the json's. A json without any annotation gets a warning (COCO
evaluation then reports AP -1).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from pycocotools.coco import COCO

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.io import read_json

from .base import (CorruptImageError, DetectionDataset, ImageRecords, check_image_files as check_images_exist,
                   decode_image_file, gc_paused)

logger = logging.getLogger(__name__)

__all__ = ["COCODataset", "CorruptImageError", "load_coco_json", "read_coco_json", "decode_image_file"]

_REQUIRED_KEYS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def load_coco_json(ann_file: str) -> COCO:
    """A pycocotools ``COCO`` built from :func:`read_coco_json` of ``ann_file``."""
    coco = COCO()
    coco.dataset = read_coco_json(ann_file)
    with gc_paused(), contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def read_coco_json(ann_file: str) -> Dict[str, Any]:
    """Read and validate a COCO json (parsed with the cyclic GC paused); return its dict, with
    ``iscrowd`` and the image ``height`` / ``width`` stored as ints.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: malformed json (line/column given), a missing top-level or per-entry key,
            or an annotation whose category / image id is not declared.
    """
    return _read_and_check_file(ann_file)[0]


def _read_and_check_file(ann_file: str) -> Tuple[Dict[str, Any], Optional["_Columns"]]:
    """:func:`read_coco_json`'s dict, and its :class:`_Columns` where the fast check gave them."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file {ann_file} does not exist")
    with gc_paused():
        return _read_and_check(ann_file)


def _read_and_check(ann_file: str) -> Tuple[Dict[str, Any], Optional["_Columns"]]:
    try:
        data = read_json(ann_file)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed json in annotation file {ann_file}: {e.msg} at line {e.lineno} "
                         f"column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"annotation file {ann_file} is not UTF-8 text: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {ann_file}: top level must be a json object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"annotation file {ann_file} has no {key!r} key")
    if "annotations" not in data:
        # Image-info-only files (e.g. COCO test-dev) have no annotations.
        logger.warning("annotation file %s has no 'annotations' key; using no boxes", ann_file)
        data["annotations"] = []
    if not data["annotations"]:
        logger.warning("annotation file %s has no annotations: it cannot be used for training, and COCO "
                       "evaluation on it reports AP -1", ann_file)
    columns = _canonical_columns(data)
    if columns is None:
        _check_entries(data, ann_file)
    return data, columns


def _int_array(values: List[Any]) -> Optional[np.ndarray]:
    """``values`` as int64 when every one is a Python int (not a bool), else None."""
    if not set(map(type, values)) <= {int}:  # C-level loops; bool is another type
        return None
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return None


class _Columns(NamedTuple):
    """The fields training needs, as arrays (json order), from :func:`_canonical_columns`."""
    img_ids: np.ndarray     # int64[I]
    sizes: np.ndarray       # int64[I, 2] (height, width)
    ann_img: np.ndarray     # int64[A] image id of each annotation
    ann_labels: np.ndarray  # int64[A] contiguous label 1..K (rank of the category id)
    crowd: np.ndarray       # int64[A] 0 / 1
    bbox: np.ndarray        # float64[A, 4] x, y, width, height
    ann_rows: Optional[np.ndarray] = None  # int64[A] row in ``img_ids`` of each annotation's image


def _canonical_columns(data: Dict[str, Any]) -> Optional[_Columns]:
    """The fields of ``data`` as :class:`_Columns` when every entry passes :func:`_check_entries`
    and is already in the form it stores (int ids, sizes and ``iscrowd``; unique category ids):
    one comprehension per field and numpy set checks, several times faster than the per-entry
    checks on a COCO-size file. None for anything else (a missing key, a float size, a bool
    ``iscrowd``, a duplicate id, ...): then :func:`_check_entries` runs, which stores the canonical
    form or raises the error that names the entry."""
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    if not (isinstance(images, list) and isinstance(anns, list) and isinstance(cats, list)):
        return None
    try:
        if not all(isinstance(e, dict) for e in cats) or any("name" not in c for c in cats):
            return None
        cat_ids = _int_array([c["id"] for c in cats])
        img_ids = _int_array([im["id"] for im in images])
        if any("file_name" not in im for im in images):
            return None
        sizes = _int_array([v for im in images for v in (im["height"], im["width"])])
        ann_ids = _int_array([a["id"] for a in anns])
        ann_img = _int_array([a["image_id"] for a in anns])
        ann_cat = _int_array([a["category_id"] for a in anns])
        crowd = _int_array([a["iscrowd"] for a in anns])
        boxes = [a["bbox"] for a in anns]
    except (KeyError, TypeError):  # a missing key, or an entry that is not a dict
        return None
    if any(v is None for v in (cat_ids, img_ids, sizes, ann_ids, ann_img, ann_cat, crowd)):
        return None
    if not (set(map(type, boxes)) <= {list} and set(map(len, boxes)) <= {4}):
        return None
    if not ((sizes > 0).all() and ((crowd == 0) | (crowd == 1)).all() and _all_unique(np.sort(ann_ids))):
        return None
    sorted_cats = np.sort(cat_ids)
    labels = _positions(sorted_cats, ann_cat)                     # rank of the category id
    by_id = np.argsort(img_ids, kind="stable")
    rows = _positions(img_ids[by_id], ann_img)                    # into the sorted image ids
    if not (_all_unique(sorted_cats) and _all_unique(img_ids[by_id])) or labels is None or rows is None:
        return None
    try:  # what _prepare_targets' float64 conversion accepts (numbers, numeric strings, None -> NaN)
        bbox = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        return None
    return _Columns(img_ids, sizes.reshape(-1, 2), ann_img, labels + 1, crowd, bbox, by_id[rows])


def _all_unique(sorted_values: np.ndarray) -> bool:
    """Whether a sorted array has no repeated value."""
    return not bool((sorted_values[1:] == sorted_values[:-1]).any())


def _positions(sorted_values: np.ndarray, values: np.ndarray) -> Optional[np.ndarray]:
    """int64 index of each of ``values`` in ``sorted_values``, or None if one is not there."""
    pos = np.searchsorted(sorted_values, values)
    found = pos < len(sorted_values)
    found[found] = sorted_values[pos[found]] == values[found]
    return pos if found.all() else None


def _check_entries(data: Dict[str, Any], ann_file: str) -> None:
    """The per-entry checks of :func:`read_coco_json`: required keys, unique ids, positive integer
    sizes (stored as int), declared category / image ids, 4-number boxes, ``iscrowd`` 0 / 1 (stored as
    int). Raises ValueError naming ``ann_file`` and the first offending entry."""
    for section, keys in _REQUIRED_KEYS.items():
        entries = data[section]
        if not isinstance(entries, list):
            raise ValueError(f"annotation file {ann_file}: {section!r} must be a list")
        for n, entry in enumerate(entries):
            missing = [k for k in keys if k not in entry]
            if missing:
                raise ValueError(f"annotation file {ann_file}: {section}[{n}] is missing key "
                                 f"{missing[0]!r} (required keys: {', '.join(keys)})")
    img_ids = set()
    for im in data["images"]:
        if im["id"] in img_ids:
            raise ValueError(f"annotation file {ann_file}: image id {im['id']!r} appears more than once in "
                             f"'images' (file {im['file_name']!r} and another); image ids must be unique")
        img_ids.add(im["id"])
        for field in ("height", "width"):
            value = im[field]
            integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not integral or value <= 0:
                raise ValueError(f"annotation file {ann_file}: image id {im['id']!r} ({im['file_name']!r}) has "
                                 f"{field} {value!r} ({type(value).__name__}); expected a positive integer")
            im[field] = int(value)
    _check_annotation_ids_and_crowd(data["annotations"], ann_file)
    cat_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        if a["category_id"] not in cat_ids:
            raise ValueError(f"annotation file {ann_file}: annotation id {a['id']} has category_id "
                             f"{a['category_id']} which is not in 'categories' ({sorted(cat_ids)})")
        if a["image_id"] not in img_ids:
            raise ValueError(f"annotation file {ann_file}: annotation id {a['id']} has image_id "
                             f"{a['image_id']} which is not in 'images'")
        if not isinstance(a["bbox"], (list, tuple)) or len(a["bbox"]) != 4:
            raise ValueError(f"annotation file {ann_file}: annotation id {a['id']} has bbox "
                             f"{a['bbox']!r}; expected [x, y, width, height]")


def _check_annotation_ids_and_crowd(annotations: List[Dict[str, Any]], ann_file: str, show: int = 5) -> None:
    """``ValueError`` naming ``ann_file`` and the count for duplicate annotation ids (pycocotools
    indexes annotations by id, so COCO evaluation would silently lose the duplicates) and for
    ``iscrowd`` values other than 0 / 1 (a string ``"0"`` is truthy: the box would silently count as
    crowd). ``iscrowd`` given as ``true`` / ``false`` or ``0.0`` / ``1.0`` is stored as the int."""
    seen, duplicates = set(), []
    bad_crowd = []
    for a in annotations:
        if a["id"] in seen:
            duplicates.append(a["id"])
        seen.add(a["id"])
        crowd = a.get("iscrowd", 0)
        if isinstance(crowd, (bool, int, float)) and crowd in (0, 1):
            a["iscrowd"] = int(crowd)
        else:
            bad_crowd.append(f"id {a['id']}: {crowd!r}")
    if duplicates:
        distinct = sorted(set(duplicates), key=duplicates.index)
        raise ValueError(f"annotation file {ann_file}: {len(duplicates)} annotation(s) reuse an id "
                         f"({len(distinct)} distinct id(s), e.g. {distinct[:show]}); annotation ids must be unique "
                         f"(COCO evaluation indexes annotations by id and would lose the duplicates)")
    if bad_crowd:
        raise ValueError(f"annotation file {ann_file}: {len(bad_crowd)} annotation(s) have an 'iscrowd' that is not "
                         f"0 or 1 ({'; '.join(bad_crowd[:show])}{'; ...' if len(bad_crowd) > show else ''}); "
                         f"write it as the number 0 or 1 (a string such as \"0\" would count as crowd)")


class COCODataset(DetectionDataset):
    """Boxes of a COCO-format json.

    Args:
        ann_file: path of the COCO json.
        root: folder the images' ``file_name`` entries are relative to.
        remove_images_without_annotations: drop images with no usable box (True for training).
        transforms: ``callable(image np.ndarray[H,W,3] uint8 BGR, target BoxList) -> (image, target)``;
            ``None`` returns the raw BGR uint8 array.
        skip_corrupt_images: an image that cannot be decoded completely is replaced by the next
            readable one (index + 1, ...) with a warning naming it and counting the skips of this
            process (DATALOADER.SKIP_CORRUPT_IMAGES); False (default): raise ``CorruptImageError``.
        check_image_files: check now that every image file exists (``FileNotFoundError`` with the
            count and the first missing files; one directory listing per folder), and warn about
            ``file_name`` entries that leave ``root``.

    ``dataset[i]`` is ``(image, target, i)``: the transformed image (``Tensor[3, H, W]`` with the
    usual transforms), a :class:`BoxList` in the transformed image's pixels with field
    ``"labels"`` (``Tensor[N]`` int64 in ``1..K``), and the index ``i``.
    """

    def __init__(self, ann_file: str, root: str, remove_images_without_annotations: bool = True,
                 transforms: Optional[Callable] = None, skip_corrupt_images: bool = False,
                 check_image_files: bool = True):
        super().__init__(transforms, skip_corrupt_images)
        self.ann_file = str(ann_file)
        self.root = str(root)
        with gc_paused():
            data, columns = _read_and_check_file(self.ann_file)
            categories = {c["id"]: str(c["name"]) for c in data["categories"]}
            json_ids = sorted(categories)
            self.json_category_id_to_contiguous_id: Dict[int, int] = {c: i + 1 for i, c in enumerate(json_ids)}
            self.contiguous_category_id_to_json_id: Dict[int, int] = {
                v: k for k, v in self.json_category_id_to_contiguous_id.items()}
            self.class_names: List[str] = ["__background__"] + [categories[c] for c in json_ids]
            self.num_classes: int = len(json_ids)
            records = self._prepare_targets(data, columns)
            del data  # training keeps only the flat records; the evaluation re-reads the json
        counts = records.num_boxes()
        if remove_images_without_annotations:
            rows = np.flatnonzero(counts > 0)
            if len(rows) < len(records):
                logger.info("%s: dropped %d of %d images without usable annotations (training)",
                            self.ann_file, len(records) - len(rows), len(records))
            records = records.subset(rows)
        else:
            num_empty = int((counts == 0).sum())
            if num_empty:
                logger.info("%s: keeping %d of %d images without usable annotations", self.ann_file,
                            num_empty, len(records))
        self.records: ImageRecords = records
        if check_image_files:
            check_images_exist(self.root, [records.file_name(i) for i in range(len(records))], self.ann_file)

    # ---- annotation preprocessing ----------------------------------------------------------
    def _prepare_targets(self, data: Dict[str, Any], columns: Optional[_Columns] = None) -> ImageRecords:
        """Records of every image of ``data`` (json order): boxes ``float32[N, 4]`` xyxy (clipped) and
        labels ``int64[N]`` (1..K), grouped by image in json order, vectorised over annotations.
        ``columns``: the fields already as arrays (:func:`_canonical_columns`), else read here."""
        images = data["images"]
        if columns is None:
            columns = self._columns(data)
        img_ids, sizes = columns.img_ids, columns.sizes
        not_crowd = columns.crowd == 0
        ann_img, xywh, labels = columns.ann_img[not_crowd], columns.bbox[not_crowd], columns.ann_labels[not_crowd]
        if columns.ann_rows is not None:
            rows = columns.ann_rows[not_crowd]
        else:
            by_id = np.argsort(img_ids, kind="stable")
            rows = by_id[np.searchsorted(img_ids, ann_img, sorter=by_id)]  # image row of each annotation
        wh = sizes[rows][:, ::-1].astype(np.float64)

        # width/height <= 0 or any non-finite value (NaN fails every comparison, inf is caught by isfinite)
        degenerate = ~((xywh[:, 2] > 0) & (xywh[:, 3] > 0) & np.isfinite(xywh).all(axis=1))
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        clipped = np.concatenate([np.clip(xyxy[:, :2], 0, wh), np.clip(xyxy[:, 2:], 0, wh)], axis=1)
        outside = ~degenerate & ~((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
        was_clipped = ~degenerate & ~outside & np.any(clipped != xyxy, axis=1)
        keep = ~degenerate & ~outside
        if degenerate.any():
            logger.warning("%s: dropped %d boxes with zero or negative width/height or a non-finite (NaN/inf) "
                           "coordinate",
                           self.ann_file, int(degenerate.sum()))
        if outside.any():
            logger.warning("%s: dropped %d boxes entirely outside their image",
                           self.ann_file, int(outside.sum()))
        if was_clipped.any():
            logger.info("%s: clipped %d boxes partly outside their image to the image",
                        self.ann_file, int(was_clipped.sum()))

        rows, clipped, labels = rows[keep], clipped[keep].astype(np.float32), labels[keep]
        order = np.argsort(rows, kind="stable")  # keep json order within an image
        offsets = np.zeros(len(images) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(images)), out=offsets[1:])
        return ImageRecords(img_ids, sizes[:, 0], sizes[:, 1], [im["file_name"] for im in images], offsets,
                            clipped[order], labels[order])

    def _columns(self, data: Dict[str, Any]) -> _Columns:
        """:class:`_Columns` of ``data`` after the per-entry checks, for its non-crowd annotations
        (crowd boxes are never read; ValueError naming the file for a non-integer image id or a bbox
        that is not 4 numbers)."""
        images = data["images"]
        anns = [a for a in data["annotations"] if not a["iscrowd"]]
        try:
            img_ids = np.array([im["id"] for im in images], dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"annotation file {self.ann_file}: image ids must be integers ({e})") from e
        sizes = np.array([(im["height"], im["width"]) for im in images], dtype=np.int64).reshape(-1, 2)
        try:
            bbox = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError) as e:
            raise ValueError(f"annotation file {self.ann_file}: a bbox is not 4 numbers ({e})") from e
        to_contiguous = self.json_category_id_to_contiguous_id
        return _Columns(img_ids, sizes, np.array([a["image_id"] for a in anns], dtype=np.int64),
                        np.array([to_contiguous[a["category_id"]] for a in anns], dtype=np.int64),
                        np.zeros(len(anns), dtype=np.int64), bbox)

    # ---- access -----------------------------------------------------------------------------
    @property
    def ids(self) -> List[int]:
        """json image id of every dataset index (a new list; :attr:`image_ids` is the array)."""
        return self.records.ids.tolist()

    @property
    def image_ids(self) -> np.ndarray:
        """``int64[len(self)]`` json image id of every dataset index."""
        return self.records.ids

    @property
    def id_to_img_map(self) -> Dict[int, int]:
        """dataset index -> json image id."""
        return dict(enumerate(self.ids))

    @functools.cached_property
    def coco(self) -> COCO:
        """A pycocotools ``COCO`` of ``ann_file``, built on first use (training never builds it; the
        evaluation reads the json itself, :meth:`load_groundtruth_json`)."""
        return load_coco_json(self.ann_file)

    def load_groundtruth_json(self) -> Dict[str, Any]:
        """A fresh, validated ground-truth json dict (:func:`read_coco_json` of ``ann_file``) for an
        evaluation backend to index (and annotate in place) without a copy."""
        return read_coco_json(self.ann_file)

    def __len__(self) -> int:
        return len(self.records)

    def get_img_info(self, index: int) -> Dict[str, Any]:
        """``{"height", "width", "id", "file_name"}`` of image ``index`` (from the json)."""
        height, width = self.records.size(index)
        return {"height": height, "width": width, "id": self.records.image_id(index),
                "file_name": self.records.file_name(index)}

    def get_groundtruth(self, index: int) -> BoxList:
        """Training target of image ``index`` in the original image size (no transforms)."""
        height, width = self.records.size(index)
        rows = self.records.box_slice(index)
        target = BoxList(torch.from_numpy(self.records.boxes[rows].copy()), (width, height))
        target.add_field("labels", torch.from_numpy(self.records.labels[rows].copy()))
        return target

    def load_image(self, index: int) -> np.ndarray:
        """``np.ndarray[H, W, 3]`` uint8 BGR of image ``index``."""
        info = self.get_img_info(index)
        path = os.path.join(self.root, info["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} (image id {info['id']}) listed in {self.ann_file} "
                                    f"does not exist")
        try:
            image = decode_image_file(path)
        except CorruptImageError as e:
            raise CorruptImageError(f"{e} (image id {info['id']}, listed in {self.ann_file}); set "
                                    f"DATALOADER.SKIP_CORRUPT_IMAGES True to skip such images") from None
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"image file {path} is {image.shape[1]}x{image.shape[0]} (w x h) but "
                             f"{self.ann_file} says {info['width']}x{info['height']}")
        return image

    def aspect_ratios(self) -> List[float]:
        """Height / width of every image (from the json, no image reading)."""
        return (self.records.sizes[:, 0] / self.records.sizes[:, 1]).tolist()

    def __repr__(self) -> str:
        return (f"COCODataset(ann_file={self.ann_file!r}, root={self.root!r}, images={len(self)}, "
                f"classes={self.num_classes})")
