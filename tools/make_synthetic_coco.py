#!/usr/bin/env python
"""Generate the synthetic shapes dataset (COCO format, or the Pascal VOC layout with --format voc).

Example::

    python tools/make_synthetic_coco.py --out datasets/synthetic_coco --num-train 600 --num-val 100
    python tools/make_synthetic_coco.py --out datasets/synthetic_voc --format voc   # DATASETS "<out>:train"

``--format`` is the layout (``coco`` or ``voc``); the legacy ``--format jpg|png`` still means the
COCO layout with that image format (also ``--image-format``).
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskrcnn_benchmark.data.synthetic import (SyntheticConfig, generate_synthetic_coco,  # noqa: E402
                                               generate_synthetic_voc)


def main(argv=None) -> int:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--num-train", type=int, default=600)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="image sides are drawn from [min-side-frac * size, size] px")
    p.add_argument("--min-side-frac", type=float, default=d.min_side_frac)
    p.add_argument("--min-objects", type=int, default=d.min_objects)
    p.add_argument("--max-objects", type=int, default=d.max_objects)
    p.add_argument("--min-object-size", type=float, default=d.min_object_size, help="px")
    p.add_argument("--max-object-frac", type=float, default=d.max_object_frac,
                   help="largest object side as a fraction of the image's shorter side")
    p.add_argument("--max-iou", type=float, default=d.max_iou)
    p.add_argument("--format", choices=("coco", "voc", "jpg", "png"), default="coco",
                   help="layout: coco (json) or voc (Annotations/*.xml, JPEGImages/, ImageSets/Main/); "
                        "jpg/png: the COCO layout with that image format (legacy)")
    p.add_argument("--image-format", choices=("jpg", "png"), default=None,
                   help=f"image files (default {d.image_format}; the VOC layout needs jpg)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    layout = "voc" if args.format == "voc" else "coco"
    image_format = args.image_format or (args.format if args.format in ("jpg", "png") else d.image_format)
    if layout == "voc" and image_format != "jpg":
        p.error("--format voc writes JPEGImages/: --image-format must be jpg")
    options = dict(overwrite=args.overwrite, image_size=args.image_size, min_side_frac=args.min_side_frac,
                   min_objects=args.min_objects, max_objects=args.max_objects,
                   min_object_size=args.min_object_size, max_object_frac=args.max_object_frac,
                   max_iou=args.max_iou, image_format=image_format)
    start = time.perf_counter()
    if layout == "voc":
        entries = generate_synthetic_voc(args.out, args.num_train, args.num_val, args.seed, **options)
    else:
        paths = generate_synthetic_coco(args.out, args.num_train, args.num_val, args.seed, **options)
        entries = {split: f"{sp['ann_file']}:{sp['root']}" for split, sp in paths.items()}
    print(f"wrote {args.num_train} train + {args.num_val} val images ({layout}) in {time.perf_counter() - start:.1f} s")
    for split, entry in entries.items():
        print(f"  {split}: DATASETS name \"{entry}\"")
    return 0


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    sys.exit(run_tool(main))
