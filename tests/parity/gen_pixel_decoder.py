"""Parity fixtures for segkit-necks' multi-scale deformable-attention pixel decoder against
transformers' `OneFormerPixelDecoder` and its `multi_scale_deformable_attention` function
(models/oneformer/modeling_oneformer.py, transformers 5.24).

Weights: synthetic (synth.py), filled with `synth.fill_` on the decoder module itself, so the
keys are the decoder's state-dict keys without the full model's prefix
`model.pixel_level_module.decoder.` (every parameter, `level_embed` included, gets its
synthetic value). Inputs: `synth.synthetic_input` with one key per feature map.

Cases:
- pixel_decoder/oneformer_swin_tiny_97x129: OneFormerConfig defaults (= shi-labs
  oneformer_ade20k_swin_tiny's pixel decoder: conv_dim 256, mask_dim 256, 6 encoder layers, 8
  heads, FFN 1024, common stride 4) on Swin-T channels 96/192/384/768 at the sizes a 1x3x97x129
  image gives through Swin (25x33, 13x17, 7x9, 4x5; Swin pads to multiples of the patch size
  and of 2 before each merge); keys pd.stage1 .. pd.stage4.
- pixel_decoder/reduced_b2: conv_dim 64, mask_dim 32, 2 layers, 4 heads, FFN 96, channels
  16/24/40/64, batch 2, sizes 21x18, 11x9, 6x5, 3x3; keys pdr.stage1 .. pdr.stage4.
- pixel_decoder/msda_core: HF's `multi_scale_deformable_attention` alone on synthetic value /
  sampling locations / attention weights (softmax over levels x points) in three
  configurations; locations are `scale * u + 0.5` with u = synthetic_input in U(-2, 2), so many
  points fall outside the maps (zero padding).

Outputs are stored with synth.sample_outputs: `mask_features`, `multi_scale_features.{i}`
(HF order: stride 32, 16, 8) and `msda.<case>`.

Run by `cargo xtask fixtures`, or: python tests/parity/gen_pixel_decoder.py tests/fixtures
Timing (512x512 sizes, 2 threads, median of 5): python tests/parity/gen_pixel_decoder.py --bench
(an optional thread count follows --bench); the Rust side: RAYON_NUM_THREADS=2 cargo test
--release -p segkit-tests --test pixel_decoder_parity bench -- --ignored --nocapture
"""
import os
import sys
import time

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

SWIN_T = [96, 192, 384, 768]
SIZES_97x129 = [(25, 33), (13, 17), (7, 9), (4, 5)]

# (name, batch, heads, head dim, level shapes, queries, location scale)
MSDA_CASES = [
    ("hf_like", 2, 8, 32, [(13, 17), (7, 9), (4, 5)], 50, 0.35),
    ("odd", 1, 2, 5, [(1, 1), (6, 3)], 40, 0.5),
    ("one_level", 1, 3, 8, [(9, 14)], 33, 0.3),
]
MSDA_POINTS = {"hf_like": 4, "odd": 3, "one_level": 2}


def reduced_config():
    from transformers import OneFormerConfig

    return OneFormerConfig(
        conv_dim=64,
        mask_dim=32,
        encoder_layers=2,
        num_attention_heads=4,
        encoder_feedforward_dim=96,
    )


def build_decoder(config, channels):
    from transformers.models.oneformer.modeling_oneformer import OneFormerPixelDecoder

    dec = OneFormerPixelDecoder(config, feature_channels=channels)
    synth.fill_(dec)
    keys = list(dec.state_dict().keys())
    assert "level_embed" in keys, keys
    return dec.eval()


def features(prefix, batch, channels, sizes):
    return [
        synth.synthetic_input((batch, c, h, w), key=f"{prefix}.stage{i + 1}")
        for i, (c, (h, w)) in enumerate(zip(channels, sizes))
    ]


def decoder_case(out_dir, name, config, channels, prefix, batch, sizes, n=2048):
    dec = build_decoder(config, channels)
    feats = features(prefix, batch, channels, sizes)
    with torch.no_grad():
        out = dec(feats)
    d = {}
    d.update(synth.sample_outputs("mask_features", out.mask_features, n=n))
    for i, t in enumerate(out.multi_scale_features):
        d.update(synth.sample_outputs(f"multi_scale_features.{i}", t, n=n))
    path = os.path.join(out_dir, "pixel_decoder", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, [(tuple(t.shape), float(t.abs().max())) for t in [out.mask_features, *out.multi_scale_features]])


def msda_inputs(name, batch, heads, dim, shapes, queries, scale, points):
    s = sum(h * w for h, w in shapes)
    levels = len(shapes)
    value = synth.synthetic_input((batch, s, heads, dim), key=f"msda.{name}.value")
    u = synth.synthetic_input((batch, queries, heads, levels, points, 2), key=f"msda.{name}.loc")
    loc = u * scale + 0.5
    logits = synth.synthetic_input((batch, queries, heads, levels * points), key=f"msda.{name}.attn")
    attn = torch.softmax(logits, -1).view(batch, queries, heads, levels, points)
    return value, loc, attn


def msda_fixture(out_dir):
    from transformers.models.oneformer.modeling_oneformer import multi_scale_deformable_attention

    d = {}
    for name, batch, heads, dim, shapes, queries, scale in MSDA_CASES:
        value, loc, attn = msda_inputs(name, batch, heads, dim, shapes, queries, scale, MSDA_POINTS[name])
        out = multi_scale_deformable_attention(value, shapes, loc, attn)
        outside = float(((loc < 0) | (loc > 1)).float().mean())
        print(name, tuple(out.shape), f"outside fraction {outside:.2f}", float(out.abs().max()))
        d.update(synth.sample_outputs(f"msda.{name}", out, n=1024))
    path = os.path.join(out_dir, "pixel_decoder", "msda_core.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path)


def main(out_dir):
    from transformers import OneFormerConfig

    os.makedirs(os.path.join(out_dir, "pixel_decoder"), exist_ok=True)
    torch.set_grad_enabled(False)
    msda_fixture(out_dir)
    decoder_case(out_dir, "oneformer_swin_tiny_97x129", OneFormerConfig(), SWIN_T, "pd", 1, SIZES_97x129)
    decoder_case(
        out_dir, "reduced_b2", reduced_config(), [16, 24, 40, 64], "pdr", 2,
        [(21, 18), (11, 9), (6, 5), (3, 3)], n=1024,
    )


def median_ms(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3, [round(t * 1e3, 1) for t in times]


def bench(threads=2):
    """The 512x512 sizes: Swin-T features 128x128, 64x64, 32x32, 16x16; the attention core at
    the encoder's sizes (queries = all 64x64 + 32x32 + 16x16 positions, 8 heads x 32, 3 levels,
    4 points)."""
    from transformers import OneFormerConfig
    from transformers.models.oneformer.modeling_oneformer import multi_scale_deformable_attention

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    shapes = [(16, 16), (32, 32), (64, 64)]
    s = sum(h * w for h, w in shapes)
    value, loc, attn = msda_inputs("bench", 1, 8, 32, shapes, s, 0.3, 4)
    med, all_ = median_ms(lambda: multi_scale_deformable_attention(value, shapes, loc, attn))
    print(f"transformers multi_scale_deformable_attention 1x{s} queries, {threads} threads: median {med:.1f} ms (all {all_})")
    dec = build_decoder(OneFormerConfig(), SWIN_T)
    feats = features("bench", 1, SWIN_T, [(128, 128), (64, 64), (32, 32), (16, 16)])
    med, all_ = median_ms(lambda: dec(feats))
    print(f"transformers OneFormerPixelDecoder 512x512 sizes, {threads} threads: median {med:.1f} ms (all {all_})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
