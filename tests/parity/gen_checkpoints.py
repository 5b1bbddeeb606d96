"""Real checkpoint files for `segkit_core::checkpoint` (crates/core/tests/checkpoint.rs).

Reference: PyTorch `torch.save` and the `safetensors` package (versions pinned in
tests/parity/requirements.txt). Every file here is written by the real library, in the shapes
users meet: torchvision plain state dicts, `{state_dict}` / `{model}` wrappers, mmseg model-zoo
checkpoints (`{meta, state_dict, optimizer}` with arbitrary Python objects in `meta`),
DataParallel `module.` prefixes, HF `pytorch_model.bin`, safetensors, fp16, strided views and
tensors sharing storage, the legacy (pre-1.6) format, and a few files that are not state dicts.

Usage: python tests/parity/gen_checkpoints.py tests/fixtures
Writes tests/fixtures/checkpoints/*.{pth,bin,safetensors} (a few KB each) and
`expected.safetensors`, which holds the values torch sees, named `<case>.<key>`.
"""

import collections
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file


class Tiny(nn.Sequential):
    """Conv2d + BatchNorm2d + Linear: every kind of key a real CNN has."""

    def __init__(self):
        super().__init__(
            collections.OrderedDict(
                conv=nn.Conv2d(3, 4, 3, padding=1),
                bn=nn.BatchNorm2d(4),
                relu=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flat=nn.Flatten(),
                fc=nn.Linear(4, 2),
            )
        )


class Segmentor(nn.Module):
    """mmseg-like naming: `backbone.*` and `decode_head.conv_seg.*`."""

    def __init__(self):
        super().__init__()
        self.backbone = Tiny()
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(4, 2, 1)


class ConfigDict(dict):
    """A dict subclass, as mmcv/mmengine put into checkpoint metadata."""


class Info:
    """An arbitrary user object in the metadata."""

    def __init__(self):
        self.name = "run-1"
        self.scores = [0.5, 0.75]


def tiny():
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
        m.bn.num_batches_tracked.fill_(7)
    return m


def main(root):
    out = os.path.join(root, "checkpoints")
    os.makedirs(out, exist_ok=True)
    expected = {}

    def path(name):
        return os.path.join(out, name)

    def expect(case, sd):
        for k, v in sd.items():
            v = v.detach().clone().contiguous()
            # bool is read as u8 (candle has no bool dtype).
            expected[f"{case}.{k}"] = v.to(torch.uint8) if v.dtype == torch.bool else v

    model = tiny()
    sd = model.state_dict()
    expect("tiny", sd)

    # torchvision style: a plain state dict (zip format, torch >= 1.6).
    torch.save(sd, path("plain.pth"))
    # Wrappers.
    torch.save({"state_dict": sd}, path("wrapped_state_dict.pth"))
    torch.save({"model": sd, "epoch": 12}, path("wrapped_model.pth"))
    # DataParallel: every key gets `module.`; nested in a training-loop wrapper.
    dp = nn.DataParallel(model)
    torch.save({"state_dict": dp.state_dict(), "best_acc": torch.tensor(0.9)}, path("dataparallel.pth"))

    # mmseg model zoo: {meta, state_dict, optimizer}, meta full of Python objects.
    torch.manual_seed(1)
    seg = Segmentor()
    with torch.no_grad():
        seg.backbone.load_state_dict(sd)
    opt = torch.optim.SGD(seg.parameters(), lr=0.01, momentum=0.9)
    loss = seg.decode_head.conv_seg(seg.backbone.bn(seg.backbone.conv(torch.randn(1, 3, 5, 5)))).sum()
    loss.backward()
    opt.step()
    seg_sd = seg.state_dict()
    expect("segmentor", seg_sd)
    meta = {
        "mmseg_version": "1.2.2",
        "CLASSES": ("a", "b"),
        "PALETTE": [[1, 2, 3]],
        "env_info": "x",
        "config": "norm_cfg = dict(type='SyncBN', requires_grad=True)\n" * 20,
        "epoch": 3,
        "iter": 80000,
        "seed": -1234567,
        "big": 2**40,
        "lr": 0.01,
        "flags": {True, False},
        "none": None,
        "blob": b"\x00\x01binary",
        "hook_msgs": {"last_ckpt": "work_dirs/iter_80000.pth", "best_score": np.float64(0.5)},
        "hist": np.arange(6, dtype=np.float32).reshape(2, 3),
        "dataset_meta": ConfigDict(classes=("a", "b"), palette=[[1, 2, 3]]),
        "info": Info(),
    }
    torch.save(
        {"meta": meta, "state_dict": seg_sd, "optimizer": opt.state_dict()},
        path("mmseg.pth"),
    )

    # HF transformers `save_pretrained(safe_serialization=False)`: a plain state dict named
    # pytorch_model.bin, with a tied weight (two keys, one storage).
    torch.manual_seed(2)
    emb = torch.randn(5, 3)
    hf = collections.OrderedDict()
    hf["embeddings.word_embeddings.weight"] = emb
    hf["encoder.layer.0.attention.self.query.weight"] = torch.randn(3, 3)
    hf["encoder.layer.0.attention.self.query.bias"] = torch.randn(3)
    hf["lm_head.weight"] = emb  # tied
    os.makedirs(path("hf"), exist_ok=True)
    torch.save(hf, os.path.join(out, "hf", "pytorch_model.bin"))
    expect("hf", hf)

    # safetensors (HF style metadata).
    save_file({k: v.contiguous() for k, v in sd.items()}, path("model.safetensors"), metadata={"format": "pt"})

    # fp16 / bf16 weights.
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(half, path("fp16.pth"))
    save_file(half, path("fp16.safetensors"))
    expect("fp16", half)

    # Views, strides, storage offsets, shared storage, dtypes.
    torch.manual_seed(3)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8.0
    x3 = torch.randn(2, 3, 4)
    views = collections.OrderedDict()
    views["base"] = base
    views["row"] = base[1]  # offset 6, contiguous
    views["col"] = base[:, 2]  # offset 2, stride 6
    views["transposed"] = base.t()  # Fortran order
    views["block"] = base[1:3, 2:5]  # offset 8, strides (6, 1)
    views["every_other"] = base[::2, ::3]  # strides (12, 3)
    views["permuted"] = x3.permute(2, 0, 1)  # neither C nor Fortran order
    views["expanded"] = torch.randn(3, 1).expand(3, 4)  # stride 0
    views["scalar"] = torch.tensor(2.5)
    views["empty"] = torch.zeros(0, 3)
    views["i64"] = torch.tensor([-3, 0, 2**40])
    views["i32"] = torch.tensor([-7, 8], dtype=torch.int32)
    views["mask"] = torch.tensor([True, False, True])
    views["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    views["bf16"] = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    views["f64"] = torch.tensor([1.0 / 3.0], dtype=torch.float64)
    views["param"] = nn.Parameter(torch.tensor([0.25, 0.5]))
    torch.save(views, path("views.pth"))
    expect("views", views)

    # Legacy (pre-1.6) serialization: must be detected and explained.
    torch.save(sd, path("legacy.pth"), _use_new_zipfile_serialization=False)
    # A whole pickled module rather than a state dict.
    torch.save(model, path("full_model.pth"))
    # Pickle protocol 4 (torch.save(..., pickle_protocol=4)).
    torch.save(sd, path("protocol4.pth"), pickle_protocol=4)

    save_file(expected, path("expected.safetensors"))
    total = 0
    for dirpath, _, files in os.walk(out):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
