//! Deterministic initial weights of a training run (mmseg's initialisation schemes, drawn
//! from a per-parameter stream of the run's seed).

use candle_core::{Device, Tensor};

use crate::data::SampleRng;
use crate::TrainResult;

/// Deterministic initial values of one parameter: mmseg's initialisation (Kaiming-normal
/// `fan_out` convolutions, BatchNorm 1 / 0, the classifier `conv_seg` N(0, 0.01), zero bias,
/// the last BatchNorm of each residual block zero as `zero_init_residual`, DANet's attention
/// scales `gamma` 0 as mmcv's `Scale(0)`, EncNet's codewords U(-1/sqrt(K C), 1/sqrt(K C)) and
/// smoothing factors U(-1, 0) as mmseg's `Encoding`).
pub(crate) fn init_value(
    name: &str,
    shape: &[usize],
    seed: u64,
    zero_gamma: Option<&str>,
) -> TrainResult<Tensor> {
    let dev = Device::Cpu;
    let n: usize = shape.iter().product();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = SampleRng::for_sample(seed ^ h, 0x1417);
    let normal = |rng: &mut SampleRng, std: f64| -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box-Muller.
            let u1 = rng.uniform().max(f64::MIN_POSITIVE);
            let u2 = rng.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push((std * r * t.cos()) as f32);
            if v.len() < n {
                v.push((std * r * t.sin()) as f32);
            }
        }
        v
    };
    let uniform = |rng: &mut SampleRng, lo: f64, hi: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * rng.uniform()) as f32)
            .collect()
    };
    let data: Vec<f32> = if shape.is_empty() {
        // mmcv `Scale(0)` (DANet's `pam.gamma.scale`, `cam.gamma.scale`).
        vec![0.0; n]
    } else if name.ends_with(".codewords") && shape.len() == 2 {
        let std = 1.0 / ((shape[0] * shape[1]).max(1) as f64).sqrt();
        uniform(&mut rng, -std, std)
    } else if name.ends_with("encoding.0.scale") {
        uniform(&mut rng, -1.0, 0.0)
    } else if name.ends_with(".running_var") {
        vec![1.0; n]
    } else if name.ends_with(".running_mean") {
        vec![0.0; n]
    } else if shape.len() == 1 {
        let gamma = name.ends_with(".weight");
        let zero =
            name.starts_with("backbone.layer") && zero_gamma.is_some_and(|z| name.ends_with(z));
        vec![if gamma && !zero { 1.0 } else { 0.0 }; n]
    } else if name.contains("conv_seg.") || shape.len() == 2 {
        normal(&mut rng, 0.01)
    } else {
        // Kaiming normal, mode fan_out, ReLU gain: std = sqrt(2 / (out * kh * kw)).
        let fan_out = shape[0] * shape[2..].iter().product::<usize>();
        normal(&mut rng, (2.0 / fan_out.max(1) as f64).sqrt())
    };
    Ok(Tensor::from_vec(data, shape, &dev)?)
}
