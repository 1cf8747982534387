"""MODEL.USE_SYNCBN: BatchNorm -> SyncBatchNorm conversion, and the CPU/gloo fallback in 2 processes.

torch 2.13's SyncBatchNorm raises "SyncBatchNorm expected input tensor to be on GPU or XPU" for CPU
tensors once a process group exists, so on the CPU convert_sync_batchnorm keeps per-process BatchNorm
(with a warning); the 2-process test checks that training then runs and equals DDP over local BN.
"""
import copy
import os
import textwrap

import pytest
import torch
from torch import nn

from dist_helpers import run_ranks
from maskrcnn_benchmark.layers import FrozenBatchNorm2d, convert_sync_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), FrozenBatchNorm2d(4), nn.GroupNorm(2, 4),
                         nn.Conv2d(4, 2, 1))


def test_conversion_keeps_parameters_and_skips_frozen_bn_and_gn():
    net = _net()
    with torch.no_grad():
        net[1].running_mean.uniform_()
    bn_weight, bn_mean = net[1].weight, net[1].running_mean.clone()
    out = convert_sync_batchnorm(net, True, world_size=2, device="cuda")  # conversion itself needs no GPU
    assert isinstance(out[1], nn.SyncBatchNorm)
    assert out[1].weight is bn_weight and torch.equal(out[1].running_mean, bn_mean)
    assert type(out[3]) is FrozenBatchNorm2d and type(out[4]) is nn.GroupNorm


def test_no_conversion_when_off_or_single_process():
    net = _net()
    assert type(convert_sync_batchnorm(net, False, 2, "cuda")[1]) is nn.BatchNorm2d
    assert type(convert_sync_batchnorm(net, True, 1, "cuda")[1]) is nn.BatchNorm2d


def test_cpu_falls_back_with_a_warning():
    with pytest.warns(RuntimeWarning, match="supports only cuda.*stay per-process BatchNorm"):
        out = convert_sync_batchnorm(_net(), True, 2, "cpu")
    assert type(out[1]) is nn.BatchNorm2d


def test_shipped_configs_have_no_batchnorm_to_convert():
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.config import setup_cfg

    cfg = setup_cfg(os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "3", "MODEL.USE_SYNCBN", "True"])
    model = build_detection_model(cfg)
    before = [type(m) for m in model.modules()]
    assert FrozenBatchNorm2d in before and not any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in before)
    out = convert_sync_batchnorm(model, cfg.MODEL.USE_SYNCBN, 2, "cuda")
    assert [type(m) for m in out.modules()] == before


WORKER = textwrap.dedent(r'''
    import os, sys, warnings
    import torch
    sys.path.insert(0, os.environ["MB_ROOT"])
    from maskrcnn_benchmark.layers import convert_sync_batchnorm
    from maskrcnn_benchmark.utils.comm import get_world_size
    from maskrcnn_benchmark.utils.launch import init_distributed

    torch.set_num_threads(1)
    work = sys.argv[1]
    rank = int(os.environ["RANK"])
    distributed, _ = init_distributed(rank, "cpu")
    net = torch.load(os.path.join(work, "net.pth"), weights_only=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = convert_sync_batchnorm(net, True, get_world_size(), "cpu")
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.load(os.path.join(work, "data.pth"))[rank]
    loss = ddp(x).square().mean()
    loss.backward()
    optimizer.step()
    torch.save({"state": net.state_dict(), "bn_type": type(net[1]).__name__,
                "warnings": [str(w.message) for w in caught]}, os.path.join(work, f"rank{rank}.pth"))
    del ddp, loss  # the DDP reducer before its process group
    torch.distributed.destroy_process_group()
    # The results are saved: leave without the C++ teardown, which in about 1 of 5 runs under
    # pytest aborted after this point ("terminate called without an active exception", no Python
    # frame; torch 2.13 gloo + DDP, not reproduced outside pytest; cause not found).
    sys.stdout.flush()
    os._exit(0)
''')



def test_two_process_cpu_step_with_syncbn_enabled(tmp_path):
    work = str(tmp_path)
    net = _net()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(2, 3, 8, 8, generator=g) * (1 + r) + r for r in range(2)]  # different batch statistics
    torch.save(net, os.path.join(work, "net.pth"))
    torch.save(data, os.path.join(work, "data.pth"))
    script = os.path.join(work, "worker.py")
    with open(script, "w") as f:
        f.write(WORKER)
    run_ranks([script, work], timeout=120)

    # Reference: each rank's gradient with BatchNorm over its own batch, averaged (what DDP applies).
    grads = []
    for x in data:
        ref = copy.deepcopy(net).train()
        ref(x).square().mean().backward()
        grads.append({n: p.grad for n, p in ref.named_parameters()})
    expected = {n: p.detach() - 0.1 * (grads[0][n] + grads[1][n]) / 2 for n, p in net.named_parameters()}
    for rank in range(2):
        result = torch.load(os.path.join(work, f"rank{rank}.pth"), weights_only=False)
        assert result["bn_type"] == "BatchNorm2d"
        assert any("stay per-process BatchNorm" in w for w in result["warnings"])
        for name, value in expected.items():
            torch.testing.assert_close(result["state"][name], value, rtol=1e-5, atol=1e-6)


CUDA_WORKER = textwrap.dedent(r'''
    import os, sys
    import torch
    sys.path.insert(0, os.environ["MB_ROOT"])
    from maskrcnn_benchmark.layers import convert_sync_batchnorm
    import torch.distributed as dist

    work = sys.argv[1]
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://")  # one GPU: both processes on cuda:0
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), True, 2, "cuda")[0].cuda()
    data = torch.load(os.path.join(work, "data.pth"))
    x = data["x"][rank].cuda().requires_grad_()
    y = bn(x)
    (y * data["w"][rank].cuda()).sum().backward()
    torch.save({"type": type(bn).__name__, "y": y.detach().cpu(), "x_grad": x.grad.cpu(),
                "weight_grad": bn.weight.grad.cpu(), "running_mean": bn.running_mean.cpu()},
               os.path.join(work, f"rank{rank}.pth"))
    dist.destroy_process_group()
''')


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm synchronises CUDA tensors only")
def test_syncbn_on_cuda_equals_batchnorm_over_the_global_batch(tmp_path):
    work = str(tmp_path)
    g = torch.Generator().manual_seed(2)
    x = [torch.randn(2, 3, 5, 5, generator=g) * (1 + r) + r for r in range(2)]
    w = [torch.randn(2, 3, 5, 5, generator=g) for _ in range(2)]
    torch.save({"x": x, "w": w}, os.path.join(work, "data.pth"))
    script = os.path.join(work, "worker.py")
    with open(script, "w") as f:
        f.write(CUDA_WORKER)
    run_ranks([script, work], timeout=180)
    ref = nn.BatchNorm2d(3).train()
    xs = torch.cat(x).requires_grad_()
    y = ref(xs)
    (y * torch.cat(w)).sum().backward()
    results = [torch.load(os.path.join(work, f"rank{r}.pth")) for r in range(2)]
    assert all(r["type"] == "SyncBatchNorm" for r in results)
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in results]), xs.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0]["weight_grad"] + results[1]["weight_grad"], ref.weight.grad,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0]["running_mean"], ref.running_mean, rtol=1e-4, atol=1e-6)
