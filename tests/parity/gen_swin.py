"""Parity fixtures for segkit-backbones' Swin against transformers' SwinBackbone.

Weights: synthetic (synth.py) under the checkpoint key names that `save_pretrained` writes
(`embeddings.patch_embeddings.projection.weight`, `encoder.layers.0.blocks.0.attention.self.
query.weight`, `hidden_states_norms.stage1.weight`, ...): the generator saves a model with
save_pretrained, overwrites every tensor of the file with its synthetic value and loads it back
with from_pretrained, so transformers' own key conversion is exercised and no key is missed.
relative_position_index is a non-persistent buffer in transformers >= 5 (computed, never in the
file), so it keeps HF's value.

Cases (each fixture stores synth.sample_outputs of every returned map, named like HF's stages):
- swin_tiny_oneformer_97x129: the backbone_config of shi-labs/oneformer_ade20k_swin_tiny
  (Swin-T, window 7, stage1..4), input synth.synthetic_input((1, 3, 97, 129)): odd sizes pad in
  the patch embedding, in every block and in patch merging;
- swin_tiny_oneformer_224: the same at (1, 3, 224, 224);
- swin_reduced_*: small configs with other windows, batch 2, the stem output, no qkv bias;
- swin_small_97x129, swin_base_w12_97x129, swin_large_w12_97x129: full-size Swin-S (window 7),
  Swin-B and Swin-L (window 12, as in Mask2Former / OneFormer) at 1x3x97x129.

Run by `cargo xtask fixtures`, or: python tests/parity/gen_swin.py tests/fixtures
Timing (Swin-T 1x3x512x512, 2 threads, median of 5): python tests/parity/gen_swin.py --bench
"""
import os
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

STAGES = ["stage1", "stage2", "stage3", "stage4"]

# shi-labs/oneformer_ade20k_swin_tiny config.json, backbone_config (the fields that matter).
ONEFORMER_SWIN_TINY = dict(
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=7,
    image_size=224,
    patch_size=4,
    num_channels=3,
    mlp_ratio=4.0,
    qkv_bias=True,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.3,
    use_absolute_embeddings=False,
    layer_norm_eps=1e-5,
    out_features=STAGES,
)

REDUCED = dict(
    embed_dim=32,
    depths=[1, 2, 1, 1],
    num_heads=[1, 2, 2, 4],
    window_size=4,
    mlp_ratio=2.5,
    qkv_bias=False,
    drop_path_rate=0.2,
    out_features=["stem"] + STAGES,
)

REDUCED_W12 = dict(
    embed_dim=24,
    depths=[2, 2, 2, 2],
    num_heads=[2, 4, 4, 8],
    window_size=12,
    layer_norm_eps=1e-6,
    out_features=["stage2", "stage4"],
)


# microsoft/swin-small-patch4-window7-224, swin-base-patch4-window12-384 and
# swin-large-patch4-window12-384 (the Mask2Former / OneFormer Swin-B and Swin-L): the fields
# that differ from Swin-T.
SWIN_SMALL = dict(ONEFORMER_SWIN_TINY, depths=[2, 2, 18, 2], drop_path_rate=0.3)
SWIN_BASE_W12 = dict(
    ONEFORMER_SWIN_TINY, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
    window_size=12, image_size=384,
)
SWIN_LARGE_W12 = dict(
    ONEFORMER_SWIN_TINY, embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
    window_size=12, image_size=384,
)


def synthetic_backbone(**cfg_kwargs):
    """transformers' SwinBackbone with every checkpoint tensor set to its synthetic value."""
    from transformers import SwinBackbone, SwinConfig

    model = SwinBackbone(SwinConfig(**cfg_kwargs))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        path = os.path.join(d, "model.safetensors")
        sd = load_file(path)
        filled = {
            k: torch.from_numpy(synth.synthetic_values(k, v.shape)).to(v.dtype) for k, v in sd.items()
        }
        save_file(filled, path, metadata={"format": "pt"})
        model, info = SwinBackbone.from_pretrained(d, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{kind}: {info[kind]}"
    # Every parameter of the loaded model is one of the synthetic tensors (no re-initialisation).
    want = sorted(round(float(v.double().sum()), 6) for v in filled.values())
    got = sorted(round(float(p.detach().double().sum()), 6) for p in model.parameters())
    assert want == got, "loaded parameters differ from the synthetic checkpoint"
    return model.eval()


def run_case(out_dir, name, cfg_kwargs, shape, key, n=2048):
    model = synthetic_backbone(**cfg_kwargs)
    x = synth.synthetic_input(shape, key=key)
    with torch.no_grad():
        out = model(x)
    d = {}
    for stage, t in zip(model.out_features, out.feature_maps):
        d.update(synth.sample_outputs(stage, t, n=n))
    path = os.path.join(out_dir, "swin", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, [(s, tuple(t.shape), float(t.abs().max())) for s, t in zip(model.out_features, out.feature_maps)])


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "swin"), exist_ok=True)
    torch.set_grad_enabled(False)
    run_case(out_dir, "swin_tiny_oneformer_97x129", ONEFORMER_SWIN_TINY, (1, 3, 97, 129), "input")
    run_case(out_dir, "swin_tiny_oneformer_224", ONEFORMER_SWIN_TINY, (1, 3, 224, 224), "input", n=1024)
    run_case(out_dir, "swin_reduced_w4_b2", REDUCED, (2, 3, 75, 53), "input_reduced", n=1024)
    run_case(out_dir, "swin_reduced_w12", REDUCED_W12, (1, 3, 97, 129), "input", n=1024)
    # Full-size Swin-S / B / L (every layer and key) on the same odd-sized input.
    run_case(out_dir, "swin_small_97x129", SWIN_SMALL, (1, 3, 97, 129), "input", n=1024)
    run_case(out_dir, "swin_base_w12_97x129", SWIN_BASE_W12, (1, 3, 97, 129), "input", n=1024)
    run_case(out_dir, "swin_large_w12_97x129", SWIN_LARGE_W12, (1, 3, 97, 129), "input", n=1024)


def bench(size=512, threads=2, repeats=5):
    from transformers import SwinBackbone, SwinConfig

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    model = SwinBackbone(SwinConfig(**ONEFORMER_SWIN_TINY)).eval()
    x = synth.synthetic_input((1, 3, size, size), key="bench")
    model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"transformers SwinBackbone swin-tiny 1x3x{size}x{size}, {threads} threads: "
          f"median {times[len(times) // 2] * 1e3:.1f} ms (all: {[round(t * 1e3, 1) for t in times]})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench()
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
