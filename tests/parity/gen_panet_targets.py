"""Parity fixture for PANet's training targets (segkit-core `ops::detection::{rpn_targets,
sample_rois, mask_targets}`) and losses (segkit-losses `detection`).

Oracles:
- Targets: numpy WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet = Detectron.pytorch):
  `lib/roi_data/rpn.py::_get_rpn_blobs` on the "wide" anchor fields of `data_utils.
  get_field_of_anchors` (TRAIN.MAX_SIZE 1400 -> 1408 square per level), narrowed to the feature
  maps as `FPN.py::fpn_rpn_losses` does; `datasets/json_dataset.py::add_proposals` (crowd_thresh
  0) + `roi_data/fast_rcnn.py::_sample_rois`, `_compute_targets`, `_expand_bbox_targets`,
  `_add_multilevel_rois`; `roi_data/mask_rcnn.py::add_mask_rcnn_blobs` with
  `utils/segms.py::polys_to_mask_wrt_box` / `polys_to_boxes`; `cython_bbox.bbox_overlaps` in
  float32. The official code needs Python 2-era numpy and compiled Cython, so it is not run.
  Its random draws (`npr.choice(replace=False)`, `npr.randint`) come from a RandomState and are
  RECORDED, and the Rust side replays them (ReplaySampler).
- Polygon rasterisation: INDEPENDENT, pycocotools' own `frPyObjects` + `decode`, as the official
  code calls it.
- Bitmap mask targets (not in the official code, which only sees polygons): INDEPENDENT,
  torchvision's `roi_align(aligned=False, sampling_ratio=-1)` (torchvision Mask R-CNN's
  `project_masks_on_boxes`), binarised at >= 0.5.
- Losses and gradients: PyTorch written from the official math (`net.py::smooth_l1_loss`,
  `FPN.py::fpn_rpn_losses` sigmoid branch, `fast_rcnn_heads.py::fast_rcnn_losses` (beta 1/3 as
  PANet passes it), `mask_rcnn_heads.py::mask_rcnn_losses`) on torch's own
  `binary_cross_entropy_with_logits` / `cross_entropy`, autograd for the gradients.

Scene: batch of two COCO-like images, 81 classes, 24 and 45 instances (star polygons, some with
two parts, two crowd instances each), 2000 synthetic proposals each; image 0 is 388x292 at scale
4/3 (517x389, the odd size of the other PANet tests), image 1 401x417 at scale 1.2 (481x500);
the batch is padded to 544x512, RPN levels 2..6 (136x128 .. 9x8), 3 anchors per position.
Synthetic head outputs come from synth.uniform (the Rust side draws the same values).
Run: python tests/parity/gen_panet_targets.py tests/fixtures
"""
import math
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import gen_panet_ops as ops  # noqa: E402
import synth  # noqa: E402

F32 = np.float32
NUM_CLASSES = 81
RATIOS = (0.5, 1, 2)
PAD = (544, 512)
LEVELS = [(lvl, math.ceil(PAD[0] / 2 ** lvl), math.ceil(PAD[1] / 2 ** lvl)) for lvl in range(2, 6)]
LEVELS.append((6, (LEVELS[-1][1] - 1) // 2 + 1, (LEVELS[-1][2] - 1) // 2 + 1))
IMAGES = [dict(h=388, w=292, scale=4.0 / 3.0, n=24), dict(h=401, w=417, scale=1.2, n=45)]
RPN_BATCH, RPN_FG, RPN_POS, RPN_NEG = 256, 0.5, 0.7, 0.3
ROI_BATCH, ROI_FG, FG_THRESH, BG_HI, BG_LO = 512, 0.25, 0.5, 0.5, 0.0
BOX_W = (10.0, 10.0, 5.0, 5.0)
M = 28


class Recorder:
    """numpy's draws, recorded as (n, with_replacement, positions)."""

    def __init__(self, seed):
        self.rs = np.random.RandomState(seed)
        self.log = []

    def choice(self, arr, size):  # npr.choice(arr, size, replace=False)
        pos = self.rs.permutation(len(arr))[:size]
        self.log.append((len(arr), 0, pos))
        return arr[pos]

    def randint_pick(self, arr, size):  # arr[npr.randint(len(arr), size=size)]
        pos = self.rs.randint(len(arr), size=size)
        self.log.append((len(arr), 1, pos))
        return arr[pos]

    def tensors(self, prefix):
        head = np.array([[n, r, len(p)] for n, r, p in self.log], dtype=np.int64).reshape(-1, 3)
        flat = np.concatenate([p for _, _, p in self.log] + [np.zeros(0, np.int64)]).astype(np.int64)
        return {prefix + ".head": head, prefix + ".positions": flat}


def bbox_overlaps(boxes, query):
    """cython_bbox.bbox_overlaps in float32."""
    boxes, query = boxes.astype(F32), query.astype(F32)
    out = np.zeros((boxes.shape[0], query.shape[0]), dtype=F32)
    one = F32(1)
    areas = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    for k in range(query.shape[0]):
        q = query[k]
        box_area = (q[2] - q[0] + one) * (q[3] - q[1] + one)
        iw = np.minimum(boxes[:, 2], q[2]) - np.maximum(boxes[:, 0], q[0]) + one
        ih = np.minimum(boxes[:, 3], q[3]) - np.maximum(boxes[:, 1], q[1]) + one
        ua = areas + box_area - iw * ih
        ok = (iw > 0) & (ih > 0)
        out[ok, k] = (iw * ih)[ok] / ua[ok]
    return out


# ---- scene ----

def make_image(rng, spec):
    h, w, n = spec["h"], spec["w"], spec["n"]
    polys, boxes, classes, crowd = [], [], [], []
    for i in range(n):
        parts = []
        cx, cy = rng.uniform(10, w - 10), rng.uniform(10, h - 10)
        r = rng.uniform(8, min(h, w) / 3)
        for _ in range(2 if i % 5 == 3 else 1):
            k = int(rng.integers(6, 15))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = r * rng.uniform(0.4, 1.0, k)
            xs = np.clip(cx + rad * np.cos(ang), 0, w - 1)
            ys = np.clip(cy + rad * np.sin(ang), 0, h - 1)
            parts.append([round(float(v), 2) for xy in zip(xs, ys) for v in xy])
            cx, cy = cx + r * 0.6, cy - r * 0.3
            cx, cy = min(max(cx, 10), w - 10), min(max(cy, 10), h - 10)
        xs = [v for p in parts for v in p[0::2]]
        ys = [v for p in parts for v in p[1::2]]
        x0, y0 = min(xs), min(ys)
        bw, bh = max(xs) - x0, max(ys) - y0
        # COCO bbox [x, y, w, h] -> Detectron xyxy (xywh_to_xyxy: x2 = x + max(0, w - 1)).
        boxes.append([x0, y0, x0 + max(0.0, bw - 1.0), y0 + max(0.0, bh - 1.0)])
        polys.append(parts)
        classes.append(int(rng.integers(1, NUM_CLASSES)))
        crowd.append(i in (5, 17))
    return polys, np.array(boxes, dtype=F32), np.array(classes, np.int64), np.array(crowd)


def make_proposals(rng, gt_scaled, im_h, im_w, n=2000):
    j = gt_scaled[rng.integers(0, len(gt_scaled), 1400)].astype(np.float64)
    wh = np.stack([j[:, 2] - j[:, 0] + 1, j[:, 3] - j[:, 1] + 1, j[:, 2] - j[:, 0] + 1, j[:, 3] - j[:, 1] + 1], 1)
    j = j + rng.normal(0, 0.15, j.shape) * wh
    x = rng.uniform(0, im_w, (n - 1400, 2))
    y = rng.uniform(0, im_h, (n - 1400, 2))
    rnd = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    p = np.concatenate([j, rnd]).astype(F32)
    p[:, 0::2] = np.clip(p[:, 0::2], 0, im_w - 1)
    p[:, 1::2] = np.clip(p[:, 1::2], 0, im_h - 1)
    p[:, 2] = np.maximum(p[:, 2], p[:, 0])
    p[:, 3] = np.maximum(p[:, 3], p[:, 1])
    return p


# ---- _get_rpn_blobs on the wide fields ----

def wide_anchors():
    fpn_max = 32 * math.ceil(1400 / 32.0)
    fields = []
    for lvl, _, _ in LEVELS:
        stride = 2.0 ** lvl
        cell = ops.d_anchors(stride, (32 * 2.0 ** (lvl - 2),), RATIOS)
        fs = int(np.ceil(fpn_max / stride))
        fields.append((fs, ops.d_grid(cell, stride, fs, fs)))
    return fields


def rpn_blobs(fields, im_h, im_w, gt, rec):
    all_anchors = np.concatenate([a for _, a in fields])
    total = all_anchors.shape[0]
    inside = np.where((all_anchors[:, 0] >= 0) & (all_anchors[:, 1] >= 0)
                      & (all_anchors[:, 2] < im_w) & (all_anchors[:, 3] < im_h))[0]
    anchors = all_anchors[inside]
    labels = np.full(len(inside), -1, dtype=np.int32)
    ov = bbox_overlaps(anchors, gt)
    argmax = ov.argmax(axis=1)
    amax = ov[np.arange(len(inside)), argmax]
    gt_argmax = ov.argmax(axis=0)
    gt_max = ov[gt_argmax, np.arange(ov.shape[1])]
    labels[np.where(ov == gt_max)[0]] = 1
    labels[amax >= RPN_POS] = 1
    num_fg = int(RPN_FG * RPN_BATCH)
    fg = np.where(labels == 1)[0]
    if len(fg) > num_fg:
        labels[rec.choice(fg, len(fg) - num_fg)] = -1
    fg = np.where(labels == 1)[0]
    num_bg = RPN_BATCH - np.sum(labels == 1)
    bg = np.where(amax < RPN_NEG)[0]
    if len(bg) > num_bg:
        labels[rec.randint_pick(bg, num_bg)] = 0
    targets = np.zeros((len(inside), 4), dtype=F32)
    targets[fg] = ops.d_encode(anchors[fg], gt[argmax[fg]], (1.0, 1.0, 1.0, 1.0))
    inw = np.zeros((len(inside), 4), dtype=F32)
    inw[labels == 1] = 1.0
    outw = np.zeros((len(inside), 4), dtype=F32)
    num_ex = np.sum(labels >= 0)
    outw[labels == 1] = 1.0 / num_ex
    outw[labels == 0] = 1.0 / num_ex

    def unmap(d, fill):
        out = np.full((total,) + d.shape[1:], fill, dtype=d.dtype)
        out[inside] = d
        return out

    labels, targets, inw, outw = unmap(labels, -1), unmap(targets, 0), unmap(inw, 0), unmap(outw, 0)
    per_level, start = [], 0
    for (fs, a), (_, h, w) in zip(fields, LEVELS):
        end = start + fs * fs * 3
        lab = labels[start:end].reshape(1, fs, fs, 3).transpose(0, 3, 1, 2)[0, :, :h, :w]
        cut = lambda x: x[start:end].reshape(1, fs, fs, 12).transpose(0, 3, 1, 2)[0, :, :h, :w]  # noqa: E731
        per_level.append((lab, cut(targets), cut(inw), cut(outw)))
        start = end
    return per_level


# ---- add_proposals + _sample_rois + mask targets ----

def sample_rois(gt_boxes, classes, crowd, proposals, rec):
    g = len(gt_boxes)
    boxes = np.concatenate([gt_boxes, proposals]).astype(F32)
    max_ov = np.concatenate([np.where(crowd, F32(-1), F32(1)).astype(F32), np.zeros(len(proposals), F32)])
    max_cls = np.concatenate([np.where(crowd, 0, classes), np.zeros(len(proposals), np.int64)])
    to_gt = np.concatenate([np.arange(g), -np.ones(len(proposals), np.int64)])
    ov = bbox_overlaps(proposals, gt_boxes)
    am, mx = ov.argmax(axis=1), ov.max(axis=1)
    pos = np.where(mx > 0)[0]
    max_ov[g + pos] = mx[pos]
    max_cls[g + pos] = classes[am[pos]]
    to_gt[g + pos] = am[pos]
    fg_per = int(np.round(ROI_FG * ROI_BATCH))
    fg = np.where(max_ov >= FG_THRESH)[0]
    n_fg = min(fg_per, fg.size)
    if fg.size > 0:
        fg = rec.choice(fg, n_fg)
    bg = np.where((max_ov < BG_HI) & (max_ov >= BG_LO))[0]
    n_bg = min(ROI_BATCH - n_fg, bg.size)
    if bg.size > 0:
        bg = rec.choice(bg, n_bg)
    keep = np.append(fg, bg).astype(np.int64)
    labels = max_cls[keep].copy()
    labels[n_fg:] = 0
    sampled = boxes[keep]
    tg = ops.d_encode(sampled, gt_boxes[to_gt[keep]], BOX_W)
    targets = np.zeros((len(keep), 4 * NUM_CLASSES), F32)
    inw = np.zeros_like(targets)
    for i in np.where(labels > 0)[0]:
        c = int(labels[i])
        targets[i, 4 * c:4 * c + 4] = tg[i]
        inw[i, 4 * c:4 * c + 4] = 1.0
    return sampled, labels, targets, inw, (inw > 0).astype(F32)


def polys_to_boxes(polys):
    out = np.zeros((len(polys), 4), dtype=F32)
    for i, poly in enumerate(polys):
        out[i] = [min(min(p[::2]) for p in poly), min(min(p[1::2]) for p in poly),
                  max(max(p[::2]) for p in poly), max(max(p[1::2]) for p in poly)]
    return out


def polys_to_mask_wrt_box(polygons, box, m):
    w = np.maximum(box[2] - box[0], F32(1))
    h = np.maximum(box[3] - box[1], F32(1))
    norm = []
    for poly in polygons:
        p = np.array(poly, dtype=F32)
        p[0::2] = (p[0::2] - box[0]) * F32(m) / w
        p[1::2] = (p[1::2] - box[1]) * F32(m) / h
        norm.append(p)
    rle = mask_util.frPyObjects(norm, m, m)
    return (np.sum(np.array(mask_util.decode(rle), dtype=F32), axis=2) > 0).astype(np.int32)


def bitmap_boxes(bitmaps):
    out = np.zeros((len(bitmaps), 4), dtype=F32)
    for i, b in enumerate(bitmaps):
        ys, xs = np.nonzero(b)
        if len(xs):
            out[i] = [xs.min(), ys.min(), xs.max(), ys.max()]
    return out


def mask_blobs(sampled, labels, polys, crowd, bitmaps=None):
    valid = np.where(~crowd)[0]
    fg = np.where(labels > 0)[0]
    rois = sampled[fg]
    if bitmaps is None:
        mb = polys_to_boxes([polys[i] for i in valid])
    else:
        mb = bitmap_boxes([bitmaps[i] for i in valid])
    best = np.argmax(bbox_overlaps(rois, mb), axis=1)
    out = np.zeros((len(fg), M * M), np.int32)
    for i in range(len(fg)):
        gi = valid[best[i]]
        if bitmaps is None:
            out[i] = polys_to_mask_wrt_box(polys[gi], rois[i], M).reshape(-1)
        else:
            t = torch.from_numpy(bitmaps[gi].astype(np.float32))[None, None]
            r = torch.tensor([[0.0, *[float(v) for v in rois[i]]]], dtype=torch.float32)
            a = torchvision.ops.roi_align(t, r, (M, M), 1.0, -1, aligned=False)
            out[i] = (a[0, 0] >= 0.5).numpy().astype(np.int32).reshape(-1)
    return rois, labels[fg], out


def sparse(prefix, a):
    flat = np.ascontiguousarray(a).reshape(-1)
    idx = np.nonzero(flat)[0]
    return {prefix + ".idx": idx.astype(np.int64), prefix + ".val": flat[idx].astype(F32)}


def synth_t(key, shape, scale, shift):
    n = int(np.prod(shape))
    return torch.from_numpy((scale * synth.uniform(key, n) + shift).astype(F32).reshape(shape))


def smooth_l1(pred, t, inw, outw, beta):
    """net.py::smooth_l1_loss."""
    x = inw * (pred - t)
    ax = torch.abs(x)
    s = (ax < beta).detach().float()
    loss = s * 0.5 * torch.pow(x, 2) / beta + (1 - s) * (ax - 0.5 * beta)
    return (outw * loss).reshape(-1).sum(0) / pred.size(0)


def losses(d, rpn_levels, rois, masks):
    out = {}
    # RPN (FPN.py::fpn_rpn_losses, sigmoid), both images.
    cls_total, box_total = 0.0, 0.0
    grads = []
    for li, (lvl, h, w) in enumerate(LEVELS):
        logits = synth_t(f"panet_targets.rpn_logits{lvl}", (2, 3, h, w), 8.0, -4.0).requires_grad_()
        deltas = synth_t(f"panet_targets.rpn_deltas{lvl}", (2, 12, h, w), 2.0, -1.0).requires_grad_()
        lab = torch.from_numpy(np.stack([r[li][0] for r in rpn_levels]).astype(np.int64))
        t, inw, outw = (torch.from_numpy(np.stack([r[li][k] for r in rpn_levels])) for k in (1, 2, 3))
        weight = (lab >= 0).float()
        c = F.binary_cross_entropy_with_logits(logits, lab.float(), weight, reduction="sum") / (RPN_BATCH * 2)
        b = smooth_l1(deltas, t, inw, outw, 1.0 / 9.0)
        cls_total, box_total = cls_total + c, box_total + b
        grads.append((lvl, logits, deltas))
    (cls_total + box_total).backward()
    out["loss.rpn_cls"] = cls_total.detach().reshape(1)
    out["loss.rpn_bbox"] = box_total.detach().reshape(1)
    for lvl, logits, deltas in grads:
        out.update(sparse(f"grad.rpn_logits{lvl}", logits.grad.numpy()))
        out.update(sparse(f"grad.rpn_deltas{lvl}", deltas.grad.numpy()))
    # Box head (fast_rcnn_heads.py::fast_rcnn_losses, PANet's beta 1/3).
    labels = torch.from_numpy(np.concatenate([r[1] for r in rois]).astype(np.int64))
    t, inw, outw = (torch.from_numpy(np.concatenate([r[k] for r in rois])) for k in (2, 3, 4))
    r = labels.numel()
    cls = synth_t("panet_targets.cls_score", (r, NUM_CLASSES), 6.0, -3.0).requires_grad_()
    box = synth_t("panet_targets.bbox_pred", (r, 4 * NUM_CLASSES), 2.0, -1.0).requires_grad_()
    lc = F.cross_entropy(cls, labels)
    lb = smooth_l1(box, t, inw, outw, 1.0 / 3.0)
    (lc + lb).backward()
    out["loss.fast_cls"], out["loss.fast_bbox"] = lc.detach().reshape(1), lb.detach().reshape(1)
    out["loss.fast_acc"] = (cls.detach().argmax(1) == labels).float().mean().reshape(1)
    out["grad.cls_score"] = cls.grad
    out.update(sparse("grad.bbox_pred", box.grad.numpy()))
    # Mask head (mask_rcnn_heads.py::mask_rcnn_losses on the class-specific blob).
    mcls = np.concatenate([m[1] for m in masks]).astype(np.int64)
    mt = np.concatenate([m[2] for m in masks])
    rm = len(mcls)
    full = -np.ones((rm, NUM_CLASSES * M * M), np.float32)
    for i, c in enumerate(mcls):
        full[i, c * M * M:(c + 1) * M * M] = mt[i]
    logits = synth_t("panet_targets.mask_logits", (rm, NUM_CLASSES, M, M), 8.0, -4.0).requires_grad_()
    gt = torch.from_numpy(full)
    weight = (gt > -1).float()
    lm = F.binary_cross_entropy_with_logits(logits.view(rm, -1), gt, weight, reduction="sum") / weight.sum()
    lm.backward()
    out["loss.mask"] = lm.detach().reshape(1)
    g = logits.grad.view(rm, NUM_CLASSES, M * M)
    out["grad.mask_class_channel"] = g[torch.arange(rm), torch.from_numpy(mcls)].clone()
    out["grad.mask_abs_sum"] = g.abs().sum().reshape(1)
    return out


def main(out_dir):
    rng = np.random.default_rng(20261205)
    fields = wide_anchors()
    d, rpn_levels, rois, masks = {}, [], [], []
    for i, spec in enumerate(IMAGES):
        polys, gt, classes, crowd = make_image(rng, spec)
        s = spec["scale"]
        im_h, im_w = float(np.round(spec["h"] * s)), float(np.round(spec["w"] * s))
        gt_scaled = gt[~crowd] * s
        props = make_proposals(rng, gt * s, im_h, im_w)
        rec = Recorder(100 + i)
        rpn = rpn_blobs(fields, im_h, im_w, gt_scaled, rec)
        d.update(rec.tensors(f"draws.rpn{i}"))
        # add_proposals: rois * (1 / im_scale) with im_scale read back from the float32 im_info.
        inv = F32(1.0 / float(F32(s)))
        rec = Recorder(200 + i)
        sampled, labels, targets, inw, outw = sample_rois(gt, classes, crowd, props * inv, rec)
        d.update(rec.tensors(f"draws.roi{i}"))
        mrois, mcls, mt = mask_blobs(sampled, labels, polys, crowd)
        d[f"img{i}.gt_boxes"] = gt
        d[f"img{i}.classes"] = classes
        d[f"img{i}.crowd"] = crowd.astype(np.uint8)
        d[f"img{i}.poly_xy"] = np.array([v for p in polys for part in p for v in part], np.float64)
        d[f"img{i}.poly_len"] = np.array([len(part) for p in polys for part in p], np.int64)
        d[f"img{i}.poly_parts"] = np.array([len(p) for p in polys], np.int64)
        d[f"img{i}.proposals"] = props
        d[f"img{i}.info"] = np.array([spec["h"], spec["w"], s, im_h, im_w], np.float64)
        for (lvl, _, _), (lab, t, a, b) in zip(LEVELS, rpn):
            d[f"rpn{i}.l{lvl}.labels"] = (lab + 1).astype(np.uint8)
            d.update(sparse(f"rpn{i}.l{lvl}.targets", t))
            d.update(sparse(f"rpn{i}.l{lvl}.inw", a))
            d.update(sparse(f"rpn{i}.l{lvl}.outw", b))
        scaled = sampled * F32(s)
        d[f"roi{i}.boxes"] = sampled
        d[f"roi{i}.rois"] = scaled
        d[f"roi{i}.labels"] = labels.astype(np.int64)
        d[f"roi{i}.levels"] = ops.d_levels(scaled)
        d.update(sparse(f"roi{i}.targets", targets))
        d.update(sparse(f"roi{i}.inw", inw))
        d.update(sparse(f"roi{i}.outw", outw))
        d[f"mask{i}.rois"] = mrois
        d[f"mask{i}.levels"] = ops.d_levels(mrois * F32(s))
        d[f"mask{i}.classes"] = mcls.astype(np.int64)
        d[f"mask{i}.targets"] = mt.astype(np.uint8)
        if i == 1:
            bitmaps = [mask_util.decode(mask_util.merge(mask_util.frPyObjects(p, spec["h"], spec["w"])))
                       for p in polys]
            _, _, bt = mask_blobs(sampled, labels, polys, crowd, bitmaps)
            d[f"bitmap{i}.targets"] = bt.astype(np.uint8)
        rpn_levels.append(rpn)
        rois.append((sampled, labels, targets, inw, outw))
        masks.append((mrois, mcls, mt))
        print(f"image {i}: {len(gt)} gt, rpn fg {sum(int((r[0] == 1).sum()) for r in rpn)} "
              f"bg {sum(int((r[0] == 0).sum()) for r in rpn)}, rois {len(labels)} "
              f"(fg {int((labels > 0).sum())}), masks {len(mcls)}")
    d.update(losses(d, rpn_levels, rois, masks))
    d = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))) for k, v in d.items()}
    path = os.path.join(out_dir, "panet_targets", "targets.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes;",
          {k: float(v[0]) for k, v in d.items() if k.startswith("loss.")})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
