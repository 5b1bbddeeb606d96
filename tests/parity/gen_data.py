"""Fixtures for segkit-data's metrics, RLE and palettes (tests/fixtures/data/).

Oracles:
- mIoU / mAcc / mDice / mFscore: mmsegmentation 1.2.2's `IoUMetric` (process + compute_metrics,
  and the unrounded `total_area_to_metrics` + nanmean), reduce_zero_label through mmseg's own
  `LoadAnnotations(reduce_zero_label=True)` transform on the PNG file.
- mask AP: pycocotools 2.0.11 `COCOeval(iouType='segm')` (evaluate / accumulate / summarize),
  ground truth built with `COCO()` (polygon and RLE segmentations, iscrowd), detections through
  `COCO.loadRes`.
- RLE: pycocotools `mask.encode / decode / area / toBbox / iou / merge / frPyObjects`.
- PQ / SQ / RQ: `pq_single_image` and `PQStat` below, a copy of panopticapi's
  `pq_compute_single_core` / `PQStat` (github.com/cocodataset/panopticapi,
  panopticapi/evaluation.py, Apache-2.0, Copyright (c) 2018 Alexander Kirillov), with only the
  PNG loading replaced by in-memory id maps (panopticapi is not on PyPI; mmdet's
  panoptic_utils.py imports the same code from it).
- palettes / overlays: imgviz 2.1.0's `label_colormap` (the VOC devkit bit-shuffling palette)
  and mmseg's `SegLocalVisualizer._draw_sem_seg(with_labels=False)`.

Real data:
- The PASCAL VOC photo shipped by imgviz 2.1.0 (`imgviz.data.voc()`: 375x500 RGB, 19 instance
  masks of bottle / chair / person / diningtable). Ground truth: its class map with a VOC-style
  255 "void" band along label borders, its instance masks (one person marked iscrowd), and the
  left-right flip of all of it as a second image. Predictions: the masks perturbed
  deterministically (dilate / erode / shift / drop / relabel / merge / duplicate, spurious
  blobs, scores from a seeded numpy Generator).
- StarDist's nuclei test image (`stardist.data.test_image_nuclei_2d(return_mask=True)`, 2018
  Kaggle Data Science Bowl, 512x512, 125 instances). The mask is read from the stardist 0.9.2
  wheel (`stardist/data/images/mask2d.tif`, no tensorflow needed) on the first run: point
  SEGKIT_STARDIST_WHEEL at the wheel (`pip download stardist==0.9.2 --no-deps`) or install
  stardist; later runs read the committed tests/fixtures/data/nuclei_gt_inst.png.

Label maps are stored as 8-bit PNGs, masks as COCO compressed RLE strings, so the whole folder
is a few hundred kilobytes. Run by `cargo xtask fixtures data`, or:
    python tests/parity/gen_data.py tests/fixtures
Needs (beyond tests/parity/requirements.txt): pycocotools==2.0.11, imgviz==2.1.0,
scipy, opencv-python, tifffile (first run only).
"""
import io
import json
import math
import os
import sys
import zipfile
from collections import defaultdict

import cv2
import numpy as np
import scipy.ndimage as ndi
import torch
from PIL import Image

import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(__file__))
import mmseg_stub  # noqa: E402,F401  (stubs mmcv.ops before importing mmseg)

SEED = 20240611
VOC_BG_STUFF = 100  # category id of the "background" stuff class in the panoptic cases
BG_SEGMENT_ID = 200  # segment id of the background stuff segment in the id maps
NUCLEUS = 1
NUCLEI_BG_STUFF = 2


# --------------------------------------------------------------------------------------------
# panopticapi (copied; see the module docstring). Only the PNG reading is replaced: the two id
# maps come in as arrays, and the ground-truth 'area' of a segment is its pixel count.
# --------------------------------------------------------------------------------------------
OFFSET = 256 * 256 * 256
VOID = 0


class PQStatCat:
    def __init__(self):
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, pq_stat_cat):
        self.iou += pq_stat_cat.iou
        self.tp += pq_stat_cat.tp
        self.fp += pq_stat_cat.fp
        self.fn += pq_stat_cat.fn
        return self


class PQStat:
    def __init__(self):
        self.pq_per_cat = defaultdict(PQStatCat)

    def __getitem__(self, i):
        return self.pq_per_cat[i]

    def __iadd__(self, pq_stat):
        for label, pq_stat_cat in pq_stat.pq_per_cat.items():
            self.pq_per_cat[label] += pq_stat_cat
        return self

    def pq_average(self, categories, isthing):
        pq, sq, rq, n = 0, 0, 0, 0
        per_class_results = {}
        for label, label_info in categories.items():
            if isthing is not None:
                cat_isthing = label_info['isthing'] == 1
                if isthing != cat_isthing:
                    continue
            iou = self.pq_per_cat[label].iou
            tp = self.pq_per_cat[label].tp
            fp = self.pq_per_cat[label].fp
            fn = self.pq_per_cat[label].fn
            if tp + fp + fn == 0:
                per_class_results[label] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class_results[label] = {'pq': pq_class, 'sq': sq_class, 'rq': rq_class}
            pq += pq_class
            sq += sq_class
            rq += rq_class

        return {'pq': pq / n, 'sq': sq / n, 'rq': rq / n, 'n': n}, per_class_results


def pq_single_image(pq_stat, pan_gt, gt_ann, pan_pred, pred_ann, categories):
    """panopticapi's pq_compute_single_core loop body for one (gt_ann, pred_ann) pair."""
    gt_segms = {el['id']: el for el in gt_ann['segments_info']}
    pred_segms = {el['id']: el for el in pred_ann['segments_info']}

    # predicted segments area calculation + prediction sanity checks
    pred_labels_set = set(el['id'] for el in pred_ann['segments_info'])
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError('In the image with ID {} segment with ID {} is presented in PNG and not presented in JSON.'.format(gt_ann['image_id'], label))
        pred_segms[label]['area'] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]['category_id'] not in categories:
            raise KeyError('In the image with ID {} segment with ID {} has unknown category_id {}.'.format(gt_ann['image_id'], label, pred_segms[label]['category_id']))
    if len(pred_labels_set) != 0:
        raise KeyError('In the image with ID {} the following segment IDs {} are presented in JSON and not presented in PNG.'.format(gt_ann['image_id'], list(pred_labels_set)))

    # confusion matrix calculation
    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
        gt_id = label // OFFSET
        pred_id = label % OFFSET
        gt_pred_map[(gt_id, pred_id)] = intersection

    # count all matched pairs
    gt_matched = set()
    pred_matched = set()
    for label_tuple, intersection in gt_pred_map.items():
        gt_label, pred_label = label_tuple
        if gt_label not in gt_segms:
            continue
        if pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]['iscrowd'] == 1:
            continue
        if gt_segms[gt_label]['category_id'] != pred_segms[pred_label]['category_id']:
            continue

        union = pred_segms[pred_label]['area'] + gt_segms[gt_label]['area'] - intersection - gt_pred_map.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            pq_stat[gt_segms[gt_label]['category_id']].tp += 1
            pq_stat[gt_segms[gt_label]['category_id']].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    # count false positives
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        # crowd segments are ignored
        if gt_info['iscrowd'] == 1:
            crowd_labels_dict[gt_info['category_id']] = gt_label
            continue
        pq_stat[gt_info['category_id']].fn += 1

    # count false positives
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        # intersection of the segment with VOID
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        # plus intersection with corresponding CROWD region if it exists
        if pred_info['category_id'] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info['category_id']], pred_label), 0)
        # predicted segment is ignored if more than half of the segment correspond to VOID and CROWD regions
        if intersection / pred_info['area'] > 0.5:
            continue
        pq_stat[pred_info['category_id']].fp += 1
    return pq_stat


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def jsonable(x):
    """NaN -> None (JSON null), numpy scalars/arrays -> Python."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, bytes):
        return x.decode()
    return x


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(jsonable(obj), f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes", flush=True)


def write_png(path, arr):
    arr = np.ascontiguousarray(arr)
    assert arr.dtype == np.uint8, arr.dtype
    Image.fromarray(arr).save(path, optimize=True)
    print("wrote", path, arr.shape, os.path.getsize(path), "bytes", flush=True)


def read_png(path):
    return np.array(Image.open(path))


def encode(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def shift(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def perturb(mask, op, k):
    if op == "dilate":
        return ndi.binary_dilation(mask, iterations=k)
    if op == "erode":
        return ndi.binary_erosion(mask, iterations=k)
    if op == "shift":
        return shift(mask, *k)
    if op == "keep":
        return mask.copy()
    raise ValueError(op)


def void_band(class_map, width):
    """VOC-style 255 band along the borders between different labels."""
    edge = ndi.maximum_filter(class_map, size=3) != ndi.minimum_filter(class_map, size=3)
    return ndi.binary_dilation(edge, iterations=width)


def disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# --------------------------------------------------------------------------------------------
# predictions: deterministic perturbations of ground-truth instances
# --------------------------------------------------------------------------------------------
def voc_detections(masks, labels, rng, plan):
    """plan: list of (gt index or tuple of indices to merge, op, arg, label override or None)."""
    dts = []
    for idx, op, arg, relabel in plan:
        if isinstance(idx, tuple):
            m = np.zeros_like(masks[0])
            for i in idx:
                m |= masks[i]
            lab = labels[idx[0]]
        else:
            m = masks[idx]
            lab = labels[idx]
        m = perturb(m, op, arg)
        if m.sum() == 0:
            continue
        dts.append(dict(mask=m, category_id=int(relabel if relabel is not None else lab), plan=(idx, op)))
    # scores: two decimals, so that ties occur (stable sorting matters)
    for d in dts:
        d["score"] = round(float(rng.uniform(0.05, 1.0)), 2)
    return dts


def random_plan(n, rng):
    plan = []
    for i in range(n):
        r = rng.uniform()
        if r < 0.1:
            continue  # dropped: a false negative
        if r < 0.4:
            plan.append((i, "dilate", int(rng.integers(1, 5)), None))
        elif r < 0.65:
            plan.append((i, "erode", int(rng.integers(1, 4)), None))
        elif r < 0.85:
            plan.append((i, "shift", (int(rng.integers(-9, 10)), int(rng.integers(-9, 10))), None))
        elif r < 0.92:
            plan.append((i, "keep", 0, None))
            plan.append((i, "shift", (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), None))  # duplicate
        else:
            plan.append((i, "dilate", 1, 15 if i % 2 else 9))  # wrong label
    return plan


def spurious(h, w, rng, n, categories, rmin, rmax):
    out = []
    for _ in range(n):
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        r = int(rng.integers(rmin, rmax + 1))
        m = disk(h, w, cy, cx, r)
        out.append(dict(mask=m, category_id=int(categories[int(rng.integers(0, len(categories)))]),
                        score=round(float(rng.uniform(0.05, 0.6)), 2)))
    return out


def paint_panoptic(h, w, dts, min_score, bg_category, unlabeled_box=None):
    """Paint detections (ascending score, so higher scores end on top) into an id map; the
    rest is one background stuff segment; `unlabeled_box` stays VOID (0)."""
    ids = np.full((h, w), BG_SEGMENT_ID, np.uint8)
    order = sorted(range(len(dts)), key=lambda i: dts[i]["score"])
    cat = {BG_SEGMENT_ID: bg_category}
    next_id = 1
    for i in order:
        d = dts[i]
        if d["score"] < min_score:
            continue
        ids[d["mask"]] = next_id
        cat[next_id] = d["category_id"]
        next_id += 1
        assert next_id < BG_SEGMENT_ID
    if unlabeled_box is not None:
        y0, y1, x0, x1 = unlabeled_box
        ids[y0:y1, x0:x1] = VOID
    present = set(np.unique(ids).tolist()) - {VOID}
    segs = [dict(id=int(s), category_id=int(cat[s]), iscrowd=0) for s in sorted(present)]
    return ids, segs


# --------------------------------------------------------------------------------------------
# oracles
# --------------------------------------------------------------------------------------------
def mmseg_semantic(pairs, num_classes, reduce_zero_label, tmp_dir):
    from mmseg.datasets.transforms import LoadAnnotations
    from mmseg.evaluation.metrics import IoUMetric

    metric = IoUMetric(ignore_index=255, iou_metrics=["mIoU", "mDice", "mFscore"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    for pred_path, gt_path in pairs:
        pred = torch.from_numpy(read_png(pred_path).astype(np.int64))
        load = LoadAnnotations(reduce_zero_label=reduce_zero_label)
        res = load(dict(seg_map_path=gt_path, reduce_zero_label=reduce_zero_label, seg_fields=[]))
        gt = torch.from_numpy(res["gt_seg_map"])
        metric.process({}, [dict(pred_sem_seg=dict(data=pred[None]), gt_sem_seg=dict(data=gt[None]))])
    rounded = metric.compute_metrics(metric.results)
    totals = [sum(r) for r in zip(*metric.results)]
    per_class = IoUMetric.total_area_to_metrics(*totals, ["mIoU", "mDice", "mFscore"], None, 1)
    expected = {k: float(np.nanmean(v)) for k, v in per_class.items()}
    # per-class arrays (IoU, Acc, Dice, Fscore, Precision, Recall); aAcc is a scalar
    expected["per_class"] = {k: v.tolist() for k, v in per_class.items() if k != "aAcc"}
    expected["total_area_intersect"] = totals[0].tolist()
    expected["total_area_union"] = totals[1].tolist()
    expected["total_area_pred_label"] = totals[2].tolist()
    expected["total_area_label"] = totals[3].tolist()
    return expected, {k: float(v) for k, v in rounded.items()}


def coco_eval(images, categories, gts, dts):
    gt = COCO()
    gt.dataset = dict(images=images, categories=[dict(id=c, name=str(c)) for c in categories],
                      annotations=gts)
    gt.createIndex()
    dt = gt.loadRes([dict(d) for d in dts]) if dts else COCO()
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    prec = ev.eval["precision"]
    per_cat = {}
    for k, c in enumerate(ev.params.catIds):
        s = prec[:, :, k, 0, -1]
        per_cat[c] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return dict(stats=ev.stats.tolist(), per_category_ap=per_cat,
                recall_all_100=ev.eval["recall"][:, :, 0, -1].tolist())


def panoptic_oracle(cases, categories):
    pq_stat = PQStat()
    cats = {c["id"]: c for c in categories}
    for pan_gt, gt_segs, pan_pred, pred_segs in cases:
        gt_segs = [dict(s) for s in gt_segs]
        ids, cnt = np.unique(pan_gt, return_counts=True)
        area = dict(zip(ids.tolist(), cnt.tolist()))
        for s in gt_segs:
            s["area"] = area.get(s["id"], 0)
        pq_single_image(pq_stat, pan_gt.astype(np.uint32), dict(image_id=0, segments_info=gt_segs),
                        pan_pred.astype(np.uint32),
                        dict(image_id=0, segments_info=[dict(s) for s in pred_segs]), cats)
    results = {}
    for name, isthing in [("All", None), ("Things", True), ("Stuff", False)]:
        results[name], per_class = pq_stat.pq_average(cats, isthing=isthing)
        if name == "All":
            results["per_class"] = per_class
    results["stat"] = {c: dict(iou=s.iou, tp=s.tp, fp=s.fp, fn=s.fn) for c, s in pq_stat.pq_per_cat.items()}
    return results


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------
VOC_PLAN_A = [
    (0, "dilate", 2, None),
    (1, "erode", 1, None),
    # 2: dropped (false negative)
    (3, "shift", (3, -2), None),
    ((4, 5), "keep", 0, None),  # two chairs merged into one prediction
    (5, "erode", 1, None),
    (6, "dilate", 1, None),
    (7, "keep", 0, 15),  # a chair predicted as a person
    (8, "dilate", 4, None),
    (9, "erode", 3, None),
    (10, "dilate", 2, None),  # on the crowd ground truth
    (10, "erode", 3, None),  # inside the crowd region: ignored by PQ only thanks to the crowd
    (11, "shift", (5, 5), None),
    (11, "erode", 1, None),  # duplicate
    (12, "shift", (-6, 4), None),
    (13, "erode", 2, None),
    (14, "dilate", 1, None),
    (15, "erode", 5, None),
    (16, "shift", (10, 0), None),
    (17, "dilate", 3, None),
    (18, "erode", 8, None),
]
VOC_CROWD = 10  # the small person (664 px) is marked iscrowd in image 1
VOC_POLYGON_GTS = (1, 9, 12, 16)  # image 2 stores these ground truths as polygons


def mask_polygons(mask):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64)
        if len(c) >= 3:
            polys.append((c + 0.25).reshape(-1).tolist())  # off-grid vertices
    return polys


def polygon_area(polys):
    a = 0.0
    for p in polys:
        xy = np.array(p).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        a += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return a


def gen_voc(out):
    import imgviz

    data = imgviz.data.voc()
    rgb, masks, labels = data["rgb"], data["masks"].astype(bool), data["labels"].astype(int)
    h, w = rgb.shape[:2]
    rng = np.random.default_rng(SEED)

    images = []  # per image: dict with masks, labels, dts, gt maps
    for img_id, flip in ((1, False), (2, True)):
        ms = masks[:, :, ::-1].copy() if flip else masks
        inst = np.zeros((h, w), np.uint8)
        cls = np.zeros((h, w), np.uint8)
        for i, (m, l) in enumerate(zip(ms, labels)):
            inst[m] = i + 1
            cls[m] = l
        void = void_band(cls, 1)
        gt_sem = np.where(void, 255, cls).astype(np.uint8)
        gt_pan = np.where(inst > 0, inst, BG_SEGMENT_ID).astype(np.uint8)
        gt_pan[void] = VOID
        plan = VOC_PLAN_A if img_id == 1 else random_plan(len(ms), rng)
        dts = voc_detections(ms, labels, rng, plan)
        dts += spurious(h, w, rng, 4, [9, 15, 3], 6, 25)
        if img_id == 1:
            # a prediction lying (mostly) on the void band: ignored by PQ
            band = void & (np.arange(w)[None, :] < 200) & (np.arange(h)[:, None] < 120)
            dts.append(dict(mask=band, category_id=15, score=0.9))
            dts[1]["score"] = dts[2]["score"] = 0.5  # explicit tie inside one image
            for d in dts:
                if d.get("plan") == (VOC_CROWD, "erode"):
                    d["score"] = 0.97  # painted on top: its PQ fate hinges on the crowd rule
        images.append(dict(id=img_id, inst=inst, gt_sem=gt_sem, gt_pan=gt_pan, masks=ms, dts=dts,
                           void=void))

    # ---- semantic: class maps of the panoptic predictions --------------------------------
    sem_pairs = []
    for im, tag in zip(images, "ab"):
        pan_pred, pred_segs = paint_panoptic(h, w, im["dts"], 0.15, VOC_BG_STUFF,
                                             unlabeled_box=(300, 340, 20, 90))
        im["pan_pred"], im["pred_segs"] = pan_pred, pred_segs
        cat = {s["id"]: s["category_id"] for s in pred_segs}
        pred_sem = np.zeros((h, w), np.uint8)
        for s, c in cat.items():
            pred_sem[pan_pred == s] = 0 if c == VOC_BG_STUFF else c
        pred_sem[340:346, 20:90] = 21  # out of range: dropped by mmseg's histc
        paths = {}
        for name, arr in (("gt_sem", im["gt_sem"]), ("pred_sem", pred_sem), ("gt_inst", im["inst"]),
                          ("gt_pan", im["gt_pan"]), ("pred_pan", pan_pred)):
            paths[name] = os.path.join(out, f"voc_{name}_{tag}.png")
            write_png(paths[name], arr)
        sem_pairs.append((paths["pred_sem"], paths["gt_sem"]))
        im["files"] = {k: os.path.basename(v) for k, v in paths.items()}

    semantic = []
    exp, rounded = mmseg_semantic(sem_pairs, 21, False, out)
    semantic.append(dict(name="voc_two_images", num_classes=21, ignore_index=255, reduce_zero_label=False,
                         pairs=[[os.path.basename(p), os.path.basename(g)] for p, g in sem_pairs],
                         expected=exp, mmseg_rounded=rounded))
    # reduce_zero_label: the ground truth's 0 (background) becomes 255; the prediction is in
    # 0..19 (background predicted as class 0); 21 - 1 = 20 stays out of range.
    red_pairs = []
    for (p, g), tag in zip(sem_pairs, "ab"):
        pr = read_png(p).astype(np.int64)
        pr = np.where(pr == 0, 0, pr - 1).astype(np.uint8)
        path = os.path.join(out, f"voc_pred_sem_reduced_{tag}.png")
        write_png(path, pr)
        red_pairs.append((path, g))
    exp, rounded = mmseg_semantic(red_pairs, 20, True, out)
    semantic.append(dict(name="voc_reduce_zero_label", num_classes=20, ignore_index=255, reduce_zero_label=True,
                         pairs=[[os.path.basename(p), os.path.basename(g)] for p, g in red_pairs],
                         expected=exp, mmseg_rounded=rounded))

    # ---- mask AP ---------------------------------------------------------------------------
    coco_images = [dict(id=im["id"], height=h, width=w) for im in images]
    gts, dts = [], []
    for im in images:
        for i, (m, l) in enumerate(zip(im["masks"], labels)):
            ann = dict(id=len(gts) + 1, image_id=im["id"], category_id=int(l), iscrowd=0)
            if im["id"] == 1 and i == VOC_CROWD:
                ann["iscrowd"] = 1
            if im["id"] == 2 and i in VOC_POLYGON_GTS:
                polys = mask_polygons(m)
                ann["segmentation"] = polys
                ann["area"] = polygon_area(polys)
            else:
                ann["segmentation"] = encode(m)
                ann["area"] = float(m.sum())
            ann["inst_id"] = i + 1  # the id in voc_gt_inst_*.png (not a COCO field)
            gts.append(ann)
        for d in im["dts"]:
            dts.append(dict(image_id=im["id"], category_id=d["category_id"], score=d["score"],
                            segmentation=encode(d["mask"])))
    categories = list(range(1, 21))
    coco_gts = [{k: v for k, v in g.items() if k != "inst_id"} for g in gts]
    expected_ap = coco_eval(coco_images, categories, [dict(g) for g in coco_gts], dts)
    # only the first image (exercises the crowd ground truth alone)
    expected_ap_img1 = coco_eval(coco_images[:1], categories,
                                 [dict(g) for g in coco_gts if g["image_id"] == 1],
                                 [d for d in dts if d["image_id"] == 1])
    instance = dict(images=coco_images, categories=categories, gts=gts, dts=dts,
                    expected=expected_ap, expected_image1=expected_ap_img1)

    # ---- panoptic --------------------------------------------------------------------------
    pan_categories = [dict(id=c, isthing=1) for c in categories] + [dict(id=VOC_BG_STUFF, isthing=0)]
    pan_cases, pan_json = [], []
    for im in images:
        gt_segs = [dict(id=i + 1, category_id=int(l), iscrowd=int(im["id"] == 1 and i == VOC_CROWD))
                   for i, l in enumerate(labels)]
        gt_segs.append(dict(id=BG_SEGMENT_ID, category_id=VOC_BG_STUFF, iscrowd=0))
        pan_cases.append((im["gt_pan"], gt_segs, im["pan_pred"], im["pred_segs"]))
        pan_json.append(dict(gt_png=im["files"]["gt_pan"], pred_png=im["files"]["pred_pan"],
                             gt_segments=gt_segs, pred_segments=im["pred_segs"]))
    panoptic = dict(categories=pan_categories, images=pan_json,
                    expected=panoptic_oracle(pan_cases, pan_categories))

    write_json(os.path.join(out, "voc.json"),
               dict(source="imgviz 2.1.0 imgviz.data.voc() (PASCAL VOC photo, 19 instances)",
                    height=h, width=w, semantic=semantic, instance=instance, panoptic=panoptic))
    return rgb, images


def stardist_mask(out):
    """The nuclei instance mask: committed PNG, else the stardist wheel / package."""
    png = os.path.join(out, "nuclei_gt_inst.png")
    if os.path.exists(png):
        return read_png(png)
    import tifffile

    whl = os.environ.get("SEGKIT_STARDIST_WHEEL")
    if whl:
        with zipfile.ZipFile(whl) as z:
            m = tifffile.imread(io.BytesIO(z.read("stardist/data/images/mask2d.tif")))
    else:
        # an installed stardist: read the file without importing the package (tensorflow)
        import importlib.util

        spec = importlib.util.find_spec("stardist")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("nuclei_gt_inst.png is missing: set SEGKIT_STARDIST_WHEEL to the stardist "
                             "0.9.2 wheel (pip download stardist==0.9.2 --no-deps) or install stardist")
        m = tifffile.imread(os.path.join(list(spec.submodule_search_locations)[0], "data", "images", "mask2d.tif"))
    assert m.max() < 256 and len(np.unique(m)) == 126, (m.max(), len(np.unique(m)))
    write_png(png, m.astype(np.uint8))
    return m.astype(np.uint8)


def gen_nuclei(out):
    inst = stardist_mask(out)
    h, w = inst.shape
    ids = [int(i) for i in np.unique(inst) if i != 0]
    masks = [inst == i for i in ids]
    rng = np.random.default_rng(SEED + 1)
    dts = []
    merged = set()
    for k, (i, m) in enumerate(zip(ids, masks)):
        r = rng.uniform()
        if r < 0.08:
            continue  # missed
        if r < 0.13 and k not in merged:
            # merge with a touching neighbour if there is one
            ring = ndi.binary_dilation(m, iterations=2) & ~m
            nb = [int(v) for v in np.unique(inst[ring]) if v not in (0, i)]
            if nb:
                j = ids.index(nb[0])
                merged.add(j)
                dts.append(dict(mask=m | masks[j], category_id=NUCLEUS))
                continue
        if r < 0.18:
            # split in two halves along the longer side: two false positives (or one match)
            ys, xs = np.nonzero(m)
            if np.ptp(ys) >= np.ptp(xs):
                cut = np.median(ys)
                a = m & (np.arange(h)[:, None] <= cut)
            else:
                cut = np.median(xs)
                a = m & (np.arange(w)[None, :] <= cut)
            for part in (a, m & ~a):
                if part.any():
                    dts.append(dict(mask=part, category_id=NUCLEUS))
            continue
        if r < 0.45:
            dts.append(dict(mask=perturb(m, "dilate", int(rng.integers(1, 3))), category_id=NUCLEUS))
        elif r < 0.65:
            e = perturb(m, "erode", 1)
            dts.append(dict(mask=e if e.any() else m, category_id=NUCLEUS))
        elif r < 0.95:
            dts.append(dict(mask=perturb(m, "shift", (int(rng.integers(-3, 4)), int(rng.integers(-3, 4)))),
                            category_id=NUCLEUS))
        else:
            dts.append(dict(mask=m.copy(), category_id=NUCLEUS))
    for d in dts:
        d["score"] = round(float(rng.uniform(0.05, 1.0)), 3)
    dts += spurious(h, w, rng, 10, [NUCLEUS], 3, 9)
    dts = [d for d in dts if d["mask"].any()]

    gts = [dict(id=k + 1, image_id=1, category_id=NUCLEUS, iscrowd=0, segmentation=encode(m),
                area=float(m.sum()), inst_id=i) for k, (i, m) in enumerate(zip(ids, masks))]
    coco_dts = [dict(image_id=1, category_id=NUCLEUS, score=d["score"], segmentation=encode(d["mask"]))
                for d in dts]
    coco_gts = [{k: v for k, v in g.items() if k != "inst_id"} for g in gts]
    expected_ap = coco_eval([dict(id=1, height=h, width=w)], [NUCLEUS], coco_gts, coco_dts)

    # panoptic: background as stuff, predictions painted by score
    gt_pan = np.where(inst > 0, inst, BG_SEGMENT_ID).astype(np.uint8)
    assert BG_SEGMENT_ID not in ids
    gt_segs = [dict(id=i, category_id=NUCLEUS, iscrowd=0) for i in ids] + \
              [dict(id=BG_SEGMENT_ID, category_id=NUCLEI_BG_STUFF, iscrowd=0)]
    pan_pred, pred_segs = paint_panoptic(h, w, dts, 0.2, NUCLEI_BG_STUFF)
    write_png(os.path.join(out, "nuclei_pred_pan.png"), pan_pred)
    pan_categories = [dict(id=NUCLEUS, isthing=1), dict(id=NUCLEI_BG_STUFF, isthing=0)]
    expected_pq = panoptic_oracle([(gt_pan, gt_segs, pan_pred, pred_segs)], pan_categories)

    # binary semantic segmentation of the same maps
    sem_gt = (inst > 0).astype(np.uint8)
    sem_pred = np.zeros((h, w), np.uint8)
    for s in pred_segs:
        if s["category_id"] == NUCLEUS:
            sem_pred[pan_pred == s["id"]] = 1
    write_png(os.path.join(out, "nuclei_gt_sem.png"), sem_gt)
    write_png(os.path.join(out, "nuclei_pred_sem.png"), sem_pred)
    exp_sem, rounded = mmseg_semantic([(os.path.join(out, "nuclei_pred_sem.png"),
                                        os.path.join(out, "nuclei_gt_sem.png"))], 2, False, out)

    write_json(os.path.join(out, "nuclei.json"), dict(
        source="stardist 0.9.2 data.test_image_nuclei_2d mask (2018 DSB, 125 nuclei)",
        height=h, width=w,
        semantic=dict(num_classes=2, ignore_index=255, pairs=[["nuclei_pred_sem.png", "nuclei_gt_sem.png"]],
                      expected=exp_sem, mmseg_rounded=rounded),
        instance=dict(images=[dict(id=1, height=h, width=w)], categories=[NUCLEUS], gts=gts,
                      dts=coco_dts, expected=expected_ap),
        panoptic=dict(categories=pan_categories,
                      images=[dict(gt_png="nuclei_gt_pan.png", pred_png="nuclei_pred_pan.png",
                                   gt_segments=gt_segs, pred_segments=pred_segs)],
                      expected=expected_pq)))
    write_png(os.path.join(out, "nuclei_gt_pan.png"), gt_pan)
    return masks, dts


def gen_rle(out, voc_images):
    """pycocotools' RLE functions on real masks, contour polygons and random polygons."""
    rng = np.random.default_rng(SEED + 2)
    im = voc_images[0]
    h, w = im["inst"].shape
    gts = [encode(m) for m in im["masks"]]
    dts = [encode(d["mask"]) for d in im["dts"]]
    iscrowd = [int(i == VOC_CROWD) for i in range(len(gts))]
    iou = mask_util.iou(dts, gts, iscrowd)
    cases = dict(height=h, width=w, masks_from="voc_gt_inst_a.png (id k -> instance k-1)")
    cases["gt"] = [dict(counts=g["counts"], area=int(mask_util.area(g)), bbox=mask_util.toBbox(g).tolist())
                   for g in gts]
    cases["dt"] = [dict(counts=d["counts"], area=int(mask_util.area(d)), bbox=mask_util.toBbox(d).tolist())
                   for d in dts]
    cases["iscrowd"] = iscrowd
    cases["iou_dt_gt"] = iou.tolist()
    # merges
    merges = []
    for a, b in ((4, 5), (9, 11), (15, 16), (0, 18)):
        for inter in (0, 1):
            merges.append(dict(a=a, b=b, intersect=inter,
                               counts=mask_util.merge([gts[a], dts[b]], intersect=inter)["counts"].decode()))
    merges.append(dict(all_gt=True, intersect=0, counts=mask_util.merge(gts, intersect=0)["counts"].decode()))
    cases["merge_gt_dt"] = merges
    # polygons: contours of the real masks and random ones (some out of the image, some with
    # repeated vertices), each with pycocotools' frPyObjects result
    polys = []
    for i in (0, 1, 6, 9, 12, 18):
        for p in mask_polygons(im["masks"][i]):
            polys.append(p)
    for _ in range(40):
        k = int(rng.integers(3, 12))
        xy = np.stack([rng.uniform(-30, w + 30, k), rng.uniform(-30, h + 30, k)], 1)
        if rng.uniform() < 0.3:
            xy[1] = xy[0]  # repeated vertex
        xy = np.round(xy) if rng.uniform() < 0.3 else np.round(xy, 3)  # on / off the pixel grid
        polys.append(xy.reshape(-1).tolist())
    # small ones with sub-pixel detail
    for _ in range(20):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        k = int(rng.integers(3, 8))
        xy = np.round(np.stack([cx + rng.uniform(-4, 4, k), cy + rng.uniform(-4, 4, k)], 1), 3)
        polys.append(xy.reshape(-1).tolist())
    cases["polygons"] = [dict(xy=p, counts=mask_util.frPyObjects([p], h, w)[0]["counts"].decode()) for p in polys]
    # several polygons of one object merged, as COCO.annToRLE does
    multi = [mask_polygons(im["masks"][i]) for i in (1, 9, 15)]
    cases["multi_polygons"] = [dict(polys=ps, counts=mask_util.merge(mask_util.frPyObjects(ps, h, w))["counts"].decode())
                               for ps in multi if ps]
    bbs = [[10.3, 20.7, 55.2, 30.1], [-5, -5, 20, 20], [480.5, 360.5, 40, 40], [0, 0, w, h]]
    cases["bboxes"] = [dict(bbox=b, counts=mask_util.frPyObjects(np.array([b], dtype=np.float64), h, w)[0]["counts"].decode()) for b in bbs]
    write_json(os.path.join(out, "rle.json"), cases)


def gen_palette_overlay(out, rgb, voc_images):
    import imgviz
    from mmengine.structures import PixelData
    from mmseg.datasets import PascalVOCDataset
    from mmseg.visualization import SegLocalVisualizer

    cmap = imgviz.label_colormap()
    y0, x0, ch, cw = 150, 60, 96, 128
    crop = np.ascontiguousarray(rgb[y0:y0 + ch, x0:x0 + cw])
    labels = voc_images[0]["gt_sem"][y0:y0 + ch, x0:x0 + cw]
    assert (labels == 255).any() and len(np.unique(labels)) >= 4
    write_png(os.path.join(out, "voc_crop_rgb.png"), crop)
    write_png(os.path.join(out, "voc_crop_labels.png"), labels)
    classes = PascalVOCDataset.METAINFO["classes"]
    palette = PascalVOCDataset.METAINFO["palette"]
    overlays = []
    for alpha in (0.8, 0.5):
        vis = SegLocalVisualizer.get_instance(f"gen_data_{alpha}", alpha=alpha)
        drawn = vis._draw_sem_seg(crop, PixelData(data=torch.from_numpy(labels.astype(np.int64))[None]),
                                  classes, palette, with_labels=False)
        name = f"voc_crop_overlay_{int(alpha * 10)}.png"
        write_png(os.path.join(out, name), drawn)
        overlays.append(dict(alpha=alpha, png=name))
    write_json(os.path.join(out, "palette.json"), dict(
        imgviz_label_colormap=cmap.tolist(), mmseg_voc_palette=palette, overlays=overlays,
        image="voc_crop_rgb.png", labels="voc_crop_labels.png", num_classes=len(classes)))


def main(out_dir):
    out = os.path.join(out_dir, "data")
    os.makedirs(out, exist_ok=True)
    rgb, voc_images = gen_voc(out)
    gen_nuclei(out)
    gen_rle(out, voc_images)
    gen_palette_overlay(out, rgb, voc_images)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
