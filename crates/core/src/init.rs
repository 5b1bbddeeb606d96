//! Random initialisation as the reference implementations do it.
//!
//! Every segkit layer asks its `VarBuilder` for its weights with the initialisation its
//! reference uses (`get_with_hints`), so a model built on a candle `VarMap`
//! (`VarBuilder::from_varmap`) starts from the reference's initial distribution instead of
//! zeros; a checkpoint `VarBuilder` ignores the hints. The schemes, named after where they
//! come from:
//!
//! | scheme | where | weight | bias |
//! |---|---|---|---|
//! | [`KAIMING_FAN_OUT`] | mmcv `ConvModule` (also mmcv's `Kaiming` init of mmseg's ResNet), torchvision / timm / HF ResNet convs | N(0, sqrt(2 / fan_out)) | 0 |
//! | [`torch_default_weight`] / [`torch_default_bias`] | a plain `nn.Conv2d` / `nn.Linear` (`reset_parameters`) | U(+-1 / sqrt(fan_in)) | U(+-1 / sqrt(fan_in)) |
//! | [`normal`] | mmseg's `conv_seg` (`Normal`, std 0.01) | N(0, std) | 0 |
//! | [`trunc_normal`] | Swin's linears (`trunc_normal_init`, std 0.02) | N(0, std) truncated to +-2 | 0 |
//! | [`ONE`] / [`ZERO`] | norms (weight 1, bias 0, running mean 0, running var 1); mmseg's / timm's `zero_init_residual` last norm of a block (weight 0); mmcv's `Scale(0)` | | |
//!
//! `fan_in` / `fan_out` are PyTorch's: `dims[1] * kh * kw` / `dims[0] * kh * kw`.
//!
//! [`mmseg_value`] is segkit-train's deterministic, seeded initialisation (the same schemes
//! for an encoder-decoder's parameters, picked from the state-dict key and drawn from a
//! per-key stream of a seed), public for callers who want reproducible initial weights.
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_nn::{VarBuilder, VarMap};
//! use segkit_core::nn::{ConvModuleConfig, ConvNormAct};
//!
//! let map = VarMap::new();
//! let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
//! let _conv = ConvNormAct::new(&ConvModuleConfig::new(64, 128, 3), vb.pp("conv"))?;
//! let w = map.data().lock().unwrap()["conv.conv.weight"].as_tensor().clone();
//! let std = w.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt();
//! let expected = (2.0f32 / (128.0 * 9.0)).sqrt(); // Kaiming normal, fan_out
//! assert!((std / expected - 1.0).abs() < 0.05, "{std} vs {expected}");
//! # Ok::<(), segkit_core::Error>(())
//! ```

use candle_core::{Device, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
pub use candle_nn::Init;

use crate::Result;

/// Constant 0 (biases, running means, `Scale(0)`, a zero-initialised residual norm).
pub const ZERO: Init = Init::Const(0.0);
/// Constant 1 (norm weights, running variances).
pub const ONE: Init = Init::Const(1.0);

/// Kaiming normal, mode `fan_out`, ReLU gain: N(0, sqrt(2 / fan_out)). mmcv's
/// `ConvModule.init_weights` and `kaiming_init` defaults, torchvision's ResNet convs.
pub const KAIMING_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// PyTorch's default weight of `nn.Conv2d` / `nn.Linear`: `kaiming_uniform_(a=sqrt(5))`,
/// i.e. U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)).
pub fn torch_default_weight() -> Init {
    Init::Kaiming {
        dist: NormalOrUniform::Uniform,
        fan: FanInOut::FanIn,
        // gain = sqrt(2 / (1 + a^2)) with a = sqrt(5).
        non_linearity: NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
    }
}

/// PyTorch's default bias of `nn.Conv2d` / `nn.Linear` whose weight has fan-in `fan_in`:
/// U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)).
pub fn torch_default_bias(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// N(0, `std`) (mmcv's `normal_init`, e.g. mmseg's `conv_seg` with std 0.01).
pub fn normal(std: f64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// timm's / mmcv's `trunc_normal_(std, a=-2, b=2)`. The bounds are absolute: for the
/// standard deviations it is used with (0.02) they lie 100 standard deviations out, so the
/// truncation never acts and this is N(0, `std`).
pub fn trunc_normal(std: f64) -> Init {
    normal(std)
}

/// The hint of a norm parameter or buffer from its name: weight 1 (0 when `zero_weight`,
/// mmseg's `zero_init_residual`), bias 0, running mean 0, running variance 1.
pub fn norm_param(name: &str, zero_weight: bool) -> Init {
    match name {
        "weight" if zero_weight => ZERO,
        "weight" | "running_var" => ONE,
        _ => ZERO,
    }
}

/// One splitmix64 stream (as `segkit_train::data::SampleRng`).
struct Stream(u64);

impl Stream {
    fn for_sample(seed: u64, counter: u64) -> Self {
        let mut s = seed ^ 0x5EED_5EED_5EED_5EED;
        let a = crate::random::splitmix64(&mut s);
        Self(a ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn uniform(&mut self) -> f64 {
        (crate::random::splitmix64(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box-Muller.
            let u1 = self.uniform().max(f64::MIN_POSITIVE);
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push((std * r * t.cos()) as f32);
            if v.len() < n {
                v.push((std * r * t.sin()) as f32);
            }
        }
        v
    }

    fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.uniform()) as f32)
            .collect()
    }
}

/// Deterministic initial value of the encoder-decoder parameter `name` with shape `shape`,
/// drawn from a stream of `seed` and the key (FNV-1a): mmseg's initialisation picked from the
/// key — Kaiming-normal `fan_out` convolutions, norms 1 / 0 (the norm named `zero_gamma`,
/// e.g. `".bn3.weight"`, of the backbone's residual blocks 0 as `zero_init_residual`), every
/// classifier `*conv_seg` and every 2-d weight N(0, 0.01), zero biases, DANet's `gamma`
/// scales 0 (`Scale(0)`), EncNet's codewords U(-1/sqrt(K C), 1/sqrt(K C)) and smoothing
/// factors U(-1, 0) as mmseg's `Encoding`. segkit-train initialises a run with it.
///
/// The same seed and key always give the same tensor (on the CPU, f32).
pub fn mmseg_value(
    name: &str,
    shape: &[usize],
    seed: u64,
    zero_gamma: Option<&str>,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = Stream::for_sample(seed ^ h, 0x1417);
    let data: Vec<f32> = if shape.is_empty() {
        // mmcv `Scale(0)` (DANet's `pam.gamma.scale`, `cam.gamma.scale`).
        vec![0.0; n]
    } else if name.ends_with(".codewords") && shape.len() == 2 {
        let std = 1.0 / ((shape[0] * shape[1]).max(1) as f64).sqrt();
        rng.uniform_vec(n, -std, std)
    } else if name.ends_with("encoding.0.scale") {
        rng.uniform_vec(n, -1.0, 0.0)
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
        rng.normal(n, 0.01)
    } else {
        // Kaiming normal, mode fan_out, ReLU gain: std = sqrt(2 / (out * kh * kw)).
        let fan_out = shape[0] * shape[2..].iter().product::<usize>();
        rng.normal(n, (2.0 / fan_out.max(1) as f64).sqrt())
    };
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmseg_value_is_deterministic_and_follows_the_key() {
        let a = mmseg_value("decode_head.conv_seg.weight", &[19, 512, 1, 1], 7, None).unwrap();
        let b = mmseg_value("decode_head.conv_seg.weight", &[19, 512, 1, 1], 7, None).unwrap();
        let d = a.sub(&b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let std = a
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((std - 0.01).abs() < 0.001, "{std}");
        let g = mmseg_value(
            "backbone.layer1.0.bn3.weight",
            &[256],
            7,
            Some(".bn3.weight"),
        );
        assert_eq!(
            g.unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
        let v = mmseg_value("backbone.layer1.0.bn3.running_var", &[256], 7, None).unwrap();
        assert_eq!(v.sum_all().unwrap().to_scalar::<f32>().unwrap(), 256.0);
    }

    #[test]
    fn torch_default_is_uniform_with_bound_one_over_sqrt_fan_in() {
        let t = torch_default_weight()
            .var((64, 32, 3, 3), candle_core::DType::F32, &Device::Cpu)
            .unwrap();
        let max = t
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let bound = 1.0 / (32.0f32 * 9.0).sqrt();
        assert!(max <= bound && max > 0.95 * bound, "{max} vs {bound}");
    }
}
