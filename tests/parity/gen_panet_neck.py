"""Parity fixtures for segkit-necks' PanetFpn (official PANet pyramid) and PaFpn (mmdet PAFPN).

Oracles:
- PanetFpn: NOT an installable package. The module below is written from the official math
  (ShuLiu1993/PANet `lib/modeling/FPN.py`, class `fpn` with `panet_buttomup=True`,
  `topdown_lateral_module`, `cfg.FPN.USE_GN`, `GROUP_NORM` 32 groups, eps 1e-5) in plain
  PyTorch, with the official module names (`Conv_Body.posthoc_modules.0.1.weight`,
  `Conv_Body.panet_buttomup_conv1_modules.0.0.bias`, ...), so the synthetic weights check the
  key names too.
- PaFpn: INDEPENDENT: mmdet 3.3.0's own `PAFPN` (`mmdet/models/necks/pafpn.py`, pip `mmdet`),
  loaded from its files with mmcv-lite and a stub `mmcv.ops` (mmseg_stub.py; mmdet's package
  `__init__` pulls in compiled ops, so pafpn.py and fpn.py are loaded directly).

Inputs: synthetic C2..C5 (256 / 512 / 1024 / 2048 channels). PANet: the sizes of a 517x389 image
after Detectron's padding to a multiple of 32 (544x416: 136x104 .. 17x13). PAFPN: the sizes of
an unpadded 517x389 image (130x98, 65x49, 33x25, 17x13), as mmdet allows.
Run: python tests/parity/gen_panet_neck.py tests/fixtures
"""
import importlib.util
import os
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

CHANNELS = (256, 512, 1024, 2048)
PANET_SIZES = ((136, 104), (68, 52), (34, 26), (17, 13))
PAFPN_SIZES = ((130, 98), (65, 49), (33, 25), (17, 13))


def inputs(prefix, sizes):
    return [synth.synthetic_input((1, c, h, w), key=f"{prefix}.c{i + 2}")
            for i, (c, (h, w)) in enumerate(zip(CHANNELS, sizes))]


def conv_gn(cin, cout, k, stride, bias, use_gn, relu):
    """A conv (+ GN(32) [+ ReLU]) in an nn.Sequential as the official code builds it, or a bare
    conv with bias without GN."""
    if not use_gn:
        return nn.Conv2d(cin, cout, k, stride, k // 2, bias=True)
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias), nn.GroupNorm(32, cout, eps=1e-5)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Lateral(nn.Module):
    def __init__(self, cin, dim, use_gn):
        super().__init__()
        self.conv_lateral = conv_gn(cin, dim, 1, 1, False, use_gn, False)


class PanetPyramid(nn.Module):
    """Detectron's FPN (lists coarsest first) + PANet's bottom-up path + P6 by max pooling."""

    def __init__(self, dims=CHANNELS, dim=256, use_gn=True, bottom_up=True):
        super().__init__()
        rev = list(reversed(dims))  # coarsest first, as fpn_level_info.dims
        self.use_gn, self.bottom_up = use_gn, bottom_up
        self.conv_top = conv_gn(rev[0], dim, 1, 1, False, use_gn, False)
        self.topdown_lateral_modules = nn.ModuleList([Lateral(c, dim, use_gn) for c in rev[1:]])
        self.posthoc_modules = nn.ModuleList(
            [conv_gn(dim, dim, 3, 1, False, use_gn, False) for _ in rev])
        if bottom_up:
            self.panet_buttomup_conv1_modules = nn.ModuleList(
                [conv_gn(dim, dim, 3, 2, True, use_gn, True) for _ in rev[1:]])
            self.panet_buttomup_conv2_modules = nn.ModuleList(
                [conv_gn(dim, dim, 3, 1, True, use_gn, True) for _ in rev[1:]])

    def forward(self, feats):
        """feats finest first; returns (P2..P5, outputs finest first incl. P6)."""
        c = list(reversed(feats))
        inner = [self.conv_top(c[0])]
        for i, m in enumerate(self.topdown_lateral_modules):
            inner.append(m.conv_lateral(c[i + 1]) + F.interpolate(inner[-1], scale_factor=2, mode="nearest"))
        middle = [m(x) for m, x in zip(self.posthoc_modules, inner)]  # P5..P2
        p = list(reversed(middle))  # P2..P5
        if self.bottom_up:
            n = [p[0]]
            for l in range(len(p) - 1):
                t = self.panet_buttomup_conv1_modules[l](n[-1]) + p[l + 1]
                n.append(self.panet_buttomup_conv2_modules[l](t))
        else:
            n = list(p)
        n.append(F.max_pool2d(n[-1], kernel_size=1, stride=2))
        return p, n


class Root(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.Conv_Body = PanetPyramid(**kw)


def save(out_dir, name, groups):
    d = {}
    for prefix, ts in groups:
        for i, t in enumerate(ts):
            d.update(synth.sample_outputs(f"{prefix}{i + 2}", t))
    path = os.path.join(out_dir, "panet", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, [tuple(t.shape) for _, ts in groups for t in ts])


def load_mmdet_pafpn():
    import mmseg_stub  # noqa: F401  (stub mmcv.ops before mmdet imports mmcv)
    import mmdet
    import mmdet.registry  # noqa: F401
    import mmdet.utils  # noqa: F401

    base = os.path.join(os.path.dirname(mmdet.__file__), "models")
    for name, path in (("mmdet.models", base), ("mmdet.models.necks", os.path.join(base, "necks"))):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [path]
            sys.modules[name] = m

    def load(mod):
        spec = importlib.util.spec_from_file_location(
            f"mmdet.models.necks.{mod}", os.path.join(base, "necks", mod + ".py"))
        m = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = m
        spec.loader.exec_module(m)
        return m

    load("fpn")
    return load("pafpn").PAFPN


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "panet"), exist_ok=True)
    torch.set_grad_enabled(False)
    feats = inputs("panet", PANET_SIZES)
    for name, kw in (("panet_fpn_gn", dict()),
                     ("panet_fpn_nogn", dict(use_gn=False)),
                     ("detectron_fpn_gn", dict(bottom_up=False))):
        root = Root(**kw).eval()
        synth.fill_(root)
        p, n = root.Conv_Body(feats)
        # Without the bottom-up path N2..N5 are P2..P5: store them once.
        save(out_dir, name, [("p", p), ("n", n)] if kw.get("bottom_up", True) else [("n", n)])

    PAFPN = load_mmdet_pafpn()
    feats = inputs("pafpn", PAFPN_SIZES)
    for name, kw in (("mmdet_pafpn", dict(num_outs=5)),
                     ("mmdet_pafpn_gn_relu_extra", dict(
                         num_outs=6, add_extra_convs="on_input", relu_before_extra_convs=True,
                         norm_cfg=dict(type="GN", num_groups=32, requires_grad=True),
                         act_cfg=dict(type="ReLU")))):
        m = PAFPN(in_channels=list(CHANNELS), out_channels=256, **kw).eval()
        synth.fill_(m)
        outs = m(feats)
        save(out_dir, name, [("o", outs)])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
