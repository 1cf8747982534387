"""What every detection dataset shares: checked image decoding and the seeded, corrupt-image
tolerant ``__getitem__`` (:class:`DetectionDataset`), the compact per-image records
(:class:`ImageRecords`) and a GC pause for parsing large annotation files. COCO and Pascal VOC
subclass it."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import cv2
import numpy as np
import torch

from maskrcnn_benchmark.data.transforms.transforms import apply_transforms
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.errors import CorruptImageError

__all__ = ["CorruptImageError", "DetectionDataset", "ImageRecords", "PackedStrings", "check_image_files", "decode_image_file",
           "gc_paused"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector in the ``with`` body (restored after it, also on an error).

    Parsing a COCO-size json allocates millions of containers; each allocation burst triggers a
    collection that walks all of them (half the load time), although none of them is garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PackedStrings:
    """A list of strings stored as one UTF-8 byte buffer (``uint8``) and ``int64[M + 1]`` offsets."""

    def __init__(self, strings: Sequence[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return bytes(self.buffer[self.offsets[i]:self.offsets[i + 1]]).decode("utf-8")

    def tolist(self) -> List[str]:
        return [self[i] for i in range(len(self))]

    def subset(self, rows: np.ndarray) -> "PackedStrings":
        """The strings at ``rows`` (int[K], any order, repeats allowed), gathered as bytes (no decoding)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        out = PackedStrings([])
        out.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out.offsets[1:])
        gather = np.repeat(starts - out.offsets[:-1], lengths) + np.arange(out.offsets[-1], dtype=np.int64)
        out.buffer = self.buffer[gather]
        return out


class ImageRecords:
    """Per-image records of a detection dataset in a few flat numpy arrays (no per-image Python
    objects): loader workers forked from the main process read them without the refcount writes
    that copy the pages of dicts and lists, and a ``gc.collect()`` has nothing to walk.

    Args:
        ids: ``int64[M]`` image ids, or M strings (stored as :class:`PackedStrings`, e.g. VOC's);
            heights, widths: ``[M]`` positive ints.
        file_names: the M file names (stored as :class:`PackedStrings`).
        box_offsets: ``int64[M + 1]``: the boxes of image ``i`` are rows ``box_offsets[i]:box_offsets[i+1]``.
        boxes: ``float32[N, 4]`` xyxy; labels: ``int64[N]``.
        extra: optional per-box ``[N, ...]`` arrays (e.g. VOC's ``difficult``), sliced like ``boxes``.
    """

    def __init__(self, ids, heights, widths, file_names: Sequence[str], box_offsets, boxes, labels,
                 **extra: np.ndarray):
        is_str = isinstance(ids, PackedStrings) or (len(ids) > 0 and isinstance(ids[0], str))
        self.ids = (ids if isinstance(ids, PackedStrings) else PackedStrings(ids)) if is_str else \
            np.ascontiguousarray(ids, dtype=np.int64)
        self.sizes = np.stack([np.asarray(heights, np.int64), np.asarray(widths, np.int64)], 1).reshape(-1, 2)
        self.names = file_names if isinstance(file_names, PackedStrings) else PackedStrings(file_names)
        self.box_offsets = np.ascontiguousarray(box_offsets, dtype=np.int64)
        self.boxes = np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.extra = {k: np.ascontiguousarray(v) for k, v in extra.items()}
        m = len(self.ids)
        if not (len(self.sizes) == m == len(self.names) == len(self.box_offsets) - 1):
            raise ValueError(f"ImageRecords: {m} ids but {len(self.sizes)} sizes, {len(self.names)} "
                             f"file names and {len(self.box_offsets) - 1} box ranges")
        if len(self.labels) != len(self.boxes) or self.box_offsets[-1] != len(self.boxes):
            raise ValueError(f"ImageRecords: {len(self.boxes)} boxes, {len(self.labels)} labels, box offsets end "
                             f"at {self.box_offsets[-1]}")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> "ImageRecords":
        """The records of images ``rows`` (int64[K], in that order), their boxes with them."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.box_offsets[rows], self.box_offsets[rows + 1]
        counts = ends - starts
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        box_rows = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        ids = self.ids.subset(rows) if isinstance(self.ids, PackedStrings) else self.ids[rows]
        return ImageRecords(ids, self.sizes[rows, 0], self.sizes[rows, 1], self.names.subset(rows), offsets,
                            self.boxes[box_rows],
                            self.labels[box_rows], **{k: v[box_rows] for k, v in self.extra.items()})

    def num_boxes(self) -> np.ndarray:
        """``int64[M]`` boxes per image."""
        return np.diff(self.box_offsets)

    def file_name(self, i: int) -> str:
        return self.names[i]

    def image_id(self, i: int):
        """The id of image ``i`` as a Python ``int`` (or ``str``)."""
        return self.ids[i] if isinstance(self.ids, PackedStrings) else int(self.ids[i])

    def size(self, i: int) -> Tuple[int, int]:
        """``(height, width)`` of image ``i`` as Python ints."""
        return int(self.sizes[i, 0]), int(self.sizes[i, 1])

    def box_slice(self, i: int) -> slice:
        return slice(int(self.box_offsets[i]), int(self.box_offsets[i + 1]))


def _truncation_problem(data: bytes) -> Optional[str]:
    """Why an encoded JPEG / PNG is incomplete (None if it looks complete or is another format).

    libjpeg decodes a truncated JPEG with grey filler and only prints a warning, so the end
    markers are checked here: a JPEG must end with its EOI marker ``FF D9`` (trailing NUL / white
    space allowed), a PNG with its ``IEND`` chunk.
    """
    if data[:2] == b"\xff\xd8":
        if not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            return "truncated PNG (no IEND chunk)"
    return None


def decode_image_file(path: str) -> np.ndarray:
    """``np.ndarray[H, W, 3]`` uint8 BGR of the image file ``path``.

    Raises:
        CorruptImageError: empty, undecodable, or a truncated JPEG / PNG (the message says which).
    """
    with open(path, "rb") as f:
        data = f.read()
    problem = "empty file" if not data else _truncation_problem(data)
    image = None
    if problem is None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            problem = "corrupt or not an image"
    if problem is not None:
        raise CorruptImageError(f"cannot decode image file {path}: {problem}")
    return image


def _folder_files(folder: str, cache: Dict[str, Optional[Set[str]]]) -> Optional[Set[str]]:
    """Names of the entries of ``folder`` (one ``os.scandir``, cached), None if it cannot be listed."""
    if folder not in cache:
        try:
            with os.scandir(folder) as it:
                cache[folder] = {entry.name for entry in it}
        except OSError:
            cache[folder] = None
    return cache[folder]


def check_image_files(root: str, file_names: Sequence[str], source: str, show: int = 10) -> None:
    """Check at dataset build time that every image file exists (one ``os.scandir`` per folder, so
    118k COCO images cost one directory listing, not 118k ``stat`` calls), and warn about entries
    that leave ``root``.

    Args:
        root: the image folder the names are relative to.
        file_names: the images' ``file_name`` entries (relative; ``../`` or absolute ones are
            counted in a warning: they read files outside ``root``).
        source: what lists them (the annotation file), for the messages.
        show: how many missing names the error lists.

    Raises:
        FileNotFoundError: naming the count of missing files, the first ``show`` of them, ``root``
            and ``source``.
    """
    root_abs = os.path.abspath(root)
    cache: Dict[str, Optional[Set[str]]] = {}
    missing: List[str] = []
    outside: List[str] = []
    for name in file_names:
        path = os.path.normpath(os.path.join(root_abs, name))
        if os.path.isabs(name) or not (path == root_abs or path.startswith(root_abs + os.sep)):
            outside.append(name)
        folder, base = os.path.split(path)
        listed = _folder_files(folder, cache)
        if listed is None or base not in listed:
            missing.append(name)
    if outside:
        logger.warning("%s: %d of %d file_name entries leave the image folder %s (absolute or '../' paths; "
                       "they read files outside it), e.g. %s", source, len(outside), len(file_names), root,
                       ", ".join(repr(n) for n in outside[:3]))
    if missing:
        listed = ", ".join(repr(n) for n in missing[:show])
        raise FileNotFoundError(f"{len(missing)} of {len(file_names)} image files listed in {source} do not exist "
                                f"under {root}: {listed}{', ...' if len(missing) > show else ''}")


class DetectionDataset(torch.utils.data.Dataset):
    """Base of the detection datasets: a subclass provides ``__len__``, ``load_image(i)`` (raising
    :class:`CorruptImageError` for an undecodable file), ``get_groundtruth(i)`` and ``get_img_info(i)``.

    Args:
        transforms: ``callable(image np.ndarray[H,W,3] uint8 BGR, target BoxList) -> (image, target)``;
            ``None`` returns the raw BGR uint8 array.
        skip_corrupt_images: an image that cannot be decoded completely is replaced by the next
            readable one (index + 1, ...) with a warning naming it and counting the skips of this
            process (DATALOADER.SKIP_CORRUPT_IMAGES); False (default): raise ``CorruptImageError``.
    """

    def __init__(self, transforms: Optional[Callable] = None, skip_corrupt_images: bool = False):
        self.transforms = transforms
        self.skip_corrupt_images = bool(skip_corrupt_images)
        self.num_skipped_images = 0  # corrupt images skipped by this process

    def load_image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def get_groundtruth(self, index: int) -> BoxList:
        raise NotImplementedError

    def __getitem__(self, key: Union[int, Tuple[int, int]]):
        """``dataset[i]`` or ``dataset[(i, seed)]`` (what the training sampler yields,
        :class:`~maskrcnn_benchmark.data.samplers.IterationBasedBatchSampler`) -> ``(image, target, i)``.
        With a seed every random transform draws from a generator seeded with it, so the sample
        depends only on ``(i, seed)``, not on the loader worker that made it."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        for attempt in range(len(self)):
            try:
                image = self.load_image(index)
                break
            except CorruptImageError as e:
                if not self.skip_corrupt_images or attempt == len(self) - 1:
                    raise
                self.num_skipped_images += 1
                logger.warning("skipping corrupt image (DATALOADER.SKIP_CORRUPT_IMAGES): %s; %d image(s) "
                               "skipped so far by this process", e, self.num_skipped_images)
                index = (index + 1) % len(self)
        target = self.get_groundtruth(index)
        if self.transforms is not None:
            image, target = apply_transforms(self.transforms, image, target, seed)
        return image, target, index

    def aspect_ratios(self) -> List[float]:
        """Height / width of every image (from the annotations, no image reading)."""
        infos = [self.get_img_info(i) for i in range(len(self))]
        return [info["height"] / info["width"] for info in infos]
