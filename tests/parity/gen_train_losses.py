"""Parity fixtures for segkit-train's losses: one mmseg training step of DANet and of EncNet.

For each case, mmseg 1.2.2's EncoderDecoder is built from its own config file
(`configs/danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py`,
`configs/encnet/encnet_r50-d8_4xb2-80k_cityscapes-512x1024.py`) at reduced width so that every
gradient fits in a small fixture: ResNetV1c-18 with `base_channels = 8`, `stem_channels = 16`
(dilated to output stride 8 as the configs), head channels 16 (DANet `pam_channels = 8`), and
dropout 0 so that both sides are deterministic. SyncBN becomes BN (same math on one process).
Every parameter and buffer takes its synthetic value (synth.fill_, keys `backbone.*`,
`decode_head.*`, `auxiliary_head.*`). In train mode (BatchNorm batch statistics) the model
runs `model.loss(inputs, data_samples)` on synth.synthetic_input((2, 3, 64, 64)) with label
maps made of 16x16-pixel blocks of classes (so images contain some classes and not others, for
the SE loss) and about 10% of the pixels 255; the total (mmengine's `parse_losses`: the sum of
every `*loss*` entry) is backpropagated.

Stored per case (tests/fixtures/train_losses/{danet,encnet}.safetensors): `input`, `labels`
(uint8), `loss.<mmseg name>` for every loss (`decode.pam_cam.loss_ce`, `decode.pam.loss_ce`,
`decode.cam.loss_ce`, `aux.loss_ce`; `decode.loss_ce`, `decode.loss_se`, `aux.loss_ce`),
`loss.total`, and `grad.<parameter>` for every parameter, every element.

Usage: python tests/parity/gen_train_losses.py tests/fixtures
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synth  # noqa: E402
import mmseg_stub  # noqa: E402,F401  (stubs mmcv.ops before importing mmseg)
from gen_segmentors import configs_dir, to_bn  # noqa: E402  (shared mmseg config helpers)

INPUT = (2, 3, 64, 64)
NUM_CLASSES = 19
BLOCK = 16
IGNORE_FRACTION = 0.1

CASES = {
    "danet": "danet/danet_r50-d8_4xb2-80k_cityscapes-512x1024.py",
    "encnet": "encnet/encnet_r50-d8_4xb2-80k_cityscapes-512x1024.py",
}


def shrink(model_cfg):
    """The reduced-width network of the module docs."""
    b = model_cfg.backbone
    b.depth = 18
    b.base_channels = 8
    b.stem_channels = 16
    c2, c3, c4, c5 = 8, 16, 32, 64  # BasicBlock: stage i has base_channels * 2^i channels
    d = model_cfg.decode_head
    d.channels = 16
    d.dropout_ratio = 0.0
    if d.type == "DAHead":
        d.in_channels = c5
        d.pam_channels = 8
    else:
        d.in_channels = [c3, c4, c5]
    a = model_cfg.auxiliary_head
    a.in_channels = c4
    a.channels = 16
    a.dropout_ratio = 0.0
    return model_cfg


def build(case):
    from mmengine import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = Config.fromfile(os.path.join(configs_dir(), CASES[case]))
    cfg.model.pretrained = None
    to_bn(cfg.model)
    shrink(cfg.model)
    model = MODELS.build(cfg.model)
    assert model.decode_head.num_classes == NUM_CLASSES
    return model


def labels():
    """N x H x W uint8: 16x16 blocks of classes, ~10% of pixels 255."""
    n, _, h, w = INPUT
    gh, gw = h // BLOCK, w // BLOCK
    cls = (synth.uniform("labels.blocks", n * gh * gw) * NUM_CLASSES).astype(np.int64)
    cls = cls.reshape(n, gh, gw)
    y = np.repeat(np.repeat(cls, BLOCK, axis=1), BLOCK, axis=2)
    ignore = synth.uniform("labels.ignore", n * h * w).reshape(n, h, w) < IGNORE_FRACTION
    y[ignore] = 255
    return y.astype(np.uint8)


def data_samples(y):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    out = []
    h, w = y.shape[1:]
    for i in range(y.shape[0]):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.from_numpy(y[i][None].astype(np.int64)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        out.append(s)
    return out


def gen_case(out_dir, case):
    model = build(case)
    synth.fill_(model)
    model.train()
    x = synth.synthetic_input(INPUT)
    y = labels()
    losses = model.loss(x, data_samples(y))
    named = {k: v for k, v in losses.items() if "loss" in k}
    total = sum(named.values())
    model.zero_grad()
    total.backward()
    d = {"input": x.contiguous(), "labels": torch.from_numpy(y)}
    for k, v in named.items():
        d[f"loss.{k}"] = v.detach().reshape(1).float()
    d["loss.total"] = total.detach().reshape(1).float()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{case}: no gradient for {name}"
        d[f"grad.{name}"] = p.grad.detach().float().contiguous()
    path = os.path.join(out_dir, "train_losses", case + ".safetensors")
    save_file(d, path)
    n_grad = sum(v.numel() for k, v in d.items() if k.startswith("grad."))
    print(f"wrote {path}: {os.path.getsize(path)} bytes, {n_grad} gradient values")
    for k, v in named.items():
        print(f"  {k} = {v.item():.6f}")
    print(f"  total = {total.item():.6f}")


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "train_losses"), exist_ok=True)
    torch.manual_seed(0)
    for case in sys.argv[2:] or list(CASES):
        gen_case(out_dir, case)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
