"""Parity fixture for PANet training pieces: the gradient of segkit's CPU RoIAlign
(`segkit_core::ops::roi_align` on a tensor that records gradients) vs torchvision's own
`roi_align(aligned=False)` backward.

Oracle: INDEPENDENT (torchvision.ops.roi_align forward and autograd backward, CPU).

Full size: 256-channel synthetic maps of a 2-image batch padded to 544x416 at stride 4
(136x104, as N2) and stride 16 (34x26, as N4); 512 RoIs for the box head's 7x7 (sampling
ratio 2, as PANet) and 128 RoIs for the mask head's 14x14 (sampling ratio 0: torchvision's
adaptive grid) including boxes partly outside the map, tiny and degenerate boxes. The upstream
gradient is a synthetic tensor; every element of the pooled output and of the input gradient
is summarised (synth.sample_outputs).
Run: python tests/parity/gen_panet_train.py tests/fixtures
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from torchvision.ops import roi_align

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

# (name, map size, spatial scale, RoIs, output size, sampling ratio)
CASES = [
    ("box", (136, 104), 0.25, 512, 7, 2),
    ("mask", (34, 26), 0.0625, 128, 14, 0),
]
IMAGE = (544, 416)


def make_rois(rng, k):
    """k RoIs (batch, x1, y1, x2, y2) in image pixels: mostly inside, some straddling the
    border, some tiny (< 1 px) and a few degenerate (x2 < x1)."""
    h, w = IMAGE
    b = rng.randint(0, 2, size=k).astype(np.float32)
    x1 = rng.uniform(-40, w, size=k)
    y1 = rng.uniform(-40, h, size=k)
    bw = rng.uniform(1, 300, size=k)
    bh = rng.uniform(1, 300, size=k)
    bw[: k // 16] = rng.uniform(0, 1.5, size=k // 16)
    bw[k // 16 : k // 16 + 4] = -3.0
    rois = np.stack([b, x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)
    return rois


def main(out_dir):
    rng = np.random.RandomState(0)
    d = {}
    for name, (h, w), scale, k, out, sr in CASES:
        x = synth.synthetic_input((2, 256, h, w), f"panet_train.{name}.feat").requires_grad_(True)
        rois = make_rois(rng, k)
        y = roi_align(x, torch.from_numpy(rois), (out, out), scale, sr, aligned=False)
        dy = synth.synthetic_input(tuple(y.shape), f"panet_train.{name}.dy")
        (dx,) = torch.autograd.grad(y, x, dy)
        d[f"{name}.rois"] = torch.from_numpy(rois)
        d.update(synth.sample_outputs(f"{name}.pooled", y))
        d.update(synth.sample_outputs(f"{name}.grad", dx))
    path = os.path.join(out_dir, "panet_train", "roi_align.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
