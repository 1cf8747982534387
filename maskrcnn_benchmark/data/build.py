"""Datasets and data loaders from the config (the only module here that reads ``cfg``)."""
from __future__ import annotations

import bisect
import importlib
import logging
import os
from typing import List, Sequence

import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader

from maskrcnn_benchmark.utils import comm

from . import datasets as D
from . import samplers
from .collate_batch import BatchCollator
from .synthetic import ensure_synthetic_coco
from .transforms import build_transforms

logger = logging.getLogger(__name__)

__all__ = ["build_dataset", "dataset_record", "make_data_loader", "num_foreground_classes", "get_dataset_num_classes",
           "dataset_aspect_ratios"]


def _catalog(cfg):
    name = getattr(cfg, "PATHS_CATALOG", "maskrcnn_benchmark.config.paths_catalog")
    return importlib.import_module(name).DatasetCatalog


class KeyedConcatDataset(ConcatDataset):
    """``ConcatDataset`` that also takes the training sampler's ``(index, seed)`` keys: the index is
    mapped to its dataset and the seed passed along with the local index."""

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return super().__getitem__(key)
        index, seed = key
        if index < 0:
            index += len(self)
        d = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[d - 1] if d > 0 else 0)
        image, target, _ = self.datasets[d][(local, seed)]
        return image, target, index


# A catalog record's "generate": {"kind": ..., "args": {...}}: the function that makes the files when they
# are missing (and returns at once when they are there).
GENERATORS = {"synthetic_coco": ensure_synthetic_coco}


def dataset_record(name: str, dataset_catalog) -> dict:
    """``dataset_catalog.get(name)``: ``{"factory": ..., "args": {...}}``, with the dataset's files made
    first when the record asks for it (``"generate"``, e.g. the synthetic dataset on first use; safe
    across processes)."""
    data = dataset_catalog.get(name)
    generate = data.get("generate")
    if generate is not None:
        kind = generate.get("kind")
        if kind not in GENERATORS:
            raise ValueError(f"dataset {name!r}: the catalog asks to generate it with {kind!r}, which is not "
                             f"one of {sorted(GENERATORS)}")
        GENERATORS[kind](**generate.get("args", {}))
    return data


def build_dataset(dataset_list: Sequence[str], transforms, dataset_catalog, is_train: bool = True,
                  keep_empty_images: bool = False, skip_corrupt_images: bool = False) -> list:
    """Build one dataset per name in ``dataset_list``.

    Training concatenates them into one (a one-element list); testing returns them separately.
    Training datasets drop images without annotations unless ``keep_empty_images``
    (DATALOADER.KEEP_EMPTY_IMAGES: they then train as pure negatives); test datasets keep every image.
    ``skip_corrupt_images`` (DATALOADER.SKIP_CORRUPT_IMAGES) goes to every COCO / VOC dataset.
    """
    if isinstance(dataset_list, str) or not isinstance(dataset_list, (list, tuple)):
        raise ValueError(f"dataset_list should be a list of dataset names, got {dataset_list!r}")
    if not dataset_list:
        raise ValueError(f"no {'training' if is_train else 'test'} datasets given "
                         f"(DATASETS.{'TRAIN' if is_train else 'TEST'} is empty)")
    built = []
    for name in dataset_list:
        data = dataset_record(name, dataset_catalog)
        factory = getattr(D, data["factory"])
        args = dict(data["args"])
        if data["factory"] in ("COCODataset", "PascalVOCDataset"):
            args["remove_images_without_annotations"] = is_train and not keep_empty_images
            args["skip_corrupt_images"] = bool(skip_corrupt_images)
        args["transforms"] = transforms
        dataset = factory(**args)
        dataset.name = name
        built.append(dataset)
    if is_train and len(built) > 1:
        num_foreground_classes(built)  # all must share one label space
        return [KeyedConcatDataset(built)]
    return built


def _leaf_datasets(datasets) -> list:
    out = []
    for d in datasets:
        if isinstance(d, ConcatDataset):
            out.extend(_leaf_datasets(d.datasets))
        else:
            out.append(d)
    return out


def num_foreground_classes(datasets) -> int:
    """Number of foreground classes ``K`` shared by ``datasets`` (ConcatDatasets are unpacked).

    Raises:
        ValueError: the datasets disagree on the number or names of their classes.
    """
    leaves = _leaf_datasets(list(datasets))
    if not leaves:
        raise ValueError("num_foreground_classes: no datasets")
    ref = leaves[0]
    for d in leaves[1:]:
        if d.class_names != ref.class_names:
            raise ValueError(
                f"datasets disagree on their classes: {getattr(ref, 'name', ref)} has {ref.num_classes} "
                f"foreground classes {ref.class_names[1:]}, {getattr(d, 'name', d)} has {d.num_classes} "
                f"{d.class_names[1:]}")
    return ref.num_classes


def get_dataset_num_classes(cfg, is_train: bool = True) -> int:
    """Foreground classes ``K`` of ``cfg.DATASETS.TRAIN`` (or ``.TEST``); builds the datasets' indices."""
    names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
    return num_foreground_classes(build_dataset(list(names), None, _catalog(cfg), is_train))


def dataset_aspect_ratios(dataset) -> List[float]:
    """Height / width of every image of ``dataset`` (ConcatDataset allowed)."""
    if isinstance(dataset, ConcatDataset):
        return [r for d in dataset.datasets for r in dataset_aspect_ratios(d)]
    if hasattr(dataset, "aspect_ratios"):
        return list(dataset.aspect_ratios())
    infos = (dataset.get_img_info(i) for i in range(len(dataset)))
    return [float(info["height"]) / float(info["width"]) for info in infos]


def _data_seed(cfg) -> int:
    """cfg.SEED, or (SEED < 0) a random seed agreed on by all processes."""
    seed = int(cfg.SEED)
    if seed >= 0:
        return seed
    seed = int.from_bytes(os.urandom(4), "little") >> 1
    return int(comm.all_gather(seed)[0])


def _worker_init(worker_id: int) -> None:
    """One OpenCV thread per loader worker (the workers already run in parallel); the objects the
    worker inherited from the parent moved to the GC's permanent generation (``gc.freeze``), so its
    collections never walk them (seconds, and a private copy of every page they touch)."""
    import gc

    import cv2

    gc.freeze()
    cv2.setNumThreads(1)


def _per_process_batch(total: int, key: str, world: int) -> int:
    if total <= 0 or total % world != 0:
        raise ValueError(f"{key} ({total}) is the global batch and must be a positive multiple of the "
                         f"number of processes ({world})")
    return total // world


def make_data_loader(cfg, is_train: bool = True, is_distributed: bool = False, start_iter: int = 0,
                     transforms=None):
    """Training: one ``DataLoader`` yielding ``cfg.SOLVER.MAX_ITER - start_iter`` batches
    ``(ImageList, list[BoxList], tuple[int])``; the batch at iteration ``t`` (its images and every
    random transform draw) depends only on ``(cfg.SEED, t, rank)``, not on DATALOADER.NUM_WORKERS
    nor on ``start_iter``, so a resumed run continues exactly.
    ``SOLVER.IMS_PER_BATCH`` is the global batch (divided over processes).

    Testing: a list of ``DataLoader``, one per ``cfg.DATASETS.TEST``, each going through its
    process's share of the images in index order (every image exactly once over all processes,
    no padding). ``TEST.IMS_PER_BATCH`` is the global batch.

    ``transforms`` replaces the config's transforms when given (test-time augmentation loads the
    images at their original size and resizes them itself).

    With a CUDA ``MODEL.DEVICE`` the batches are pinned (``pin_memory=True``: ImageList / BoxList
    ``pin_memory``), so the copies to the GPU (``.to(device, non_blocking=True)``) are asynchronous.

    Each loader has ``.num_foreground_classes`` and ``.class_names`` attributes (its datasets'
    ``K`` and names incl. ``"__background__"``).
    """
    world = comm.get_world_size() if is_distributed else 1
    rank = comm.get_rank() if is_distributed else 0
    key = "SOLVER.IMS_PER_BATCH" if is_train else "TEST.IMS_PER_BATCH"
    images_per_batch = _per_process_batch(cfg.SOLVER.IMS_PER_BATCH if is_train else cfg.TEST.IMS_PER_BATCH,
                                          key, world)
    seed = _data_seed(cfg)

    if transforms is None:
        transforms = build_transforms(cfg, is_train)
    names = list(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
    datasets = build_dataset(names, transforms, _catalog(cfg), is_train,
                             keep_empty_images=bool(cfg.DATALOADER.KEEP_EMPTY_IMAGES),
                             skip_corrupt_images=cfg.DATALOADER.SKIP_CORRUPT_IMAGES)
    num_fg = num_foreground_classes(datasets)

    collator = BatchCollator(cfg.DATALOADER.SIZE_DIVISIBILITY)
    # page-locked batches for a CUDA model: the step's copies to the GPU are non_blocking, no sync
    pin_memory = torch.device(cfg.MODEL.DEVICE).type == "cuda" and torch.cuda.is_available()
    loaders = []
    for dataset in datasets:
        sampler = samplers.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=is_train,
                                              seed=seed, pad=is_train)
        if is_train and cfg.DATALOADER.ASPECT_RATIO_GROUPING:
            group_ids = [bisect.bisect_right([1.0], r) for r in dataset_aspect_ratios(dataset)]
            batch_sampler = samplers.GroupedBatchSampler(sampler, group_ids, images_per_batch,
                                                         drop_uneven=False)
        else:
            batch_sampler = BatchSampler(sampler, images_per_batch, drop_last=False)
        if is_train:
            batch_sampler = samplers.IterationBasedBatchSampler(batch_sampler, cfg.SOLVER.MAX_ITER, start_iter,
                                                                seed=seed, rank=rank)
        generator = torch.Generator()
        generator.manual_seed(seed + 1000003 * rank + start_iter)
        loader = DataLoader(dataset, num_workers=cfg.DATALOADER.NUM_WORKERS, batch_sampler=batch_sampler,
                            collate_fn=collator, generator=generator, pin_memory=pin_memory,
                            worker_init_fn=_worker_init if cfg.DATALOADER.NUM_WORKERS > 0 else None)
        loader.num_foreground_classes = num_fg
        loader.class_names = list(_leaf_datasets([dataset])[0].class_names)
        loaders.append(loader)
    if is_train:
        logger.info("training on %s: %d images, %d foreground classes, %d images per process per batch",
                    names, len(datasets[0]), num_fg, images_per_batch)
        return loaders[0]
    return loaders
