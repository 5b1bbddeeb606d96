"""Parity fixtures for segkit-backbones (ResNet) against torchvision, timm and mmseg.

Weights: synthetic (synth.py), full size. Input: synth.synthetic_input((1, 3, 97, 129)).
Each fixture stores a sampled summary of C2..C5 (synth.sample_outputs).
Run by `cargo xtask fixtures`, or: python tests/parity/gen_backbones.py tests/fixtures
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

INPUT = (1, 3, 97, 129)


def run_tv_like(m, x):
    """torchvision / timm ResNet: stem then layer1..4."""
    y = m.conv1(x)
    y = m.bn1(y)
    y = m.act1(y) if hasattr(m, "act1") else m.relu(y)
    y = m.maxpool(y)
    outs = []
    for name in ["layer1", "layer2", "layer3", "layer4"]:
        y = getattr(m, name)(y)
        outs.append(y)
    return outs


def save(out_dir, name, outs, extra=None):
    d = {}
    for n, t in zip(["c2", "c3", "c4", "c5"], outs):
        d.update(synth.sample_outputs(n, t))
    if extra:
        d.update(extra)
    path = os.path.join(out_dir, "backbones", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, [tuple(o.shape) for o in outs])


def mmseg_resnet(depth, cls="ResNetV1c", **kw):
    import mmseg.models.backbones as B

    return getattr(B, cls)(
        depth=depth,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
        **kw,
    )


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "backbones"), exist_ok=True)
    torch.set_grad_enabled(False)
    x = synth.synthetic_input(INPUT)
    import torchvision

    for depth in (50, 101, 152):
        m = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
        synth.fill_(m)
        save(out_dir, f"torchvision_resnet{depth}", run_tv_like(m, x))
    # BasicBlock networks; resnet18 in training mode (batch statistics), batch of 2.
    m = torchvision.models.resnet34(weights=None).eval()
    synth.fill_(m)
    save(out_dir, "torchvision_resnet34", run_tv_like(m, x))
    m = torchvision.models.resnet18(weights=None).train()
    synth.fill_(m)
    x2 = synth.synthetic_input((2, 3, 65, 47), key="input_train")
    save(out_dir, "torchvision_resnet18_train", run_tv_like(m, x2))
    import timm

    for os_ in (8, 16):
        m = timm.create_model("resnet50d", pretrained=False, output_stride=os_).eval()
        synth.fill_(m)
        save(out_dir, f"timm_resnet50d_os{os_}", run_tv_like(m, x))
    try:
        import mmseg_stub  # noqa: F401  (stubs mmcv.ops before importing mmseg)

        for depth in (50, 101):
            m = mmseg_resnet(depth)
            m.eval()
            synth.fill_(m)
            save(out_dir, f"mmseg_resnetv1c{depth}_d8", list(m(x)))
        # V1d: average-pool shortcuts (identity pool in the dilated stages).
        m = mmseg_resnet(50, cls="ResNetV1d")
        m.eval()
        synth.fill_(m)
        save(out_dir, "mmseg_resnetv1d50_d8", list(m(x)))
        # DANet-style multi-grid on the last stage (absolute dilations).
        m = mmseg_resnet(50, multi_grid=(4, 8, 16))
        m.eval()
        synth.fill_(m)
        save(out_dir, "mmseg_resnetv1c50_d8_mg", list(m(x)))
        # Training mode with frozen stem + stage 1 (BatchNorm in eval there, batch stats after).
        m = mmseg_resnet(50, frozen_stages=1)
        m.train()
        synth.fill_(m)
        x2 = synth.synthetic_input((2, 3, 65, 47), key="input_train")
        save(out_dir, "mmseg_resnetv1c50_d8_train_frozen1", list(m(x2)))
    except ImportError as e:
        print("mmseg not available, skipping its fixtures:", e)
        raise


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
