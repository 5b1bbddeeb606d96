"""Parity fixtures for `segkit_oneformer::postprocess` against transformers' OneFormerImageProcessor.

Reference: transformers 5.24.0 `models/oneformer/image_processing_oneformer.py`
(`post_process_semantic_segmentation`, `post_process_instance_segmentation`,
`post_process_panoptic_segmentation`, and the helpers `compute_segments`,
`check_segment_validity`, `remove_low_and_no_objects`, `convert_segmentation_to_rle`), which resize
with torchvision's `tvF.resize` (bilinear, antialias=True) and pick instance candidates with
`torch.topk(sorted=False)`.

Usage: python tests/parity/gen_postprocess.py tests/fixtures
Writes tests/fixtures/postprocess/{postprocess.safetensors,postprocess.json}.

No model is built: the class logits (B x Q x K+1) and mask logits (B x Q x h x w) are synthetic
and designed to exercise the logic (confident / borderline / null-class queries, overlapping and
nested masks, an empty mask, a duplicated query, a class-score tie inside a query, stuff classes to
fuse, thing classes, an image where nothing passes a high threshold).

safetensors keys:
- `class_queries_logits`, `masks_queries_logits`: the inputs (float32).
- `<case>.<i>.segmentation`: the map of image i (int64; the semantic class map, or the segment-id
  map, where HF's "nothing found" float map of -1 is stored as -1); absent where HF returned the
  run-length encoding instead (return_coco_annotation), which is in the JSON file.
- `<case>.<i>.scores`: the semantic per-class scores of image i (HF's `segmentation_scores`).
- `topk.<n>.x`, `topk.<n>.k`, `topk.<n>.idx`: torch.topk(x, k, sorted=False).indices on 1-D
  vectors with many ties (the instance post-processing depends on this order), covering both
  of ATen's branches (partial sort when k * 64 <= n, else nth_element) and, in `topk.deep`,
  nth_element's depth-limit fallback.
- `aa.<n>.x`, `aa.<n>.size`, `aa.<n>.out`: F.interpolate(x, size, mode="bilinear",
  align_corners=False, antialias=True), the resize tvF.resize does on float tensors.
The JSON file holds, per case, the task, the arguments and the per-image segment lists (and RLE).
"""

import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers.models.oneformer.image_processing_oneformer import OneFormerImageProcessor

B, Q, K, H, W = 2, 20, 12, 24, 32
SIZES = [(50, 70), (20, 26)]  # image 0 upsampled, image 1 downsampled
THINGS = [0, 1, 2, 3, 4, 5]
STUFF = [6, 7, 8, 9, 10, 11]


def make_logits():
    g = torch.Generator().manual_seed(20240917)
    cls = torch.randn(B, Q, K + 1, generator=g)
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")

    def blob(cy, cx, ry, rx, amp):
        r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        return amp * (1.0 - r2)

    masks = 0.6 * torch.randn(B, Q, H, W, generator=g)
    # Image 0: (label, class strength, mask blob (cy, cx, ry, rx, amp)).
    plan0 = [
        (8, 9.0, (12, 16, 30, 40, 0.8)),  # stuff covering everything
        (8, 7.0, (20, 5, 6, 8, 6.0)),  # same stuff class again (fused)
        (2, 8.0, (6, 8, 5, 6, 8.0)),  # thing
        (2, 6.5, (16, 24, 5, 7, 7.0)),  # same thing class, another instance
        (4, 5.0, (10, 20, 4, 4, 8.0)),  # thing
        (10, 6.0, (2, 28, 3, 6, 6.0)),  # stuff
        (0, 8.0, (12, 12, 2, 2, 1.0)),  # thing, tiny mask nested in others
        (6, 3.0, (18, 14, 6, 6, 5.0)),  # borderline class score
        (1, 2.5, (8, 28, 4, 4, 6.0)),  # borderline class score
        (11, 2.0, (22, 28, 3, 5, 3.0)),  # weak
        (3, 7.0, (4, 16, 3, 10, 7.0)),  # thing
        (9, 1.0, (14, 6, 5, 5, 2.0)),  # weak stuff
        (5, 6.0, (20, 20, 4, 4, 6.0)),  # thing overlapping #3
        (7, 4.0, (0, 0, 6, 6, 5.0)),  # stuff in a corner
        (None, 8.0, (12, 16, 8, 8, 3.0)),  # null class
        (None, 6.0, (5, 5, 5, 5, 3.0)),  # null class
        (None, 1.0, (10, 10, 5, 5, 3.0)),  # mostly null
        (3, 7.0, None),  # placeholder: duplicate of query 10 (set below)
        (4, 7.0, (9, 22, 4, 5, 7.0)),  # class tie with label 5 (set below)
        (1, 8.0, None),  # confident, but an empty mask (set below)
    ]
    # Image 1: weaker everywhere; nothing reaches 0.9.
    plan1 = [
        (8, 3.0, (12, 16, 20, 30, 2.0)),
        (2, 2.5, (6, 8, 6, 6, 4.0)),
        (2, 2.8, (16, 24, 6, 6, 4.0)),
        (7, 2.0, (20, 8, 5, 8, 3.0)),
        (0, 1.5, (8, 20, 4, 4, 4.0)),
        (None, 3.0, (12, 12, 6, 6, 3.0)),
    ] + [(None, 0.0, None)] * (Q - 6)
    for b, plan in enumerate((plan0, plan1)):
        for q, (lab, s, bl) in enumerate(plan):
            if lab is None:
                cls[b, q, K] += s
            else:
                cls[b, q, lab] += s
            if bl is not None:
                masks[b, q] += blob(*bl)
    cls[0, 17] = cls[0, 10]
    masks[0, 17] = masks[0, 10]
    cls[0, 18, 5] = cls[0, 18, 4]
    masks[0, 19] -= 6.0
    return cls.contiguous(), masks.contiguous()


def seg_to_i64(seg):
    return seg.to(torch.int64).contiguous()


def segments_json(segs):
    return [
        {"id": int(s["id"]), "label_id": int(s["label_id"]), "was_fused": bool(s["was_fused"]),
         "score": float(s["score"])}
        for s in segs
    ]


def run_cases(cls, masks):
    out = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    tensors, cases = {}, {}

    # Semantic.
    proc = OneFormerImageProcessor()
    for name, sizes in (("sem_nosize", None), ("sem_sizes", SIZES)):
        res = proc.post_process_semantic_segmentation(
            out, target_sizes=sizes, return_segmentation_scores=True
        )
        for i, r in enumerate(res):
            tensors[f"{name}.{i}.segmentation"] = seg_to_i64(r.segmentation)
            tensors[f"{name}.{i}.scores"] = r.segmentation_scores.contiguous()
        cases[name] = {"task": "semantic", "target_sizes": sizes}

    # Instance.
    inst = {
        "inst_default": dict(),
        "inst_sizes": dict(target_sizes=SIZES),
        "inst_panoptic_task": dict(task_type="panoptic", target_sizes=SIZES, thing_ids=THINGS),
        "inst_panoptic_task_nosize": dict(task_type="panoptic", thing_ids=THINGS),
        "inst_nodemo_ade": dict(is_demo=False, class_info_file="ade20k_panoptic.json",
                                thing_ids=[3, 0, 7, 1, 11, 2, 9, 4, 5, 10, 6, 8]),
        "inst_nodemo": dict(is_demo=False, mask_threshold=0.3, overlap_mask_area_threshold=0.6,
                            target_sizes=SIZES),
        "inst_coco": dict(target_sizes=SIZES, return_coco_annotation=True),
        "inst_coco_nosize": dict(return_coco_annotation=True, threshold=0.3),
        "inst_high": dict(threshold=0.9, target_sizes=SIZES, return_coco_annotation=True),
        "inst_semantic_task": dict(task_type="semantic", threshold=0.4, mask_threshold=0.2,
                                   overlap_mask_area_threshold=0.5),
    }
    for name, kw in inst.items():
        kw = dict(kw)
        proc = OneFormerImageProcessor()
        proc.class_info_file = kw.pop("class_info_file", "coco_panoptic.json")
        thing_ids = kw.pop("thing_ids", None)
        if thing_ids is not None:
            proc.metadata = {"thing_ids": list(thing_ids)}
        res = proc.post_process_instance_segmentation(out, **kw)
        imgs = []
        for i, r in enumerate(res):
            seg = r["segmentation"]
            item = {"segments": segments_json(r["segments_info"])}
            if isinstance(seg, list):  # RLE (return_coco_annotation)
                item["rle"] = [[int(v) for v in runs] for runs in seg]
            else:
                tensors[f"{name}.{i}.segmentation"] = seg_to_i64(seg)
            imgs.append(item)
        args = {k: v for k, v in kw.items()}
        args["thing_ids"] = thing_ids
        args["ade20k_thing_remap"] = "ade20k" in proc.class_info_file
        cases[name] = {"task": "instance", "args": args, "results": imgs}

    # Panoptic.
    pan = {
        "pan_default": dict(),
        "pan_fuse": dict(label_ids_to_fuse=set(STUFF), target_sizes=SIZES),
        "pan_fuse_nosize": dict(label_ids_to_fuse=set(STUFF)),
        "pan_high": dict(threshold=0.9, label_ids_to_fuse=set(STUFF), target_sizes=SIZES),
        "pan_low": dict(threshold=0.3, mask_threshold=0.4, overlap_mask_area_threshold=0.5,
                        label_ids_to_fuse={2, 8}),
    }
    proc = OneFormerImageProcessor()
    for name, kw in pan.items():
        res = proc.post_process_panoptic_segmentation(out, **kw)
        imgs = []
        for i, r in enumerate(res):
            tensors[f"{name}.{i}.segmentation"] = seg_to_i64(r["segmentation"])
            imgs.append({"segments": segments_json(r["segments_info"])})
        args = dict(kw)
        if "label_ids_to_fuse" in args:
            args["label_ids_to_fuse"] = sorted(args["label_ids_to_fuse"])
        cases[name] = {"task": "panoptic", "args": args, "results": imgs}
    return tensors, cases


def gen_topk():
    g = torch.Generator().manual_seed(7)
    t = {}
    shapes = [(1, 1), (2, 1), (3, 3), (5, 2), (10, 4), (33, 7), (64, 1), (65, 1), (128, 2),
              (129, 2), (240, 20), (640, 10), (641, 10), (1000, 3), (1300, 20), (3000, 150),
              (2400, 20), (300, 4)]
    for n_case, (n, k) in enumerate(shapes):
        for levels, tag in ((3, "a"), (50, "b"), (1 << 20, "c")):
            x = torch.randint(0, levels, (n,), generator=g).float() / levels
            name = f"{n_case:02d}{tag}"
            t[f"topk.{name}.x"] = x
            t[f"topk.{name}.k"] = torch.tensor([k], dtype=torch.int64)
            t[f"topk.{name}.idx"] = x.topk(k, sorted=False).indices
    # Found by search: libstdc++'s introselect exhausts its depth limit (2 * floor(log2 17) = 8
    # partitions) on this order and finishes with its heap-select fallback.
    deep = [14, 0, 4, 2, 9, 10, 11, 6, 1, 3, 5, 7, 8, 12, 13, 15, 16]
    for name, x in (("deep", deep), ("deep_ties", [v // 3 for v in deep])):
        x = torch.tensor(x, dtype=torch.float32)
        t[f"topk.{name}.x"] = x
        t[f"topk.{name}.k"] = torch.tensor([8], dtype=torch.int64)
        t[f"topk.{name}.idx"] = x.topk(8, sorted=False).indices
    return t


def gen_aa():
    g = torch.Generator().manual_seed(11)
    t = {}
    cases = {
        "up": ((2, 3, 24, 32), (50, 70)),
        "down": ((1, 3, 24, 32), (20, 26)),
        "down_many_taps": ((1, 2, 37, 61), (8, 12)),
        "down_9_taps": ((1, 2, 30, 100), (7, 9)),
        "mixed": ((1, 2, 24, 32), (13, 80)),
        "rows_only": ((1, 2, 24, 32), (50, 32)),
        "cols_only": ((1, 2, 24, 32), (24, 9)),
        "same": ((1, 2, 5, 6), (5, 6)),
        "to_1x1": ((1, 2, 7, 5), (1, 1)),
        "from_1x1": ((1, 2, 1, 1), (3, 4)),
    }
    for name, (shape, size) in cases.items():
        x = torch.randn(*shape, generator=g) * 4.0
        t[f"aa.{name}.x"] = x
        t[f"aa.{name}.size"] = torch.tensor(list(size), dtype=torch.int64)
        t[f"aa.{name}.out"] = F.interpolate(
            x, size=size, mode="bilinear", align_corners=False, antialias=True
        ).contiguous()
    return t


def main(out_dir):
    torch.set_num_threads(1)
    d = os.path.join(out_dir, "postprocess")
    os.makedirs(d, exist_ok=True)
    cls, masks = make_logits()
    tensors = {"class_queries_logits": cls, "masks_queries_logits": masks}
    t, cases = run_cases(cls, masks)
    tensors.update(t)
    tensors.update(gen_topk())
    tensors.update(gen_aa())
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    meta = {"reference": f"transformers {transformers.__version__}, torch {torch.__version__}"}
    path = os.path.join(d, "postprocess.safetensors")
    save_file(tensors, path, metadata=meta)
    jpath = os.path.join(d, "postprocess.json")
    with open(jpath, "w") as f:
        json.dump({"reference": meta["reference"], "num_classes": K, "cases": cases}, f, indent=1,
                  sort_keys=True)
        f.write("\n")
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes; {jpath}: "
          f"{len(cases)} cases")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
