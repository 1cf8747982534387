"""Where datasets and pretrained weights live on disk.

Dataset names (``DATASETS.TRAIN`` / ``DATASETS.TEST``) are resolved by :meth:`DatasetCatalog.get`:

* a catalog name such as ``"coco_2017_train"``: paths under the data directory
  (``$MASKRCNN_BENCHMARK_DATA_DIR``, default ``datasets/``), laid out as in maskrcnn-benchmark
  (``datasets/coco/train2017``, ``datasets/coco/annotations/instances_train2017.json``, ...);
* ``"synthetic_coco_train"`` / ``"synthetic_coco_val"``: the synthetic shapes dataset under
  ``<data dir>/synthetic_coco/`` (fixed seed, default sizes); the record also says how to generate it
  (``"generate"``), and the data loading (:func:`maskrcnn_benchmark.data.build.dataset_record`)
  generates it on first use. The catalog only names paths: it writes nothing;
* ``"<annotations.json>:<image folder>"``: a COCO-format dataset anywhere on disk (the split is
  at the last ``:`` whose left side ends in ``.json``; relative paths are relative to the
  current directory).
* ``"voc_2007_trainval"``, ``"voc_2007_test"``, ``"voc_2012_train"``, ...: Pascal VOC under
  ``<data dir>/voc/VOC2007``, ``<data dir>/voc/VOC2012`` (as in maskrcnn-benchmark);
* ``"<VOC root>:<split>"``: a Pascal VOC folder anywhere (``Annotations/*.xml``, ``JPEGImages/``,
  ``ImageSets/Main/<split>.txt``); told apart from the COCO form by the path: the left side is a
  directory holding ``Annotations/`` and ``ImageSets/`` (the COCO form's is a ``.json`` file).

Pretrained weights ``"catalog://ImageNetPretrained/MSRA/R-50"`` are resolved by
:meth:`ModelCatalog.get` to files under ``$MASKRCNN_BENCHMARK_MODELS`` (default ``pretrained/``);
nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

__all__ = ["DatasetCatalog", "ModelCatalog", "CatalogKeyError", "UnknownDatasetError", "split_json_path",
           "split_voc_path"]


class CatalogKeyError(KeyError, ValueError):
    """A name that is not in a catalog (catch it as KeyError or ValueError)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


UnknownDatasetError = CatalogKeyError  # a dataset name that is neither in the catalog nor "json:folder"


def split_json_path(name: str) -> Optional[Tuple[str, str]]:
    """``"a/b.json:imgs"`` -> ``("a/b.json", "imgs")``: split at the last ``:`` whose left side ends
    with ``.json`` (case-insensitive); ``None`` if there is none."""
    pos = len(name)
    while True:
        pos = name.rfind(":", 0, pos)
        if pos < 0:
            return None
        if name[:pos].lower().endswith(".json"):
            return name[:pos], name[pos + 1:]


def split_voc_path(name: str) -> Optional[Tuple[str, str]]:
    """``"data/VOC2007:test"`` -> ``("data/VOC2007", "test")``: split at the last ``:`` whose left side is
    a directory holding ``Annotations/`` and ``ImageSets/``; ``None`` if there is none."""
    pos = len(name)
    while True:
        pos = name.rfind(":", 0, pos)
        if pos < 0:
            return None
        root = name[:pos]
        if root and os.path.isdir(os.path.join(root, "Annotations")) and os.path.isdir(os.path.join(root, "ImageSets")):
            return root, name[pos + 1:]


class DatasetCatalog:
    """Dataset name -> ``dict(factory="COCODataset", args=dict(root=..., ann_file=...))``, plus, for a
    dataset made on first use, ``generate=dict(kind="synthetic_coco", args=dict(out_dir=..., ...))``
    (the arguments of :func:`maskrcnn_benchmark.data.synthetic.ensure_synthetic_coco`)."""

    DEFAULT_DATA_DIR = "datasets"
    DATASETS: Dict[str, Dict[str, str]] = {
        "coco_2017_train": {"img_dir": "coco/train2017", "ann_file": "coco/annotations/instances_train2017.json"},
        "coco_2017_val": {"img_dir": "coco/val2017", "ann_file": "coco/annotations/instances_val2017.json"},
        "coco_2017_test_dev": {"img_dir": "coco/test2017",
                               "ann_file": "coco/annotations/image_info_test-dev2017.json"},
        "coco_2014_train": {"img_dir": "coco/train2014", "ann_file": "coco/annotations/instances_train2014.json"},
        "coco_2014_val": {"img_dir": "coco/val2014", "ann_file": "coco/annotations/instances_val2014.json"},
        "coco_2014_minival": {"img_dir": "coco/val2014", "ann_file": "coco/annotations/instances_minival2014.json"},
        "coco_2014_valminusminival": {"img_dir": "coco/val2014",
                                      "ann_file": "coco/annotations/instances_valminusminival2014.json"},
        "coco_2015_test": {"img_dir": "coco/test2015", "ann_file": "coco/annotations/image_info_test2015.json"},
        "coco_2015_test_dev": {"img_dir": "coco/test2015",
                               "ann_file": "coco/annotations/image_info_test-dev2015.json"},
    }
    # Pascal VOC: name -> (folder under the data dir, split of ImageSets/Main/).
    VOC = {f"voc_{year}_{split}": (f"voc/VOC{year}", split)
           for year in ("2007", "2012") for split in ("train", "val", "trainval", "test")}
    # Generated on first use under <data dir>/synthetic_coco (see maskrcnn_benchmark/data/synthetic.py), in
    # its layout: <dir>/<split>/ images, <dir>/annotations/instances_<split>.json.
    SYNTHETIC_DIR = "synthetic_coco"
    SYNTHETIC = {"synthetic_coco_train": "train", "synthetic_coco_val": "val"}
    SYNTHETIC_ARGS = dict(num_train=600, num_val=100, seed=0)

    @staticmethod
    def data_dir() -> str:
        return os.environ.get("MASKRCNN_BENCHMARK_DATA_DIR", DatasetCatalog.DEFAULT_DATA_DIR)

    @classmethod
    def names(cls):
        return sorted(cls.DATASETS) + sorted(cls.VOC) + sorted(cls.SYNTHETIC)

    @classmethod
    def get(cls, name: str) -> dict:
        """Resolve ``name`` (see the module docstring).

        Raises:
            FileNotFoundError: a ``json:folder`` name whose json or folder does not exist.
            UnknownDatasetError (a KeyError and ValueError): any other unknown name.
        """
        data_dir = cls.data_dir()
        if name in cls.DATASETS:
            attrs = cls.DATASETS[name]
            return dict(factory="COCODataset", args=dict(root=os.path.join(data_dir, attrs["img_dir"]),
                                                         ann_file=os.path.join(data_dir, attrs["ann_file"])))
        if name in cls.VOC:
            folder, split = cls.VOC[name]
            return dict(factory="PascalVOCDataset", args=dict(data_dir=os.path.join(data_dir, folder), split=split))
        if name in cls.SYNTHETIC:
            out_dir = os.path.abspath(os.path.join(data_dir, cls.SYNTHETIC_DIR))
            split = cls.SYNTHETIC[name]
            return dict(factory="COCODataset",
                        args=dict(root=os.path.join(out_dir, split),
                                  ann_file=os.path.join(out_dir, "annotations", f"instances_{split}.json")),
                        generate=dict(kind="synthetic_coco", args=dict(out_dir=out_dir, **cls.SYNTHETIC_ARGS)))
        parts = split_json_path(name)
        if parts is not None:
            ann_file, root = parts
            if not os.path.isfile(ann_file):
                raise FileNotFoundError(f"dataset {name!r}: annotation file {ann_file} does not exist")
            if not os.path.isdir(root):
                raise FileNotFoundError(f"dataset {name!r}: image folder {root!r} does not exist")
            return dict(factory="COCODataset", args=dict(root=root, ann_file=ann_file))
        parts = split_voc_path(name)
        if parts is not None:
            root, split = parts
            if not split:
                raise UnknownDatasetError(f"dataset {name!r}: no split after the VOC folder {root!r} "
                                          f"(\"<VOC root>:<split>\", e.g. {root}:test)")
            return dict(factory="PascalVOCDataset", args=dict(data_dir=root, split=split))
        raise UnknownDatasetError(
            f"unknown dataset {name!r}. Known names: {', '.join(cls.names())}; or give a COCO-format "
            f"dataset as \"<annotations.json>:<image folder>\" or a Pascal VOC folder as "
            f"\"<VOC root>:<split>\" (a folder with Annotations/ and ImageSets/Main/<split>.txt)")


class ModelCatalog:
    """``catalog://`` names of ImageNet-pretrained backbones -> local files (never downloaded)."""

    DEFAULT_MODELS_DIR = "pretrained"
    ORIGINAL_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron/"
    # catalog name -> path relative to the models folder and to ORIGINAL_URL_PREFIX
    C2_IMAGENET_MODELS = {
        "ImageNetPretrained/MSRA/R-50": "ImageNetPretrained/MSRA/R-50.pkl",
        "ImageNetPretrained/MSRA/R-50-GN": "ImageNetPretrained/47261647/R-50-GN.pkl",
        "ImageNetPretrained/MSRA/R-101": "ImageNetPretrained/MSRA/R-101.pkl",
        "ImageNetPretrained/MSRA/R-101-GN": "ImageNetPretrained/47592356/R-101-GN.pkl",
        "ImageNetPretrained/FAIR/20171220/X-101-32x8d": "ImageNetPretrained/20171220/X-101-32x8d.pkl",
        "ImageNetPretrained/FAIR/20171220/X-101-64x4d": "ImageNetPretrained/20171220/X-101-64x4d.pkl",
    }

    @staticmethod
    def models_dir() -> str:
        return os.environ.get("MASKRCNN_BENCHMARK_MODELS", ModelCatalog.DEFAULT_MODELS_DIR)

    @classmethod
    def path(cls, name: str) -> str:
        """Local path for ``name`` (with or without ``catalog://``), existing or not."""
        if name.startswith("catalog://"):
            name = name[len("catalog://"):]
        if name not in cls.C2_IMAGENET_MODELS:
            raise CatalogKeyError(f"unknown model {name!r} in ModelCatalog; known: "
                                      f"{', '.join(sorted(cls.C2_IMAGENET_MODELS))}")
        return os.path.join(cls.models_dir(), cls.C2_IMAGENET_MODELS[name])

    @classmethod
    def get(cls, name: str) -> str:
        """Local path of an existing weights file for ``name``.

        Raises:
            FileNotFoundError: the file is not there; the message says where to get it and where
                to put it (set MASKRCNN_BENCHMARK_MODELS to use another folder).
        """
        path = cls.path(name)
        if not os.path.isfile(path):
            key = name[len("catalog://"):] if name.startswith("catalog://") else name
            raise FileNotFoundError(
                f"pretrained weights {name!r} not found at {path}. They are not downloaded "
                f"automatically: download {cls.ORIGINAL_URL_PREFIX}{cls.C2_IMAGENET_MODELS[key]} manually "
                f"and put it at {path} (or set MASKRCNN_BENCHMARK_MODELS to the folder holding "
                f"{cls.C2_IMAGENET_MODELS[key]})")
        return path
