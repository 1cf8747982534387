import pytest
import torch

from maskrcnn_benchmark.config import cfg as base_cfg
from maskrcnn_benchmark.data import build as data_build
from maskrcnn_benchmark.data import get_dataset_num_classes, make_data_loader
from maskrcnn_benchmark.data.collate_batch import BatchCollator
from maskrcnn_benchmark.data.synthetic import generate_synthetic_coco
from maskrcnn_benchmark.structures.bounding_box import BoxList


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("syn") / "d", 9, 5, seed=1, image_size=64,
                                    min_object_size=8)
    c = base_cfg.clone()
    c.merge_from_list([
        "DATASETS.TRAIN", (f"{paths['train']['ann_file']}:{paths['train']['root']}",),
        "DATASETS.TEST", (f"{paths['val']['ann_file']}:{paths['val']['root']}",),
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 12, "TEST.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0, "DATALOADER.SIZE_DIVISIBILITY", 32,
        "INPUT.MIN_SIZE_TRAIN", (40,), "INPUT.MAX_SIZE_TRAIN", 100, "INPUT.MIN_SIZE_TEST", 40,
        "INPUT.MAX_SIZE_TEST", 100, "SEED", 5])
    return c


def test_train_loader_batches(cfg):
    loader = make_data_loader(cfg, is_train=True)
    assert len(loader) == 12
    assert loader.num_foreground_classes == 6 and loader.class_names[0] == "__background__"
    batches = list(loader)
    assert len(batches) == 12
    images, targets, indices = batches[0]
    assert images.tensors.shape[0] == 2 and images.tensors.shape[2] % 32 == 0 and images.tensors.shape[3] % 32 == 0
    assert isinstance(targets, list) and all(isinstance(t, BoxList) for t in targets)
    assert isinstance(indices, tuple) and len(indices) == 2
    for (h, w), t in zip(images.image_sizes, targets):
        assert min(h, w) == 40 and t.size == (w, h)
        assert t.get_field("labels").dtype == torch.int64 and t.get_field("labels").min() >= 1


def test_resume_continues_the_same_order(cfg):
    full = [b[2] for b in make_data_loader(cfg, is_train=True, start_iter=0)]
    resumed = [b[2] for b in make_data_loader(cfg, is_train=True, start_iter=7)]
    assert resumed == full[7:]


def test_test_loader_keeps_every_image_in_order(cfg):
    loaders = make_data_loader(cfg, is_train=False)
    assert len(loaders) == 1
    seen = [i for _, _, idx in loaders[0] for i in idx]
    assert seen == list(range(5))


def test_global_batch_must_divide_world_size(cfg, monkeypatch):
    monkeypatch.setattr(data_build.comm, "get_world_size", lambda: 4)
    monkeypatch.setattr(data_build.comm, "get_rank", lambda: 1)
    c = cfg.clone()
    c.merge_from_list(["SOLVER.IMS_PER_BATCH", 6, "TEST.IMS_PER_BATCH", 4])
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH \(6\).*processes \(4\)"):
        make_data_loader(c, is_train=True, is_distributed=True)
    shard = [i for _, _, idx in make_data_loader(c, is_train=False, is_distributed=True)[0] for i in idx]
    assert shard == [1]  # rank 1 of 4 over 5 images: indices 1 (5 would be padding: none)


def test_num_classes_helpers(cfg):
    assert get_dataset_num_classes(cfg) == 6
    assert get_dataset_num_classes(cfg, is_train=False) == 6


def test_collator_pads_to_divisibility():
    a = BoxList(torch.zeros(0, 4), (5, 3))
    images, targets, idx = BatchCollator(8)([(torch.ones(3, 3, 5), a, 4), (torch.ones(3, 9, 2), a, 1)])
    assert images.tensors.shape == (2, 3, 16, 8)
    assert images.image_sizes == [(3, 5), (9, 2)]
    assert images.tensors[0, :, 3:].abs().sum() == 0 and images.tensors[0, :, :3, :5].min() == 1
    assert idx == (4, 1) and targets == [a, a]


def test_collator_batches_uint8_views_into_one_zero_padded_tensor():
    """The loaders' uint8 CHW views of HWC arrays are copied into one uint8 batch: each image at
    the top left, exactly; zeros elsewhere."""
    import numpy as np

    a = BoxList(torch.zeros(0, 4), (5, 3))
    rng = np.random.default_rng(0)
    arrays = [rng.integers(1, 256, (3, 5, 3), dtype=np.uint8), rng.integers(1, 256, (9, 2, 3), dtype=np.uint8)]
    views = [torch.from_numpy(x).permute(2, 0, 1) for x in arrays]
    images, _, _ = BatchCollator(4)([(v, a, i) for i, v in enumerate(views)])
    x = images.tensors
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 12, 8) and x.is_contiguous()
    expected = torch.zeros(2, 3, 12, 8, dtype=torch.uint8)
    for i, arr in enumerate(arrays):
        expected[i, :, : arr.shape[0], : arr.shape[1]] = torch.tensor(arr.transpose(2, 0, 1).copy())
    assert torch.equal(x, expected)


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # no GPU here
def test_loader_pins_batches_only_for_a_cuda_model(cfg, monkeypatch):
    """A CUDA MODEL.DEVICE gets pin_memory=True, and pinning reaches every tensor of a batch
    (ImageList / BoxList.pin_memory); a CPU model does not pin."""
    assert not make_data_loader(cfg, is_train=False)[0].pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    c = cfg.clone()
    c.merge_from_list(["MODEL.DEVICE", "cuda"])
    assert make_data_loader(c, is_train=False)[0].pin_memory
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a: pinned.append(t) or t.clone())
    from torch.utils.data._utils.pin_memory import pin_memory

    images, targets, indices = next(iter(make_data_loader(cfg, is_train=False)[0]))
    assert images.tensors.dtype == torch.uint8  # the model normalises on its device
    out_images, out_targets, out_indices = pin_memory((images, targets, indices))
    assert any(t is images.tensors for t in pinned) and out_images.image_sizes == images.image_sizes
    assert out_images.tensors.dtype == torch.uint8 and torch.equal(out_images.tensors, images.tensors)
    for t, out in zip(targets, out_targets):
        assert any(p is t.bbox for p in pinned) and any(p is t.get_field("labels") for p in pinned)
        assert torch.equal(out.bbox, t.bbox) and out.size == t.size
    assert out_indices == indices and len(pinned) == 1 + 2 * len(targets)


class _FreezeCount(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import gc

        return gc.get_freeze_count()


def test_loader_workers_freeze_the_inherited_objects():
    """A worker's GC never walks the objects forked from the parent (dataset records, torch modules):
    they sit in the permanent generation, and the parent's own GC is untouched."""
    import gc

    from maskrcnn_benchmark.data.build import _worker_init

    inherited = [[i] for i in range(50_000)]  # 50k GC-tracked containers in the parent
    loader = torch.utils.data.DataLoader(_FreezeCount(), num_workers=1, worker_init_fn=_worker_init,
                                         multiprocessing_context="fork")
    counts = [int(c) for c in loader]
    assert len(inherited) == 50_000 and min(counts) >= 50_000
    assert gc.get_freeze_count() == 0
