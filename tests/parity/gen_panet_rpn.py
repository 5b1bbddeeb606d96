"""Parity fixture for segkit-heads' RpnHead (Detectron's FPN RPN as PANet runs it at test time).

Oracle: WRITTEN FROM THE OFFICIAL MATH, not an installable package. The head is a PyTorch module
with the official names (`RPN.FPN_RPN_conv.weight`, ...; ShuLiu1993/PANet
`lib/modeling/FPN.py::fpn_rpn_outputs`); the proposal generation is numpy from
`generate_proposals.py` (argpartition / argsort top-k, `bbox_transform` (1, 1, 1, 1),
`clip_tiled_boxes`, `_filter_boxes`, `cython_nms` replica in float32) and
`collect_and_distribute_fpn_rpn_proposals.py` (`collect`, `distribute`), using the functions of
gen_panet_ops.py. Independent cross-check inside the generator: every level's NMS keep list equals
torchvision's `nms` on boxes with `x2 + 1`, `y2 + 1` (asserted).

Input: synthetic N2..N6 (256 channels) at the sizes of a 517x389 image padded to 544x416;
im_info = (517, 389, 1.0) (proposals clip to the unpadded image). Test settings: 1000 per level
before and after NMS 0.7, 1000 collected, distributed to levels 2..5.
Run: python tests/parity/gen_panet_rpn.py tests/fixtures
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import gen_panet_ops as ops  # noqa: E402
import synth  # noqa: E402

SIZES = ((136, 104), (68, 52), (34, 26), (17, 13), (9, 7))
IM_INFO = (517.0, 389.0, 1.0)
RATIOS = (0.5, 1, 2)


class RpnHead(nn.Module):
    def __init__(self, dim=256, a=3):
        super().__init__()
        self.FPN_RPN_conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.FPN_RPN_cls_score = nn.Conv2d(dim, a, 1, 1, 0)
        self.FPN_RPN_bbox_pred = nn.Conv2d(dim, 4 * a, 1, 1, 0)

    def forward(self, x):
        y = F.relu(self.FPN_RPN_conv(x))
        return self.FPN_RPN_cls_score(y), self.FPN_RPN_bbox_pred(y)


class Root(nn.Module):
    def __init__(self):
        super().__init__()
        self.RPN = RpnHead()


def level_proposals(logits, deltas, lvl, pre=1000, post=1000, thresh=0.7, min_size=0.0):
    stride = 2.0 ** lvl
    cell = ops.d_anchors(stride, (32 * 2.0 ** (lvl - 2),), RATIOS)
    _, _, h, w = logits.shape
    anchors = ops.d_grid(cell, stride, h, w)
    scores = torch.sigmoid(logits)[0].numpy().transpose(1, 2, 0).reshape(-1)
    d = deltas[0].numpy().transpose(1, 2, 0).reshape(-1, 4)
    if pre <= 0 or pre >= len(scores):
        order = np.argsort(-scores)
    else:
        inds = np.argpartition(-scores, pre)[:pre]
        order = inds[np.argsort(-scores[inds])]
    props = ops.d_decode(anchors[order], d[order], (1, 1, 1, 1))
    props = ops.d_clip(props, IM_INFO[0], IM_INFO[1])
    sc = scores[order]
    keep = ops.d_filter(props, min_size, IM_INFO[0], IM_INFO[1], IM_INFO[2])
    props, sc = props[keep], sc[keep]
    keep = ops.d_nms(props, sc, thresh)
    adj = torch.from_numpy(props.copy())
    adj[:, 2:] += 1.0
    tv = np.sort(torchvision.ops.nms(adj, torch.from_numpy(sc), thresh).numpy())
    assert np.array_equal(np.sort(keep), tv), f"level {lvl}: numpy NMS != torchvision on +1 boxes"
    keep = keep[:post]
    return props[keep], sc[keep]


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "panet"), exist_ok=True)
    torch.set_grad_enabled(False)
    root = Root().eval()
    synth.fill_(root)
    d = {}
    boxes, scores = [], []
    for i, (h, w) in enumerate(SIZES):
        lvl = i + 2
        x = synth.synthetic_input((1, 256, h, w), key=f"rpn.n{lvl}")
        logits, deltas = root.RPN(x)
        d.update(synth.sample_outputs(f"cls{lvl}", logits))
        d.update(synth.sample_outputs(f"bbox{lvl}", deltas))
        b, s = level_proposals(logits, deltas, lvl)
        d[f"level{lvl}.boxes"], d[f"level{lvl}.scores"] = torch.from_numpy(b), torch.from_numpy(s)
        boxes.append(b)
        scores.append(s)
    allb, alls = np.concatenate(boxes), np.concatenate(scores)
    inds = np.argsort(-alls)[:1000]
    rois, rs = allb[inds], alls[inds]
    lv = ops.d_levels(rois)
    d["rois"], d["roi_scores"] = torch.from_numpy(rois), torch.from_numpy(rs)
    d["roi_levels"] = torch.from_numpy(lv)
    d["restore"] = torch.from_numpy(ops.d_distribute(lv))
    path = os.path.join(out_dir, "panet", "rpn.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes; per level", [len(b) for b in boxes],
          "levels", np.bincount(lv, minlength=6)[2:].tolist())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
