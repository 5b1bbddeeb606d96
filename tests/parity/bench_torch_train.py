"""mmseg side of `segkit bench train_*` (crates/cli/src/bench/train.rs): one SGD training step.

The model is mmseg's own, built from its config file (tests/parity/gen_segmentors.py: SyncBN ->
BN), filled with synthetic weights (synth.fill_), in train mode; the step is `model.loss`
(every configured loss: decode CE + auxiliary CE 0.4) on a synthetic batch, `backward`, and
`torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)`, as mmseg's default optimizer
wrapper runs it. torch.set_num_threads from SEGKIT_BENCH_THREADS (default 2).

Peak resident memory per phase, as segkit's side: the counter is reset
(/proc/self/clear_refs) before the forward pass (+ losses), the backward pass and the
optimizer step, and read after each.

    python tests/parity/bench_torch_train.py train_pspnet_r50-d8 --size 256 --batch 2 --runs 3

Shapes as segkit's side: the ADE20K cases --batch x 3 x --size x --size;
train_pspnet_r50-d8_cityscapes (mmseg's pspnet_r50-d8_4xb2-80k_cityscapes-512x1024, 19 classes)
--batch x 3 x --size x 2--size; train_demo_b8 8 x 3 x 128 x 128 whatever the flags: segkit's demo
model as an mmseg config (pspnet_r50-d8's with the ResNetV1c at depth 18, base_channels 16,
stem_channels 16; PSP head on C5 (128 channels in) and FCN auxiliary head on C4 (64 in), both 32
channels wide, 11 classes; everything else, losses included, as pspnet_r50-d8).

train_oneformer_swin_t (issue 15; segkit's side crates/cli/src/bench/train_oneformer.rs):
transformers' OneFormerForUniversalSegmentation of gen_oneformer.full_config() (the
oneformer_ade20k_swin_tiny architecture, classes class_{i}) with is_training=True (text
mapper), dropout 0 and Swin drop path 0 (segkit the same), synthetic weights for every checkpoint
key (gen_oneformer.build) and the criterion's real class weights (1, no-object 0.1); task
panoptic for every image; targets (mask_labels, class_labels, text_inputs, task_inputs) from
OneFormerProcessor (classes 10..149 things in its class_info_file, 134 text entries) on the
panoptic id maps of `oneformer_ids`, built before the timed steps (segkit builds its targets
inside the forward phase); the step is the model's forward with the targets (out.loss, the
weighted loss dict's sum), backward, clip_grad_norm_(all parameters, 0.01, 2.0) and
torch.optim.AdamW(lr 1e-4, weight decay 0.05) with OneFormer's build_optimizer groups (backbone
lr x 0.1, no decay for norm and embedding modules and Swin's position tables).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402
import mmseg_stub  # noqa: E402,F401  (stubs mmcv.ops before importing mmseg)

CASES = {
    "train_pspnet_r50-d8": "pspnet_r50-d8_ade20k-512x512",
    "train_danet_r50-d8": "danet_r50-d8_ade20k-512x512",
    "train_fastfcn_r50-d32_jpu_psp": "fastfcn_r50-d32_jpu_psp_ade20k-512x512",
    "train_pspnet_r50-d8_cityscapes": "pspnet_r50-d8_cityscapes-512x1024",
    "train_demo_b8": "pspnet_r50-d8_ade20k-512x512",
    "train_oneformer_swin_t": None,
}
ONEFORMER = "train_oneformer_swin_t"
CLASSES = {"train_pspnet_r50-d8_cityscapes": 19, "train_demo_b8": 11}


def shape(case, size, batch):
    """(batch, height, width) of a case, as segkit's bench::train::case_spec."""
    if case == "train_demo_b8":
        return 8, 128, 128
    if case == "train_pspnet_r50-d8_cityscapes":
        return batch, size, 2 * size
    return batch, size, size


def demo_(model):
    """segkit's demo preset (segkit_demo_r18w16_psp_fashion-128x128) from pspnet_r50-d8's
    model config."""
    model.backbone.update(depth=18, base_channels=16, stem_channels=16)
    model.decode_head.update(in_channels=128, channels=32, num_classes=11)
    model.auxiliary_head.update(in_channels=64, channels=32, num_classes=11)


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def mark():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return time.perf_counter()


def oneformer_ids(i, s):
    """The panoptic id map and (id, class) segments of image i at s x s, as segkit's
    bench::train_oneformer::segments: stuff bands 1 (class 0) and 2 (class 1), then three
    thing squares drawn over them."""
    import numpy as np

    ids = np.full((s, s), 2, np.int32)
    ids[: 3 * s // 8 + i * s // 16] = 1
    classes = [0, 1] + ([10, 11, 12] if i % 2 == 0 else [10, 10, 11])
    for k in range(3):
        y0, x0, side = s // 8 + k * s // 4 + i * s // 32, s // 16 + k * s // 4 + i * s // 16, s // 5
        ids[y0 : y0 + side, x0 : x0 + side] = 3 + k
    present = set(ids.reshape(-1).tolist())
    return ids, [(j + 1, c) for j, c in enumerate(classes) if j + 1 in present]


def build_oneformer(size, batch):
    import json
    import shutil
    import tempfile

    import numpy as np
    from gen_oneformer import build as build_model, clip_tokenizer, full_config
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    cfg = full_config()
    cfg.backbone_config.drop_path_rate = 0.0
    cfg.dropout = 0.0
    cfg.is_training = True
    k = len(cfg.id2label)
    num_text = cfg.num_queries - cfg.text_encoder_n_ctx
    model = build_model(cfg).train()
    with torch.no_grad():
        w = model.criterion.empty_weight
        w.fill_(1.0)
        w[-1] = cfg.no_object_weight
    tmp = tempfile.mkdtemp(prefix="segkit_bench_oneformer_")
    info = {str(i): {"name": cfg.id2label[i], "isthing": int(i >= 10)} for i in range(k)}
    with open(os.path.join(tmp, "classes.json"), "w") as f:
        json.dump(info, f)
    ip = OneFormerImageProcessor(repo_path=tmp, class_info_file="classes.json", num_text=num_text,
                                 num_labels=k, do_resize=False, ignore_index=0)
    proc = OneFormerProcessor(image_processor=ip, tokenizer=clip_tokenizer())
    img = np.zeros((size, size, 3), np.uint8)
    encs = []
    for i in range(batch):
        ids, segs = oneformer_ids(i, size)
        inst2sem = {sid: c for sid, c in segs}
        encs.append(proc(images=[img], task_inputs=["panoptic"], segmentation_maps=[ids],
                         instance_id_to_semantic_id=inst2sem, return_tensors="pt"))
    shutil.rmtree(tmp, ignore_errors=True)
    inputs = {
        "pixel_values": synth.synthetic_input((batch, 3, size, size)),
        "task_inputs": torch.cat([e["task_inputs"] for e in encs]).float(),
        "text_inputs": torch.cat([e["text_inputs"] for e in encs]).long(),
        "mask_labels": [e["mask_labels"][0].float() for e in encs],
        "class_labels": [e["class_labels"][0].long() for e in encs],
    }
    # OneFormer's build_optimizer (SHI-Labs/OneFormer train_net.py) on transformers' modules.
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)
    groups, seen = [], set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr = 1e-4 * (0.1 if mname.startswith("model.pixel_level_module.encoder") else 1.0)
            wd = 0.05
            if isinstance(module, norms + (torch.nn.Embedding,)) or any(
                n in pname for n in ("relative_position_bias_table", "absolute_pos_embed", "position_embeddings")
            ):
                wd = 0.0
            groups.append({"params": [p], "lr": lr, "weight_decay": wd})
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    return model, opt, None, inputs


def step_oneformer(model, opt, inputs):
    p = {}
    t = mark()
    out = model(**inputs)
    loss = out.loss
    p["loss"] = loss.item()
    p["fwd_ms"], p["fwd_mb"] = (time.perf_counter() - t) * 1e3, status_mb("VmHWM:")
    t = mark()
    loss.backward()
    del loss, out
    p["bwd_ms"], p["bwd_mb"] = (time.perf_counter() - t) * 1e3, status_mb("VmHWM:")
    t = mark()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01, 2.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    p["opt_ms"], p["opt_mb"] = (time.perf_counter() - t) * 1e3, status_mb("VmHWM:")
    return p


def build(case, size, batch):
    if case == ONEFORMER:
        return build_oneformer(size, batch)
    batch, height, width = shape(case, size, batch)
    k = CLASSES.get(case, 150)
    import gen_segmentors as gs
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    init_default_scope("mmseg")
    cfg = gs.load_config(CASES[case])
    cfg.model.pretrained = None
    gs.to_bn(cfg.model)
    if case == "train_demo_b8":
        demo_(cfg.model)
    model = MODELS.build(cfg.model)
    synth.fill_(model)
    model.train()
    x = synth.synthetic_input((batch, 3, height, width))
    u = synth.synthetic_input((batch, height, width), key="labels")
    labels = torch.clamp(torch.floor((u + 2.0) * ((k + 2) / 4)), 0, k).long()
    labels[labels == k] = 255
    samples = []
    for i in range(batch):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=labels[i : i + 1])
        hw = (height, width)
        s.set_metainfo(dict(img_shape=hw, pad_shape=hw, ori_shape=hw))
        samples.append(s)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, opt, x, samples


def step(model, opt, x, samples):
    if isinstance(samples, dict):
        return step_oneformer(model, opt, samples)
    p = {}
    t = mark()
    losses = model.loss(x, samples)
    loss = sum(v for k, v in losses.items() if "loss" in k)
    loss.item()
    p["fwd_ms"], p["fwd_mb"] = (time.perf_counter() - t) * 1e3, status_mb("VmHWM:")
    t = mark()
    loss.backward()
    del loss, losses
    p["bwd_ms"], p["bwd_mb"] = (time.perf_counter() - t) * 1e3, status_mb("VmHWM:")
    t = mark()
    opt.step()
    opt.zero_grad(set_to_none=True)
    p["opt_ms"], p["opt_mb"] = (time.perf_counter() - t) * 1e3, status_mb("VmHWM:")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("SEGKIT_BENCH_THREADS", "2")))
    batch, height, width = shape(a.case, a.size, a.batch)
    model, opt, x, samples = build(a.case, a.size, a.batch)
    rss_before = status_mb("VmRSS:")
    warm = [step(model, opt, x, samples) for _ in range(a.warmup)]
    runs = [step(model, opt, x, samples) for _ in range(max(1, a.runs))]
    first = (warm + runs)[0]

    def med(k):
        v = sorted(r[k] for r in runs)
        return v[len(v) // 2]

    total = sorted(r["fwd_ms"] + r["bwd_ms"] + r["opt_ms"] for r in runs)
    peaks = {k: max(r[k] for r in runs) for k in ("fwd_mb", "bwd_mb", "opt_mb")}
    peak = max(peaks.values())
    extra = {"first_loss": round(first["loss"], 4)} if "loss" in first else {}
    print(json.dumps({
        "impl": "torch", "case": a.case, "height": height, "width": width, "batch": batch,
        "median_ms": round(total[len(total) // 2], 3), "runs": len(runs),
        "fwd_ms": round(med("fwd_ms"), 1), "bwd_ms": round(med("bwd_ms"), 1),
        "opt_ms": round(med("opt_ms"), 1), "peak_rss_mb": round(peak, 1),
        "fwd_peak_mb": round(peaks["fwd_mb"], 1), "bwd_peak_mb": round(peaks["bwd_mb"], 1),
        "opt_peak_mb": round(peaks["opt_mb"], 1), "rss_before_mb": round(rss_before, 1),
        "forward_mb": round(peak - rss_before, 1), **extra,
    }))


if __name__ == "__main__":
    main()
