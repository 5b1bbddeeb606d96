"""Parity fixture for ONE whole PANet training step (segkit-models `Panet::forward_train` and the
backward pass): the five losses and the gradient of every trainable parameter.

Oracle: PyTorch WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet = Detectron.pytorch; not
installable: PyTorch 0.4, compiled CUDA ops), assembled from the other generators' pieces:
- the network: gen_panet_backbone.py's caffe bottleneck / affine modules (narrowed, below),
  gen_panet_neck.py's GN FPN + bottom-up path + P6, gen_panet_rpn.py's RPN head, the heads of
  gen_panet_heads.py (box head with adaptive feature pooling, mask head with fully-connected
  fusion) at reduced width, under the official module names;
- RPN targets on the wide anchor fields (`roi_data/rpn.py::_get_rpn_blobs`), RoI sampling
  (`add_proposals` + `fast_rcnn.py::_sample_rois`) and bitmap mask targets (torchvision's own
  `roi_align(aligned=False)`, INDEPENDENT) from gen_panet_targets.py, whose numpy draws are
  RECORDED here in the order segkit draws (RPN anchors of image 0, 1, then RoIs of image 0, 1) and
  replayed by the Rust test (ReplaySampler);
- training proposals as `generate_proposals.py` with TRAIN settings (per image and level: top
  2000 by score, decode, clip to the scaled image, filter, NMS 0.7 as torchvision `nms` on `+1`
  boxes, 2000 kept) and `collect_and_distribute_fpn_rpn_proposals.py::collect` (top 2000 over
  levels and images together, RPN_COLLECT_SCALE 1), not differentiated;
- RoIAlign: torchvision's `roi_align(aligned=False, sampling_ratio=2)`, every RoI from every
  level N2..N5 (INDEPENDENT);
- losses: `FPN.py::fpn_rpn_losses`, `fast_rcnn_heads.py::fast_rcnn_losses` (beta 1/3),
  `mask_rcnn_heads.py::mask_rcnn_losses` on torch's own BCE / cross-entropy; gradients by
  autograd of the sum of the five losses.

Reduced size (stated): a caffe-style ResNet with 2 bottlenecks per stage and base width 16
(`CaffeResNetConfig { depth: 26, base_channels: 16 }`: C2..C5 of 64 / 128 / 256 / 512
channels), `FREEZE_AT` 2 (stem and res2 frozen, as Detectron), a 64-channel pyramid, RPN and RoI
heads (box fc 128, mask head 64 / 32 channels, GN 32 groups), 81 classes, 28x28 masks; two
images: 150x219 at scale 4/3 (200x292) and 180x232 at scale 1.2 (216x278), padded to a
224x320 blob (synthetic values, `synth.synthetic_input` key "panet_train_step.blob"); 5 and 7
instances (ellipses and rectangles, image 1 with a crowd one), masks stored bit-packed.
Official TRAIN settings (256 anchors / image, 512 RoIs / image, 2000 proposals per image and level
before and after NMS) except the collect: 800 over the batch instead of 2000, so that every RoI
candidate of an image is sampled (asserted) and the sampled set cannot depend on the order of
proposals whose float32 scores tie within an ulp (torch's and candle's sigmoids differ by one ulp,
which reorders such proposals and would make the replayed draws pick other boxes).
The step runs again in float64 (same proposals and RoIs): `torch_f32_err.{name}` holds how far
PyTorch's own float32 gradient is from it (max |diff|, |sum diff|, |abssum diff|), the measured
conditioning the Rust test's gradient tolerance refers to.
Gradients: synth.sample_outputs with 1024 sampled values and 1024 block projections per tensor
(every element enters a projection).
Run: python tests/parity/gen_panet_train_step.py tests/fixtures
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import gen_panet_backbone as bb  # noqa: E402
import gen_panet_heads as heads  # noqa: E402
import gen_panet_neck as neck  # noqa: E402
import gen_panet_ops as ops  # noqa: E402
import gen_panet_rpn as rpn  # noqa: E402
import gen_panet_targets as tg  # noqa: E402
import synth  # noqa: E402

F32 = np.float32
NUM_CLASSES, M = 81, 28
BASE, BLOCKS, FREEZE_AT = 16, (2, 2, 2, 2), 2
DIM, FC = 64, 128
PAD = (224, 320)
IMAGES = [dict(h=150, w=219, scale=4.0 / 3.0, n=5), dict(h=180, w=232, scale=1.2, n=7)]
PRE_NMS, POST_NMS, COLLECT, NMS = 2000, 2000, 800, 0.7
SAMPLES, BLOCKS_PROJ = 1024, 1024


# ---- the network (official module names) ----

class Stem(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = bb.Affine(c)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)


class NarrowCaffeResNet(nn.Module):
    """bb.CaffeResNet with `BLOCKS` bottlenecks and widths `BASE << s` (outputs 4x)."""

    def __init__(self):
        super().__init__()
        self.res1 = Stem(BASE)
        cin = BASE
        for si, nb in enumerate(BLOCKS):
            inner, cout = BASE << si, 4 * (BASE << si)
            stride = 1 if si == 0 else 2
            mods = []
            for bi in range(nb):
                mods.append(bb.Bottleneck(cin, cout, inner, stride if bi == 0 else 1, 1))
                cin = cout
            setattr(self, f"res{si + 2}", nn.Sequential(*mods))

    def forward(self, x):
        y, outs = self.res1(x), []
        for i in range(2, 6):
            y = getattr(self, f"res{i}")(y)
            outs.append(y)
        return outs


class ConvBody(neck.PanetPyramid):
    def __init__(self):
        super().__init__(dims=tuple(4 * (BASE << s) for s in range(4)), dim=DIM)
        self.conv_body = NarrowCaffeResNet()


class BoxHead(heads.BoxHead):
    def __init__(self):
        super().__init__(dim=DIM)
        self.fc = nn.Linear(DIM * 7 * 7, FC)


class BoxOuts(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_score = nn.Linear(FC, NUM_CLASSES)
        self.bbox_pred = nn.Linear(FC, 4 * NUM_CLASSES)


class Panet(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv_Body = ConvBody()
        self.RPN = rpn.RpnHead(dim=DIM)
        self.Box_Head = BoxHead()
        self.Box_Outs = BoxOuts()
        self.Mask_Head = heads.MaskHead(dim=DIM)
        self.Mask_Outs = heads.MaskOuts(dim=DIM)


# ---- the scene ----

def make_image(rng, spec, crowd_at):
    """Bitmap instances in the original frame; boxes are their tight pixel extents."""
    h, w, n = spec["h"], spec["w"], spec["n"]
    yy, xx = np.mgrid[0:h, 0:w]
    masks, boxes, classes, crowd = [], [], [], []
    for i in range(n):
        cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
        rx, ry = rng.uniform(8, w / 3), rng.uniform(8, h / 3)
        if i % 3 == 2:
            m = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        else:
            m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        m = m.astype(np.uint8)
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        masks.append(m)
        classes.append(int(rng.integers(1, NUM_CLASSES)))
        crowd.append(i == crowd_at)
    return masks, np.array(boxes, F32), np.array(classes, np.int64), np.array(crowd)


def levels():
    out = [(lvl, math.ceil(PAD[0] / 2 ** lvl), math.ceil(PAD[1] / 2 ** lvl)) for lvl in range(2, 6)]
    out.append((6, (out[-1][1] - 1) // 2 + 1, (out[-1][2] - 1) // 2 + 1))
    return out


# ---- training proposals (not differentiated) ----

def nms_plus1(boxes, scores, thresh):
    adj = torch.from_numpy(boxes.copy())
    adj[:, 2:] += 1.0
    return torchvision.ops.nms(adj, torch.from_numpy(scores.copy()), thresh).numpy()


def train_proposals(rpn_out, infos):
    lists = []  # level-major, then image: the official collect's concatenation order
    for li, (logits, deltas) in enumerate(rpn_out):
        lvl = li + 2
        stride = 2.0 ** lvl
        cell = ops.d_anchors(stride, (32 * 2.0 ** (lvl - 2),), rpn.RATIOS)
        _, _, h, w = logits.shape
        anchors = ops.d_grid(cell, stride, h, w)
        probs = torch.sigmoid(logits.detach()).numpy()
        dl = deltas.detach().numpy()
        for i, (im_h, im_w, s) in enumerate(infos):
            scores = probs[i].transpose(1, 2, 0).reshape(-1)
            d = dl[i].transpose(1, 2, 0).reshape(-1, 4)
            if PRE_NMS <= 0 or PRE_NMS >= len(scores):
                order = np.argsort(-scores, kind="stable")
            else:
                inds = np.argpartition(-scores, PRE_NMS)[:PRE_NMS]
                order = inds[np.argsort(-scores[inds], kind="stable")]
            props = ops.d_clip(ops.d_decode(anchors[order], d[order], (1, 1, 1, 1)), im_h, im_w)
            sc = scores[order]
            keep = ops.d_filter(props, 0.0, im_h, im_w, s)
            props, sc = props[keep], sc[keep]
            keep = nms_plus1(props, sc, NMS)[:POST_NMS]
            lists.append((i, props[keep], sc[keep]))
    idx = np.concatenate([np.full(len(l[1]), l[0]) for l in lists])
    allb = np.concatenate([l[1] for l in lists])
    alls = np.concatenate([l[2] for l in lists])
    top = np.argsort(-alls, kind="stable")[:COLLECT]
    return idx[top], allb[top]


# ---- the step ----

def pool(feats, rois, res):
    """heads.pool with the RoIs in the features' dtype (float64 for the conditioning run)."""
    r = torch.from_numpy(rois).to(feats[0].dtype)
    return [torchvision.ops.roi_align(f, r, (res, res), 1.0 / s, 2, aligned=False)
            for f, s in zip(feats, heads.STRIDES)]


def smooth_l1(pred, t, inw, outw, beta):
    return tg.smooth_l1(pred, t.to(pred.dtype), inw.to(pred.dtype), outw.to(pred.dtype), beta)


def rois_blob(per_image, scales):
    """(image, box * f32(im_scale)) rows, as `scale_boxes` + the RoI blob."""
    rows = [np.hstack([np.full((len(b), 1), i, F32), b * F32(s)]) for i, (b, s) in enumerate(zip(per_image, scales))]
    return np.concatenate(rows).astype(F32)


def step(model, blob, scene, rec):
    lv = levels()
    tg.LEVELS = lv
    fields = tg.wide_anchors()
    infos = [(float(np.round(sp["h"] * sp["scale"])), float(np.round(sp["w"] * sp["scale"])), float(F32(sp["scale"])))
             for sp in IMAGES]
    n_img = len(IMAGES)
    c = model.Conv_Body.conv_body(blob)
    _, n = model.Conv_Body(c)
    rpn_out = [model.RPN(x) for x in n]
    # RPN targets and losses (every image's anchors are drawn before any RoI).
    rpn_levels = []
    for (masks, gt, classes, crowd), (im_h, im_w, s) in zip(scene, infos):
        rpn_levels.append(tg.rpn_blobs(fields, im_h, im_w, gt[~crowd] * s, rec))
    loss_rpn_cls, loss_rpn_bbox = 0.0, 0.0
    for li, (logits, deltas) in enumerate(rpn_out):
        lab = torch.from_numpy(np.stack([r[li][0] for r in rpn_levels]).astype(np.int64))
        t, inw, outw = (torch.from_numpy(np.stack([r[li][k] for r in rpn_levels])) for k in (1, 2, 3))
        weight = (lab >= 0).to(logits.dtype)
        loss_rpn_cls = loss_rpn_cls + F.binary_cross_entropy_with_logits(
            logits, lab.to(logits.dtype), weight, reduction="sum") / (tg.RPN_BATCH * n_img)
        loss_rpn_bbox = loss_rpn_bbox + smooth_l1(deltas, t, inw, outw, 1.0 / 9.0)
    # Proposals, RoI sampling, box head.
    pidx, pboxes = train_proposals([(a.float(), b.float()) for a, b in rpn_out], infos)
    rois, mask_rois = [], []
    sampled_all = []
    for i, ((masks, gt, classes, crowd), (_, _, s)) in enumerate(zip(scene, infos)):
        inv = F32(1.0 / s)
        mine = pboxes[pidx == i] * inv
        n_draws = len(rec.log)
        sampled, labels, targets, inw, outw = tg.sample_rois(gt, classes, crowd, mine, rec)
        # Every candidate is sampled (see the module docs): each draw takes all it is offered.
        assert all(k == len(p) for k, _, p in rec.log[n_draws:]), "a RoI draw left candidates out"
        sampled_all.append((sampled, labels, targets, inw, outw))
    feats = n[:4]
    roi_blob = rois_blob([x[0] for x in sampled_all], [x[2] for x in infos])
    x = model.Box_Head(pool(feats, roi_blob, 7))
    cls, bbox = model.Box_Outs.cls_score(x), model.Box_Outs.bbox_pred(x)
    labels = torch.from_numpy(np.concatenate([x[1] for x in sampled_all]).astype(np.int64))
    t, inw, outw = (torch.from_numpy(np.concatenate([x[k] for x in sampled_all])) for k in (2, 3, 4))
    loss_cls = F.cross_entropy(cls, labels)
    loss_bbox = smooth_l1(bbox, t, inw, outw, 1.0 / 3.0)
    # Mask targets (bitmap path) and the mask head.
    mcls, mt = [], []
    for (masks, gt, classes, crowd), (sampled, lab, _, _, _) in zip(scene, sampled_all):
        mr, mc, m = tg.mask_blobs(sampled, lab, None, crowd, masks)
        mask_rois.append(mr)
        mcls.append(mc)
        mt.append(m)
    mcls, mt = np.concatenate(mcls).astype(np.int64), np.concatenate(mt)
    mblob = rois_blob(mask_rois, [x[2] for x in infos])
    x_fcn, x_ff = model.Mask_Head(pool(feats, mblob, 14))
    logits = model.Mask_Outs(x_fcn, x_ff)
    rm = len(mcls)
    sel = logits[torch.arange(rm), torch.from_numpy(mcls)].reshape(rm, -1)
    gtm = torch.from_numpy(mt.astype(np.float32)).to(sel.dtype)
    loss_mask = F.binary_cross_entropy_with_logits(sel, gtm, reduction="sum") / float(gtm.numel())
    counts = dict(proposals=len(pidx), rois=int(labels.numel()), fg=int((labels > 0).sum()), masks=rm,
                  rpn_fg=sum(int((r[li][0] == 1).sum()) for r in rpn_levels for li in range(len(lv))))
    return dict(loss_rpn_cls=loss_rpn_cls, loss_rpn_bbox=loss_rpn_bbox, loss_cls=loss_cls,
                loss_bbox=loss_bbox, loss_mask=loss_mask), counts


def run(scene, dtype):
    """The step in `dtype`; returns the losses, counts, draws and every trainable gradient."""
    model = synth.fill_(Panet()).to(dtype)
    # Detectron's ResNet: the stages up to FREEZE_AT and every AffineChannel2d are frozen.
    affine = {id(p) for m in model.modules() if isinstance(m, bb.Affine) for p in m.parameters()}
    trainable = []
    for k, p in model.named_parameters():
        frozen = id(p) in affine or any(
            k.startswith(f"Conv_Body.conv_body.res{s}.") for s in range(1, FREEZE_AT + 1))
        p.requires_grad_(not frozen)
        if not frozen:
            trainable.append((k, p))
    blob = synth.synthetic_input((len(IMAGES), 3) + PAD, "panet_train_step.blob").to(dtype)
    rec = tg.Recorder(7)
    losses, counts = step(model, blob, scene, rec)
    sum(losses.values()).backward()
    return losses, counts, rec, [(k, p.grad.detach().clone()) for k, p in trainable]


def main(out_dir):
    torch.manual_seed(0)
    rng = np.random.default_rng(20261205)
    scene = [make_image(rng, sp, crowd_at=(3 if i == 1 else -1)) for i, sp in enumerate(IMAGES)]
    losses, counts, rec, grads = run(scene, torch.float32)
    # The conditioning run: the same step in float64 (same proposals, from the float32-rounded
    # RPN outputs, so the same RoIs), to measure how far PyTorch's own float32 gradients are
    # from float64's (max-fusion and ReLU near-ties flip in float32).
    losses64, counts64, _, grads64 = run(scene, torch.float64)
    assert counts64 == counts, (counts, counts64)
    d = {}
    d.update({f"draws.{k.split('.')[-1]}": torch.from_numpy(v) for k, v in rec.tensors("draws").items()})
    for k, v in losses.items():
        d[f"loss.{k}"] = v.detach().reshape(1).to(torch.float64)
    for i, (masks, gt, classes, crowd) in enumerate(scene):
        d[f"img{i}.boxes"] = torch.from_numpy(gt)
        d[f"img{i}.classes"] = torch.from_numpy(classes)
        d[f"img{i}.crowd"] = torch.from_numpy(crowd.astype(np.uint8))
        d[f"img{i}.masks"] = torch.from_numpy(np.packbits(np.stack(masks).reshape(-1)))
    d["trainable"] = torch.tensor([len(grads)], dtype=torch.int64)
    worst = (0.0, "")
    for (k, g), (k64, g64) in zip(grads, grads64):
        assert k == k64
        d.update(synth.sample_outputs(f"grad.{k}", g, n=SAMPLES, blocks=BLOCKS_PROJ))
        a, b = g.double(), g64
        e = [float((a - b).abs().max()), abs(float(a.sum() - b.sum())), abs(float(a.abs().sum() - b.abs().sum()))]
        d[f"torch_f32_err.{k}"] = torch.tensor(e, dtype=torch.float64)
        worst = max(worst, (e[0] / max(1.0, float(b.abs().max())), k))
    path = os.path.join(out_dir, "panet_train_step.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes;", counts,
          {k: float(v) for k, v in losses.items()}, "trainable tensors", len(grads),
          "torch f32 vs f64: worst max|diff| / max(1, max|ref|)", worst)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
