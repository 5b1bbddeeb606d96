//! OneFormer's from-scratch initialisation, per parameter key (HF names): transformers'
//! `OneFormerPreTrainedModel._init_weights`, except the two query-side embeddings.
//!
//! - Transformer decoder layers, the query transformer, the MLP heads (`mask_embed`,
//!   `task_mlp`, `text_projector`) and `query_input_projection`: Xavier-uniform (gain
//!   `init_xavier_std` = 1), zero biases.
//! - Deformable attention: `sampling_offsets` weight 0 and the bias the per-head direction grid
//!   (`(cos, sin)` of `2 pi h / heads` scaled to a unit max-norm, times point index + 1),
//!   `attention_weights` 0, `value_proj` / `output_proj` Xavier-uniform; the pixel decoder's
//!   `level_embed` 0 (`normal_(std=0)`).
//! - Text encoder (CLIP style): `in_proj_weight` N(0, width^-1/2), `out_proj` and `fc2`
//!   N(0, width^-1/2 (2 layers)^-1/2), `fc1` N(0, (2 width)^-1/2), token embedding N(0, 0.02),
//!   positional embedding N(0, 0.01).
//! - Swin's `relative_position_bias_table` 0; every other linear / convolution weight and
//!   embedding N(0, `init_std` = 0.02); norms 1 / 0; biases 0.
//! - `queries_embedder` and the transformer module's `level_embed`: N(0, 1), PyTorch's
//!   `nn.Embedding` default, as the official OneFormer (and Mask2Former) decoder leaves them.
//!   transformers' N(0, 0.02) makes the object queries nearly identical: trained from scratch
//!   they stay symmetric, every query predicts the same class and mask at inference, and only
//!   the decoder's dropout tells them apart in training (issue 15: the demo predicted one
//!   class everywhere, aAcc 1.9 %).

use candle_core::{Device, Tensor};
use segkit_models::OneFormerConfig;

use crate::TrainResult;

/// transformers' `OneFormerConfig.init_std`.
const INIT_STD: f64 = 0.02;

/// A splitmix64 stream of one parameter (seed and key mixed with FNV-1a).
struct Stream(u64);

impl Stream {
    fn new(name: &str, seed: u64) -> Self {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let mut s = seed ^ h ^ 0x0FE0_F0E1_u64;
        Self(segkit_core::random::splitmix64(&mut s))
    }

    fn uniform(&mut self) -> f64 {
        (segkit_core::random::splitmix64(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let u1 = self.uniform().max(f64::MIN_POSITIVE);
            let u2 = self.uniform();
            let (r, t) = ((-2.0 * u1.ln()).sqrt(), 2.0 * std::f64::consts::PI * u2);
            v.push((std * r * t.cos()) as f32);
            if v.len() < n {
                v.push((std * r * t.sin()) as f32);
            }
        }
        v
    }

    /// Xavier-uniform with gain 1 for a weight of `shape` (`out x in x k..`).
    fn xavier(&mut self, shape: &[usize]) -> Vec<f32> {
        let field: usize = shape[2..].iter().product();
        let (fan_out, fan_in) = (shape[0] * field, shape[1] * field);
        let a = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
        let n: usize = shape.iter().product();
        (0..n)
            .map(|_| (a * (2.0 * self.uniform() - 1.0)) as f32)
            .collect()
    }
}

/// The deformable attention's `sampling_offsets.bias`: `heads x levels x points x 2`.
fn grid_bias(heads: usize, levels: usize, points: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(heads * levels * points * 2);
    for h in 0..heads {
        let t = h as f32 * (2.0 * std::f32::consts::PI / heads as f32);
        let (c, s) = (t.cos(), t.sin());
        let m = c.abs().max(s.abs());
        for _ in 0..levels {
            for p in 0..points {
                v.push(c / m * (p + 1) as f32);
                v.push(s / m * (p + 1) as f32);
            }
        }
    }
    v
}

/// The initial value of the OneFormer parameter `name` of `shape` (see the module docs).
pub(crate) fn init_value(
    cfg: &OneFormerConfig,
    name: &str,
    shape: &[usize],
    seed: u64,
) -> TrainResult<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = Stream::new(name, seed);
    let has = |s: &str| name.contains(s);
    let data: Vec<f32> = if name.ends_with("sampling_offsets.bias") {
        let p = &cfg.pixel_decoder;
        let v = grid_bias(p.num_attention_heads, p.num_feature_levels, p.num_points);
        if v.len() != n {
            return Err(segkit_models::Error::InvalidConfig(format!(
                "{name}: {n} values for {} heads x {} levels x {} points x 2",
                p.num_attention_heads, p.num_feature_levels, p.num_points
            ))
            .into());
        }
        v
    } else if shape.len() <= 1 {
        let norm_weight = name.ends_with(".weight");
        vec![if norm_weight { 1.0 } else { 0.0 }; n]
    } else if has("sampling_offsets.")
        || has("attention_weights.")
        || name.ends_with("pixel_level_module.decoder.level_embed")
        || name.ends_with("relative_position_bias_table")
    {
        vec![0.0; n]
    } else if has("transformer_module.queries_embedder") || has("transformer_module.level_embed") {
        rng.normal(n, 1.0)
    } else if has("text_encoder.transformer.layers.") {
        let t = &cfg.text_mapper;
        let w = t.text_encoder_width as f64;
        let proj = w.powf(-0.5) * ((2 * t.text_encoder_num_layers.max(1)) as f64).powf(-0.5);
        let std = if has("in_proj_weight") {
            w.powf(-0.5)
        } else if has("fc1.") {
            (2.0 * w).powf(-0.5)
        } else if has("out_proj.") || has("fc2.") {
            proj
        } else {
            INIT_STD
        };
        rng.normal(n, std)
    } else if name.ends_with("text_encoder.positional_embedding") {
        rng.normal(n, 0.01)
    } else if has("transformer_module.decoder.layers.")
        || has("query_transformer.")
        || has("query_input_projection.")
        || has("mask_embed.")
        || has("task_mlp.")
        || has("text_projector.")
        || (has("pixel_level_module.decoder.encoder.")
            && (has("value_proj.") || has("output_proj.")))
    {
        rng.xavier(shape)
    } else {
        rng.normal(n, INIT_STD)
    };
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}
