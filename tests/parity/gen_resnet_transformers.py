"""Parity fixtures for segkit-backbones' ResNet with `KeyStyle::Hf` against
transformers' `ResNetBackbone` (models/resnet/modeling_resnet.py, CPU, f32).

- resnet_transformers/keys.json: every state-dict key and shape (without BatchNorm's
  `num_batches_tracked`) of `ResNetBackbone` for ResNet-18 (basic blocks) and ResNet-50
  (bottlenecks), out_features stage1..stage4: the Rust test checks that segkit asks for exactly
  these keys with these shapes.
- resnet_transformers/resnet18.safetensors: ResNet-18 with synthetic weights (synth.py, keyed
  by the HF names), eval mode, on synth.synthetic_input((1, 3, 61, 75), "resnet.hf"): the input
  and the four feature maps in full (every element is compared).

Run by `cargo xtask fixtures`, or: python tests/parity/gen_resnet_transformers.py tests/fixtures
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

INPUT = (1, 3, 61, 75)
CASES = {
    "resnet18": dict(depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512]),
    "resnet50": dict(depths=[3, 4, 6, 3], layer_type="bottleneck",
                     hidden_sizes=[256, 512, 1024, 2048]),
}


def backbone(name):
    from transformers import ResNetBackbone, ResNetConfig

    cfg = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"], **CASES[name])
    return ResNetBackbone(cfg).eval()


def main(out_dir):
    d = os.path.join(out_dir, "resnet_transformers")
    os.makedirs(d, exist_ok=True)
    keys = {}
    for name in CASES:
        sd = backbone(name).state_dict()
        keys[name] = {k: list(t.shape) for k, t in sd.items() if not k.endswith("num_batches_tracked")}
    with open(os.path.join(d, "keys.json"), "w") as f:
        json.dump(keys, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote keys", {k: len(v) for k, v in keys.items()})

    torch.manual_seed(0)
    m = synth.fill_(backbone("resnet18"))
    x = synth.synthetic_input(INPUT, key="resnet.hf")
    with torch.no_grad():
        maps = m(x).feature_maps
    out = {"input": x}
    for n, t in zip(["c2", "c3", "c4", "c5"], maps):
        out[n] = t.contiguous()
    path = os.path.join(d, "resnet18.safetensors")
    save_file(out, path)
    print("wrote", path, [tuple(t.shape) for t in maps], [float(t.abs().max()) for t in maps])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
