"""Parity fixtures for PSSL: classifiers (segkit_models::classifier), SmoothGrad
(segkit_train::pssl) against captum, and the decile quantisation against numpy.

Cases (tests/fixtures/pssl/):
- classifier_resnet50.safetensors: torchvision resnet50 (fc included, 1000 classes), synthetic
  weights, input synth.synthetic_input((2, 3, 224, 224), key="pssl_input"); every logit stored;
- classifier_resnet50d.safetensors: timm resnet50d, same input;
- classifier_swin_tiny.safetensors: transformers' SwinForImageClassification (swin-tiny
  config, 1000 classes), synthetic weights under segkit's names (`swin.layernorm` takes the
  synthetic value of `swin.hidden_states_norms.stage4`, the one rename), same input. Called
  as HF does (encoder without `always_partition`: stage 4, 7x7 under a 7x7 window, is not
  shifted, unlike SwinBackbone); the model is loaded fresh, as transformers' SwinLayer keeps
  the shift it clamps;
- smoothgrad_resnet50.safetensors: captum's NoiseTunnel(Saliency(model)).attribute(x,
  nt_type="smoothgrad", nt_samples=3, stdevs=0.6, target=[3, 917]) on the full-size
  synthetic resnet50 at 2x3x224x224. captum draws its noise with torch.normal(0, stdev); the
  generator replaces torch.normal for that call with `mean + std * z`, where z is
  `gaussian_noise("pssl_noise", (6, 3, 224, 224))` below (Box-Muller over synth.uniform, the
  same function as segkit_train::pssl::gaussian_noise), so both sides see the same draws and
  captum's own averaging, abs and batching are exercised. Stored: the attribution times
  SCALE = 2e4
  (2x3x224x224, every element entering the summary) and its channel max;
- integrated_gradients_resnet50.safetensors: captum's IntegratedGradients(model).attribute(x,
  baselines=None (zeros), target=[3, 917], n_steps=IG_STEPS, method="riemann_trapezoid") on
  the same full-size synthetic resnet50 and 2x3x224x224 input, float32; stored whole (every
  element, times IG_SCALE so that its absmax is ~1). captum's trapezoid weights are 1/n (end
  points 1/(2n)), summing to (n-1)/n; segkit's IntegratedGradients uses the same.
  attribution_f64: the same run in float64, the value the test compares with (both float32
  runs flip a few near-tie patches, each at its own places: captum float32 is 8.5e-5 x absmax
  from it, segkit 1.05e-4; tests/tests/pssl_parity.rs says what is asserted).
- deciles.safetensors: per-image deciles (np.percentile, method "linear", q = 10..90 on the
  float64 values of float32 scores; decile = number of thresholds strictly below the score) of
  random scores, of scores with many ties, and of a constant image.

The weighted cross-entropy of PSSL (1.0 per class, 0.1 background, ignore 1001) is checked
against torch in gen_losses.py ("pssl" case, tests/tests/train_loss_parity.rs).

Run: python tests/parity/gen_pssl.py tests/fixtures   (add --bench for captum's throughput)
"""
import os
import sys
import time

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import synth  # noqa: E402

INPUT = (2, 3, 224, 224)
TARGETS = [3, 917]
SAMPLES = 3
STDEV = 0.6
SCALE = 2.0e4
IG_STEPS = 8
IG_SCALE = 1.4e4


def gaussian_noise(key, shape):
    """Standard normal draws: Box-Muller on u1 = uniform(key + ".u1"), u2 = uniform(key + ".u2"),
    z = sqrt(-2 ln(1 - u1)) cos(2 pi u2) in float64, cast to float32."""
    n = int(np.prod(shape))
    u1 = synth.uniform(key + ".u1", n)
    u2 = synth.uniform(key + ".u2", n)
    z = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy(z.astype(np.float32).reshape(shape))


def save(out_dir, name, d):
    path = os.path.join(out_dir, "pssl", name + ".safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("wrote", path, {k: tuple(v.shape) for k, v in d.items() if k.count(".") == 0})


def resnet50():
    import torchvision

    m = torchvision.models.resnet50(weights=None).eval()
    return synth.fill_(m)


def classifiers(out_dir):
    x = synth.synthetic_input(INPUT, key="pssl_input")
    with torch.no_grad():
        save(out_dir, "classifier_resnet50", {"logits": resnet50()(x)})
        import timm

        m = synth.fill_(timm.create_model("resnet50d", pretrained=False).eval())
        save(out_dir, "classifier_resnet50d", {"logits": m(x)})
        save(out_dir, "classifier_swin_tiny", {"logits": swin_tiny()(x).logits})


def swin_tiny():
    """SwinForImageClassification with every checkpoint tensor (the names save_pretrained
    writes, which transformers >= 5 maps onto other module names) set to its synthetic value;
    `swin.layernorm` takes the value of segkit's name for it."""
    import tempfile

    from safetensors.torch import load_file
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                     image_size=224, num_labels=1000, drop_path_rate=0.0)
    m = SwinForImageClassification(cfg)
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d)
        path = os.path.join(d, "model.safetensors")
        sd = load_file(path)
        filled = {}
        for k, v in sd.items():
            name = k.replace("swin.layernorm.", "swin.hidden_states_norms.stage4.")
            filled[k] = torch.from_numpy(synth.synthetic_values(name, v.shape)).to(v.dtype)
        save_file(filled, path, metadata={"format": "pt"})
        m, info = SwinForImageClassification.from_pretrained(d, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{kind}: {info[kind]}"
    return m.eval()


def smoothgrad(out_dir):
    from captum.attr import NoiseTunnel, Saliency

    model = resnet50()
    x = synth.synthetic_input(INPUT, key="pssl_input")
    z = gaussian_noise("pssl_noise", (INPUT[0] * SAMPLES,) + INPUT[1:])
    real = torch.normal

    def given(mean, std, *a, **kw):
        assert tuple(std.shape) == tuple(z.shape), (std.shape, z.shape)
        return mean + std * z

    torch.normal = given
    try:
        nt = NoiseTunnel(Saliency(model))
        attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=STDEV,
                            target=TARGETS, nt_samples_batch_size=SAMPLES)
    finally:
        torch.normal = real
    # The gradients of this synthetic network are ~5e-5; scaled by SCALE (absmax ~1) so that
    # DESIGN.md's tolerance 1e-4 * max(1, absmax) is relative to the signal.
    attr = attr.detach() * SCALE
    d = {}
    d.update(synth.sample_outputs("saliency", attr))
    d.update(synth.sample_outputs("channel_max", attr.amax(dim=1)))
    print("smoothgrad absmax", float(attr.abs().max()))
    save(out_dir, "smoothgrad_resnet50", d)


def integrated_gradients(out_dir):
    from captum.attr import IntegratedGradients

    model = resnet50()
    x = synth.synthetic_input(INPUT, key="pssl_input")
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, target=TARGETS, n_steps=IG_STEPS, method="riemann_trapezoid",
                        internal_batch_size=2 * INPUT[0])
    attr = attr.detach()
    print("integrated gradients absmax", float(attr.abs().max()), "sum per image",
          attr.sum(dim=(1, 2, 3)).tolist())
    # The same in float64: the value both float32 runs approximate (their near-tie flips fall
    # in different places, so each is compared with this one).
    model64 = resnet50().double()
    attr64 = IntegratedGradients(model64).attribute(
        x.double(), target=TARGETS, n_steps=IG_STEPS, method="riemann_trapezoid",
        internal_batch_size=2 * INPUT[0]).detach()
    print("captum float32 vs float64, x absmax:",
          float((attr.double() - attr64).abs().max() / attr64.abs().max()))
    save(out_dir, "integrated_gradients_resnet50", {
        "attribution": (attr * IG_SCALE).float(),
        "attribution_f64": (attr64 * IG_SCALE).float(),
    })


def deciles_of(scores):
    """scores: B x H x W float32 -> thresholds B x 9 (float64), deciles B x H x W (uint8)."""
    th, dec = [], []
    for s in scores:
        v = s.astype(np.float64).ravel()
        t = np.percentile(v, [10 * k for k in range(1, 10)])
        th.append(t)
        dec.append(np.searchsorted(t, v, side="left").reshape(s.shape).astype(np.uint8))
    return np.stack(th), np.stack(dec)


def deciles(out_dir):
    rng = np.random.default_rng(13)
    random = rng.random((3, 37, 41)).astype(np.float32)
    tied = np.round(rng.random((3, 37, 41)) * 6).astype(np.float32) / 6.0
    tied[2] = 0.25  # constant image: no score above any threshold
    d = {}
    for name, s in (("random", random), ("tied", tied)):
        t, q = deciles_of(s)
        d[f"{name}.scores"] = torch.from_numpy(s)
        d[f"{name}.thresholds"] = torch.from_numpy(t)
        d[f"{name}.deciles"] = torch.from_numpy(q)
    save(out_dir, "deciles", d)


def bench(samples=8, size=224, threads=2, repeats=3):
    """captum SmoothGrad throughput: explanations (one image, `samples` noisy copies) / s."""
    from captum.attr import NoiseTunnel, Saliency

    torch.set_num_threads(threads)
    model = resnet50()
    x = synth.synthetic_input((1, 3, size, size), key="pssl_input")
    nt = NoiseTunnel(Saliency(model))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        nt.attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=STDEV, target=3,
                     nt_samples_batch_size=samples)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(f"captum SmoothGrad resnet50 {size}x{size} N={samples} threads={threads}: "
          f"{med:.3f} s/explanation, {1.0 / med:.4f} explanations/s")


def main(out_dir):
    os.makedirs(os.path.join(out_dir, "pssl"), exist_ok=True)
    parts = [a for a in sys.argv[2:] if not a.startswith("-")] or ["deciles", "classifiers", "smoothgrad",
                                                               "integrated_gradients"]
    for p in parts:
        globals()[p](out_dir)


if __name__ == "__main__":
    if "--bench" in sys.argv:
        bench()
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
