"""PyTorch side of the PANet bench cases of `cargo xtask bench` (crates/cli/src/bench/panet.rs).

- `panet_r50_fpn`: PANet R-50-FPN (`panet_r50_fpn_2x_coco`'s network, synthetic weights from
  synth.py with gen_panet_heads.py's SCALED output layers, so that the network detects something)
  on a synthetic 800 x 1216 RGB image at Detectron's default TEST.SCALE 800 / MAX_SIZE 1333
  (scale 1: the blob is 1 x 3 x 800 x 1216). The reference pipeline is `im_detect_all` as
  gen_panet_model.py assembles it from the modules written from the official math
  (gen_panet_backbone / neck / rpn / heads.py), with torchvision's `roi_align(aligned=False)` and
  `nms` (on `+1`-adjusted boxes, Detectron's convention) for the official CUDA / Cython ops, and
  numpy + OpenCV where the official code uses them (proposal decoding, post-processing, the mask
  paste with `cv2.resize` per detection). The same weights and image as segkit's side, so both
  sides keep the same proposals and detections (counts printed by `--stages`).
- `torchvision_maskrcnn`: torchvision's `maskrcnn_resnet50_fpn(weights=None)` in eval mode on the
  same image (min_size 800, max_size 1333: no resize), `box_detections_per_img=100` and
  `box_score_thresh=0` (random-initialised class scores are ~1/91, below the default 0.05: with
  it nothing reaches the mask head), i.e. the user's alternative, a smaller network (no
  bottom-up path, no adaptive feature pooling, no fully-connected fusion).

`python tests/parity/bench_torch_panet.py --stages [--runs N]` prints the median time of each
stage of `panet_r50_fpn` (blob, body, FPN, RPN+proposals, box head + post-processing, mask head,
paste) and the counts.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
import gen_panet_heads as heads  # noqa: E402
import gen_panet_model as gm  # noqa: E402
import gen_panet_ops as ops  # noqa: E402
import gen_panet_rpn as rpn  # noqa: E402
import synth  # noqa: E402

F32 = np.float32
IMAGE = (800, 1216)  # (height, width): TEST.SCALE 800 keeps it, a multiple of 32
SCALE, MAX_SIZE = 800, 1333


def image():
    """An 8-bit RGB image, pixel i = floor(256 * uniform("bench.panet.image", n)[i])."""
    h, w = IMAGE
    u = synth.uniform("bench.panet.image", h * w * 3)
    return np.floor(u * 256.0).astype(np.uint8).reshape(h, w, 3)


def blob_of(rgb):
    """utils/blob.py::get_image_blob at TEST.SCALE 800 / MAX_SIZE 1333."""
    gm.TEST_SCALE, gm.MAX_SIZE = SCALE, MAX_SIZE
    return gm.blob_of(rgb)


def nms(boxes, scores, thresh):
    """cython_nms on the `+1` convention: torchvision `nms` on boxes with x2 + 1, y2 + 1; keep in
    decreasing score order."""
    adj = torch.from_numpy(boxes.copy())
    adj[:, 2:] += 1.0
    return torchvision.ops.nms(adj, torch.from_numpy(scores), thresh).numpy()


def level_proposals(logits, deltas, lvl, im_info, pre=1000, post=1000, thresh=0.7):
    """generate_proposals.py for one FPN level (test: 1000 before and after NMS 0.7)."""
    stride = 2.0 ** lvl
    cell = ops.d_anchors(stride, (32 * 2.0 ** (lvl - 2),), rpn.RATIOS)
    _, _, h, w = logits.shape
    anchors = ops.d_grid(cell, stride, h, w)
    scores = torch.sigmoid(logits)[0].numpy().transpose(1, 2, 0).reshape(-1)
    d = deltas[0].numpy().transpose(1, 2, 0).reshape(-1, 4)
    if pre <= 0 or pre >= len(scores):
        order = np.argsort(-scores)
    else:
        inds = np.argpartition(-scores, pre)[:pre]
        order = inds[np.argsort(-scores[inds])]
    props = ops.d_clip(ops.d_decode(anchors[order], d[order], (1, 1, 1, 1)), im_info[0], im_info[1])
    sc = scores[order]
    keep = ops.d_filter(props, 0.0, im_info[0], im_info[1], im_info[2])
    props, sc = props[keep], sc[keep]
    keep = nms(props, sc, thresh)[:post]
    return props[keep], sc[keep]


def box_results(scores, boxes, thresh=0.05, nms_t=0.5, limit=100):
    """core/test.py::box_results_with_nms_and_limit (per-class loop, as the official code)."""
    cls_boxes = [np.zeros((0, 5), F32)]
    for j in range(1, heads.NUM_CLASSES):
        inds = np.where(scores[:, j] > F32(thresh))[0]
        sj, bj = scores[inds, j], boxes[inds, j * 4:(j + 1) * 4]
        keep = nms(bj, sj, nms_t) if len(inds) else np.zeros(0, np.int64)
        cls_boxes.append(np.hstack((bj[keep], sj[keep, None])).astype(F32))
    image_scores = np.hstack([cls_boxes[j][:, -1] for j in range(1, heads.NUM_CLASSES)])
    if len(image_scores) > limit:
        th = np.sort(image_scores)[-limit]
        for j in range(1, heads.NUM_CLASSES):
            cls_boxes[j] = cls_boxes[j][cls_boxes[j][:, -1] >= th]
    classes = np.concatenate([np.full(len(cls_boxes[j]), j) for j in range(1, heads.NUM_CLASSES)])
    res = np.vstack([cls_boxes[j] for j in range(1, heads.NUM_CLASSES)])
    return res[:, :4].copy(), res[:, 4].copy(), classes.astype(np.int64)


def panet_pipeline():
    """`run(times=None)`: im_detect_all on the bench image; `times` (a dict) gets per-stage
    seconds."""
    model = gm.scale_outputs_(synth.fill_(gm.Panet().eval()))
    rgb = image()

    def run(times=None):
        clock = [time.perf_counter()]

        def lap(name):
            now = time.perf_counter()
            if times is not None:
                times.setdefault(name, []).append(now - clock[0])
            clock[0] = now

        blob, s, _ = blob_of(rgb)
        hp, wp = blob.shape[2:]
        im_info = (float(hp), float(wp), float(F32(s)))
        lap("blob")
        c = model.Conv_Body.conv_body(blob)
        lap("body")
        _, n = model.Conv_Body(c)
        lap("fpn")
        boxes, scores = [], []
        for i, x in enumerate(n):
            logits, deltas = model.RPN(x)
            b, sc = level_proposals(logits, deltas, i + 2, im_info)
            boxes.append(b)
            scores.append(sc)
        allb, alls = np.concatenate(boxes), np.concatenate(scores)
        props = allb[np.argsort(-alls, kind="stable")[:1000]]
        lap("rpn")
        rois = np.hstack([np.zeros((len(props), 1), F32), props])
        feats = n[:4]
        x = model.Box_Head(heads.pool(feats, rois, 7))
        cls, bbox = model.Box_Outs.cls_score(x), model.Box_Outs.bbox_pred(x)
        probs = torch.softmax(cls, dim=1).numpy()
        pred = ops.d_clip(ops.d_decode(props / F32(s), bbox.numpy(), (10.0, 10.0, 5.0, 5.0)), *IMAGE)
        db, _, dc = box_results(probs, pred)
        lap("box")
        mrois = np.hstack([np.zeros((len(db), 1), F32), (db.astype(np.float64) * s).astype(F32)])
        x_fcn, x_ff = model.Mask_Head(heads.pool(feats, mrois, 14))
        logits = model.Mask_Outs(x_fcn, x_ff)
        cls_probs = torch.sigmoid(logits).numpy()[np.arange(len(db)), dc]
        lap("mask")
        masks = ops.d_paste(cls_probs, db, *IMAGE)
        lap("paste")
        if times is not None:
            times.setdefault("proposals", []).append(len(props))
            times.setdefault("detections", []).append(len(db))
        return masks

    return run


def maskrcnn():
    m = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_detections_per_img=100, box_score_thresh=0.0
    ).eval()
    x = torch.from_numpy(image().transpose(2, 0, 1).astype(np.float32) / 255.0)
    return lambda: m([x])[0]["masks"]


def make(case):
    if case == "panet_r50_fpn":
        return panet_pipeline()
    if case == "torchvision_maskrcnn":
        return maskrcnn()
    raise SystemExit(f"unknown case {case}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("SEGKIT_BENCH_THREADS", "2")))
    with torch.inference_mode():
        run = panet_pipeline()
        run()
        times = {}
        for _ in range(max(1, a.runs)):
            run(times)
    out = {k: (v[0] if k in ("proposals", "detections") else round(1e3 * sorted(v)[len(v) // 2], 1))
           for k, v in times.items()}
    print(json.dumps({"impl": "torch", "case": "panet_r50_fpn", "stages_ms": out}))


if __name__ == "__main__":
    main()
