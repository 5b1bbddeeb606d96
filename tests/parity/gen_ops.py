"""Parity fixtures for `segkit_core::ops` (resize, adaptive pool, grid_sample, roi_align, boxes).

Reference: PyTorch / torchvision (versions pinned in tests/parity/requirements.txt).

Usage: python tests/parity/gen_ops.py tests/fixtures
Writes tests/fixtures/ops/{resize,pool,grid_sample,roi_align,boxes}.safetensors.

Every fixture file holds independent cases named `<case>.<field>`; scalar parameters are stored
as one-element tensors (int64 for integers and flags, float32 for reals) so that the Rust test
(tests/tests/ops_parity.rs) can run every case it finds without knowing the list.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_area, box_iou, nms, roi_align


def i64(*v):
    return torch.tensor(list(v), dtype=torch.int64)


def f32(*v):
    return torch.tensor(list(v), dtype=torch.float32)


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def gen_resize():
    t = {}
    cases = {
        # name: (input shape, output size)
        "up_odd": ((1, 3, 5, 7), (11, 13)),
        "up_2x": ((2, 3, 8, 8), (16, 16)),
        "up_3x": ((1, 2, 4, 5), (12, 15)),
        "down": ((1, 4, 17, 13), (6, 5)),
        "down_2x": ((1, 2, 16, 12), (8, 6)),
        "mixed": ((1, 2, 9, 4), (4, 11)),
        "in_1x1": ((1, 3, 1, 1), (5, 4)),
        "out_1x1": ((1, 3, 7, 6), (1, 1)),
        "one_to_one": ((1, 2, 1, 1), (1, 1)),
        "same": ((1, 2, 6, 7), (6, 7)),
        "row": ((1, 2, 1, 9), (4, 3)),
        "col_to_row": ((2, 1, 5, 1), (1, 6)),
        "larger": ((1, 2, 20, 14), (45, 33)),
    }
    for name, (shape, size) in cases.items():
        x = rand(*shape)
        t[f"{name}.x"] = x
        t[f"{name}.size"] = i64(*size)
        for ac in (0, 1):
            t[f"{name}.bilinear_ac{ac}"] = F.interpolate(
                x, size=size, mode="bilinear", align_corners=bool(ac)
            ).contiguous()
        t[f"{name}.nearest"] = F.interpolate(x, size=size, mode="nearest").contiguous()
    return t


def gen_pool():
    t = {}
    cases = {
        "13x17_to_6x6": ((1, 3, 13, 17), (6, 6)),
        "5x5_to_6x6": ((2, 2, 5, 5), (6, 6)),
        "ppm_bin1": ((1, 4, 23, 19), (1, 1)),
        "ppm_bin2": ((1, 4, 23, 19), (2, 2)),
        "ppm_bin3": ((1, 4, 23, 19), (3, 3)),
        "ppm_bin6": ((1, 4, 23, 19), (6, 6)),
        "7x9_to_3x4": ((1, 2, 7, 9), (3, 4)),
        "1x1_to_2x3": ((1, 3, 1, 1), (2, 3)),
        "identity": ((1, 2, 10, 10), (10, 10)),
        "6x6_to_13x1": ((2, 1, 6, 6), (13, 1)),
        "40x36_to_6x6": ((1, 2, 40, 36), (6, 6)),
    }
    for name, (shape, size) in cases.items():
        x = rand(*shape)
        t[f"{name}.x"] = x
        t[f"{name}.size"] = i64(*size)
        t[f"{name}.out"] = F.adaptive_avg_pool2d(x, size).contiguous()
    return t


def gen_grid_sample():
    t = {}
    cases = {}
    # Random grids reaching outside [-1, 1].
    cases["random"] = (rand(2, 3, 7, 9), (torch.rand(2, 5, 6, 2) * 2.6 - 1.3))
    # Far outside the map.
    cases["far"] = (rand(1, 2, 5, 4), (torch.rand(1, 4, 4, 2) * 6.0 - 3.0))
    # Dyadic grid points: unnormalised coordinates land exactly on pixel centres, edges and
    # halves, which exercises floor and round-half-to-even exactly.
    g = torch.arange(-12, 13, dtype=torch.float32) / 8.0  # -1.5 .. 1.5 step 1/8
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    cases["dyadic"] = (rand(1, 2, 4, 4), torch.stack([gx, gy], dim=-1)[None])
    cases["dyadic_odd"] = (rand(1, 1, 5, 3), torch.stack([gx, gy], dim=-1)[None])
    # 1x1 input map.
    cases["in_1x1"] = (rand(1, 2, 1, 1), (torch.rand(1, 3, 3, 2) * 3.0 - 1.5))
    # A 1x1 output.
    cases["out_1x1"] = (rand(2, 3, 6, 5), (torch.rand(2, 1, 1, 2) * 2.0 - 1.0))
    # Identity-like grid on a larger map.
    cases["larger"] = (rand(1, 4, 16, 12), (torch.rand(1, 20, 18, 2) * 2.4 - 1.2))
    for name, (x, grid) in cases.items():
        t[f"{name}.x"] = x.contiguous()
        t[f"{name}.grid"] = grid.contiguous().float()
        for mode in ("bilinear", "nearest"):
            for pad in ("zeros", "border"):
                for ac in (0, 1):
                    out = F.grid_sample(
                        x, grid, mode=mode, padding_mode=pad, align_corners=bool(ac)
                    )
                    t[f"{name}.{mode}_{pad}_ac{ac}"] = out.contiguous()
    return t


def random_rois(k, n, h, w, scale, lo=-0.3, hi=1.3):
    """RoIs in input-image coordinates (before spatial_scale), partly outside the map."""
    img_h, img_w = h / scale, w / scale
    b = torch.randint(0, n, (k,)).float()
    x1 = torch.rand(k) * (hi - lo) * img_w + lo * img_w
    y1 = torch.rand(k) * (hi - lo) * img_h + lo * img_h
    bw = torch.rand(k) * 0.8 * img_w + 0.5
    bh = torch.rand(k) * 0.8 * img_h + 0.5
    return torch.stack([b, x1, y1, x1 + bw, y1 + bh], dim=1)


def gen_roi_align():
    """Groups share an input map, RoIs and spatial_scale; each output key names its config:
    `<group>.out_<PH>x<PW>_sr<sampling_ratio>_al<aligned>`."""
    t = {}

    def group(name, x, rois, scale, configs):
        t[f"{name}.x"] = x.contiguous()
        t[f"{name}.rois"] = rois.contiguous().float()
        t[f"{name}.spatial_scale"] = f32(scale)
        for (ph, pw), sr, aligned in configs:
            out = roi_align(
                x, rois, (ph, pw), spatial_scale=scale, sampling_ratio=sr, aligned=aligned
            )
            t[f"{name}.out_{ph}x{pw}_sr{sr}_al{int(aligned)}"] = out.contiguous()

    every = [((7, 7), sr, al) for sr in (-1, 0, 2) for al in (False, True)]
    group("multi", rand(3, 4, 12, 14), random_rois(24, 3, 12, 14, 0.5), 0.5, every)

    # Tiny, huge, degenerate and inverted RoIs, partly or wholly outside the map.
    special = torch.tensor(
        [
            [0, 2.0, 3.0, 2.3, 3.2],  # tiny (< 1 px)
            [1, 4.0, 4.0, 4.0, 4.0],  # zero size
            [0, -30.0, -25.0, 60.0, 55.0],  # huge, covers everything
            [1, -5.0, -5.0, 2.0, 3.0],  # top-left corner outside
            [0, 8.0, 6.0, 20.0, 14.0],  # bottom-right corner outside
            [1, 11.5, 9.5, 14.0, 12.0],  # beyond the map (y, x > H, W)
            [0, -3.0, -3.0, -1.2, -1.5],  # wholly outside (< -1)
            [1, -1.0, -1.0, 0.2, 0.4],  # around the top-left edge, y in [-1, 0]
            [0, 6.0, 5.0, 3.0, 2.0],  # inverted (x2 < x1, y2 < y1)
            [1, 0.0, 0.0, 10.0, 8.0],  # exactly the map (scale 1)
            [0, 10.0, 8.0, 11.0, 9.0],  # last pixel, touching H-1 / W-1
            [1, 2.25, 1.75, 7.5, 6.125],
        ],
        dtype=torch.float32,
    )
    group(
        "special",
        rand(2, 3, 9, 11),
        special,
        1.0,
        [((7, 7), sr, al) for sr in (-1, 2) for al in (False, True)]
        + [((3, 5), 1, False), ((5, 2), -1, True), ((1, 1), 3, True)],
    )
    group("mask", rand(1, 2, 16, 16), random_rois(6, 1, 16, 16, 0.25), 0.25, [((14, 14), 2, False)])
    group("stride16", rand(2, 2, 6, 8), random_rois(8, 2, 6, 8, 1 / 16), 1 / 16, [((7, 7), 0, True)])
    # Empty RoI set.
    group("empty", rand(1, 3, 8, 8), torch.zeros(0, 5), 1.0, [((7, 7), 2, False)])
    return t


def random_boxes(k, size=100.0, min_wh=1.0, max_wh=40.0, centers=None):
    if centers is None:
        cx = torch.rand(k) * size
        cy = torch.rand(k) * size
    else:
        idx = torch.randint(0, centers.shape[0], (k,))
        cx = centers[idx, 0] + torch.randn(k) * 3.0
        cy = centers[idx, 1] + torch.randn(k) * 3.0
    w = torch.rand(k) * (max_wh - min_wh) + min_wh
    h = torch.rand(k) * (max_wh - min_wh) + min_wh
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def distinct_scores(k):
    """Tie-free scores in (0, 1)."""
    return (torch.randperm(k).float() + torch.rand(k) * 0.5 + 0.25) / k


def gen_boxes():
    t = {}
    # box_iou / box_area, including disjoint, nested, identical and zero-area boxes.
    a = random_boxes(17)
    b = random_boxes(11)
    b[0] = a[3]  # identical
    b[1] = torch.tensor([200.0, 200.0, 210.0, 220.0])  # disjoint from all
    b[2] = torch.tensor([a[5, 0] + 1, a[5, 1] + 1, a[5, 0] + 2, a[5, 1] + 2])  # nested
    a[0] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero area
    t["iou.a"] = a
    t["iou.b"] = b
    t["iou.out"] = box_iou(a, b)
    t["area.out"] = box_area(a)  # of iou.a

    # nms: clustered boxes (many overlaps), several thresholds, tie-free scores.
    centers = torch.rand(12, 2) * 200.0
    boxes = random_boxes(300, centers=centers, min_wh=5.0, max_wh=30.0)
    scores = distinct_scores(300)
    t["nms_clustered.boxes"] = boxes
    t["nms_clustered.scores"] = scores
    for thr in (0.3, 0.5, 0.7):
        t[f"nms_clustered.keep_t{int(round(thr * 100))}"] = nms(boxes, scores, thr).to(torch.int64)
    # IoU exactly at the threshold is kept (suppression needs IoU > threshold).
    tie_boxes = torch.tensor(
        [[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 1.0], [5.0, 5.0, 6.0, 6.0]]
    )
    tie_scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    t["nms_exact.boxes"] = tie_boxes
    t["nms_exact.scores"] = tie_scores
    t["nms_exact.keep_t50"] = nms(tie_boxes, tie_scores, 0.5).to(torch.int64)
    one = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    t["nms_single.boxes"] = one
    t["nms_single.scores"] = f32(0.5)
    t["nms_single.keep_t50"] = nms(one, f32(0.5), 0.5).to(torch.int64)
    t["nms_empty.boxes"] = torch.zeros(0, 4)
    t["nms_empty.scores"] = torch.zeros(0)
    t["nms_empty.keep_t50"] = nms(torch.zeros(0, 4), torch.zeros(0), 0.5).to(torch.int64)

    # batched_nms: the coordinate-offset path (<= 1000 boxes) and the per-class path (> 1000).
    for name, k, ncls in (("bnms_small", 300, 5), ("bnms_large", 1100, 7)):
        centers = torch.rand(10, 2) * 300.0
        boxes = random_boxes(k, centers=centers, min_wh=5.0, max_wh=40.0)
        scores = distinct_scores(k)
        idxs = torch.randint(0, ncls, (k,), dtype=torch.int64)
        t[f"{name}.boxes"] = boxes
        t[f"{name}.scores"] = scores
        t[f"{name}.idxs"] = idxs
        for thr in (0.5, 0.7):
            keep = batched_nms(boxes, scores, idxs, thr).to(torch.int64)
            t[f"{name}.keep_t{int(round(thr * 100))}"] = keep
    # Identical boxes in different classes are never suppressed by each other.
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    t["bnms_same.boxes"] = same
    t["bnms_same.scores"] = torch.tensor([0.4, 0.9, 0.6, 0.8])
    t["bnms_same.idxs"] = i64(0, 1, 0, 2)
    t["bnms_same.keep_t50"] = batched_nms(same, t["bnms_same.scores"], t["bnms_same.idxs"], 0.5).to(
        torch.int64
    )

    # BoxCoder encode / decode (decode with class-specific codes, N x 4K, and clipped dw/dh).
    coders = (("coder_unit", (1.0, 1.0, 1.0, 1.0)), ("coder_rcnn", (10.0, 10.0, 5.0, 5.0)))
    for name, weights in coders:
        coder = BoxCoder(weights)
        props = random_boxes(20, min_wh=2.0, max_wh=50.0)
        refs = props + torch.randn(20, 4) * 3.0
        refs[:, 2:] = torch.maximum(refs[:, 2:], refs[:, :2] + 0.5)
        enc = coder.encode_single(refs, props)
        rel = torch.randn(20, 12) * 2.0
        rel[0, 2] = 40.0  # dw beyond the clip
        rel[1, 7] = 55.0  # dh beyond the clip
        rel[2, 2] = -6.0
        t[f"{name}.weights"] = f32(*weights)
        t[f"{name}.reference"] = refs
        t[f"{name}.proposals"] = props
        t[f"{name}.encoded"] = enc
        t[f"{name}.rel_codes"] = rel
        t[f"{name}.decoded"] = coder.decode_single(rel, props)
    return t


def main(out_dir):
    torch.manual_seed(20240611)
    torch.set_num_threads(1)
    d = os.path.join(out_dir, "ops")
    os.makedirs(d, exist_ok=True)
    # One metadata key: safetensors writes several in hash order, which makes files differ.
    meta = {"reference": f"torch {torch.__version__}, torchvision {torchvision.__version__}"}
    for name, gen in (
        ("resize", gen_resize),
        ("pool", gen_pool),
        ("grid_sample", gen_grid_sample),
        ("roi_align", gen_roi_align),
        ("boxes", gen_boxes),
    ):
        tensors = {k: v.contiguous() for k, v in gen().items()}
        for k, v in tensors.items():
            assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
            if v.dtype == torch.float32:
                assert torch.isfinite(v).all(), k
        path = os.path.join(d, f"{name}.safetensors")
        save_file(tensors, path, metadata=meta)
        print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
