//! Multi-scale deformable-attention pixel decoder: the pixel decoder of "OneFormer: One
//! Transformer to Rule Universal Image Segmentation" (Jain et al., 2023) and of Mask2Former
//! (Cheng et al., 2022), with the multi-scale deformable attention of "Deformable DETR" (Zhu et
//! al., 2021).
//!
//! Matches transformers 5.24 `models/oneformer/modeling_oneformer.py`
//! (`OneFormerPixelDecoder`, `OneFormerPixelDecoderEncoderOnly`,
//! `OneFormerPixelDecoderEncoderLayer`,
//! `OneFormerPixelDecoderEncoderMultiscaleDeformableAttention`,
//! `OneFormerSinePositionEmbedding`, `multi_scale_deformable_attention`) key for key: build it
//! from a `VarBuilder` at the decoder's prefix (`model.pixel_level_module.decoder.` in a full
//! OneFormer checkpoint).
//!
//! The coarsest `num_feature_levels` inputs (res3-5 for a Swin or ResNet backbone) are projected
//! to `conv_dim` (`input_projections.{i}`: 1x1 conv with bias + GroupNorm(32), `i = 0` for the
//! coarsest level), flattened coarsest first, and refined by `encoder_layers` post-norm encoder
//! layers (`encoder.layers.{j}`): multi-scale deformable self-attention (`self_attn.
//! {sampling_offsets, attention_weights, value_proj, output_proj}`) whose queries carry a sine
//! position embedding (normalised, `conv_dim / 2` features per axis) plus a per-level
//! `level_embed`, then LayerNorm (`self_attn_layer_norm`), FFN (`fc1`, ReLU, `fc2`) and
//! LayerNorm (`final_layer_norm`). Reference points are the pixel centres of each query's level
//! in `[0, 1]` (HF's valid ratios are 1: the decoder never masks). An FPN top-down path then adds
//! the finer inputs down to `common_stride` (`adapter_{k}`: 1x1 conv without bias + GroupNorm,
//! plus the bilinearly upsampled coarser map, `layer_{k}`: 3x3 conv without bias + GroupNorm +
//! ReLU), and `mask_projection` (1x1 conv with bias) gives the mask features.
//!
//! The deformable-attention core ([`multi_scale_deformable_attention`]) has a dedicated CPU
//! kernel for f32 (rayon over chunks of (batch item, query) rows, four bilinear taps per
//! sampling point read straight from the value tensor laid out `N x heads x S x D`, so each tap
//! is `D` contiguous floats and a head's levels stay compact in cache; no per-point tensor
//! ops); other devices and dtypes use the composed path
//! ([`multi_scale_deformable_attention_fallback`], HF's formulation through
//! [`segkit_core::ops::grid_sample`]).
//!
//! # Shapes
//! Inputs: one `N x C_i x H_i x W_i` map per input spec, finest first (Swin-T: strides 4, 8,
//! 16, 32). Outputs ([`PixelDecoderOutput`]): `mask_features` `N x mask_dim x H_0' x W_0'` at
//! `common_stride` (the size of the input with that stride), and `multi_scale_features`, the
//! encoder's output levels `N x conv_dim x H_i x W_i` coarsest first (HF's order: strides 32,
//! 16, 8).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_necks::{MsDeformAttnPixelDecoder, MsDeformAttnPixelDecoderConfig};
//! let dev = Device::Cpu;
//! let specs = [
//!     FeatureSpec::new(96, 4),
//!     FeatureSpec::new(192, 8),
//!     FeatureSpec::new(384, 16),
//!     FeatureSpec::new(768, 32),
//! ];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let cfg = MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny();
//! let dec = MsDeformAttnPixelDecoder::new(&cfg, &specs, vb).unwrap();
//! let xs = [
//!     Tensor::zeros((1, 96, 25, 33), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 192, 13, 17), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 384, 7, 9), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 768, 4, 5), DType::F32, &dev).unwrap(),
//! ];
//! let out = dec.forward(&xs, false).unwrap();
//! assert_eq!(out.mask_features.dims(), &[1, 256, 25, 33]);
//! assert_eq!(out.multi_scale_features[0].dims(), &[1, 256, 4, 5]);
//! assert_eq!(out.multi_scale_features[2].dims(), &[1, 256, 13, 17]);
//! ```

use candle_core::{Device, Tensor};
use candle_nn::{Linear, VarBuilder};
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{FeatureSpec, Neck};

use crate::{check_features, Error, Result};

mod attention;

#[doc(hidden)]
pub use attention::multi_scale_deformable_attention_fallback;
pub use attention::{multi_scale_deformable_attention, MsDeformAttn};

/// Configuration of a [`MsDeformAttnPixelDecoder`], with transformers' `OneFormerConfig` field
/// names. Fields missing from a JSON config take the oneformer_ade20k_swin_tiny values;
/// unknown fields (the rest of an HF config.json) are ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MsDeformAttnPixelDecoderConfig {
    /// Width of the decoder (the transformer's `d_model`): channels of the input projections,
    /// of the encoder and of the FPN levels. 256 in OneFormer / Mask2Former.
    pub conv_dim: usize,
    /// Channels of the per-pixel mask embeddings (`mask_features`). 256.
    pub mask_dim: usize,
    /// Stride of the mask features: the FPN path adds inputs down to this stride. 4.
    pub common_stride: usize,
    /// Number of deformable-attention encoder layers. 6.
    pub encoder_layers: usize,
    /// Hidden width of each encoder layer's feed-forward network. 1024.
    pub encoder_feedforward_dim: usize,
    /// Attention heads of the deformable attention. 8.
    pub num_attention_heads: usize,
    /// Number of (coarsest) input levels the encoder attends over (HF hard-codes 3).
    pub num_feature_levels: usize,
    /// Sampling points per head and level (HF hard-codes 4).
    pub num_points: usize,
    /// Groups of every GroupNorm (HF hard-codes 32).
    pub norm_groups: usize,
    /// Epsilon of the encoder's LayerNorms. 1e-5.
    pub layer_norm_eps: f64,
    /// Dropout probability in the encoder layers (after attention, in and after the FFN),
    /// applied only with `train = true`. 0.1.
    pub dropout: f64,
}

impl Default for MsDeformAttnPixelDecoderConfig {
    /// [`MsDeformAttnPixelDecoderConfig::oneformer_ade20k_swin_tiny`].
    fn default() -> Self {
        Self::oneformer_ade20k_swin_tiny()
    }
}

impl MsDeformAttnPixelDecoderConfig {
    /// The pixel decoder of shi-labs/oneformer_ade20k_swin_tiny (and of every shi-labs OneFormer
    /// checkpoint): width 256, mask dim 256, common stride 4, 6 encoder layers, 8 heads, 3
    /// levels, 4 points, FFN 1024, GroupNorm(32), LayerNorm eps 1e-5, dropout 0.1.
    pub fn oneformer_ade20k_swin_tiny() -> Self {
        Self {
            conv_dim: 256,
            mask_dim: 256,
            common_stride: 4,
            encoder_layers: 6,
            encoder_feedforward_dim: 1024,
            num_attention_heads: 8,
            num_feature_levels: 3,
            num_points: 4,
            norm_groups: 32,
            layer_norm_eps: 1e-5,
            dropout: 0.1,
        }
    }

    /// The decoder's output specs for inputs with `inputs` specs (finest first), without
    /// building it: the mask features (`mask_dim` at `common_stride`), then the encoder levels
    /// (`conv_dim` at the strides of the coarsest `num_feature_levels` inputs, finest first).
    /// This is [`Neck::output_specs`]' order, and what OneFormer's transformer decoder is built
    /// from. Errors as [`MsDeformAttnPixelDecoder::new`] on a config that does not fit `inputs`.
    pub fn output_specs(&self, inputs: &[FeatureSpec]) -> Result<Vec<FeatureSpec>> {
        self.validate(inputs)?;
        Ok(self.specs_for(inputs))
    }

    /// [`Self::output_specs`] for inputs already validated.
    fn specs_for(&self, inputs: &[FeatureSpec]) -> Vec<FeatureSpec> {
        let first = inputs.len().saturating_sub(self.num_feature_levels);
        let mut v = vec![FeatureSpec::new(self.mask_dim, self.common_stride)];
        v.extend(
            inputs[first..]
                .iter()
                .map(|s| FeatureSpec::new(self.conv_dim, s.stride)),
        );
        v
    }

    fn validate(&self, inputs: &[FeatureSpec]) -> Result<usize> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("pixel decoder: {m}")));
        if self.conv_dim == 0
            || self.mask_dim == 0
            || self.num_attention_heads == 0
            || self.num_points == 0
            || self.num_feature_levels == 0
            || self.encoder_feedforward_dim == 0
            || self.norm_groups == 0
        {
            return bad(format!("sizes must be positive: {self:?}"));
        }
        if !self.conv_dim.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "conv_dim {} is not divisible by num_attention_heads {}",
                self.conv_dim, self.num_attention_heads
            ));
        }
        if !self.conv_dim.is_multiple_of(2) || !self.conv_dim.is_multiple_of(self.norm_groups) {
            return bad(format!(
                "conv_dim {} must be even and divisible by the {} GroupNorm groups",
                self.conv_dim, self.norm_groups
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) || self.layer_norm_eps <= 0.0 {
            return bad(format!(
                "dropout {} must be in [0, 1) and layer_norm_eps {} positive",
                self.dropout, self.layer_norm_eps
            ));
        }
        if inputs.len() < self.num_feature_levels {
            return bad(format!(
                "{} inputs but num_feature_levels = {}",
                inputs.len(),
                self.num_feature_levels
            ));
        }
        if inputs.windows(2).any(|w| w[1].stride <= w[0].stride) {
            return bad(format!(
                "input strides must increase: {:?}",
                inputs.iter().map(|s| s.stride).collect::<Vec<_>>()
            ));
        }
        // HF: int(log2(min transformer stride) - log2(common_stride)).
        let first = inputs.len() - self.num_feature_levels;
        let min_stride = inputs[first].stride;
        if !self.common_stride.is_power_of_two() || !min_stride.is_power_of_two() {
            return bad(format!(
                "common_stride {} and the strides {min_stride} must be powers of two",
                self.common_stride
            ));
        }
        let num_fpn = (min_stride.trailing_zeros() as usize)
            .saturating_sub(self.common_stride.trailing_zeros() as usize);
        if num_fpn > first {
            return bad(format!(
                "common_stride {} needs {num_fpn} FPN inputs finer than stride {min_stride}, \
                 there are {first}",
                self.common_stride
            ));
        }
        Ok(num_fpn)
    }
}

/// The outputs of a [`MsDeformAttnPixelDecoder`] (HF's `OneFormerPixelDecoderOutput`).
#[derive(Debug, Clone)]
pub struct PixelDecoderOutput {
    /// Per-pixel embeddings `N x mask_dim x H x W` at `common_stride`.
    pub mask_features: Tensor,
    /// The encoder's levels `N x conv_dim x H_i x W_i`, coarsest first (strides 32, 16, 8).
    pub multi_scale_features: Vec<Tensor>,
}

/// One post-norm encoder layer (HF `OneFormerPixelDecoderEncoderLayer`).
struct EncoderLayer {
    self_attn: MsDeformAttn,
    self_attn_layer_norm: segkit_core::nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: segkit_core::nn::LayerNorm,
    dropout: f32,
}

impl EncoderLayer {
    fn new(cfg: &MsDeformAttnPixelDecoderConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let d = cfg.conv_dim;
        Ok(Self {
            self_attn: MsDeformAttn::new(
                d,
                cfg.num_attention_heads,
                cfg.num_feature_levels,
                cfg.num_points,
                vb.pp("self_attn"),
            )?,
            self_attn_layer_norm: segkit_core::nn::LayerNorm::new(
                d,
                cfg.layer_norm_eps,
                vb.pp("self_attn_layer_norm"),
            )?,
            fc1: candle_nn::linear(d, cfg.encoder_feedforward_dim, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.encoder_feedforward_dim, d, vb.pp("fc2"))?,
            final_layer_norm: segkit_core::nn::LayerNorm::new(
                d,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            dropout: cfg.dropout as f32,
        })
    }

    fn drop(&self, x: Tensor, train: bool) -> Result<Tensor> {
        if train && self.dropout > 0.0 {
            Ok(candle_nn::ops::dropout(&x, self.dropout)?)
        } else {
            Ok(x)
        }
    }

    fn forward(
        &self,
        hidden: &Tensor,
        pos: &Tensor,
        refp: &Tensor,
        shapes: &[(usize, usize)],
        train: bool,
    ) -> Result<Tensor> {
        let (n, s, c) = hidden.dims3()?;
        let a = self.self_attn.forward(hidden, pos, refp, shapes)?;
        let a = self.drop(a, train)?;
        let x = self.self_attn_layer_norm.forward(&(hidden + a)?)?;
        let x2 = x.reshape((n * s, c))?;
        let x2 = self.ffn_residual(&x2, train)?;
        Ok(self.final_layer_norm.forward(&x2)?.reshape((n, s, c))?)
    }

    /// `x + fc2(relu(fc1(x)))` (with dropouts) of `x` (`M x C`): [`ops::linear_act`] and
    /// [`ops::linear_residual`], which apply the bias, the ReLU and the residual in one pass
    /// after each GEMM on CPU f32 (candle's ops elsewhere and with gradients).
    fn ffn_residual(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (w1, b1) = (self.fc1.weight(), self.fc1.bias());
        let (w2, b2) = (self.fc2.weight(), self.fc2.bias());
        let f = self.drop(ops::linear_act(x, w1, b1, Activation::Relu)?, train)?;
        if train && self.dropout > 0.0 {
            return Ok((x + self.drop(ops::linear(&f, w2, b2)?, train)?)?);
        }
        ops::linear_residual(&f, w2, b2, x)
    }
}

/// The multi-scale deformable-attention pixel decoder of OneFormer / Mask2Former (see the
/// module docs).
pub struct MsDeformAttnPixelDecoder {
    cfg: MsDeformAttnPixelDecoderConfig,
    inputs: Vec<FeatureSpec>,
    input_projections: Vec<ConvNormAct>,
    level_embed: Tensor,
    layers: Vec<EncoderLayer>,
    /// `(adapter_{k}, layer_{k})` for inputs `k - 1 = 0 .. num_fpn`, finest first.
    fpn: Vec<(ConvNormAct, ConvNormAct)>,
    mask_projection: ConvNormAct,
}

impl MsDeformAttnPixelDecoder {
    /// Builds the decoder for features with `inputs` specs (finest first), loading HF's keys
    /// from `vb` (at `model.pixel_level_module.decoder.` of a full checkpoint).
    pub fn new(
        cfg: &MsDeformAttnPixelDecoderConfig,
        inputs: &[FeatureSpec],
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let num_fpn = cfg.validate(inputs)?;
        let d = cfg.conv_dim;
        let gn = Some(Norm::GroupNorm {
            groups: cfg.norm_groups,
            eps: 1e-5,
        });
        let levels = cfg.num_feature_levels;
        let first = inputs.len() - levels;
        let mut input_projections = Vec::with_capacity(levels);
        for (i, spec) in inputs[first..].iter().rev().enumerate() {
            let c = ConvModuleConfig::new(spec.channels, d, 1)
                .norm(gn)
                .bias(true)
                .act(Activation::None);
            let p = vb.pp("input_projections").pp(i);
            input_projections.push(ConvNormAct::new_with_paths(&c, p.pp(0), p.pp(1))?);
        }
        let level_embed = vb.get((levels, d), "level_embed")?;
        let layers = (0..cfg.encoder_layers)
            .map(|j| EncoderLayer::new(cfg, vb.pp("encoder").pp("layers").pp(j)))
            .collect::<Result<Vec<_>>>()?;
        let mut fpn = Vec::with_capacity(num_fpn);
        for (k, spec) in inputs[..num_fpn].iter().enumerate() {
            let a = vb.pp(format!("adapter_{}", k + 1));
            let lateral = ConvModuleConfig::new(spec.channels, d, 1)
                .norm(gn)
                .act(Activation::None);
            let l = vb.pp(format!("layer_{}", k + 1));
            let output = ConvModuleConfig::new(d, d, 3)
                .norm(gn)
                .act(Activation::Relu);
            fpn.push((
                ConvNormAct::new_with_paths(&lateral, a.pp(0), a.pp(1))?,
                ConvNormAct::new_with_paths(&output, l.pp(0), l.pp(1))?,
            ));
        }
        let mp = ConvModuleConfig::new(d, cfg.mask_dim, 1)
            .norm(None)
            .act(Activation::None);
        let mpvb = vb.pp("mask_projection");
        let mask_projection = ConvNormAct::new_with_paths(&mp, mpvb.clone(), mpvb)?;
        Ok(Self {
            cfg: cfg.clone(),
            inputs: inputs.to_vec(),
            input_projections,
            level_embed,
            layers,
            fpn,
            mask_projection,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MsDeformAttnPixelDecoderConfig {
        &self.cfg
    }

    /// Runs the decoder on one map per input spec (finest first). `train` enables dropout.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<PixelDecoderOutput> {
        check_features("pixel decoder", features, &self.inputs)?;
        let levels = self.cfg.num_feature_levels;
        let d = self.cfg.conv_dim;
        let first = features.len() - levels;
        let dev = features[0].device();
        let dt = features[0].dtype();
        let n = features[0].dim(0)?;
        let mut srcs = Vec::with_capacity(levels);
        let mut poss = Vec::with_capacity(levels);
        let mut refs = Vec::with_capacity(levels);
        let mut shapes = Vec::with_capacity(levels);
        for (l, (proj, x)) in self
            .input_projections
            .iter()
            .zip(features[first..].iter().rev())
            .enumerate()
        {
            let (_, _, h, w) = x.dims4()?;
            shapes.push((h, w));
            let y = proj.forward_t(x, false)?;
            srcs.push(y.flatten_from(2)?.transpose(1, 2)?);
            let pos = segkit_core::nn::sine_position_embedding(h, w, d / 2, dev)?.to_dtype(dt)?;
            let lvl = self.level_embed.get(l)?.reshape((1, d))?;
            poss.push(pos.broadcast_add(&lvl)?);
            refs.push(reference_points(h, w, dev)?.to_dtype(dt)?);
        }
        let mut hidden = Tensor::cat(&srcs, 1)?.contiguous()?;
        let pos = Tensor::cat(&poss, 0)?.unsqueeze(0)?;
        let refp = Tensor::cat(&refs, 0)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &pos, &refp, &shapes, train)?;
        }
        let mut out = Vec::with_capacity(levels + self.fpn.len());
        let mut start = 0;
        for &(h, w) in &shapes {
            let z = hidden.narrow(1, start, h * w)?.transpose(1, 2)?;
            out.push(z.contiguous()?.reshape((n, d, h, w))?);
            start += h * w;
        }
        for (k, (lateral, output)) in self.fpn.iter().enumerate().rev() {
            let cur = lateral.forward_t(&features[k], false)?;
            let (_, _, h, w) = cur.dims4()?;
            let prev = out.last().ok_or_else(|| {
                Error::InvalidConfig("pixel decoder without encoder levels".into())
            })?;
            let up = ops::resize_bilinear(prev, (h, w), false)?;
            out.push(output.forward_t(&(cur + up)?, false)?);
        }
        let last = out
            .last()
            .ok_or_else(|| Error::InvalidConfig("pixel decoder without outputs".into()))?;
        let mask_features = self.mask_projection.forward_t(last, false)?;
        out.truncate(levels);
        Ok(PixelDecoderOutput {
            mask_features,
            multi_scale_features: out,
        })
    }
}

impl Neck for MsDeformAttnPixelDecoder {
    /// Finest first: the mask features (`mask_dim` at `common_stride`), then the encoder levels
    /// (`conv_dim` at the strides of the coarsest `num_feature_levels` inputs, finest first).
    fn output_specs(&self) -> Vec<FeatureSpec> {
        self.cfg.specs_for(&self.inputs)
    }

    /// The outputs in [`Neck::output_specs`] order (the reverse of HF's multi-scale order).
    fn forward_t(&self, features: &[Tensor], train: bool) -> segkit_core::Result<Vec<Tensor>> {
        let o = self.forward(features, train)?;
        let mut v = vec![o.mask_features];
        v.extend(o.multi_scale_features.into_iter().rev());
        Ok(v)
    }
}

/// HF's encoder reference points of an `h x w` level with valid ratios 1: pixel centres
/// `((j + 0.5) / w, (i + 0.5) / h)`, row-major, `(h w) x 2`.
fn reference_points(h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(h * w * 2);
    for i in 0..h {
        for j in 0..w {
            v.push((j as f32 + 0.5) / w as f32);
            v.push((i as f32 + 0.5) / h as f32);
        }
    }
    Ok(Tensor::from_vec(v, (h * w, 2), dev)?)
}

#[cfg(test)]
mod tests;
