"""Two CPU processes (gloo, 127.0.0.1): global loss normalisation and identical replicas after training.

The workers are plain subprocesses with the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); rank r also gets ``--local-rank=r`` like the legacy launcher.
"""
import json
import os
import textwrap

import cv2
import numpy as np
import pytest
import torch
from dist_helpers import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")

WORKER = textwrap.dedent(r'''
    import os, sys
    import torch
    sys.path.insert(0, os.environ["MB_ROOT"])
    from maskrcnn_benchmark.utils.launch import init_distributed
    from maskrcnn_benchmark.config import setup_cfg
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.structures.image_list import to_image_list
    from maskrcnn_benchmark.utils import comm

    torch.set_num_threads(1)
    work, config, dataset = sys.argv[1], sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])
    distributed, local_rank = init_distributed(rank, "cpu")
    assert distributed and comm.get_world_size() == 2 and local_rank == rank

    # 1) one image per rank (rank 1: no objects); DDP averages the gradients
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", 3])
    model = build_detection_model(cfg)
    model.load_state_dict(torch.load(os.path.join(work, "init.pth"), weights_only=True))
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    inputs = torch.load(os.path.join(work, "inputs.pth"), weights_only=False)
    image, target = inputs["images"][rank], inputs["targets"][rank]
    losses = ddp(to_image_list([image], 32), [target])
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "grads": grads},
               os.path.join(work, f"step_rank{rank}.pth"))

    # 2) the training command itself, a few iterations + distributed evaluation
    sys.argv = ["train_net.py", f"--local-rank={rank}"]
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(os.environ["MB_ROOT"], "tools", "train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    trained = tool.main([f"--local-rank={rank}", "--config-file", config, "MODEL.DEVICE", "cpu",
                         "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
                         "OUTPUT_DIR", os.path.join(work, "out"), "DATALOADER.NUM_WORKERS", "0",
                         "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
                         "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.BASE_LR", "0.01",
                         "INPUT.MIN_SIZE_RANGE_TRAIN", "(56, 72)", "INPUT.MAX_SIZE_TRAIN", "96",
                         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"])
    torch.save(trained.state_dict(), os.path.join(work, f"final_rank{rank}.pth"))
''')



def _tiny_coco(root, n=4, size=64):
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((size, size, 3), 30, np.uint8)
        x1, y1 = (int(v) for v in rng.integers(2, size // 2, 2))
        w, h = (int(v) for v in rng.integers(14, size // 2, 2))
        cv2.rectangle(img, (x1, y1), (x1 + w, y1 + h), (60, 200 - 120 * (i % 2), 220), -1)
        cv2.imwrite(os.path.join(root, "img", f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": size, "width": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": i % 2 + 1, "bbox": [x1, y1, w, h],
                     "area": float(w * h), "iscrowd": 0})
    ann = os.path.join(root, "ann.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, f)
    return f"{ann}:{os.path.join(root, 'img')}"


@pytest.mark.slow
def test_two_process_training(tmp_path):
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.structures.bounding_box import BoxList
    from maskrcnn_benchmark.structures.image_list import to_image_list
    from maskrcnn_benchmark.config import setup_cfg

    work = str(tmp_path)
    dataset = _tiny_coco(os.path.join(work, "data"))
    cfg = setup_cfg(SMALL_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", 3])
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    torch.save(model.state_dict(), os.path.join(work, "init.pth"))
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 64, 64, generator=g) for _ in range(2)]
    with_objects = BoxList(torch.tensor([[8.0, 10.0, 40.0, 52.0], [30.0, 4.0, 60.0, 30.0]]), (64, 64))
    with_objects.add_field("labels", torch.tensor([1, 2]))
    empty = BoxList(torch.zeros(0, 4), (64, 64))
    empty.add_field("labels", torch.zeros(0, dtype=torch.int64))
    torch.save({"images": images, "targets": [with_objects, empty]}, os.path.join(work, "inputs.pth"))
    script = os.path.join(work, "worker.py")
    with open(script, "w") as f:
        f.write(WORKER)

    run_ranks([script, work, SMALL_CONFIG, dataset], timeout=150)

    # (1) loss normalisation: the mean over ranks of each loss and of the gradients (what DDP applies)
    # equals one process on the concatenated batch (positives counted over both images)
    model.train()
    ref_losses = model(to_image_list(images, 32), [with_objects, empty])
    model.zero_grad()
    sum(ref_losses.values()).backward()
    steps = [torch.load(os.path.join(work, f"step_rank{r}.pth"), weights_only=True) for r in range(2)]
    for k, v in ref_losses.items():
        mean = (steps[0]["losses"][k] + steps[1]["losses"][k]) / 2
        torch.testing.assert_close(mean, v.detach(), rtol=1e-4, atol=1e-6, msg=f"loss {k}")
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        torch.testing.assert_close(steps[0]["grads"][n], steps[1]["grads"][n], msg=f"grad {n} differs between ranks")
        torch.testing.assert_close(steps[0]["grads"][n], p.grad, rtol=1e-3, atol=1e-5, msg=f"grad {n}")

    # (2) replicas identical after training; rank 0 wrote the checkpoint and the evaluation
    final = [torch.load(os.path.join(work, f"final_rank{r}.pth"), weights_only=True) for r in range(2)]
    for k in final[0]:
        assert torch.equal(final[0][k], final[1][k]), k
    ckpt = torch.load(os.path.join(work, "out", "model_final.pth"), weights_only=True)
    assert ckpt["iteration"] == 3 and len(ckpt["rng_states"]) == 2
    for k in final[0]:
        assert torch.equal(ckpt["model"][k], final[0][k]), k
    folder = os.path.join(work, "out", "inference", "ann")
    assert os.path.isfile(os.path.join(folder, "bbox.json"))
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    assert metrics["num_images"] == 4 and set(metrics["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
