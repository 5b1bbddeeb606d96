"""Parity fixtures for segkit-core's two-stage detection ops (`ops::detection`).

Two kinds of oracle, named per fixture key:
- `legacy.*` (Detectron v1 / PANet, the `+1` box convention): numpy WRITTEN FROM DETECTRON'S MATH
  (ShuLiu1993/PANet `lib/modeling/generate_anchors.py`, `lib/utils/boxes.py` (`bbox_transform`,
  `bbox_transform_inv`, `clip_tiled_boxes`), `lib/utils/cython_nms.pyx`,
  `lib/modeling/generate_proposals.py::_filter_boxes`, `lib/utils/fpn.py`,
  `collect_and_distribute_fpn_rpn_proposals.py`, `lib/core/test.py::segm_results`), in float32
  as the official code computes (numpy 1.x casting: float32 arrays with Python scalars stay
  float32). Detectron's code itself needs Python 2-era numpy and compiled Cython, so it is not
  run. Independent cross-checks where one exists: `legacy.nms_tv_keep` is torchvision's `nms` on
  boxes with `x2 + 1`, `y2 + 1` (the `+1` convention applied by adjusting boxes), and the mask
  paste uses OpenCV's own `cv2.resize`.
- `cont.*` (torchvision convention): INDEPENDENT, torchvision 0.29's own `AnchorGenerator`,
  `BoxCoder`, `clip_boxes_to_image`, `remove_small_boxes`, `nms` and `LevelMapper`.
- `resize.*`: INDEPENDENT, `cv2.resize(float32, INTER_LINEAR)` (opencv-python).

Run: python tests/parity/gen_panet_ops.py tests/fixtures
"""
import os
import sys

import cv2
import numpy as np
import torch
from safetensors.torch import save_file

F32 = np.float32
CLIP = F32(np.log(1000.0 / 16.0))


# ---- Detectron's math (numpy, float64 anchors as numpy builds them) ----

def d_anchors(stride, sizes, ratios):
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, xc, yc):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((xc - 0.5 * (ws - 1), yc - 0.5 * (hs - 1), xc + 0.5 * (ws - 1), yc + 0.5 * (hs - 1)))

    scales = np.array(sizes, dtype=np.float64) / stride
    ratios = np.array(ratios, dtype=np.float64)
    base = np.array([1, 1, stride, stride], dtype=np.float64) - 1
    w, h, xc, yc = whctrs(base)
    ws = np.round(np.sqrt(w * h / ratios))
    hs = np.round(ws * ratios)
    ra = mk(ws, hs, xc, yc)
    out = []
    for a in ra:
        w, h, xc, yc = whctrs(a)
        out.append(mk(w * scales, h * scales, xc, yc))
    return np.vstack(out)


def d_grid(cell, stride, h, w):
    sx, sy = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
    return (cell[None] + shifts[:, None]).reshape(-1, 4).astype(F32)


def d_decode(boxes, deltas, weights):
    o = F32(1.0)
    widths = boxes[:, 2] - boxes[:, 0] + o
    heights = boxes[:, 3] - boxes[:, 1] + o
    cx = boxes[:, 0] + F32(0.5) * widths
    cy = boxes[:, 1] + F32(0.5) * heights
    wx, wy, ww, wh = [F32(v) for v in weights]
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, CLIP)
    dh = np.minimum(deltas[:, 3::4] / wh, CLIP)
    pcx = dx * widths[:, None] + cx[:, None]
    pcy = dy * heights[:, None] + cy[:, None]
    pw = np.exp(dw) * widths[:, None]
    ph = np.exp(dh) * heights[:, None]
    out = np.zeros(deltas.shape, dtype=F32)
    out[:, 0::4] = pcx - F32(0.5) * pw
    out[:, 1::4] = pcy - F32(0.5) * ph
    out[:, 2::4] = pcx + F32(0.5) * pw - o
    out[:, 3::4] = pcy + F32(0.5) * ph - o
    return out


def d_encode(boxes, gt, weights):
    o = F32(1.0)
    ew, eh = boxes[:, 2] - boxes[:, 0] + o, boxes[:, 3] - boxes[:, 1] + o
    ecx, ecy = boxes[:, 0] + F32(0.5) * ew, boxes[:, 1] + F32(0.5) * eh
    gw, gh = gt[:, 2] - gt[:, 0] + o, gt[:, 3] - gt[:, 1] + o
    gcx, gcy = gt[:, 0] + F32(0.5) * gw, gt[:, 1] + F32(0.5) * gh
    wx, wy, ww, wh = [F32(v) for v in weights]
    return np.stack([wx * (gcx - ecx) / ew, wy * (gcy - ecy) / eh,
                     ww * np.log(gw / ew), wh * np.log(gh / eh)], axis=1).astype(F32)


def d_clip(boxes, h, w):
    b = boxes.copy()
    b[:, 0::4] = np.maximum(np.minimum(b[:, 0::4], F32(w - 1)), F32(0))
    b[:, 1::4] = np.maximum(np.minimum(b[:, 1::4], F32(h - 1)), F32(0))
    b[:, 2::4] = np.maximum(np.minimum(b[:, 2::4], F32(w - 1)), F32(0))
    b[:, 3::4] = np.maximum(np.minimum(b[:, 3::4], F32(h - 1)), F32(0))
    return b


def d_filter(boxes, min_size, im_h, im_w, im_scale):
    m = F32(min_size * im_scale)
    ws = boxes[:, 2] - boxes[:, 0] + F32(1)
    hs = boxes[:, 3] - boxes[:, 1] + F32(1)
    xc, yc = boxes[:, 0] + ws / F32(2), boxes[:, 1] + hs / F32(2)
    return np.where((ws >= m) & (hs >= m) & (xc < F32(im_w)) & (yc < F32(im_h)))[0]


def d_nms(boxes, scores, thresh):
    """cython_nms.nms in float32 (order: stable descending here; ties do not occur in the data)."""
    x1, y1, x2, y2 = [boxes[:, i] for i in range(4)]
    areas = (x2 - x1 + F32(1)) * (y2 - y1 + F32(1))
    order = np.argsort(-scores, kind="stable")
    sup = np.zeros(len(boxes), dtype=bool)
    thresh = F32(thresh)
    for _i, i in enumerate(order):
        if sup[i]:
            continue
        rest = order[_i + 1:]
        rest = rest[~sup[rest]]
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + F32(1))
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + F32(1))
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        sup[rest[ovr >= thresh]] = True
    return np.where(~sup)[0]  # Detectron returns increasing index order


def d_levels(rois, k_min=2, k_max=5):
    areas = (rois[:, 2] - rois[:, 0] + F32(1)) * (rois[:, 3] - rois[:, 1] + F32(1))
    areas[areas < 0] = 0
    s = np.sqrt(areas)
    lv = np.floor(F32(4) + np.log2(s / F32(224) + F32(1e-6)))
    return np.clip(lv, k_min, k_max).astype(np.int64)


def d_distribute(lvls, k_min=2, k_max=5):
    order = np.empty((0,))
    for l in range(k_min, k_max + 1):
        order = np.concatenate((order, np.where(lvls == l)[0]))
    return np.argsort(order).astype(np.int64)


def d_paste(masks, boxes, im_h, im_w, m=28, thresh=0.5):
    scale = (m + 2.0) / m
    w_half = (boxes[:, 2] - boxes[:, 0]) * F32(0.5)
    h_half = (boxes[:, 3] - boxes[:, 1]) * F32(0.5)
    xc = (boxes[:, 2] + boxes[:, 0]) * F32(0.5)
    yc = (boxes[:, 3] + boxes[:, 1]) * F32(0.5)
    w_half *= F32(scale)
    h_half *= F32(scale)
    exp = np.zeros(boxes.shape)
    exp[:, 0], exp[:, 2] = xc - w_half, xc + w_half
    exp[:, 1], exp[:, 3] = yc - h_half, yc + h_half
    ref = exp.astype(np.int32)
    padded = np.zeros((m + 2, m + 2), dtype=F32)
    out = np.zeros((len(boxes), im_h, im_w), dtype=np.uint8)
    for i in range(len(boxes)):
        padded[1:-1, 1:-1] = masks[i]
        r = ref[i]
        w = max(r[2] - r[0] + 1, 1)
        h = max(r[3] - r[1] + 1, 1)
        mask = np.array(cv2.resize(padded, (int(w), int(h))) > thresh, dtype=np.uint8)
        x0, x1 = max(r[0], 0), min(r[2] + 1, im_w)
        y0, y1 = max(r[1], 0), min(r[3] + 1, im_h)
        if x0 < x1 and y0 < y1:
            out[i, y0:y1, x0:x1] = mask[(y0 - r[1]):(y1 - r[1]), (x0 - r[0]):(x1 - r[0])]
    return out


def t(a, dtype=None):
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if dtype is None else a.astype(dtype))


def random_boxes(rng, n, im_h, im_w, lo=2.0, hi=400.0):
    xc, yc = rng.uniform(-20, im_w + 20, n), rng.uniform(-20, im_h + 20, n)
    w, h = np.exp(rng.uniform(np.log(lo), np.log(hi), n)), np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1).astype(F32)


def main(out_dir):
    import torchvision
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import boxes as box_ops
    from torchvision.ops.poolers import LevelMapper

    os.makedirs(os.path.join(out_dir, "panet"), exist_ok=True)
    rng = np.random.default_rng(11)
    d = {}
    im_h, im_w = 544, 416
    ratios = (0.5, 1, 2)
    # Anchors: Detectron levels 2..6 (stride 2^l, size 32 * 2^(l-2)); grid of level 5 (17 x 13).
    for lvl in range(2, 7):
        cell = d_anchors(2.0 ** lvl, (32 * 2.0 ** (lvl - 2),), ratios)
        d[f"legacy.cell{lvl}"] = t(cell)
    d["legacy.grid5"] = t(d_grid(d_anchors(32.0, (128.0,), ratios), 32.0, 17, 13))
    gen = AnchorGenerator(sizes=((32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    d["cont.cell"] = gen.cell_anchors[0].double()
    feat = torch.zeros(1, 1, 17, 13)
    img = torchvision.models.detection.image_list.ImageList(torch.zeros(1, 3, im_h, im_w), [(im_h, im_w)])
    d["cont.grid"] = gen(img, [feat])[0].contiguous()

    # Box coding: 2000 boxes, 3 targets each, deltas with some beyond the dw clip.
    n = 2000
    boxes = random_boxes(rng, n, im_h, im_w)
    deltas = rng.normal(0, 1.0, (n, 12)).astype(F32)
    deltas[::17, 2] = 30.0
    d["boxes"], d["deltas"] = t(boxes), t(deltas)
    d["legacy.decode_w1"] = t(d_decode(boxes, deltas, (1, 1, 1, 1)))
    d["legacy.decode_w10"] = t(d_decode(boxes, deltas, (10, 10, 5, 5)))
    gt = random_boxes(rng, n, im_h, im_w)
    d["gt"] = t(gt)
    d["legacy.encode"] = t(d_encode(boxes, gt, (10, 10, 5, 5)))
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    d["cont.decode_w10"] = coder.decode_single(t(deltas), t(boxes)).contiguous()
    d["cont.encode"] = coder.encode_single(t(gt), t(boxes)).contiguous()
    dec = d_decode(boxes, deltas, (1, 1, 1, 1))
    d["legacy.clip"] = t(d_clip(dec, im_h, im_w))
    d["cont.clip"] = box_ops.clip_boxes_to_image(t(dec).reshape(-1, 4), (im_h, im_w)).reshape(n, 12).contiguous()
    clipped = d_clip(dec[:, :4], im_h, im_w)
    d["legacy.filter"] = t(d_filter(clipped, 16.0, im_h, im_w, 1.5), np.int64)
    d["cont.filter"] = box_ops.remove_small_boxes(t(dec[:, :4]), 16.0).to(torch.int64)

    # NMS on 3000 overlapping proposals (unique scores), thresholds 0.7 and 0.5.
    nb = random_boxes(rng, 3000, 120, 160, lo=8.0, hi=80.0)
    sc = rng.permutation(3000).astype(F32) / F32(3000) + F32(1e-4)
    d["nms.boxes"], d["nms.scores"] = t(nb), t(sc)
    for th, name in ((0.7, "07"), (0.5, "05")):
        d[f"legacy.nms{name}"] = t(d_nms(nb, sc, th), np.int64)
        adj = t(nb).clone()
        adj[:, 2:] += 1.0
        d[f"legacy.nms_tv_keep{name}"] = torchvision.ops.nms(adj, t(sc), th).to(torch.int64)
        d[f"cont.nms{name}"] = torchvision.ops.nms(t(nb), t(sc), th).to(torch.int64)

    # Top-k (Detectron's argpartition + argsort) of 20000 unique scores.
    s = rng.permutation(20000).astype(F32) * F32(1e-3)
    inds = np.argpartition(-s, 1000)[:1000]
    d["topk.scores"] = t(s)
    d["legacy.topk"] = t(inds[np.argsort(-s[inds])], np.int64)

    # Levels: random boxes plus exact canonical sizes (112, 224, 448 legacy widths).
    lb = random_boxes(rng, 2000, im_h, im_w, lo=1.0, hi=900.0)
    exact = np.array([[0, 0, s - 1, s - 1] for s in (56, 111, 112, 113, 223, 224, 225, 448, 449)], dtype=F32)
    lb = np.vstack([lb, exact, exact + 1])
    d["levels.boxes"] = t(lb)
    lv = d_levels(lb)
    d["legacy.levels"] = t(lv)
    d["legacy.restore"] = t(d_distribute(lv))
    mapper = LevelMapper(2, 5)
    d["cont.levels"] = (mapper([t(lb)]) + 2).to(torch.int64)

    # Mask paste: 60 masks (smooth probabilities) on boxes inside, across and outside a
    # 389 x 517 image, tiny ones, and one that expands to exactly 15 x 15 (OpenCV's 2x area path).
    pm = 60
    mb = random_boxes(rng, pm, 389, 517, lo=0.5, hi=300.0)
    mb[0] = [100.0, 100.0, 114.0, 114.0]
    mb[1] = [-50.0, 10.0, 30.0, 60.0]
    mb[2] = [500.0, 370.0, 560.0, 420.0]
    lowres = rng.normal(0, 3, (pm, 7, 7)).astype(F32)
    masks = np.stack([cv2.resize(m, (28, 28), interpolation=cv2.INTER_CUBIC) for m in lowres])
    masks = (1 / (1 + np.exp(-masks))).astype(F32)
    d["paste.masks"], d["paste.boxes"] = t(masks), t(mb)
    pasted = d_paste(masks, mb, 389, 517)
    # Row-major run lengths per mask (zeros first), to keep the fixture small.
    runs, lens = [], []
    for m in pasted.reshape(pm, -1):
        change = np.flatnonzero(np.diff(m.astype(np.int8))) + 1
        bounds = np.concatenate(([0], change, [m.size]))
        r = np.diff(bounds)
        if m[0] == 1:
            r = np.concatenate(([0], r))
        runs.append(r)
        lens.append(len(r))
    d["legacy.paste_runs"] = t(np.concatenate(runs), np.int64)
    d["legacy.paste_run_counts"] = t(np.array(lens), np.int64)
    d["legacy.paste_areas"] = t(pasted.reshape(pm, -1).sum(1), np.int64)

    # OpenCV float resize on many size pairs (30 x 30 source, as the paste uses, and others).
    src = rng.uniform(0, 1, (30, 30)).astype(F32)
    d["resize.src"] = t(src)
    sizes = [(1, 1), (2, 3), (15, 15), (15, 16), (29, 31), (30, 30), (45, 17), (60, 60), (61, 7),
             (100, 250), (333, 41), (7, 200)]
    d["resize.sizes"] = torch.tensor(sizes, dtype=torch.int64)
    for w, h in sizes:
        d[f"resize.{w}x{h}"] = t(cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR))

    path = os.path.join(out_dir, "panet", "detection_ops.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes;",
          {k: int(v.numel()) for k, v in d.items() if "nms" in k or "filter" in k or "paste" == k[:5]})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
