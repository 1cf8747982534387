import math

import pytest
import torch

from maskrcnn_benchmark.layers.losses import giou_loss, quality_focal_loss, smooth_l1_loss


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---- GIoU ------------------------------------------------------------------------------------
def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 9.0, 9.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [5.0, 5.0, 9.0, 9.0]])
    # overlap: IoU 1/7, enclosing 3x3 -> GIoU = 1/7 - 2/9; disjoint: 0 - 1/3; identical: 1
    expected = [1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 0.0]
    out = giou_loss(pred, target, reduction="none")
    torch.testing.assert_close(out, torch.tensor(expected))
    torch.testing.assert_close(giou_loss(pred, target), torch.tensor(sum(expected)))
    w = torch.tensor([0.5, 2.0, 1.0])
    torch.testing.assert_close(giou_loss(pred, target, weight=w),
                               torch.tensor(0.5 * expected[0] + 2.0 * expected[1]))


def test_giou_loss_empty_and_degenerate():
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = giou_loss(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0
    loss.backward()
    deg = torch.tensor([[3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    loss = giou_loss(deg, torch.tensor([[3.0, 3.0, 3.0, 3.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(deg.grad).all()


def test_giou_loss_shape_mismatch_raises():
    with pytest.raises(ValueError, match="giou_loss"):
        giou_loss(torch.zeros(2, 4), torch.zeros(3, 4))


# ---- quality focal loss ----------------------------------------------------------------------
def _qfl_reference(logits, labels, quality, gamma):
    """Plain-Python loop over (anchor, class) with the formula of the Dynamic ATSS release."""
    total = 0.0
    for i, row in enumerate(logits):
        if labels[i] < 0:
            continue
        for c, x in enumerate(row):
            p = _sig(x)
            if labels[i] == c + 1:
                q = quality[i]
                total += -abs(q - p) ** gamma * (q * math.log(p) + (1 - q) * math.log(1 - p))
            else:
                total += -(p ** gamma) * math.log(1 - p)
    return total


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_quality_focal_loss_hand_values(gamma):
    logits = [[0.3, -1.2, 2.0], [-0.5, 0.1, 0.7], [1.0, 1.0, -2.0], [0.0, 0.4, -0.3]]
    labels = [2, 0, -1, 3]
    quality = [0.7, 0.3, 0.5, 0.0]
    out = quality_focal_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels),
                             torch.tensor(quality, dtype=torch.float64), gamma=gamma)
    assert out.item() == pytest.approx(_qfl_reference(logits, labels, quality, gamma), rel=1e-10)


def test_quality_focal_loss_elementwise_and_ignored_rows():
    logits = torch.tensor([[0.3, -1.2], [1.0, 2.0]])
    out = quality_focal_loss(logits, torch.tensor([1, -1]), torch.tensor([0.6, 0.9]), reduction="none")
    assert out.shape == (2, 2)
    assert (out[1] == 0).all()
    p = _sig(-1.2)
    assert out[0, 1].item() == pytest.approx(-(p ** 2) * math.log(1 - p), rel=1e-5)


@pytest.mark.parametrize("x", [50.0, 100.0, -50.0, -100.0])
def test_quality_focal_loss_saturated_logits_are_finite(x):
    logits = torch.full((3, 2), x, requires_grad=True)
    loss = quality_focal_loss(logits, torch.tensor([1, 0, 2]), torch.tensor([0.5, 0.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_quality_focal_loss_no_gradient_to_quality_and_empty():
    q = torch.tensor([0.5], requires_grad=True)
    logits = torch.zeros(1, 2, requires_grad=True)
    quality_focal_loss(logits, torch.tensor([1]), q).backward()
    assert q.grad is None
    empty = torch.zeros(0, 5, requires_grad=True)
    loss = quality_focal_loss(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()


# ---- smooth L1 -------------------------------------------------------------------------------
def test_smooth_l1_hand_values():
    x = torch.tensor([0.0, 0.05, 1.0])
    y = torch.zeros(3)
    beta = 0.11
    expected = [0.0, 0.5 * 0.05 ** 2 / beta, 1.0 - 0.5 * beta]
    torch.testing.assert_close(smooth_l1_loss(x, y, beta, reduction="none"), torch.tensor(expected))
    torch.testing.assert_close(smooth_l1_loss(x, y, 0.0), torch.tensor(1.05))


def test_giou_loss_plus_one_hand_values():
    """The releases' GIoULoss on their inclusive boxes (x2 - 1, y2 - 1 of ours), areas without "+1"."""
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.5, 10.0]])
    target = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    # continuous: inter 50, union 150, enclosing 150 -> GIoU 1/3
    torch.testing.assert_close(giou_loss(pred[:1], target[:1]), torch.tensor(2 / 3))
    # inclusive [0, 0, 9, 9] and [5, 0, 14, 9]: inter 4 * 9 = 36, union 81 + 81 - 36 = 126, enclosing 14 * 9
    # = 126 -> GIoU 36 / 126; second: predicted x2 = -0.5 clamped to x1 = 0 -> area 0, inter 0, union 81,
    # enclosing 9 * 9 = 81 -> GIoU 0
    got = giou_loss(pred, target, reduction="none", plus_one=True)
    torch.testing.assert_close(got, torch.tensor([1 - 36 / 126, 1.0]))
