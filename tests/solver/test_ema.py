"""ModelEMA: ema = decay * ema + (1 - decay) * w after each update, for parameters and buffers."""
import pytest
import torch
from torch import nn

from maskrcnn_benchmark.solver.ema import ModelEMA


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)  # float buffers running_mean / var, int buffer num_batches_tracked

    def forward(self, x):
        return self.bn(self.lin(x))


def test_three_steps_against_hand_computation():
    torch.manual_seed(0)
    model = Net()
    decay = 0.9
    ema = ModelEMA(model, decay)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # the hand reference: plain float64 copies updated by the formula
    expected = {k: v.detach().double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for step in range(3):
        model.train()
        loss = model(torch.randn(4, 3)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * v.double()
    got = ema.model.state_dict()
    for k, ref in expected.items():
        assert torch.allclose(got[k].double(), ref, rtol=1e-6, atol=1e-7), k
    # running statistics are buffers, averaged too; the step counter is copied
    assert not torch.allclose(got["bn.running_mean"], model.bn.running_mean)
    assert int(got["bn.num_batches_tracked"]) == 3 == int(model.bn.num_batches_tracked)
    assert ema.updates == 3
    # the average is a separate copy: not the trained weights, no gradients, eval mode
    assert not torch.allclose(got["lin.weight"], model.lin.weight)
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_unchanged_tensors_stay_bit_identical():
    model = nn.Linear(5, 5)
    with torch.no_grad():
        model.weight.fill_(0.1234567)
    ema = ModelEMA(model, 0.9998)
    for _ in range(5):
        ema.update(model)
    assert torch.equal(ema.model.weight, model.weight)


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(1)
    model = Net()
    ema = ModelEMA(model, 0.8)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    ema.update(model)
    other = ModelEMA(Net(), 0.8)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    for k, v in ema.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v), k


def test_bad_decay_and_bad_state():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="SOLVER.EMA_DECAY"):
            ModelEMA(nn.Linear(1, 1), bad)
    with pytest.raises(ValueError, match="'model'"):
        ModelEMA(nn.Linear(1, 1), 0.5).load_state_dict({"updates": 3})
