//! The parity check itself: `segkit_tests::check_sampled` covers every element.
//!
//! The output is shaped like PSPNet's ADE20K logits of a full-size photo (1 x 150 x 512 x 512,
//! `tests/fixtures/segmentors/pspnet_r50-d8_ade20k-512x512_astronaut.safetensors`). Its
//! summary is made by `segkit_tests::sampled::summarize` (the Rust twin of
//! `synth.sample_outputs`); each case perturbs one 16 x 16 patch and must fail the check, while
//! within-tolerance noise on every element must pass. The sampled values alone (2048 of 39.3M
//! elements) see none of these patches.

use candle_core::{Device, Tensor};
use segkit_core::testing::synthetic_input;
use segkit_tests::check_sampled;
use segkit_tests::sampled::{sample_indices, summarize, SAMPLES};

const C: usize = 150;
const H: usize = 512;
const W: usize = 512;

fn base() -> Vec<f32> {
    synthetic_input("parity_helper.logits", (1, C, H, W), &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn tensor(v: Vec<f32>) -> Tensor {
    Tensor::from_vec(v, (1, C, H, W), &Device::Cpu).unwrap()
}

/// Flat indices of the 16 x 16 patch at (y, x) in `channels`.
fn patch(channels: &[usize], y: usize, x: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for &c in channels {
        for dy in 0..16 {
            for dx in 0..16 {
                out.push((c * H + y + dy) * W + x + dx);
            }
        }
    }
    out
}

/// Applies a defect to the elements at the given flat indices, given max|ref|.
type Defect = fn(&mut [f32], &[usize], f32);

#[test]
fn every_element_check_catches_a_16x16_patch() {
    let x = base();
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let all: Vec<usize> = (0..C).collect();
    let mut missed_by_samples = 0;
    let mut cases = 0;
    // (seed, channels, y, x, defect): each seed is a different fixture's summary.
    let defects: [(&str, Defect); 4] = [
        ("all channels + 0.5% of max|ref|", |v, p, m| {
            p.iter().for_each(|&i| v[i] += 0.005 * m)
        }),
        ("one channel + 3% of max|ref|", |v, p, m| {
            p.iter().for_each(|&i| v[i] += 0.03 * m)
        }),
        ("one channel zeroed", |v, p, _| {
            p.iter().for_each(|&i| v[i] = 0.0)
        }),
        ("one channel transposed", |v, p, _| {
            let old: Vec<f32> = p.iter().map(|&i| v[i]).collect();
            for (k, &i) in p.iter().enumerate() {
                v[i] = old[(k % 16) * 16 + k / 16];
            }
        }),
    ];
    let sites = [
        (0usize, 0usize, 0usize),
        (17, 250, 333),
        (149, 496, 496),
        (80, 121, 7),
    ];
    let want = summarize("logits", &tensor(x.clone()), 0);
    check_sampled("logits", &tensor(x.clone()), &want).expect("unperturbed output passes");
    for (s, &(c, py, px)) in sites.iter().enumerate() {
        let seed = 0x5eed_0000 + s as u64;
        let want = summarize("logits", &tensor(x.clone()), seed);
        let sampled = sample_indices(x.len(), seed, SAMPLES);
        for (what, apply) in &defects {
            let chans = if what.starts_with("all") {
                all.clone()
            } else {
                vec![c]
            };
            let p = patch(&chans, py, px);
            let mut v = x.clone();
            apply(&mut v, &p, absmax);
            let seen = p.iter().any(|i| sampled.binary_search(i).is_ok());
            missed_by_samples += usize::from(!seen);
            cases += 1;
            let r = check_sampled("logits", &tensor(v), &want);
            eprintln!("{what} at c{c} ({py}, {px}): sampled values see it: {seen}; {r:?}");
            // The projections alone see every one of these defects.
            let e = r.expect_err("a perturbed patch passed the check");
            assert!(
                e.contains("projection of"),
                "{what}: projections missed it: {e}"
            );
        }
    }
    eprintln!("{missed_by_samples} of {cases} patches missed by the sampled values alone");
    assert!(
        missed_by_samples > 0,
        "the cases should include patches no sample hits"
    );
}

#[test]
fn within_tolerance_noise_on_every_element_passes() {
    let x = base();
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let eps = 1e-4 * absmax.max(1.0);
    let want = summarize("logits", &tensor(x.clone()), 0xabc);
    // Independent noise, each element within 0.9 eps of the reference (DESIGN.md's tolerance).
    let u = segkit_core::testing::uniform("parity_helper.noise", x.len());
    let v: Vec<f32> = x
        .iter()
        .zip(&u)
        .map(|(&a, &u)| (a as f64 + 0.9 * eps * (2.0 * u - 1.0)) as f32)
        .collect();
    let r = check_sampled("logits", &tensor(v), &want);
    assert!(r.is_ok(), "{r:?}");
    eprintln!("{}", r.unwrap());
}

/// The sum checks catch a systematic bias that the sampled values and the projections cannot
/// (3% of `eps` on every element), and let a smaller one through (0.5% of `eps`, the order of
/// coherent f32 rounding across elements that share their inputs).
#[test]
fn sum_checks_catch_a_small_uniform_bias() {
    let x = base();
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let eps = 1e-4 * absmax.max(1.0);
    let want = summarize("logits", &tensor(x.clone()), 0xb1a5);
    let biased =
        |frac: f64| -> Vec<f32> { x.iter().map(|&a| (a as f64 + frac * eps) as f32).collect() };
    let r = check_sampled("logits", &tensor(biased(0.005)), &want);
    assert!(r.is_ok(), "{r:?}");
    let e = check_sampled("logits", &tensor(biased(0.03)), &want).expect_err("3% bias passed");
    assert!(
        e.contains("sum") && !e.contains("sampled value") && !e.contains("projection of"),
        "{e}"
    );
}
