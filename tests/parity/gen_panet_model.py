"""Whole-model parity fixtures for segkit-models' `Panet` (image -> Detectron blob -> N2..N6 ->
RPN proposals -> box head -> post-processing -> mask head -> pasted masks), and the official
checkpoint layout in PyTorch's legacy serialization.

Oracles:
- INDEPENDENT: the input resize is OpenCV's own `cv2.resize(im, None, fx=s, fy=s,
  interpolation=cv2.INTER_LINEAR)` on the float32 mean-subtracted BGR image, as
  `lib/utils/blob.py::prep_im_for_blob`; RoIAlign is torchvision's `roi_align(aligned=False)`;
  NMS is cross-checked against torchvision's `nms` on `+1`-adjusted boxes; the mask paste
  resizes with `cv2.resize`.
- WRITTEN FROM THE OFFICIAL MATH (ShuLiu1993/PANet is not installable: PyTorch 0.4, compiled
  CUDA ops): the network is the PyTorch modules of gen_panet_backbone.py (caffe ResNet),
  gen_panet_neck.py (GN FPN + bottom-up path + P6), gen_panet_rpn.py (RPN head, numpy proposal
  generation, collect) and gen_panet_heads.py (box / mask heads, `lib/core/test.py`
  post-processing), assembled under the official module names (`Conv_Body.conv_body.*`,
  `Conv_Body.*`, `RPN.*`, `Box_Head.*`, `Box_Outs.*`, `Mask_Head.*`, `Mask_Outs.*`) as
  `model_builder.py::Generalized_RCNN` wires them at test time (`im_detect_all` without
  augmentation); `get_image_blob`'s `im_info` holds the padded blob size, as in the official code.

Input: a synthetic 8-bit RGB image of 431 x 324 (pixel i = floor(256 * uniform("panet_model.image",
n)[i]), interleaved RGB, row-major), `TEST.SCALE` 389 / `MAX_SIZE` 1400, so the scale is
389 / 324 and the resized image 517 x 389, padded to 544 x 416. Weights: synth.py (full size,
ResNet-50), with the output layers scaled as gen_panet_heads.py does (SCALED) so that the
synthetic network detects something.

The legacy checkpoint: the same network with periodic synthetic values (element i of a tensor
takes the value of element i % 61, so gzip shrinks the file ~250x), the same SCALED factors, in
the official layout `{step, train_size, batch_size, model, optimizer}` written by
`torch.save(_use_new_zipfile_serialization=False)` and gzipped; `legacy_expected` holds the
detections of that network on the same image.
Run: python tests/parity/gen_panet_model.py tests/fixtures   (after gen_panet_rpn.py)
"""
import gzip
import os
import shutil
import sys
import tempfile
from collections import OrderedDict

import cv2
import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import gen_panet_backbone as bb  # noqa: E402
import gen_panet_heads as heads  # noqa: E402
import gen_panet_neck as neck  # noqa: E402
import gen_panet_ops as ops  # noqa: E402
import gen_panet_rpn as rpn  # noqa: E402
import synth  # noqa: E402

F32 = np.float32
ORIG = (431, 324)  # (height, width)
TEST_SCALE, MAX_SIZE = 389, 1400
PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])  # BGR, float64 as Detectron's cfg
PERIOD = 61
# The periodic network's class logits are large already (scores saturate at 1.0 with the x16 of
# SCALED, and equal scores make NMS order and the top-100 cut ambiguous), so only the masks are
# sharpened.
LEGACY_SCALED = {"Mask_Outs.classify.weight": 16.0}


class ConvBody(neck.PanetPyramid):
    """`Conv_Body`: the FPN module, holding the ResNet as `conv_body`."""

    def __init__(self, depth=50):
        super().__init__()
        self.conv_body = bb.CaffeResNet(depth)


class Panet(nn.Module):
    def __init__(self, depth=50):
        super().__init__()
        self.Conv_Body = ConvBody(depth)
        self.RPN = rpn.RpnHead()
        self.Box_Head = heads.BoxHead()
        self.Box_Outs = heads.BoxOuts()
        self.Mask_Head = heads.MaskHead()
        self.Mask_Outs = heads.MaskOuts()


def image():
    h, w = ORIG
    u = synth.uniform("panet_model.image", h * w * 3)
    return np.floor(u * 256.0).astype(np.uint8).reshape(h, w, 3)


def blob_of(rgb):
    """get_image_blob: BGR float32, means subtracted (float64 arithmetic, float32 result),
    cv2.resize by the target scale, zero-padded to a multiple of 32."""
    im = rgb[:, :, ::-1].astype(np.float32)
    im -= PIXEL_MEANS
    lo, hi = min(im.shape[:2]), max(im.shape[:2])
    s = float(TEST_SCALE) / float(lo)
    if np.round(s * hi) > MAX_SIZE:
        s = float(MAX_SIZE) / float(hi)
    r = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    hp, wp = (int(np.ceil(v / 32.0) * 32) for v in r.shape[:2])
    blob = np.zeros((1, hp, wp, 3), np.float32)
    blob[0, :r.shape[0], :r.shape[1]] = r
    return torch.from_numpy(blob.transpose(0, 3, 1, 2).copy()), s, r.shape[:2]


def scale_outputs_(model, factors=None):
    sd = model.state_dict()
    for k, f in (heads.SCALED if factors is None else factors).items():
        sd[k] = sd[k] * f
    model.load_state_dict(sd)
    return model


def periodic_(model):
    sd = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(synth.synthetic_values(k, t.shape, PERIOD)).to(t.dtype)
                           for k, t in sd.items()})
    return model


def run(model, blob, s):
    """im_detect_all without augmentation; returns every intermediate."""
    hp, wp = blob.shape[2:]
    rpn.IM_INFO = (float(hp), float(wp), float(F32(s)))
    heads.ORIG, heads.IM_SCALE = ORIG, s
    c = model.Conv_Body.conv_body(blob)
    _, n = model.Conv_Body(c)
    boxes, scores = [], []
    for i, x in enumerate(n):
        logits, deltas = model.RPN(x)
        b, sc = rpn.level_proposals(logits, deltas, i + 2)
        boxes.append(b)
        scores.append(sc)
    allb, alls = np.concatenate(boxes), np.concatenate(scores)
    inds = np.argsort(-alls, kind="stable")[:1000]
    props, pscores = allb[inds], alls[inds]
    rois = np.hstack([np.zeros((len(props), 1), F32), props])
    feats = n[:4]
    x = model.Box_Head(heads.pool(feats, rois, 7))
    cls, bbox = model.Box_Outs.cls_score(x), model.Box_Outs.bbox_pred(x)
    probs = torch.softmax(cls, dim=1).numpy()
    pred = ops.d_clip(ops.d_decode(props / F32(s), bbox.numpy(), (10.0, 10.0, 5.0, 5.0)), *ORIG)
    db, ds, dc, before = heads.box_results_with_nms_and_limit(probs, pred)
    mrois = np.hstack([np.zeros((len(db), 1), F32), (db.astype(np.float64) * s).astype(F32)])
    x_fcn, x_ff = model.Mask_Head(heads.pool(feats, mrois, 14))
    logits = model.Mask_Outs(x_fcn, x_ff)
    cls_probs = torch.sigmoid(logits).numpy()[np.arange(len(db)), dc]
    masks = ops.d_paste(cls_probs, db, *ORIG)
    return dict(n=n, props=props, pscores=pscores, cls=cls, bbox=bbox, db=db, ds=ds, dc=dc,
                before=before, logits=logits, masks=masks)


def detections(d, r):
    d["det_boxes"], d["det_scores"] = torch.from_numpy(r["db"]), torch.from_numpy(r["ds"])
    d["det_classes"] = torch.from_numpy(r["dc"])
    runs, counts = heads.rle_rows(r["masks"])
    d["mask_runs"], d["mask_run_counts"] = torch.from_numpy(runs), torch.from_numpy(counts)
    d["mask_areas"] = torch.from_numpy(r["masks"].reshape(len(r["db"]), -1).sum(1).astype(np.int64))


def save(out_dir, name, d):
    path = os.path.join(out_dir, "panet", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes", flush=True)


@torch.no_grad()
def gen_model(out_dir):
    model = scale_outputs_(synth.fill_(Panet().eval()))
    blob, s, resized = blob_of(image())
    r = run(model, blob, s)
    d = {"scale": torch.tensor([s], dtype=torch.float64),
         "resized": torch.tensor(list(resized), dtype=torch.int64)}
    d.update(synth.sample_outputs("blob", blob))
    for i, t in enumerate(r["n"]):
        d.update(synth.sample_outputs(f"n{i + 2}", t))
    d["proposals"], d["proposal_scores"] = torch.from_numpy(r["props"]), torch.from_numpy(r["pscores"])
    d.update(synth.sample_outputs("cls_score", r["cls"]))
    d.update(synth.sample_outputs("bbox_pred", r["bbox"]))
    d.update(synth.sample_outputs("mask_logits", r["logits"]))
    detections(d, r)
    save(out_dir, "model", d)
    print("blob", tuple(blob.shape), "scale", s, "resized", resized, "proposals", len(r["props"]),
          "detections", len(r["db"]), "of", r["before"], "classes", sorted(set(r["dc"].tolist()))[:10],
          "scores", r["ds"][:5].tolist(), "mask areas", r["masks"].reshape(len(r["db"]), -1).sum(1)[:8].tolist())


@torch.no_grad()
def gen_legacy(out_dir):
    model = scale_outputs_(periodic_(Panet().eval()), LEGACY_SCALED)
    blob, s, _ = blob_of(image())
    r = run(model, blob, s)
    d = {}
    detections(d, r)
    save(out_dir, "legacy_expected", d)
    print("legacy: detections", len(r["db"]), "of", r["before"], "scores", r["ds"][:5].tolist())
    sd = OrderedDict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    ckpt = {"step": 179999, "train_size": 117266, "batch_size": 16, "model": sd,
            "optimizer": opt.state_dict()}
    tmp = tempfile.mkdtemp()
    try:
        pth = os.path.join(tmp, "panet_mask_step179999.pth")
        torch.save(ckpt, pth, _use_new_zipfile_serialization=False)
        gz = os.path.join(out_dir, "panet", "legacy_panet_r50.pth.gz")
        with open(pth, "rb") as f, gzip.GzipFile(gz, "wb", compresslevel=9, mtime=0) as g:
            shutil.copyfileobj(f, g)
        print("wrote", gz, os.path.getsize(pth), "->", os.path.getsize(gz), "bytes", flush=True)
    finally:
        shutil.rmtree(tmp)


def main(out_dir):
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(os.path.join(out_dir, "panet"), exist_ok=True)
    which = sys.argv[2:] or ["model", "legacy"]
    gens = dict(model=gen_model, legacy=gen_legacy)
    for w in which:
        gens[w](out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
