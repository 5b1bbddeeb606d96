"""Real checkpoint files for `segkit_core::checkpoint` (crates/core/tests/checkpoint.rs).

Reference: PyTorch `torch.save` and the `safetensors` package (versions pinned in
tests/parity/requirements.txt). Every file here is written by the real library, in the shapes
users meet: torchvision plain state dicts, `{state_dict}` / `{model}` wrappers, mmseg model-zoo
checkpoints (`{meta, state_dict, optimizer}` with arbitrary Python objects in `meta`),
DataParallel `module.` prefixes, HF `pytorch_model.bin`, safetensors, fp16, strided views and
tensors sharing storage, the legacy (pre-1.6) format, and a few files that are not state dicts.

Legacy (non-zip) files as PyTorch 0.4 / 1.0 wrote them (PANet's `{step, model, optimizer}`,
Gated-SCNN's `{state_dict (module.*), optimizer, epoch, mean_iu}`), a legacy file with storage
views (`view_metadata`, written by hand: torch >= 1.6 no longer writes them, but still reads
them, and its values are the expected ones), a big-endian zip file (torch.load byte-swaps it),
protocol-5 pickles, and hostile files under tests/fixtures/hostile/ (decompression bombs).

Usage: python tests/parity/gen_checkpoints.py tests/fixtures
Writes tests/fixtures/checkpoints/*.{pth,bin,safetensors} (a few KB each) and
`expected.safetensors`, which holds the values torch sees, named `<case>.<key>`; and
tests/fixtures/hostile/*.pth (see `hostile`).
"""

import collections
import io
import os
import pickle
import pickletools
import struct
import sys
import zipfile

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

    # Legacy (pre-1.6) serialization.
    torch.save(sd, path("legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(views, path("legacy_views.pth"), _use_new_zipfile_serialization=False)
    torch.save(model, path("legacy_module.pth"), _use_new_zipfile_serialization=False)
    legacy_checkpoints(path, expect)
    # A whole pickled module rather than a state dict.
    torch.save(model, path("full_model.pth"))
    # Pickle protocol 4 and 5 (torch.save(..., pickle_protocol=N)).
    torch.save(sd, path("protocol4.pth"), pickle_protocol=4)
    torch.save(sd, path("protocol5.pth"), pickle_protocol=5)
    torch.save(sd, path("legacy_protocol5.pth"), pickle_protocol=5, _use_new_zipfile_serialization=False)
    big_endian_zip(path("plain.pth"), path("big_endian.pth"), sd)
    hostile(os.path.join(root, "hostile"))

    save_file(expected, path("expected.safetensors"))
    total = 0
    for dirpath, _, files in os.walk(out):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"wrote {out} ({total} bytes)")


MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class PanetLike(nn.Module):
    """PANet (Detectron.pytorch) key names: Conv_Body.*, RPN.*, Mask_Outs.*, AffineChannel2d."""

    def __init__(self):
        super().__init__()
        self.Conv_Body = nn.Module()
        self.Conv_Body.conv_body = nn.Module()
        self.Conv_Body.conv_body.res2 = nn.ModuleList([nn.Module()])
        block = self.Conv_Body.conv_body.res2[0]
        block.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        block.conv1_bn = nn.Module()  # AffineChannel2d: weight and bias parameters
        block.conv1_bn.weight = nn.Parameter(torch.randn(4))
        block.conv1_bn.bias = nn.Parameter(torch.randn(4))
        self.Conv_Body.posthoc_modules = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.GroupNorm(2, 4)) for _ in range(2)]
        )
        self.RPN = nn.Module()
        self.RPN.FPN_RPN_conv = nn.Conv2d(4, 4, 3)
        self.Mask_Outs = nn.Module()
        self.Mask_Outs.classify = nn.Conv2d(4, 3, 1)


class GscnnLike(nn.Module):
    """Gated-SCNN key names: mod2.block1.{bn1.0, convs.conv1}, gate1._gate_conv, final_seg."""

    def __init__(self):
        super().__init__()
        self.mod2 = nn.Module()
        self.mod2.block1 = nn.Module()
        self.mod2.block1.bn1 = nn.Sequential(nn.BatchNorm2d(3))
        self.mod2.block1.convs = nn.Sequential(collections.OrderedDict(conv1=nn.Conv2d(3, 4, 3, bias=False)))
        self.gate1 = nn.Module()
        self.gate1._gate_conv = nn.Sequential(
            nn.BatchNorm2d(5), nn.Conv2d(5, 5, 1), nn.ReLU(), nn.Conv2d(5, 1, 1), nn.BatchNorm2d(1)
        )
        self.final_seg = nn.Sequential(nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4))


def trained(model, optimizer):
    """One SGD step, so that the optimizer holds momentum buffers (storages of their own)."""
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(3)


def pickle_ends(data, n):
    """Byte offsets just after each of the first `n` pickles of `data`."""
    f = io.BytesIO(data)
    ends = []
    for _ in range(n):
        for _op in pickletools.genops(f):
            pass
        ends.append(f.tell())
    return ends


class StorageRef:
    """A storage (or a legacy storage view) for `LegacyPickler`."""

    def __init__(self, key, numel, view=None):
        self.key, self.numel, self.view = key, numel, view


class TensorRef:
    """Pickles as torch does: `_rebuild_tensor_v2(storage, offset, size, stride, ..)`."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce_ex__(self, proto):
        return (torch._utils._rebuild_tensor_v2, self.args)


class LegacyPickler(pickle.Pickler):
    """Storage references as torch's persistent ids (`view_metadata` for legacy files)."""

    legacy = True

    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return pid + (obj.view,) if self.legacy else pid
        return None


def legacy_checkpoints(path, expect):
    """PANet- and Gated-SCNN-shaped legacy files, and one with storage views."""
    legacy = dict(_use_new_zipfile_serialization=False)
    torch.manual_seed(4)
    panet = PanetLike()
    opt = torch.optim.SGD(panet.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    trained(panet, opt)
    expect("panet", panet.state_dict())
    torch.save(
        {"step": 179999, "train_size": 118287, "batch_size": 16, "model": panet.state_dict(),
         "optimizer": opt.state_dict()},
        path("legacy_panet.pth"), **legacy,
    )
    torch.manual_seed(5)
    gscnn = GscnnLike()
    opt = torch.optim.SGD(gscnn.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    trained(gscnn, opt)
    expect("gscnn", gscnn.state_dict())
    torch.save(
        {"state_dict": nn.DataParallel(gscnn).state_dict(), "optimizer": opt.state_dict(),
         "epoch": 174, "mean_iu": np.float64(0.808)},
        path("legacy_gscnn.pth"), **legacy,
    )

    # Storage views: a root storage of 12 floats; `a` lies in the view 2..8, `b` in 8..12.
    root = torch.arange(12, dtype=torch.float32) * 0.5 - 1.0
    obj = collections.OrderedDict()
    obj["a"] = TensorRef(StorageRef("root", 12, ("v1", 2, 6)), 1, (2, 2), (2, 1))
    obj["b"] = TensorRef(StorageRef("root", 12, ("v2", 8, 4)), 0, (4,), (1,))
    obj["c"] = TensorRef(StorageRef("root", 12, None), 0, (3,), (4,))
    p = path("legacy_storage_views.pth")
    with open(p, "wb") as f:
        pickle.dump(MAGIC_NUMBER, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        LegacyPickler(f, protocol=2).dump(obj)
        pickle.dump(["root"], f, protocol=2)
        f.write(struct.pack("<q", 12) + root.numpy().tobytes())
    expect("storage_views", torch.load(p, weights_only=False))

    # As PyTorch 0.4 wrote it on a big-endian machine: sys_info says big-endian and the
    # element counts are in native order; the data is little-endian anyway.
    floats = collections.OrderedDict((k, v) for k, v in panet.state_dict().items() if v.is_floating_point())
    buf = io.BytesIO()
    torch.save(floats, buf, **legacy)
    data = bytearray(buf.getvalue())
    ends = pickle_ends(bytes(data), 5)
    info = data[ends[1]:ends[2]]
    at = info.index(b"little_endian")
    flag = info.index(b"\x88", at)
    data[ends[1] + flag] = 0x89
    keys = pickle.loads(bytes(data[ends[3]:ends[4]]))
    pos = ends[4]
    for _ in keys:
        (n,) = struct.unpack("<q", data[pos:pos + 8])
        data[pos:pos + 8] = struct.pack(">q", n)
        pos += 8 + 4 * n
    assert pos == len(data)
    with open(path("legacy_big_endian_machine.pth"), "wb") as f:
        f.write(data)
    expect("panet_floats", floats)


def big_endian_zip(src, dst, sd):
    """`src` rewritten as a big-endian machine writes it: byteorder `big`, every storage's
    elements byte-swapped. torch.load byte-swaps it back (checked)."""
    sizes = [v.element_size() for v in sd.values()]  # storage i is the i-th tensor's
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            folder, _, name = info.filename.rpartition("/")
            if name == "byteorder":
                data = b"big"
            elif folder.endswith("/data") and name.isdigit():
                es = sizes[int(name)]
                data = b"".join(data[i:i + es][::-1] for i in range(0, len(data), es))
            zout.writestr(info.filename, data)
    back = torch.load(dst)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def bomb(path, declared_elems, data_bytes, lie):
    """A zip checkpoint whose storage entry `data/0` is `data_bytes` zeros, deflated; the
    pickle declares `declared_elems` f32 elements. With `lie`, both zip headers declare the
    entry as 16 bytes, whatever it expands to."""
    pkl = io.BytesIO()
    p = LegacyPickler(pkl, protocol=2)
    p.legacy = False
    p.dump({"w": TensorRef(StorageRef("0", declared_elems), 0, (declared_elems,), (1,))})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bomb/data.pkl", pkl.getvalue())
        z.writestr("bomb/byteorder", b"little")
        info = zipfile.ZipInfo("bomb/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(data_bytes >> 20):
                f.write(chunk)
    if lie:
        data = bytearray(open(path, "rb").read())
        name = b"bomb/data/0"
        for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
            at = 0
            while (at := data.find(sig, at)) >= 0:
                if data[at + name_at:at + name_at + len(name)] == name:
                    data[at + size_at:at + size_at + 4] = struct.pack("<I", 16)
                at += 4
        with open(path, "wb") as f:
            f.write(data)


def hostile(out):
    """Decompression bombs (about 520 KB each, 512 MiB of zeros inside): the pickle declares
    the 512 MiB (refused from the declared sizes, before decompressing), or declares 4
    elements while the zip headers claim 16 bytes (a bounded read stops at byte 17)."""
    os.makedirs(out, exist_ok=True)
    size = 512 << 20
    bomb(os.path.join(out, "bomb_declared.pth"), size // 4, size, lie=False)
    bomb(os.path.join(out, "bomb_lying.pth"), 4, size, lie=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
