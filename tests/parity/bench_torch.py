"""PyTorch side of `cargo xtask bench`: times one case, prints one JSON line.

Same shapes as `segkit bench` (crates/cli/src/bench.rs), torch.set_num_threads from
SEGKIT_BENCH_THREADS (default 2), inference mode, median of --runs after --warmup.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402


SEGMENTORS = {
    "danet_r50-d8": "danet_r50-d8_ade20k-512x512",
    "pspnet_r50-d8": "pspnet_r50-d8_ade20k-512x512",
    "fastfcn_jpu_psp": "fastfcn_r50-d32_jpu_psp_ade20k-512x512",
    "fastfcn_jpu_aspp": "fastfcn_r50-d32_jpu_aspp_ade20k-512x512",
    "fastfcn_jpu_enc": "fastfcn_r50-d32_jpu_enc_ade20k-512x512",
}


def make(case):
    if case in ("resnet50", "resnet50_os8"):
        import torchvision

        rsd = [False, True, True] if case == "resnet50_os8" else None
        m = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=rsd).eval()
        synth.fill_(m)
        x = synth.synthetic_input((1, 3, 512, 512))

        def run():
            y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            y = m.layer1(y)
            y = m.layer2(y)
            y = m.layer3(y)
            return m.layer4(y)

        return run
    if case in SEGMENTORS:
        import gen_segmentors as gs

        m, _ = gs.build(SEGMENTORS[case])
        synth.fill_(m)
        x = synth.synthetic_input((1, 3, 512, 512))
        return lambda: m._forward(x)
    if case == "swin_t":
        import gen_swin

        m = gen_swin.synthetic_backbone(**gen_swin.ONEFORMER_SWIN_TINY)
        x = synth.synthetic_input((1, 3, 512, 512))
        return lambda: m(x)
    if case == "oneformer_swin_t":
        import gen_oneformer

        m = gen_oneformer.build(gen_oneformer.full_config()).eval()
        x = synth.synthetic_input((1, 3, 512, 512))
        ti = gen_oneformer.task_inputs(gen_oneformer.clip_tokenizer(), ["semantic"])
        return lambda: m(pixel_values=x, task_inputs=ti).masks_queries_logits
    if case == "pixel_decoder":
        import gen_pixel_decoder as gp
        from transformers import OneFormerConfig

        dec = gp.build_decoder(OneFormerConfig(), gp.SWIN_T)
        feats = gp.features("bench", 1, gp.SWIN_T, [(128, 128), (64, 64), (32, 32), (16, 16)])
        return lambda: dec(feats).mask_features
    if case in ("gscnn_wrn38", "gscnn_r101-d8"):
        # Gated-SCNN end to end at 1x3x512x1024, the Canny map computed inside as the official
        # forward does (the reference module of gen_gscnn.py, written from the official code).
        import gen_gscnn as gg

        m = gg.fill_flat_(gg.Gscnn("wrn38" if case == "gscnn_wrn38" else "resnet101"))
        x = synth.synthetic_input((1, 3, 512, 1024))
        return lambda: m(x, gg.canny_as_released(x))["seg"]
    if case == "conv3x3_256":
        x = synth.synthetic_input((1, 256, 128, 128))
        w = torch.from_numpy(synth.synthetic_values("conv.weight", (256, 256, 3, 3))).float()
        b = torch.from_numpy(synth.synthetic_values("conv.bias", (256,))).float()
        return lambda: F.conv2d(x, w, b, padding=1)
    if case == "resize_bilinear":
        x = synth.synthetic_input((1, 256, 128, 128))
        return lambda: F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False)
    if case == "grid_sample":
        x = synth.synthetic_input((1, 256, 64, 64))
        g = synth.synthetic_input((1, 128, 128, 2), key="grid") * 0.55
        return lambda: F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)
    if case == "roi_align":
        from torchvision.ops import roi_align

        x = synth.synthetic_input((1, 256, 200, 200))
        u = (synth.synthetic_input((512, 4), key="rois") + 2.0) / 4.0
        x1, y1 = u[:, 0] * 700.0, u[:, 1] * 700.0
        rois = torch.stack(
            [torch.zeros(512), x1, y1, x1 + 8.0 + u[:, 2] * 300.0, y1 + 8.0 + u[:, 3] * 300.0], 1
        )
        return lambda: roi_align(x, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    if case in ("panet_r50_fpn", "torchvision_maskrcnn"):
        return __import__("bench_torch_panet").make(case)
    if case.startswith("e2e_") or case.endswith("_b8"):
        return __import__("bench_torch_e2e").make(case)
    raise SystemExit(f"unknown case {case}")


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def count_gflop(run):
    """The matmul and convolution work of one run in GFLOP (2 per multiply-add), counted by
    torch's FlopCounterMode after the timed runs and the memory reading: convolutions count
    as direct ones (segkit's Winograd layers do fewer), element-wise ops, pooling, resizing and
    sampling count nothing. None where the counter is unavailable."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    def count():
        fc = FlopCounterMode(display=False)
        with fc:
            run()
        return round(fc.get_total_flops() / 1e9, 3)

    try:
        return count()
    except (AttributeError, AssertionError):
        pass
    # The counter's module tracker hooks the gradients of every tensor argument that requires
    # them, to attribute backward FLOPs to modules; a tensor made under inference_mode that
    # requires gradients (OneFormer passes such embeddings between modules) has no gradient
    # node to hook. The totals do not use those hooks: count without them.
    import torch.utils.module_tracker as mt

    class _NoHook:
        def remove(self):
            pass

    hook = mt.register_multi_grad_hook
    mt.register_multi_grad_hook = lambda *a, **k: _NoHook()
    try:
        return count()
    except (AttributeError, AssertionError):
        return None
    finally:
        mt.register_multi_grad_hook = hook


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("SEGKIT_BENCH_THREADS", "2")))
    with torch.inference_mode():
        run = make(a.case)
        # Reset the peak-RSS counter so the peak is the timed runs', not construction's.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        rss_before = status_mb("VmRSS:")
        for _ in range(a.warmup):
            run()
        ms = []
        for _ in range(max(1, a.runs)):
            t = time.perf_counter()
            run()
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        peak = status_mb("VmHWM:")
        gflop = count_gflop(run)
    print(json.dumps({"impl": "torch", "case": a.case, "median_ms": round(ms[len(ms) // 2], 3),
                      "min_ms": round(ms[0], 3), "runs": len(ms), "peak_rss_mb": round(peak, 1),
                      "forward_mb": round(peak - rss_before, 1), "gflop": gflop}))


if __name__ == "__main__":
    main()
