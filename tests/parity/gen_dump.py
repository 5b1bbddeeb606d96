"""Fixture for the `segkit dump` end-to-end test: a real torchvision ResNet-50 checkpoint
written by `torch.save(model.state_dict())`, and torchvision's C5 on it.

A full ResNet-50 .pth is ~100 MB. To keep the committed file small, each tensor's synthetic
values repeat with a period of 4093 elements (synth.synthetic_values, index mod 4093), which
gzip compresses ~100x; the test gunzips it into a temporary directory and runs the `segkit`
binary on it. Nothing else about the file is special: it is torch.save's zip format.
"""
import gzip
import io
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

PERIOD = 4093
INPUT = (1, 3, 97, 129)


def periodic_(model):
    sd = model.state_dict()
    new = {}
    for k, t in sd.items():
        v = synth.synthetic_values(k, t.shape, period=PERIOD)
        new[k] = torch.from_numpy(v).to(t.dtype)
    model.load_state_dict(new)


def main(out_dir):
    import torchvision

    d = os.path.join(out_dir, "dump")
    os.makedirs(d, exist_ok=True)
    torch.set_grad_enabled(False)
    m = torchvision.models.resnet50(weights=None).eval()
    periodic_(m)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    # mtime=0: the .gz bytes depend only on the checkpoint (regeneration is reproducible).
    with open(os.path.join(d, "resnet50_torchvision.pth.gz"), "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(buf.getvalue())
    x = synth.synthetic_input(INPUT)
    y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    y = m.layer4(m.layer3(m.layer2(m.layer1(y))))
    save_file(synth.sample_outputs("c5", y), os.path.join(d, "resnet50_torchvision_c5.safetensors"))
    print("wrote", d, tuple(y.shape))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
