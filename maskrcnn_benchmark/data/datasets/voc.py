"""Pascal VOC datasets: ``<root>/Annotations/<id>.xml``, ``<root>/JPEGImages/<id>.jpg``,
``<root>/ImageSets/Main/<split>.txt``.

Box frame: VOC's XML stores 1-based, inclusive pixel indices (``xmin = 1`` is the first column,
``xmax`` the last column covered). The toolkit's frame is continuous with no "+1" (pixel ``i``,
0-based, spans ``[i, i + 1]``), so a VOC box becomes

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax

(the width ``x2 - x1 = xmax - xmin + 1`` is exactly VOC's, so IoUs equal the VOC devkit's). This is
done once, here, when reading; nothing converts back (detections are evaluated in the continuous
frame against ground truth in the same frame).

``difficult`` objects are kept out of training targets; the evaluation ignores them (a detection
matched to one is neither a true nor a false positive), as the VOC devkit does.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from maskrcnn_benchmark.structures.bounding_box import BoxList

from .base import CorruptImageError, DetectionDataset, ImageRecords, check_image_files, decode_image_file, gc_paused

__all__ = ["PascalVOCDataset", "VOC_CLASSES", "parse_voc_xml", "is_voc_root"]

logger = logging.getLogger(__name__)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def is_voc_root(path: str) -> bool:
    """True when ``path`` is a folder with ``Annotations/`` and ``ImageSets/`` (a VOC root)."""
    return os.path.isdir(os.path.join(path, "Annotations")) and os.path.isdir(os.path.join(path, "ImageSets"))


def _text(node: ET.Element, tag: str, path: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"VOC annotation {path}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: str) -> float:
    value = _text(node, tag, path)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"VOC annotation {path}: <{tag}> is not a number ({value!r})") from None


def parse_voc_xml(path: str) -> Dict[str, Any]:
    """One VOC annotation file.

    Returns:
        ``{"filename", "width", "height", "names": [N] str, "boxes": float32[N, 4]`` (continuous
        ``x1, y1, x2, y2``, see the module docstring) ``, "difficult": bool[N]}``.

    Raises:
        ValueError naming ``path``: not XML, or a missing / non-numeric field, or a box with
        ``xmax < xmin`` / ``ymax < ymin``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"VOC annotation {path} is not valid XML: {e}") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"VOC annotation {path}: no <size>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise ValueError(f"VOC annotation {path}: image size {width}x{height} is not positive")
    filename = root.findtext("filename", default="").strip()
    names, boxes, difficult = [], [], []
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"VOC annotation {path}: an <object> has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bnd, k, path) for k in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"VOC annotation {path}: box {[xmin, ymin, xmax, ymax]} has xmax < xmin or ymax < ymin")
        names.append(_text(obj, "name", path).lower())
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
        flag = obj.findtext("difficult", default="0").strip() or "0"
        difficult.append(flag not in ("0", "false", "False"))
    return {"filename": filename, "width": width, "height": height, "names": names,
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "difficult": np.asarray(difficult, dtype=bool)}


class PascalVOCDataset(DetectionDataset):
    """A split of a Pascal VOC folder.

    Args:
        data_dir: the VOC root (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).
        split: the image list ``ImageSets/Main/<split>.txt`` (one image id per line).
        use_difficult: keep ``difficult`` objects in the training targets (default: no).
        transforms: as :class:`COCODataset` (``None``: raw BGR uint8 image).
        skip_corrupt_images: as :class:`~.base.DetectionDataset` (DATALOADER.SKIP_CORRUPT_IMAGES).
        remove_images_without_annotations: drop images with no (non-difficult) object (training).
        class_names: the foreground classes in label order; default: the 20 VOC classes when every
            name in ``Annotations/`` is one of them, else the sorted names found there.

    ``dataset[i]`` is ``(image, target, i)`` with ``target`` a BoxList (field ``labels`` 1..K).
    """

    def __init__(self, data_dir: str, split: str, use_difficult: bool = False,
                 transforms: Optional[Callable] = None, remove_images_without_annotations: bool = False,
                 class_names: Optional[Sequence[str]] = None, skip_corrupt_images: bool = False):
        super().__init__(transforms, skip_corrupt_images)
        self.root = str(data_dir)
        self.split = str(split)
        self.use_difficult = bool(use_difficult)
        self.ann_dir = os.path.join(self.root, "Annotations")
        self.img_dir = os.path.join(self.root, "JPEGImages")
        list_file = os.path.join(self.root, "ImageSets", "Main", f"{self.split}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"VOC split {self.split!r}: image list {list_file} does not exist")
        with open(list_file, encoding="utf-8") as f:
            ids = [line.split()[0] for line in f if line.strip()]
        with gc_paused():
            annotations: Dict[str, Dict[str, Any]] = {}
            for img_id in ids:
                path = os.path.join(self.ann_dir, f"{img_id}.xml")
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"VOC annotation {path} (image {img_id!r} of {list_file}) does not exist")
                annotations[img_id] = parse_voc_xml(path)

        names = list(class_names) if class_names is not None else self._default_class_names(annotations)
        self.class_names: List[str] = ["__background__"] + [str(n) for n in names]
        self.num_classes: int = len(names)
        self.class_to_label: Dict[str, int] = {n: i + 1 for i, n in enumerate(names)}
        for img_id, ann in annotations.items():
            unknown = sorted(set(ann["names"]) - set(self.class_to_label))
            if unknown:
                raise ValueError(f"VOC annotation {os.path.join(self.ann_dir, img_id + '.xml')}: classes "
                                 f"{unknown} are not among the dataset's classes {names}")
        if remove_images_without_annotations:
            kept = [i for i in ids if (~annotations[i]["difficult"] | self.use_difficult).any()]
            if len(kept) < len(ids):
                logger.info("%s:%s: dropped %d of %d images without usable objects (training)",
                            self.root, self.split, len(ids) - len(kept), len(ids))
            ids = kept
        self.records: ImageRecords = self._records(ids, annotations)
        check_image_files(self.img_dir, self.records.names.tolist(), list_file)

    def _records(self, ids: List[str], annotations: Dict[str, Dict[str, Any]]) -> ImageRecords:
        """Flat records of images ``ids``: every object (difficult ones too, flagged in ``extra``)."""
        anns = [annotations[i] for i in ids]
        counts = np.array([len(a["names"]) for a in anns], dtype=np.int64)
        offsets = np.zeros(len(anns) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        labels = np.array([self.class_to_label[n] for a in anns for n in a["names"]], dtype=np.int64)
        boxes = np.concatenate([a["boxes"] for a in anns]) if anns else np.zeros((0, 4), np.float32)
        difficult = np.concatenate([a["difficult"] for a in anns]) if anns else np.zeros(0, bool)
        return ImageRecords(ids, [a["height"] for a in anns], [a["width"] for a in anns],
                            [self._file_name(i, a["filename"]) for i, a in zip(ids, anns)], offsets, boxes,
                            labels, difficult=difficult)

    def _default_class_names(self, annotations: Dict[str, Dict[str, Any]]) -> List[str]:
        found = {n for ann in annotations.values() for n in ann["names"]}
        if found <= set(VOC_CLASSES):
            return list(VOC_CLASSES)
        for fname in sorted(os.listdir(self.ann_dir)):  # every split of this root shares the label space
            if fname.endswith(".xml") and fname[:-4] not in annotations:
                found |= set(parse_voc_xml(os.path.join(self.ann_dir, fname))["names"])
        return sorted(found)

    # ---- access -----------------------------------------------------------------------------
    @property
    def ids(self) -> List[str]:
        """The image id (``ImageSets`` name) of every dataset index (a new list)."""
        return self.records.ids.tolist()

    def __len__(self) -> int:
        return len(self.records)

    def _file_name(self, img_id: str, xml_name: str) -> str:
        """The image file (relative to ``img_dir``): the XML's ``<filename>`` when that file exists,
        else ``<id>.jpg``; decided once, when the dataset is built."""
        return xml_name if xml_name and os.path.isfile(os.path.join(self.img_dir, xml_name)) else f"{img_id}.jpg"

    def get_img_info(self, index: int) -> Dict[str, Any]:
        """``{"height", "width", "id", "file_name"}`` (``file_name`` relative to ``self.img_dir``)."""
        height, width = self.records.size(index)
        return {"height": height, "width": width, "id": self.records.image_id(index),
                "file_name": self.records.file_name(index)}

    def get_annotation(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All objects of image ``index``: boxes float32[N, 4] (continuous xyxy), labels int64[N] (1..K),
        difficult bool[N] (for the evaluation). Read-only views of the records."""
        rows = self.records.box_slice(index)
        return self.records.boxes[rows], self.records.labels[rows], self.records.extra["difficult"][rows]

    def get_groundtruth(self, index: int) -> BoxList:
        """Training target in the original image size: non-difficult objects (all with use_difficult)."""
        boxes, labels, difficult = self.get_annotation(index)
        keep = np.ones_like(difficult) if self.use_difficult else ~difficult
        height, width = self.records.size(index)
        target = BoxList(torch.from_numpy(boxes[keep].copy()), (width, height))
        target.add_field("labels", torch.from_numpy(labels[keep].copy()))
        return target

    def load_image(self, index: int) -> np.ndarray:
        """``np.ndarray[H, W, 3]`` uint8 BGR of image ``index``."""
        info = self.get_img_info(index)
        img_id = info["id"]
        path = os.path.join(self.img_dir, info["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VOC image {path} (image {img_id!r}) does not exist")
        try:
            image = decode_image_file(path)
        except CorruptImageError as e:
            raise CorruptImageError(f"{e} (VOC image {img_id!r}); set DATALOADER.SKIP_CORRUPT_IMAGES True to "
                                    f"skip such images") from None
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"VOC image {path} is {image.shape[1]}x{image.shape[0]} (w x h) but its annotation "
                             f"says {info['width']}x{info['height']}")
        return image

    def aspect_ratios(self) -> List[float]:
        """Height / width of every image (from the annotations)."""
        return (self.records.sizes[:, 0] / self.records.sizes[:, 1]).tolist()

    def __repr__(self) -> str:
        return (f"PascalVOCDataset(root={self.root!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes})")
