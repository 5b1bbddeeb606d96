"""Initial-weight statistics of the reference modules, for tests/tests/init_stats.rs.

Each module is built by its reference code and initialised as that code's training does:
- torchvision `resnet50()` (its constructor: Kaiming-normal fan_out convs, BN 1 / 0, the
  `fc` default; zero_init_residual False);
- mmseg `ResNetV1c(depth=50)` D8 (`init_weights()`: mmcv `Kaiming` on Conv2d, BN 1 / 0,
  `zero_init_residual` -> the last BN of each Bottleneck 0);
- mmseg `JPU` (in (512, 1024, 2048), mid 512), `DAHead` (2048 -> 512, 19 classes) and
  `PSPHead` (2048 -> 512, 19 classes), each after `init_weights()` (ConvModule Kaiming,
  `conv_seg` N(0, 0.01); DAHead's `pam_conv_seg` / `cam_conv_seg` and PAM's projections are
  plain `nn.Conv2d` and keep PyTorch's default).

For every parameter and buffer (num_batches_tracked excepted) the fixture stores its
element count, mean, standard deviation (population) and mean |x|, averaged over SEEDS
independent initialisations (the Rust test's tolerance uses the count of draws).

Run: python tests/parity/gen_init_stats.py tests/fixtures
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import mmseg_stub  # noqa: E402,F401

SEEDS = 4


def stats(module):
    out = {}
    for k, t in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        t = t.detach().double().flatten()
        out[k] = dict(
            n=t.numel(),
            mean=t.mean().item(),
            std=t.std(unbiased=False).item() if t.numel() > 1 else 0.0,
            absmean=t.abs().mean().item(),
        )
    return out


def averaged(build):
    acc = None
    for s in range(SEEDS):
        torch.manual_seed(1000 + s)
        st = stats(build())
        if acc is None:
            acc = {k: dict(v) for k, v in st.items()}
        else:
            for k, v in st.items():
                for f in ("mean", "std", "absmean"):
                    acc[k][f] += v[f]
    for v in acc.values():
        for f in ("mean", "std", "absmean"):
            v[f] /= SEEDS
        v["draws"] = SEEDS
    return acc


def torchvision_resnet50():
    import torchvision

    return torchvision.models.resnet50()


def mmseg(cfg):
    from mmseg.registry import MODELS
    import mmseg.models  # noqa: F401

    m = MODELS.build(cfg)
    m.init_weights()
    return m


NORM = dict(type="BN", requires_grad=True)


def main(out_dir):
    res = {
        "torchvision_resnet50": averaged(torchvision_resnet50),
        "mmseg_resnetv1c50_d8": averaged(lambda: mmseg(dict(
            type="ResNetV1c", depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
            dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=NORM, norm_eval=False,
            style="pytorch", contract_dilation=True))),
        "mmseg_jpu": averaged(lambda: mmseg(dict(
            type="JPU", in_channels=(512, 1024, 2048), mid_channels=512, start_level=0,
            end_level=-1, dilations=(1, 2, 4, 8), align_corners=False, norm_cfg=NORM))),
        "mmseg_da_head": averaged(lambda: mmseg(dict(
            type="DAHead", in_channels=2048, in_index=3, channels=512, pam_channels=64,
            dropout_ratio=0.1, num_classes=19, norm_cfg=NORM, align_corners=False))),
        "mmseg_psp_head": averaged(lambda: mmseg(dict(
            type="PSPHead", in_channels=2048, in_index=3, channels=512,
            pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=19, norm_cfg=NORM,
            align_corners=False))),
    }
    os.makedirs(os.path.join(out_dir, "init"), exist_ok=True)
    path = os.path.join(out_dir, "init", "init_stats.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=0, sort_keys=True)
    print(path, sum(len(v) for v in res.values()), "tensors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
