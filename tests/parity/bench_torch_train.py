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
    "train_pspnet_r50-d8_cityscapes": "pspnet_r50-d8_cityscapes-512x1024",
    "train_demo_b8": "pspnet_r50-d8_ade20k-512x512",
}
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


def build(case, size, batch):
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
    for _ in range(a.warmup):
        step(model, opt, x, samples)
    runs = [step(model, opt, x, samples) for _ in range(max(1, a.runs))]

    def med(k):
        v = sorted(r[k] for r in runs)
        return v[len(v) // 2]

    total = sorted(r["fwd_ms"] + r["bwd_ms"] + r["opt_ms"] for r in runs)
    peaks = {k: max(r[k] for r in runs) for k in ("fwd_mb", "bwd_mb", "opt_mb")}
    peak = max(peaks.values())
    print(json.dumps({
        "impl": "torch", "case": a.case, "height": height, "width": width, "batch": batch,
        "median_ms": round(total[len(total) // 2], 3), "runs": len(runs),
        "fwd_ms": round(med("fwd_ms"), 1), "bwd_ms": round(med("bwd_ms"), 1),
        "opt_ms": round(med("opt_ms"), 1), "peak_rss_mb": round(peak, 1),
        "fwd_peak_mb": round(peaks["fwd_mb"], 1), "bwd_peak_mb": round(peaks["bwd_mb"], 1),
        "opt_peak_mb": round(peaks["opt_mb"], 1), "rss_before_mb": round(rss_before, 1),
        "forward_mb": round(peak - rss_before, 1),
    }))


if __name__ == "__main__":
    main()
