"""The original ATSS / Dynamic ATSS releases re-derived from their source, in their own "+1" frame.

A plain re-statement of the formulas of ``sfzhang15/ATSS`` and ``ZTX-100/DLA-Combined-IoUs``
(``generate_anchors``, ``boxlist_iou``, ``BoxCoder`` with ``TO_REMOVE = 1``, the loss classes'
``prepare_targets`` / ``compute_centerness_targets`` / ``GIoULoss``, the post-processor with
``clip_to_image``, ``remove_small_boxes``, ``ml_nms`` and the ``kthvalue`` cap, ``BoxList.resize`` +
``convert("xywh")``), written independently of the package so that the tests of
``MODEL.LEGACY_PLUS_ONE`` compare the package's continuous-coordinate implementation against them.
Boxes here are inclusive: ``[x1, x2]`` holds pixels ``x1 .. x2``; the package's continuous box is
``[x1, y1, x2 + 1, y2 + 1]``. Not a test module (helpers only).
"""
import math

import torch

INF = 100000000
PLUS_ONE = torch.tensor([0.0, 0.0, 1.0, 1.0])


def to_continuous(boxes):
    return boxes + PLUS_ONE.to(boxes)


def to_inclusive(boxes):
    return boxes - PLUS_ONE.to(boxes)


# ---- anchors ------------------------------------------------------------------------------------
def square_cell_anchor(stride, size):
    """generate_anchors(stride, (size,), (1.0,)): the window [1, 1, s, s] - 0.5 has width s and centre
    value s / 2; scaling it to width ``size`` about that centre gives [s/2 - (size-1)/2, ..., s/2 + (size-1)/2]."""
    c = stride / 2.0
    h = (size - 1) / 2.0
    return [c - h, c - h, c + h, c + h]


def grid_anchors(image_hw, strides=(8, 16, 32, 64, 128), sizes=(64, 128, 256, 512, 1024)):
    """Per level Tensor[N_l, 4] float32 inclusive anchors: the cell anchor shifted by (x s, y s),
    row-major over (y, x), on ceil(h / s) x ceil(w / s) grids."""
    h, w = image_hw
    levels = []
    for s, size in zip(strides, sizes):
        cell = torch.tensor(square_cell_anchor(s, size), dtype=torch.float64).float()
        gh, gw = math.ceil(h / s), math.ceil(w / s)
        ys, xs = torch.meshgrid(torch.arange(0, gh * s, s, dtype=torch.float32),
                                torch.arange(0, gw * s, s, dtype=torch.float32), indexing="ij")
        shifts = torch.stack((xs.reshape(-1), ys.reshape(-1), xs.reshape(-1), ys.reshape(-1)), dim=1)
        levels.append(shifts + cell[None])
    return levels


# ---- scenes (both frames) ---------------------------------------------------------------------------
def scene(kind, seed, image_hw=(256, 320)):
    """Inclusive ("+1" frame) float32 GTs and labels of one scene kind. Coordinates of the random kinds
    lie on a 1/64 px grid, so the continuous boxes (``+ [0, 0, 1, 1]``) are exact and both sides see
    the same numbers; ``"float"`` is unquantised."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    num, lo, hi = {"random": (12, 8, 160), "float": (12, 8, 160), "crowded": (80, 12, 70),
                   "duplicates": (8, 8, 160), "integer": (25, 4, 120), "tiny": (20, 0.3, 4)}[kind]
    wh = torch.rand(num, 2, generator=g, dtype=torch.float64) * (hi - lo) + lo
    xy = torch.rand(num, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 4.0, h - 4.0],
                                                                             dtype=torch.float64)
    boxes = torch.cat((xy, xy + wh - 1), dim=1)                # inclusive: width = x2 - x1 + 1
    if kind == "integer":
        boxes = boxes.round()
    elif kind != "float":
        boxes = (boxes * 64).round() / 64
    if kind == "duplicates":
        boxes = torch.cat((boxes, boxes[2:3], boxes[2:3], boxes[5:6]))
    labels = torch.randint(1, 6, (boxes.shape[0],), generator=g)
    return boxes.float(), labels


def release_levels(image_hw=(256, 320), strides=(8, 16, 32, 64, 128)):
    """(ours: continuous anchors of AnchorGenerator(legacy_plus_one=True), the releases' inclusive anchors)."""
    from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator

    gen = AnchorGenerator(sizes=tuple(8 * s for s in strides), strides=strides, legacy_plus_one=True)
    ours = gen.grid_anchors([(math.ceil(image_hw[0] / s), math.ceil(image_hw[1] / s)) for s in strides])
    theirs = grid_anchors(image_hw, strides, tuple(8 * s for s in strides))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, to_continuous(b))  # the same anchors, in the two frames
    return ours, theirs


# ---- box arithmetic ------------------------------------------------------------------------------
def iou(boxes1, boxes2):
    """boxlist_iou: [N, M] with "+1" areas and intersections."""
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def encode(gt, anchors, weights=(10.0, 10.0, 5.0, 5.0)):
    aw, ah = anchors[:, 2] - anchors[:, 0] + 1, anchors[:, 3] - anchors[:, 1] + 1
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    wx, wy, ww, wh = weights
    return torch.stack((wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw),
                        wh * torch.log(gh / ah)), dim=1)


def decode(codes, anchors, weights=(10.0, 10.0, 5.0, 5.0), clip=math.log(1000.0 / 16)):
    anchors = anchors.to(codes.dtype)
    aw, ah = anchors[:, 2] - anchors[:, 0] + 1, anchors[:, 3] - anchors[:, 1] + 1
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    wx, wy, ww, wh = weights
    dx, dy = codes[:, 0] / wx, codes[:, 1] / wy
    dw, dh = (codes[:, 2] / ww).clamp(max=clip), (codes[:, 3] / wh).clamp(max=clip)
    cx, cy = dx * aw + ax, dy * ah + ay
    pw, ph = torch.exp(dw) * aw, torch.exp(dh) * ah
    return torch.stack((cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw - 1, cy + 0.5 * ph - 1), dim=1)


# ---- assignment (prepare_targets, POSITIVE_TYPE ATSS, and the Dynamic ATSS one) --------------------
def prepare_targets(anchors_per_level, gts, labels, topk=9, pred_boxes=None):
    """One image. ``pred_boxes`` (inclusive, [N, 4]): Dynamic ATSS (score P + Q), else ATSS.

    Returns (labels [N] int64 (0 background), matched GT index [N] (meaningless where label 0),
    iou_score [N] (Dynamic ATSS: P with the matched GT; ATSS: None))."""
    anchors = torch.cat(anchors_per_level)
    num_gt, num_anchors = gts.shape[0], anchors.shape[0]
    anchor_ious = iou(anchors, gts)
    if pred_boxes is not None:
        pred_ious = iou(pred_boxes, gts)
        ious = pred_ious + anchor_ious
    else:
        ious = anchor_ious
    gt_c = torch.stack(((gts[:, 2] + gts[:, 0]) / 2.0, (gts[:, 3] + gts[:, 1]) / 2.0), dim=1)
    acx, acy = (anchors[:, 2] + anchors[:, 0]) / 2.0, (anchors[:, 3] + anchors[:, 1]) / 2.0
    a_c = torch.stack((acx, acy), dim=1)
    distances = (a_c[:, None, :] - gt_c[None, :, :]).pow(2).sum(-1).sqrt()
    cand, start = [], 0
    for level in anchors_per_level:
        end = start + level.shape[0]
        k = min(topk, level.shape[0])
        cand.append(distances[start:end].topk(k, dim=0, largest=False).indices + start)
        start = end
    cand = torch.cat(cand, dim=0)                                                 # [K, G]
    cols = torch.arange(num_gt)
    if pred_boxes is not None:
        p_c, q_c = pred_ious[cand, cols], anchor_ious[cand, cols]
        cand_scores = p_c + q_c
        thresh = p_c.mean(0) + q_c.mean(0) + p_c.std(0) + q_c.std(0)
    else:
        cand_scores = ious[cand, cols]
        thresh = cand_scores.mean(0) + cand_scores.std(0)
    is_pos = cand_scores >= thresh[None, :]
    l = acx[cand] - gts[:, 0]
    t = acy[cand] - gts[:, 1]
    r = gts[:, 2] - acx[cand]
    b = gts[:, 3] - acy[cand]
    is_pos &= torch.stack((l, t, r, b), dim=1).min(dim=1).values > 0.01
    ious_inf = torch.full((num_anchors, num_gt), -float(INF), dtype=ious.dtype)
    g_idx = cols[None, :].expand_as(cand)
    ious_inf[cand[is_pos], g_idx[is_pos]] = ious[cand[is_pos], g_idx[is_pos]]
    values, gt_idx = ious_inf.max(dim=1)
    out_labels = labels[gt_idx].clone()
    out_labels[values == -INF] = 0
    score = pred_ious[torch.arange(num_anchors), gt_idx] if pred_boxes is not None else None
    return out_labels, gt_idx, score


# ---- losses -------------------------------------------------------------------------------------------
def giou_loss_terms(pred_codes, target_codes, anchors):
    """GIoULoss per box (no weight): decoded inclusive boxes, areas without "+1", eps added."""
    p = decode(pred_codes, anchors)
    g = decode(target_codes, anchors)
    px2, py2 = torch.max(p[:, 0], p[:, 2]), torch.max(p[:, 1], p[:, 3])
    p_area = (px2 - p[:, 0]) * (py2 - p[:, 1])
    g_area = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    ix1, iy1 = torch.max(p[:, 0], g[:, 0]), torch.max(p[:, 1], g[:, 1])
    ix2, iy2 = torch.min(px2, g[:, 2]), torch.min(py2, g[:, 3])
    inter = torch.where((ix2 > ix1) & (iy2 > iy1), (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(ix1))
    ex1, ey1 = torch.min(p[:, 0], g[:, 0]), torch.min(p[:, 1], g[:, 1])
    ex2, ey2 = torch.max(px2, g[:, 2]), torch.max(py2, g[:, 3])
    enclosing = (ex2 - ex1) * (ey2 - ey1) + 1e-7
    union = p_area + g_area - inter + 1e-7
    return 1 - (inter / union - (enclosing - union) / enclosing)


def centerness_targets(target_codes, anchors):
    """compute_centerness_targets: l, t, r, b from the anchor centre value to the decoded GT."""
    g = decode(target_codes, anchors)
    cx, cy = (anchors[:, 2] + anchors[:, 0]) / 2, (anchors[:, 3] + anchors[:, 1]) / 2
    l, t, r, b = cx - g[:, 0], cy - g[:, 1], g[:, 2] - cx, g[:, 3] - cy
    lr, tb = torch.stack((l, r), 1), torch.stack((t, b), 1)
    return torch.sqrt(lr.min(1).values / lr.max(1).values * tb.min(1).values / tb.max(1).values)


def _bce_logits(x, t):
    return -(t * torch.nn.functional.logsigmoid(x) + (1 - t) * torch.nn.functional.logsigmoid(-x))


def atss_losses(logits, codes, ctr, anchors, labels, matched, gamma=2.0, alpha=0.25, reg_weight=2.0):
    """ATSSLossComputation on one batch flattened to [N, ...] (float64): focal / num_pos,
    centerness-weighted GIoU / sum of centerness, centerness BCE / num_pos."""
    num_classes = logits.shape[1]
    t = labels[:, None] == torch.arange(1, num_classes + 1)[None]
    logp, log1mp = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    p = logits.sigmoid()
    focal = torch.where(t, -alpha * (1 - p) ** gamma * logp, -(1 - alpha) * p ** gamma * log1mp)
    focal = focal * (labels >= 0).to(focal.dtype)[:, None]
    pos = labels > 0
    num_pos = max(float(pos.sum()), 1.0)
    targets = encode(matched[pos], anchors[pos])
    w = centerness_targets(targets, anchors[pos])
    reg = (giou_loss_terms(codes[pos], targets, anchors[pos]) * w).sum() / w.sum()
    ctr_loss = _bce_logits(ctr[pos], w).sum() / num_pos
    return {"loss_cls": focal.sum() / num_pos, "loss_reg": reg_weight * reg, "loss_centerness": ctr_loss}


def dynamic_atss_losses(logits, codes, iou_logits, anchors, labels, matched, q, gamma=2.0, reg_weight=2.0):
    """DynamicATSSLossComputation (float64): the GFL-form classification loss / num_pos, q-weighted GIoU /
    sum of q, IoU-branch BCE towards q / num_pos."""
    num_classes = logits.shape[1]
    t = labels[:, None] == torch.arange(1, num_classes + 1)[None]
    p = logits.sigmoid()
    logp, log1mp = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    qq = q[:, None]
    term1 = (qq - p).abs() ** gamma * (qq * logp + (1 - qq) * log1mp)
    term2 = p ** gamma * log1mp
    cls = -(t.to(p.dtype) * term1) - ((~t) & (labels[:, None] >= 0)).to(p.dtype) * term2
    pos = labels > 0
    num_pos = max(float(pos.sum()), 1.0)
    targets = encode(matched[pos], anchors[pos])
    w = q[pos]
    reg = (giou_loss_terms(codes[pos], targets, anchors[pos]) * w).sum() / w.sum()
    iou_loss = _bce_logits(iou_logits[pos], w).sum() / num_pos
    return {"loss_cls": cls.sum() / num_pos, "loss_reg": reg_weight * reg, "loss_iou": iou_loss}


# ---- post-processing --------------------------------------------------------------------------------
def postprocess(logits_per_level, codes_per_level, ctr_per_level, anchors_per_level, image_wh,
                pre_nms_thresh=0.05, pre_nms_top_n=1000, nms_thresh=0.6, detections_per_img=100):
    """ATSSPostProcessor for one image: per level threshold on sigmoid(cls), top-n of cls * ctr, decode,
    clip_to_image (inclusive [0, w - 1]), remove_small_boxes(0); across levels ml_nms (IoU with "+1",
    suppression at IoU > threshold, same class only) and the kthvalue cap.
    Returns inclusive boxes [K, 4], scores [K] (sqrt(cls * ctr)), labels [K]."""
    w, h = image_wh
    boxes, scores, labels = [], [], []
    for lg, cd, ct, an in zip(logits_per_level, codes_per_level, ctr_per_level, anchors_per_level):
        cls = lg.sigmoid()
        cand = cls > pre_nms_thresh
        n = min(int(cand.sum()), pre_nms_top_n)
        s = (cls * ct.sigmoid()[:, None])[cand]
        s, top = s.topk(n, sorted=False)
        nz = cand.nonzero()[top]
        loc, cl = nz[:, 0], nz[:, 1] + 1
        bx = decode(cd[loc], an[loc])
        bx = torch.stack((bx[:, 0].clamp(0, w - 1), bx[:, 1].clamp(0, h - 1),
                          bx[:, 2].clamp(0, w - 1), bx[:, 3].clamp(0, h - 1)), dim=1)
        keep = ((bx[:, 2] - bx[:, 0] + 1) >= 0) & ((bx[:, 3] - bx[:, 1] + 1) >= 0)
        boxes.append(bx[keep]); scores.append(torch.sqrt(s[keep])); labels.append(cl[keep])
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    order = scores.argsort(descending=True)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    ious = iou(boxes, boxes)
    keep = []
    for a in range(len(order)):
        i = int(order[a])
        if suppressed[a]:
            continue
        keep.append(i)
        later = order[a + 1:]
        suppressed[a + 1:] |= (labels[later] == labels[i]) & (ious[i, later] > nms_thresh)
    keep = torch.tensor(sorted(keep), dtype=torch.int64)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(keep) > detections_per_img > 0:
        thr = torch.kthvalue(scores, len(keep) - detections_per_img + 1).values
        sel = scores >= thr
        boxes, scores, labels = boxes[sel], scores[sel], labels[sel]
    return boxes, scores, labels


def json_xywh(boxes, ratio_w, ratio_h):
    """BoxList.resize (every coordinate times the ratio) then convert("xywh") (w = x2 - x1 + 1)."""
    x1, y1, x2, y2 = boxes[:, 0] * ratio_w, boxes[:, 1] * ratio_h, boxes[:, 2] * ratio_w, boxes[:, 3] * ratio_h
    return torch.stack((x1, y1, x2 - x1 + 1, y2 - y1 + 1), dim=1)


# ---- the package side of the end-to-end comparisons ------------------------------------------------
RELEASE_IMAGE_HW = (256, 320)
RELEASE_STRIDES = (8, 16, 32, 64, 128)


def build_release_head(head_name, num_classes=4, seed=0, std=0.1):
    """The registered dense head ``head_name`` built from the default config with MODEL.LEGACY_PLUS_ONE
    True (the path a release yaml + checkpoint takes), 8 input channels, weights N(0, std) so that the
    outputs spread (many candidates, boxes away from their anchors)."""
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.modeling.dense_heads import build_dense_head

    cfg = default_cfg.clone()
    cfg.MODEL.HEAD = head_name
    cfg.MODEL.LEGACY_PLUS_ONE = True
    cfg.MODEL.ATSS.NUM_CLASSES = num_classes
    cfg.MODEL.ATSS.NUM_CONVS = 1
    cfg.MODEL.GROUP_NORM.NUM_GROUPS = 4
    torch.manual_seed(seed)
    head = build_dense_head(cfg, 8)
    for p in head.head.parameters():
        torch.nn.init.normal_(p, std=std)
    return head


def release_features(batch=2, seed=1, image_hw=RELEASE_IMAGE_HW):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 8, math.ceil(image_hw[0] / s), math.ceil(image_hw[1] / s), generator=g)
            for s in RELEASE_STRIDES]


def release_batch(kinds, seed, image_hw=RELEASE_IMAGE_HW):
    """One image per scene kind: (inclusive GTs, labels, the package's targets: BoxLists of the
    continuous GTs with a "labels" field)."""
    from maskrcnn_benchmark.structures.bounding_box import BoxList

    gts, labels, targets = [], [], []
    for i, kind in enumerate(kinds):
        g, lab = scene(kind, seed + i, image_hw)
        t = BoxList(to_continuous(g), (image_hw[1], image_hw[0]))
        t.add_field("labels", lab)
        gts.append(g)
        labels.append(lab)
        targets.append(t)
    return gts, labels, targets


def flat_levels(outputs, i):
    """Per-level head outputs [B, K, H, W] of image ``i`` -> list of [H * W, K] (A = 1), row-major."""
    return [x[i].permute(1, 2, 0).reshape(-1, x.shape[1]) for x in outputs]
