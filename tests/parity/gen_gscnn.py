"""Parity fixtures for Gated-SCNN (segkit-backbones' WideResNet, segkit-heads' gscnn parts,
segkit-models' Gscnn) against a PyTorch reference.

The official code (nv-tlabs/GSCNN, CC BY-NC-SA) is not installable and runs Canny and CUDA
inside its forward, so the reference here is a small PyTorch module written from the official
code's math (network/gscnn.py, network/wider_resnet.py, my_functionals/GatedSpatialConv.py):
same module tree and state-dict keys, same BN / conv / bias layout, same upsampling modes
(align_corners=True everywhere except the final logits), the Canny map computed as released
(the normalised input cast to uint8, `cv2.Canny(img, 10, 100)`, 0 / 255) outside the module and
stored in the fixture, so that Rust and Python see the same map. The ResNet-D8 regular stream
is segkit's own wiring ([c2, c2, c3, c4, c5] as [shape, fine, side1, side2, deep]; `res1`
runs at the shape input's stride and is upsampled after), documented in docs/gscnn.md.

Weights: synth.fill_ (keys without prefix, e.g. `mod2.block1.bn1.0.weight`), full size.
Input: synth.synthetic_input((1, 3, 97, 129)) (odd sizes). Outputs: synth.sample_outputs.
The legacy checkpoint: the whole WRN38 model with periodic synthetic values (element i takes
the value of element i % 61), `{state_dict (module.-prefixed), optimizer, epoch, mean_iu}`
written by torch.save(_use_new_zipfile_serialization=False) and gzipped.

Usage: python tests/parity/gen_gscnn.py tests/fixtures
"""
import gzip
import os
import shutil
import sys
import tempfile
from collections import OrderedDict

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

INPUT = (1, 3, 97, 129)
PERIOD = 61  # prime, 244 bytes: within one deflate match (258 B), so gzip shrinks ~250x


def bn_relu(c):
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())


class PreActBlock(nn.Module):
    """IdentityResidualBlock: BN+ReLU on the input, residual convs, projection if needed."""

    def __init__(self, cin, ch, stride, dil, drop):
        super().__init__()
        self.bn1 = bn_relu(cin)
        if len(ch) == 2:
            layers = [("conv1", nn.Conv2d(cin, ch[0], 3, stride, dil, dil, bias=False)),
                      ("bn2", bn_relu(ch[0])),
                      ("conv2", nn.Conv2d(ch[0], ch[1], 3, 1, dil, dil, bias=False))]
        else:
            layers = [("conv1", nn.Conv2d(cin, ch[0], 1, stride, bias=False)),
                      ("bn2", bn_relu(ch[0])),
                      ("conv2", nn.Conv2d(ch[0], ch[1], 3, 1, dil, dil, bias=False)),
                      ("bn3", bn_relu(ch[1])),
                      ("dropout", nn.Dropout2d(drop)),
                      ("conv3", nn.Conv2d(ch[1], ch[2], 1, bias=False))]
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or cin != ch[-1]:
            self.proj_conv = nn.Conv2d(cin, ch[-1], 1, stride, bias=False)

    def forward(self, x):
        a = self.bn1(x)
        short = self.proj_conv(a) if hasattr(self, "proj_conv") else x
        return self.convs(a) + short


class WRN38(nn.Module):
    """WiderResNetA2([3, 3, 6, 3, 1, 1], dilation=True) without bn_out / classifier."""

    CH = [(128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096)]

    def __init__(self):
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 64, 3, 1, 1, bias=False)))
        cin = 64
        for i, n in enumerate([3, 3, 6, 3, 1, 1]):
            dil = {3: 2, 4: 4, 5: 4}.get(i, 1)
            drop = {4: 0.3, 5: 0.5}.get(i, 0.0)
            blocks = []
            for b in range(n):
                stride = 2 if (b == 0 and i == 2) else 1
                blocks.append((f"block{b + 1}", PreActBlock(cin, self.CH[i], stride, dil, drop)))
                cin = self.CH[i][-1]
            if i < 2:
                self.add_module(f"pool{i + 2}", nn.MaxPool2d(3, 2, 1))
            self.add_module(f"mod{i + 2}", nn.Sequential(OrderedDict(blocks)))

    def forward(self, x):
        m1 = self.mod1(x)
        m2 = self.mod2(self.pool2(m1))
        m3 = self.mod3(self.pool3(m2))
        m4 = self.mod4(m3)
        m5 = self.mod5(m4)
        m6 = self.mod6(m5)
        m7 = self.mod7(m6)
        return [m1, m2, m3, m4, m5, m6, m7]


class BasicBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class GCL(nn.Module):
    """GatedSpatialConv2d(C, C): 1x1, no bias."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c, c, 1, 1))
        self._gate_conv = nn.Sequential(nn.BatchNorm2d(c + 1), nn.Conv2d(c + 1, c + 1, 1), nn.ReLU(),
                                        nn.Conv2d(c + 1, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, s, r):
        alpha = self._gate_conv(torch.cat([s, r], 1))
        return F.conv2d(s * (alpha + 1), self.weight), alpha


def cbr(cin, cout, k=1, d=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ASPP(nn.Module):
    def __init__(self, cin, edge=True, rates=(12, 24, 36)):
        super().__init__()
        self.features = nn.ModuleList([cbr(cin, 256)] + [cbr(cin, 256, 3, r) for r in rates])
        self.img_conv = cbr(cin, 256)
        if edge:
            self.edge_conv = cbr(1, 256)

    def forward(self, x, edge):
        size = x.shape[2:]
        out = [F.interpolate(self.img_conv(F.adaptive_avg_pool2d(x, 1)), size, mode="bilinear",
                             align_corners=True)]
        if edge is not None:
            out.append(self.edge_conv(F.interpolate(edge, size, mode="bilinear", align_corners=True)))
        out += [f(x) for f in self.features]
        return torch.cat(out, 1)


def up(x, size):
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


class GscnnHead(nn.Module):
    """Everything above the regular stream; inputs [shape, fine, side1, side2, deep]."""

    def __init__(self, specs, num_classes=19, shape_stream=True):
        super().__init__()
        c_shape, c_fine, c1, c2, c_deep = specs
        self.shape_stream = shape_stream
        if shape_stream:
            self.dsn1 = nn.Conv2d(c_shape, 1, 1)
            self.dsn3 = nn.Conv2d(c1, 1, 1)
            self.dsn4 = nn.Conv2d(c2, 1, 1)
            self.dsn7 = nn.Conv2d(c_deep, 1, 1)
            self.res1, self.d1 = BasicBlock(c_shape), nn.Conv2d(c_shape, 32, 1)
            self.res2, self.d2 = BasicBlock(32), nn.Conv2d(32, 16, 1)
            self.res3, self.d3 = BasicBlock(16), nn.Conv2d(16, 8, 1)
            self.fuse = nn.Conv2d(8, 1, 1, bias=False)
            self.cw = nn.Conv2d(2, 1, 1, bias=False)
            self.gate1, self.gate2, self.gate3 = GCL(32), GCL(16), GCL(8)
        self.aspp = ASPP(c_deep, edge=shape_stream)
        self.bot_fine = nn.Conv2d(c_fine, 48, 1, bias=False)
        self.bot_aspp = nn.Conv2d(256 * (6 if shape_stream else 5), 256, 1, bias=False)
        self.final_seg = nn.Sequential(
            nn.Conv2d(304, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, num_classes, 1, bias=False))

    def forward(self, feats, canny, size):
        shape, fine, s1, s2, deep = feats
        out = {}
        acts = None
        if self.shape_stream:
            s3 = up(self.dsn3(s1), size)
            s4 = up(self.dsn4(s2), size)
            s7 = up(self.dsn7(deep), size)
            # The reference upsamples the shape input first (identity for WRN38's m1).
            if shape.shape[2:] == size:
                cs = self.res1(up(shape, size))
            else:
                cs = up(self.res1(shape), size)
            cs, a1 = self.gate1(self.d1(up(cs, size)), s3)
            cs = self.res2(cs)
            cs, a2 = self.gate2(self.d2(up(cs, size)), s4)
            cs = self.res3(cs)
            cs, a3 = self.gate3(self.d3(up(cs, size)), s7)
            edge = torch.sigmoid(up(self.fuse(cs), size))
            acts = torch.sigmoid(self.cw(torch.cat([edge, canny], 1)))
            out.update(edge=edge, alpha1=a1, alpha2=a2, alpha3=a3, acts=acts)
        x = self.aspp(deep, acts)
        dec_up = up(self.bot_aspp(x), fine.shape[2:])
        dec = self.final_seg(torch.cat([self.bot_fine(fine), dec_up], 1))
        out = dict(seg=F.interpolate(dec, size, mode="bilinear", align_corners=False), **out)
        return out


class ResNetD8(nn.Module):
    """torchvision ResNet with replace_stride_with_dilation=[False, True, True]."""

    def __init__(self, depth):
        super().__init__()
        ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        m = ctor(weights=None, replace_stride_with_dilation=[False, True, True])
        for k in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]:
            self.add_module(k, getattr(m, k))

    def forward(self, x):
        y = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for k in ["layer1", "layer2", "layer3", "layer4"]:
            y = getattr(self, k)(y)
            outs.append(y)
        return outs


class Gscnn(nn.Module):
    """The whole model: regular stream (WRN38 or ResNet-D8) + head, keys at the root."""

    def __init__(self, backbone="wrn38", shape_stream=True, num_classes=19):
        super().__init__()
        self.kind = backbone
        if backbone == "wrn38":
            self.trunk = WRN38()
            specs = (64, 128, 256, 512, 4096)
        else:
            self.trunk = ResNetD8(int(backbone[6:]))
            specs = (256, 256, 512, 1024, 2048)
        self.head = GscnnHead(specs, num_classes, shape_stream)

    def state_dict_flat(self):
        """State dict with the reference's keys (trunk and head modules at the root)."""
        sd = OrderedDict()
        for k, v in self.state_dict().items():
            sd[k.split(".", 1)[1]] = v
        return sd

    def load_flat(self, values):
        self.load_state_dict({k: values[k.split(".", 1)[1]] for k in self.state_dict()})

    def forward(self, x, canny):
        f = self.trunk(x)
        feats = [f[0], f[1], f[2], f[3], f[6]] if self.kind == "wrn38" else [f[0], f[0], f[1], f[2], f[3]]
        return self.head(feats, canny, tuple(x.shape[2:]))


def canny_as_released(x):
    """The official forward's Canny input: the normalised tensor cast straight to uint8."""
    im = x.numpy().transpose((0, 2, 3, 1)).astype(np.uint8)
    out = np.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), np.float32)
    for i in range(x.shape[0]):
        out[i] = cv2.Canny(im[i], 10, 100)
    return torch.from_numpy(out)


def fill_flat_(model, period=None):
    flat = model.state_dict_flat()
    model.load_flat({k: torch.from_numpy(synth.synthetic_values(k, t.shape, period)).to(t.dtype)
                     for k, t in flat.items()})
    return model.eval()


def save(out_dir, name, outs, extra=None):
    d = dict(extra or {})
    for n, t in outs.items():
        d.update(synth.sample_outputs(n, t))
    os.makedirs(os.path.join(out_dir, "gscnn"), exist_ok=True)
    path = os.path.join(out_dir, "gscnn", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, {n: tuple(t.shape) for n, t in outs.items()}, flush=True)


@torch.no_grad()
def gen_wrn38(out_dir):
    m = synth.fill_(WRN38()).eval()
    outs = m(synth.synthetic_input(INPUT))
    save(out_dir, "wrn38", {f"m{i + 1}": t for i, t in enumerate(outs)})


def gen_gcl(out_dir):
    with torch.no_grad():
        m = synth.fill_(GCL(32), "gate1.").eval()
        s = synth.synthetic_input((1, 32) + INPUT[2:], "input0")
        r = synth.synthetic_input((1, 1) + INPUT[2:], "input1")
        out, alpha = m(s, r)
        save(out_dir, "gcl", {"out": out, "alpha": alpha})
        # Training mode (BatchNorm batch statistics), batch 2.
        m = synth.fill_(GCL(32), "gate1.").train()
        s = synth.synthetic_input((2, 32) + INPUT[2:], "input0")
        r = synth.synthetic_input((2, 1) + INPUT[2:], "input1")
        out, alpha = m(s, r)
        save(out_dir, "gcl_train", {"out": out, "alpha": alpha})


@torch.no_grad()
def gen_head(out_dir):
    """The head alone (shape stream, fusion, ASPP, decoder) on synthetic WRN38-shaped maps."""
    specs = (64, 128, 256, 512, 4096)
    sizes = [(97, 129), (49, 65), (25, 33), (13, 17), (13, 17)]
    m = synth.fill_(GscnnHead(specs)).eval()
    feats = [synth.synthetic_input((1, c) + s, f"input{i}") for i, (c, s) in enumerate(zip(specs, sizes))]
    img = synth.synthetic_input(INPUT)
    canny = canny_as_released(img)
    save(out_dir, "head", m(feats, canny, INPUT[2:]), {"canny": canny})


@torch.no_grad()
def gen_models(out_dir):
    x = synth.synthetic_input(INPUT)
    canny = canny_as_released(x)
    print("canny edge pixels", int((canny > 0).sum()), "of", canny.numel(), flush=True)
    save(out_dir, "wrn38_model", fill_flat_(Gscnn("wrn38"))(x, canny), {"canny": canny})
    save(out_dir, "wrn38_no_shape", fill_flat_(Gscnn("wrn38", shape_stream=False))(x, canny))
    save(out_dir, "r50_d8_model", fill_flat_(Gscnn("resnet50"))(x, canny))


@torch.no_grad()
def gen_legacy_checkpoint(out_dir):
    """The official checkpoint layout, legacy serialization, periodic synthetic values."""
    m = fill_flat_(Gscnn("wrn38"), PERIOD)
    x = synth.synthetic_input(INPUT)
    canny = canny_as_released(x)
    save(out_dir, "legacy_expected", m(x, canny))
    sd = OrderedDict(("module." + k, v) for k, v in m.state_dict_flat().items())
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    ckpt = {"state_dict": sd, "optimizer": opt.state_dict(), "epoch": 174, "mean_iu": 0.808}
    tmp = tempfile.mkdtemp()
    try:
        pth = os.path.join(tmp, "best_cityscapes_checkpoint.pth")
        torch.save(ckpt, pth, _use_new_zipfile_serialization=False)
        gz = os.path.join(out_dir, "gscnn", "legacy_wrn38.pth.gz")
        with open(pth, "rb") as f, gzip.GzipFile(gz, "wb", compresslevel=9, mtime=0) as g:
            shutil.copyfileobj(f, g)
        print("wrote", gz, os.path.getsize(pth), "->", os.path.getsize(gz), "bytes", flush=True)
    finally:
        shutil.rmtree(tmp)


def main(out_dir):
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    which = sys.argv[2:] or ["wrn38", "gcl", "head", "models", "legacy"]
    gens = dict(wrn38=gen_wrn38, gcl=gen_gcl, head=gen_head, models=gen_models,
                legacy=gen_legacy_checkpoint)
    for w in which:
        gens[w](out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
