"""Parity fixtures for segkit-backbones' CaffeResNet (PANet's / Detectron's caffe-style ResNet).

Oracle: NOT an installable package. No maintained package ships Detectron.pytorch's ResNet
(the official ShuLiu1993/PANet code needs PyTorch 0.4 and compiled extensions), so the modules
below are written from the official math (`lib/modeling/ResNet.py`: `ResNet_convX_body`,
`bottleneck_transformation` with `STRIDE_1X1 = True`, `basic_bn_stem`, `basic_bn_shortcut`,
`lib/nn/modules/affine.py`: `AffineChannel2d`) in plain PyTorch, with the official module names
so that `state_dict()` keys equal the checkpoint's (`Conv_Body.conv_body.res2.0.conv1.weight`).

Weights: synthetic (synth.py), full size, under the keys `Conv_Body.conv_body.*`.
Input: a BGR image in 0..255, `(synth.synthetic_input((1, 3, 517, 389)) + 2) * 63.75`, minus
Detectron's pixel means (no std). Each fixture stores a sampled summary of C2..C5.
Run: python tests/parity/gen_panet_backbone.py tests/fixtures
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

INPUT = (1, 3, 517, 389)
PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Affine(nn.Module):
    """AffineChannel2d: y = x * weight + bias per channel."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Bottleneck(nn.Module):
    """MSRA bottleneck: the stride on conv1 (1x1), affine after each conv, ReLU, residual."""

    def __init__(self, cin, cout, inner, stride, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, inner, 1, stride=stride, bias=False)
        self.bn1 = Affine(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = Affine(inner)
        self.conv3 = nn.Conv2d(inner, cout, 1, bias=False)
        self.bn3 = Affine(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), Affine(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        r = x if self.downsample is None else self.downsample(x)
        return F.relu(y + r)


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = Affine(64)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)


class CaffeResNet(nn.Module):
    def __init__(self, depth, res5_dilation=1):
        super().__init__()
        self.res1 = Stem()
        cin = 64
        for si, nb in enumerate(BLOCKS[depth]):
            cout, inner = 256 << si, 64 << si
            stride, dil = (1, 1) if si == 0 else (2, 1)
            if si == 3 and res5_dilation == 2:
                stride, dil = 1, 2
            blocks = []
            for bi in range(nb):
                blocks.append(Bottleneck(cin, cout, inner, stride if bi == 0 else 1, dil))
                cin = cout
            setattr(self, f"res{si + 2}", nn.Sequential(*blocks))

    def forward(self, x):
        y = self.res1(x)
        outs = []
        for i in range(2, 6):
            y = getattr(self, f"res{i}")(y)
            outs.append(y)
        return outs


class Body(nn.Module):
    """PANet's `Conv_Body` (the fpn module) holds the ResNet as `conv_body`."""

    def __init__(self, depth, res5_dilation=1):
        super().__init__()
        self.conv_body = CaffeResNet(depth, res5_dilation)


class Root(nn.Module):
    def __init__(self, depth, res5_dilation=1):
        super().__init__()
        self.Conv_Body = Body(depth, res5_dilation)


def caffe_input():
    img = (synth.synthetic_input(INPUT) + 2.0) * 63.75
    means = torch.tensor(PIXEL_MEANS_BGR, dtype=torch.float32).view(1, 3, 1, 1)
    return img - means


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "panet"), exist_ok=True)
    torch.set_grad_enabled(False)
    x = caffe_input()
    for depth, dil in ((50, 1), (101, 1), (50, 2)):
        root = Root(depth, dil).eval()
        synth.fill_(root)
        outs = root.Conv_Body.conv_body(x)
        d = {}
        for n, t in zip(["c2", "c3", "c4", "c5"], outs):
            d.update(synth.sample_outputs(n, t))
        name = f"resnet{depth}_caffe" + ("_res5dil2" if dil == 2 else "")
        path = os.path.join(out_dir, "panet", name + ".safetensors")
        save_file({k: v.contiguous() for k, v in d.items()}, path)
        print("wrote", path, [tuple(o.shape) for o in outs],
              "absmax", [float(o.abs().max()) for o in outs])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
