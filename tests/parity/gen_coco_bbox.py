"""Box AP reference: pycocotools 2.0.11 `COCOeval(iouType='bbox')` on synthetic data.

Writes `OUT/data/coco_bbox.json` for crates/data/tests/coco_bbox.rs (segkit-data's
`CocoEvaluator::bbox`). Ground truths are random rectangle / ellipse masks (some crowd) with
`bbox = toBbox(mask)` and `area = mask area`, as COCO writes them for a mask; two result sets:
- `box`: float `[x, y, w, h]` detections (jittered ground-truth boxes, duplicates, false
  positives, tied scores), which `loadRes` gives the area `w * h`;
- `segm`: mask detections evaluated with box IoUs (`loadRes` takes `toBbox(mask)` and the
  mask area).

Usage: .venv/bin/python tests/parity/gen_coco_bbox.py tests/fixtures
"""

import json
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATS = [1, 2, 5]


def rand_mask(rng, h, w):
    m = np.zeros((h, w), dtype=np.uint8)
    y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
    y1, x1 = rng.integers(y0 + 2, min(h, y0 + 60)), rng.integers(x0 + 2, min(w, x0 + 60))
    if rng.random() < 0.5:
        m[y0:y1, x0:x1] = 1
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2 + 0.5, (x1 - x0) / 2 + 0.5
        m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    if m.sum() == 0:
        m[y0, x0] = 1
    return m


def encode(m):
    r = mask_util.encode(np.asfortranarray(m))
    r["counts"] = r["counts"].decode()
    return r


def evaluate(images, gts, dts):
    gt = COCO()
    gt.dataset = dict(images=images, categories=[dict(id=c, name=str(c)) for c in CATS],
                      annotations=[dict(g) for g in gts])
    gt.createIndex()
    dt = gt.loadRes([dict(d) for d in dts])
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    prec = ev.eval["precision"]
    per_cat = {}
    for k, c in enumerate(ev.params.catIds):
        s = prec[:, :, k, 0, -1]
        per_cat[str(c)] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return dict(stats=ev.stats.tolist(), per_category_ap=per_cat)


def main(out):
    rng = np.random.default_rng(11)
    images, gts, box_dts, segm_dts = [], [], [], []
    for i in range(6):
        h, w = int(rng.integers(60, 140)), int(rng.integers(60, 140))
        images.append(dict(id=i + 1, height=h, width=w))
        for _ in range(int(rng.integers(1, 7))):
            m = rand_mask(rng, h, w)
            r = encode(m)
            gts.append(dict(id=len(gts) + 1, image_id=i + 1, category_id=int(rng.choice(CATS)),
                            segmentation=r, area=float(mask_util.area(r)),
                            bbox=mask_util.toBbox(r).tolist(),
                            iscrowd=int(rng.random() < 0.12)))
            g = gts[-1]
            for _ in range(int(rng.integers(0, 3))):
                x, y, bw, bh = g["bbox"]
                j = rng.normal(0, 0.12, 4) * np.array([bw, bh, bw, bh])
                box = [x + j[0], y + j[1], max(bw + j[2], 0.5), max(bh + j[3], 0.5)]
                score = round(float(rng.random()), 1)  # ties
                cat = g["category_id"] if rng.random() < 0.85 else int(rng.choice(CATS))
                box_dts.append(dict(image_id=i + 1, category_id=cat,
                                    bbox=[float(v) for v in box], score=score))
                dm = np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), (0, 1))
                segm_dts.append(dict(image_id=i + 1, category_id=cat, segmentation=encode(dm),
                                     score=score))
        for _ in range(int(rng.integers(0, 4))):  # false positives
            x, y = float(rng.uniform(0, w - 10)), float(rng.uniform(0, h - 10))
            box_dts.append(dict(image_id=i + 1, category_id=int(rng.choice(CATS)),
                                bbox=[x, y, float(rng.uniform(3, 40)), float(rng.uniform(3, 40))],
                                score=float(rng.random())))
    doc = dict(images=images, categories=CATS, gts=gts, box_dts=box_dts, segm_dts=segm_dts,
               expected_box=evaluate(images, gts, box_dts),
               expected_segm=evaluate(images, gts, segm_dts))
    path = Path(out) / "data" / "coco_bbox.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    print(f"wrote {path}: {len(gts)} gts, {len(box_dts)} box and {len(segm_dts)} mask detections")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
