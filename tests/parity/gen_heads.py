"""Parity fixtures for segkit-heads and segkit-necks against mmseg 1.2.2 and torchvision.

Each module is built alone at its full mmseg config size, filled with synthetic weights
(synth.fill_, keys without a prefix, e.g. `pam.gamma.scale`), and run on synthetic inputs
(synth.synthetic_input with key "input{i}" for the i-th feature map of the module's input
list). Fixtures store sampled outputs only (synth.sample_outputs); the Rust tests
(tests/tests/heads_parity.rs) rebuild the inputs from the same keys and shapes.

Run by `cargo xtask fixtures`, or: python tests/parity/gen_heads.py tests/fixtures
"""
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402
import mmseg_stub  # noqa: E402,F401  (stubs mmcv.ops before importing mmseg)

NORM = dict(type="BN", requires_grad=True)
NUM_CLASSES = 19

# Feature-map shapes (N, C, H, W), shared with heads_parity.rs.
D8 = (13, 17)  # a 97x129 image at stride 8 (dilated ResNet-50 C3..C5)
ASPP = (25, 37)  # large enough for the 24 / 36 dilations to reach real pixels
JPU_IN = [(1, 512, 25, 33), (1, 1024, 13, 17), (1, 2048, 7, 9)]  # 200x264 at strides 8/16/32
FPN_IN = [(1, 256, 25, 33), (1, 512, 13, 17), (1, 1024, 7, 9), (1, 2048, 4, 5)]


def inputs(shapes):
    """One synthetic tensor per shape; None for a shape of None (a map the module ignores)."""
    return [None if s is None else synth.synthetic_input(s, f"input{i}") for i, s in enumerate(shapes)]


def save(out_dir, name, outs):
    d = {}
    for n, t in outs.items():
        d.update(synth.sample_outputs(n, t))
    path = os.path.join(out_dir, "heads", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, {n: tuple(t.shape) for n, t in outs.items()})


def ready(m):
    synth.fill_(m)
    return m.eval()


def gen_fcn(out_dir):
    from mmseg.models.decode_heads import FCNHead

    # Auxiliary head of the *_r50-d8 configs: C4 (1024) -> 256, one conv, no concat.
    aux = dict(in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False,
               dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=NORM, align_corners=False)
    m = ready(FCNHead(**aux))
    x = inputs([None, None, (1, 1024) + D8])
    save(out_dir, "fcn_aux_r50_d8", {"logits": m(x)})
    # Training mode (BatchNorm batch statistics), batch 2, dropout off so that it is deterministic.
    m = ready(FCNHead(**dict(aux, dropout_ratio=0.0))).train()
    x = inputs([None, None, (2, 1024) + D8])
    save(out_dir, "fcn_aux_r50_d8_train", {"logits": m(x)})
    # Main head of fcn_r50-d8: C5 (2048) -> 512, two convs, concat_input.
    m = ready(FCNHead(in_channels=2048, in_index=3, channels=512, num_convs=2, concat_input=True,
                      dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=NORM, align_corners=False))
    x = inputs([None, None, None, (1, 2048) + D8])
    save(out_dir, "fcn_r50_d8", {"logits": m(x)})


def gen_psp(out_dir):
    from mmseg.models.decode_heads import PSPHead

    m = ready(PSPHead(in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6),
                      dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=NORM, align_corners=False))
    x = inputs([None, None, None, (1, 2048) + D8])
    save(out_dir, "psp_r50_d8", {"logits": m(x)})
    # align_corners=True (the 769x769 configs).
    m = ready(PSPHead(in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6),
                      dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=NORM, align_corners=True))
    save(out_dir, "psp_r50_d8_align_corners", {"logits": m(x)})


def gen_da(out_dir):
    from mmseg.models.decode_heads import DAHead

    m = ready(DAHead(in_channels=2048, in_index=3, channels=512, pam_channels=64, dropout_ratio=0.1,
                     num_classes=NUM_CLASSES, norm_cfg=NORM, align_corners=False))
    assert m.pam.gamma.scale.dim() == 0 and float(m.pam.gamma.scale) >= 0.5
    assert float(m.cam.gamma.scale) >= 0.5
    x = inputs([None, None, None, (1, 2048) + D8])
    fused, pam, cam = m(x)
    save(out_dir, "da_r50_d8", {"fused": fused, "pam": pam, "cam": cam})


def gen_aspp(out_dir):
    from mmseg.models.decode_heads import ASPPHead

    m = ready(ASPPHead(in_channels=2048, in_index=3, channels=512, dilations=(1, 12, 24, 36),
                       dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=NORM, align_corners=False))
    x = inputs([None, None, None, (1, 2048) + ASPP])
    save(out_dir, "aspp_r50_d8", {"logits": m(x)})


def gen_enc(out_dir):
    from mmseg.models.decode_heads import EncHead

    cfg = dict(in_channels=[512, 1024, 2048], in_index=(1, 2, 3), channels=512, num_codes=32,
               use_se_loss=True, add_lateral=False, dropout_ratio=0.1, num_classes=NUM_CLASSES,
               norm_cfg=NORM, align_corners=False)
    m = ready(EncHead(**cfg))
    x = inputs([None, (1, 512) + D8, (1, 1024) + D8, (1, 2048) + D8])
    seg, se = m(x)
    save(out_dir, "enc_r50_d8", {"seg": seg, "se": se})
    # fastfcn_r50-d32_jpu_enc indices, with lateral convs, maps of different sizes, batch 2.
    lat = dict(cfg, in_index=(0, 1, 2), add_lateral=True)
    m = ready(EncHead(**lat))
    x = inputs([(2, 512) + D8, (2, 1024, 7, 9), (2, 2048) + D8])
    seg, se = m(x)
    save(out_dir, "enc_lateral", {"seg": seg, "se": se})
    # Training mode (batch statistics, BatchNorm1d over the codes), dropout off.
    m = ready(EncHead(**dict(lat, dropout_ratio=0.0))).train()
    seg, se = m(x)
    save(out_dir, "enc_lateral_train", {"seg": seg, "se": se})


def jpu_official(m, feats_in):
    """The official FastFCN JPU forward (encoding/nn/customize.py) on mmseg's modules: levels
    concatenated coarse to fine (C5, C4, C3), bilinear resize with align_corners=True."""
    feats = [m.conv_layers[i](x) for i, x in enumerate(feats_in)]
    h, w = feats[0].shape[2:]
    feats = [feats[0]] + [F.interpolate(f, (h, w), mode="bilinear", align_corners=True) for f in feats[1:]]
    feat = torch.cat(feats[::-1], dim=1)
    return torch.cat([layer(feat) for layer in m.dilation_layers], dim=1)


def gen_jpu(out_dir):
    from mmseg.models.necks import JPU

    m = ready(JPU(in_channels=(512, 1024, 2048), mid_channels=512, start_level=0, end_level=-1,
                  dilations=(1, 2, 4, 8), align_corners=False, norm_cfg=NORM))
    x = inputs(JPU_IN)
    outs = m(x)
    assert len(outs) == 3 and outs[0] is x[0] and outs[1] is x[1]
    save(out_dir, "jpu_mmseg", {"fused": outs[2]})
    save(out_dir, "jpu_fastfcn", {"fused": jpu_official(m, x)})


def gen_fpn(out_dir):
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from mmseg.models.necks import FPN

    x = inputs(FPN_IN)
    m = ready(FeaturePyramidNetwork([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool()))
    outs = m(OrderedDict((f"c{i + 2}", t) for i, t in enumerate(x)))
    save(out_dir, "fpn_torchvision", {f"p{i}": t for i, t in enumerate(outs.values())})
    # mmdet / mmseg naming, RetinaNet-style: C3..C5, two extra stride-2 convs on the input C5.
    m = ready(FPN(in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5, start_level=1,
                  add_extra_convs="on_input"))
    outs = m(x)
    save(out_dir, "fpn_mmdet_retinanet", {f"p{i}": t for i, t in enumerate(outs)})


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "heads"), exist_ok=True)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    for gen in (gen_fcn, gen_psp, gen_da, gen_aspp, gen_enc, gen_jpu, gen_fpn):
        gen(out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
