"""Parity fixture for segkit-heads' PANet RoI heads (`segkit_heads::panet`): box head with
adaptive feature pooling, mask head with fully-connected fusion, test-time post-processing.

Oracles:
- INDEPENDENT: RoIAlign is torchvision's own `torchvision.ops.roi_align(aligned=False)` (the
  Caffe2 / Detectron RoIAlign); per-class NMS is cross-checked against torchvision's `nms` on
  boxes with `x2 + 1`, `y2 + 1` (the `+1` convention applied by adjusting boxes; asserted);
  the mask paste resizes with OpenCV's own `cv2.resize` (gen_panet_ops.d_paste).
- WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet; not installable: Python 2-era numpy,
  compiled CUDA ops): the heads are PyTorch modules with the official module names
  (`fast_rcnn_heads.py::roi_Xconv1fc_gn_head_panet` + `fast_rcnn_outputs`,
  `mask_rcnn_heads.py::mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff` + `mask_rcnn_outputs`, pooling
  as `model_builder.py::roi_feature_transform(panet=True)`); the post-processing is numpy from
  `lib/core/test.py` (`im_detect_bbox`, `box_results_with_nms_and_limit`, `_get_rois_blob`,
  `segm_results`) in float32, using gen_panet_ops.py's `bbox_transform` / `clip_tiled_boxes` /
  `cython_nms` replicas.

Input: the synthetic N2..N5 of gen_panet_rpn.py (256 channels, a 517x389 image padded to 544x416)
and that fixture's 1000 collected proposals (`panet/rpn.safetensors`, so run gen_panet_rpn.py
first); im_scale 1.2 from an original 431x324 image (round(431 * 1.2) = 517,
round(324 * 1.2) = 389), so boxes are divided by the scale, clipped to 431x324 and masks pasted
at 431x324. Weights: tests/parity/synth.py, with three output layers multiplied by powers of two
(exact in float32; segkit's test applies the same factors) so that the synthetic network makes
decisions: `Box_Outs.cls_score.weight` x16 (otherwise every softmax score is ~1/81 < 0.05 and
nothing is detected), `Box_Outs.bbox_pred.weight` x8 (boxes move), `Mask_Outs.classify.weight`
x16 (mask probabilities away from the 0.5 threshold).
Run: python tests/parity/gen_panet_heads.py tests/fixtures
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
import gen_panet_ops as ops  # noqa: E402
import synth  # noqa: E402

F32 = np.float32
SIZES = ((136, 104), (68, 52), (34, 26), (17, 13))
STRIDES = (4, 8, 16, 32)
IM_SCALE = 1.2
ORIG = (431, 324)  # original (height, width)
NUM_CLASSES = 81
SCALED = {"Box_Outs.cls_score.weight": 16.0, "Box_Outs.bbox_pred.weight": 8.0,
          "Mask_Outs.classify.weight": 16.0}


def gn_conv(cin, cout, groups=32):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.GroupNorm(groups, cout, eps=1e-5),
                         nn.ReLU(inplace=True))


class BoxHead(nn.Module):  # roi_Xconv1fc_gn_head_panet, NUM_STACKED_CONVS 4
    def __init__(self, dim=256, levels=4):
        super().__init__()
        mods = []
        for _ in range(3):
            mods.extend(list(gn_conv(dim, dim)))
        self.convs = nn.Sequential(*mods)
        self.fc = nn.Linear(dim * 7 * 7, 1024)
        self.conv1_head = nn.ModuleList([gn_conv(dim, dim) for _ in range(levels)])

    def forward(self, pooled):
        x = [self.conv1_head[i](p) for i, p in enumerate(pooled)]
        for i in range(1, len(x)):
            x[0] = torch.max(x[0], x[i])
        x = self.convs(x[0])
        return F.relu(self.fc(x.view(x.size(0), -1)))


class BoxOuts(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_score = nn.Linear(1024, NUM_CLASSES)
        self.bbox_pred = nn.Linear(1024, 4 * NUM_CLASSES)


class MaskHead(nn.Module):  # mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff
    def __init__(self, dim=256, levels=4):
        super().__init__()
        self.conv_fcn = nn.Sequential(*(list(gn_conv(dim, dim)) + list(gn_conv(dim, dim))))
        self.mask_conv1 = nn.ModuleList([gn_conv(dim, dim) for _ in range(levels)])
        self.mask_conv4 = gn_conv(dim, dim)
        self.mask_conv4_fc = gn_conv(dim, dim)
        self.mask_conv5_fc = gn_conv(dim, dim // 2, groups=32)  # GN(get_group_gn(256)=32, 128)
        self.mask_fc = nn.Sequential(nn.Linear(dim // 2 * 14 * 14, 28 * 28), nn.ReLU(inplace=True))
        self.upconv = nn.ConvTranspose2d(dim, dim, 2, 2, 0)

    def forward(self, pooled):
        x = [self.mask_conv1[i](p) for i, p in enumerate(pooled)]
        for i in range(1, len(x)):
            x[0] = torch.max(x[0], x[i])
        x = self.conv_fcn(x[0])
        x_fcn = F.relu(self.upconv(self.mask_conv4(x)))
        x_ff = self.mask_fc(self.mask_conv5_fc(self.mask_conv4_fc(x)).view(x.size(0), -1))
        return x_fcn, x_ff


class MaskOuts(nn.Module):
    def __init__(self, dim=256):
        super().__init__()
        self.classify = nn.Conv2d(dim, NUM_CLASSES, 1, 1, 0)

    def forward(self, x_fcn, x_ff):  # logits; the test-time sigmoid is applied by the caller
        return self.classify(x_fcn) + x_ff.view(-1, 1, 28, 28).repeat(1, NUM_CLASSES, 1, 1)


class Root(nn.Module):
    def __init__(self):
        super().__init__()
        self.Box_Head = BoxHead()
        self.Box_Outs = BoxOuts()
        self.Mask_Head = MaskHead()
        self.Mask_Outs = MaskOuts()


def pool(feats, rois, res):
    r = torch.from_numpy(rois)
    return [torchvision.ops.roi_align(f, r, (res, res), 1.0 / s, 2, aligned=False)
            for f, s in zip(feats, STRIDES)]


def nms_desc(boxes, scores, thresh):
    """cython_nms.nms: keep in visiting (decreasing score) order; torchvision cross-check."""
    keep = ops.d_nms(boxes, scores, thresh)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    adj = torch.from_numpy(boxes.copy())
    adj[:, 2:] += 1.0
    tv = torchvision.ops.nms(adj, torch.from_numpy(scores.copy()), thresh).numpy()
    assert np.array_equal(np.sort(keep), np.sort(tv)), "numpy NMS != torchvision on +1 boxes"
    return keep


def box_results_with_nms_and_limit(scores, boxes, thresh=0.05, nms=0.5, limit=100):
    cls_boxes = [np.zeros((0, 5), F32)]
    for j in range(1, NUM_CLASSES):
        inds = np.where(scores[:, j] > F32(thresh))[0]
        sj, bj = scores[inds, j], boxes[inds, j * 4:(j + 1) * 4]
        keep = nms_desc(bj, sj, nms) if len(inds) else np.zeros(0, np.int64)
        cls_boxes.append(np.hstack((bj[keep], sj[keep, None])).astype(F32))
    image_scores = np.hstack([cls_boxes[j][:, -1] for j in range(1, NUM_CLASSES)])
    if len(image_scores) > limit:
        th = np.sort(image_scores)[-limit]
        for j in range(1, NUM_CLASSES):
            cls_boxes[j] = cls_boxes[j][cls_boxes[j][:, -1] >= th]
    classes = np.concatenate([np.full(len(cls_boxes[j]), j) for j in range(1, NUM_CLASSES)])
    res = np.vstack([cls_boxes[j] for j in range(1, NUM_CLASSES)])
    return res[:, :4].copy(), res[:, 4].copy(), classes.astype(np.int64), len(image_scores)


def rle_rows(masks):
    """Row-major run lengths per mask, starting with a run of zeros."""
    runs, counts = [], []
    for m in masks:
        flat = m.reshape(-1)
        change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        edges = np.concatenate([[0], change, [flat.size]])
        r = np.diff(edges).tolist()
        if flat.size and flat[0] == 1:
            r = [0] + r
        runs.extend(r)
        counts.append(len(r))
    return np.array(runs, np.int64), np.array(counts, np.int64)


def main(out_dir):
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    root = Root().eval()
    synth.fill_(root)
    sd = root.state_dict()
    for k, f in SCALED.items():
        sd[k] = sd[k] * f
    root.load_state_dict(sd)
    feats = [synth.synthetic_input((1, 256, h, w), key=f"rpn.n{i + 2}") for i, (h, w) in enumerate(SIZES)]
    props = load_file(os.path.join(out_dir, "panet", "rpn.safetensors"))["rois"].numpy().astype(F32)
    rois = np.hstack([np.zeros((len(props), 1), F32), props])
    d = {"proposals": torch.from_numpy(props)}

    # Box head on all proposals (im_detect_bbox).
    pooled = pool(feats, rois, 7)
    for i, p in enumerate(pooled):
        d.update(synth.sample_outputs(f"box_pooled{i + 2}", p))
    x = root.Box_Head(pooled)
    cls, bbox = root.Box_Outs.cls_score(x), root.Box_Outs.bbox_pred(x)
    d.update(synth.sample_outputs("box_fc", x))
    d.update(synth.sample_outputs("cls_score", cls))
    d.update(synth.sample_outputs("bbox_pred", bbox))
    scores = F.softmax(cls, dim=1).numpy()
    boxes = props / F32(IM_SCALE)
    pred = ops.d_clip(ops.d_decode(boxes, bbox.numpy(), (10.0, 10.0, 5.0, 5.0)), *ORIG)
    d.update(synth.sample_outputs("pred_boxes", torch.from_numpy(pred)))
    db, ds, dc, before = box_results_with_nms_and_limit(scores, pred)
    d["det_boxes"], d["det_scores"] = torch.from_numpy(db), torch.from_numpy(ds)
    d["det_classes"] = torch.from_numpy(dc)

    # Mask head on the detections (im_detect_mask, segm_results).
    mrois = (db.astype(np.float64) * IM_SCALE).astype(F32)
    mrois = np.hstack([np.zeros((len(db), 1), F32), mrois])
    d["mask_rois"] = torch.from_numpy(mrois)
    mpooled = pool(feats, mrois, 14)
    for i, p in enumerate(mpooled):
        d.update(synth.sample_outputs(f"mask_pooled{i + 2}", p))
    x_fcn, x_ff = root.Mask_Head(mpooled)
    logits = root.Mask_Outs(x_fcn, x_ff)
    d.update(synth.sample_outputs("mask_logits", logits))
    probs = torch.sigmoid(logits).numpy()
    cls_probs = probs[np.arange(len(db)), dc]
    d.update(synth.sample_outputs("mask_probs", torch.from_numpy(cls_probs)))
    masks = ops.d_paste(cls_probs, db, *ORIG)
    runs, counts = rle_rows(masks)
    d["mask_runs"], d["mask_run_counts"] = torch.from_numpy(runs), torch.from_numpy(counts)
    d["mask_areas"] = torch.from_numpy(masks.reshape(len(db), -1).sum(1).astype(np.int64))

    path = os.path.join(out_dir, "panet_heads.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes;", len(db), "detections of", before,
          "after per-class NMS; classes", np.bincount(dc).nonzero()[0].tolist()[:20],
          "scores", float(ds.min()) if len(ds) else None, "..", float(ds.max()) if len(ds) else None,
          "mask areas", masks.reshape(len(db), -1).sum(1)[:10].tolist())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
