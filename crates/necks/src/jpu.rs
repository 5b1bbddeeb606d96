//! Joint Pyramid Upsampling (JPU): "FastFCN: Rethinking Dilated Convolution in the Backbone for
//! Semantic Segmentation" (Wu et al., 2019).
//!
//! Matches mmseg 1.2.2 `mmseg/models/necks/jpu.py` (`JPU`) key for key and number for number;
//! the official FastFCN (`wuhuikai/FastFCN`, `encoding/nn/customize.py::JPU`) is the same
//! network with another concatenation order and `align_corners = True`
//! ([`JpuConfig::fastfcn`]).
//!
//! Each used level `i` (from `start_level`) goes through a 3x3 ConvModule
//! (`conv_layers.{i}.0.conv` / `.bn`, conv + BN + ReLU) to `mid_channels`; all are bilinearly
//! resized to the finest used level and concatenated; each of the dilation layers
//! (`dilation_layers.{j}.0`, mmcv `DepthwiseSeparableConvModule`: depthwise 3x3 with dilation
//! `d_j` + BN and *no* activation (`depthwise_conv.*`), then pointwise 1x1 + BN + ReLU
//! (`pointwise_conv.*`), no conv biases) maps the concatenation to `mid_channels`, and the
//! neck's fused output is their concatenation.
//!
//! Like mmseg, the neck returns the backbone inputs it does not fuse (for auxiliary heads) and
//! the fused map last: for mmseg's FastFCN configs, inputs (C3, C4, C5) give (C3, C4, fused).
//!
//! Official FastFCN checkpoints load after a key rename (kept as data by the converter):
//! `conv{3,4,5}.{0,1}` -> `conv_layers.{0,1,2}.0.{conv,bn}`, `dilation{k}.0.conv1` ->
//! `dilation_layers.{k-1}.0.depthwise_conv.conv`, `dilation{k}.0.bn` -> `..depthwise_conv.bn`,
//! `dilation{k}.0.pointwise` -> `..pointwise_conv.conv`, `dilation{k}.1` -> `..pointwise_conv.bn`.
//!
//! # Shapes
//! Inputs: one `N x C_i x H_i x W_i` map per input spec. Outputs: the pass-through inputs
//! unchanged, then the fused map `N x (len(dilations) * mid_channels) x H_s x W_s` at the size
//! (and stride) of the first used level `s = start_level`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{FeatureSpec, Neck};
//! use segkit_necks::{Jpu, JpuConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(512, 8), FeatureSpec::new(1024, 16), FeatureSpec::new(2048, 32)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let jpu = Jpu::new(&JpuConfig::mmseg(), &specs, vb).unwrap();
//! assert_eq!(jpu.output_specs().last(), Some(&FeatureSpec::new(2048, 8)));
//! let xs = [
//!     Tensor::zeros((1, 512, 13, 17), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 1024, 7, 9), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 2048, 4, 5), DType::F32, &dev).unwrap(),
//! ];
//! let out = jpu.forward(&xs, false).unwrap();
//! assert_eq!(out.fused.dims(), &[1, 2048, 13, 17]);
//! assert_eq!(out.passthrough.len(), 2);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, DepthwiseSeparableConvModule, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{FeatureSpec, Neck};

use crate::{check_features, Error, Result};

/// Order in which the projected levels are concatenated before the dilation layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConcatOrder {
    /// Finest first (C3, C4, C5): mmseg.
    FineToCoarse,
    /// Coarsest first (C5, C4, C3): the official FastFCN code.
    CoarseToFine,
}

/// Which inputs the neck returns unchanged before its fused output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Passthrough {
    /// The used levels but the last: `inputs[start_level .. end_level - 1]` (mmseg).
    FromStartLevel,
    /// Every input before the last used level: `inputs[.. end_level - 1]` (official FastFCN,
    /// which is called with C2..C5, fuses C3..C5 and returns C2, C3, C4).
    FromFirstInput,
}

/// Configuration of a [`Jpu`]. Fields missing from a JSON config take mmseg's values
/// ([`JpuConfig::mmseg`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JpuConfig {
    /// Width of the JPU: output channels of each level's 3x3 conv and of each dilation layer
    /// (the paper's C = 512). The fused output has `dilations.len() * mid_channels` channels.
    pub mid_channels: usize,
    /// First input level that is fused (mmseg `start_level`). Default 0.
    pub start_level: usize,
    /// One past the last fused input level (mmseg `end_level`); `None` means all inputs
    /// (mmseg's `-1`). Default `None`.
    pub end_level: Option<usize>,
    /// Dilation of each depthwise-separable layer (the paper's dilation rates 1, 2, 4, 8).
    pub dilations: Vec<usize>,
    /// `align_corners` of the bilinear upsampling of the coarser levels. mmseg: false;
    /// official FastFCN: true.
    pub align_corners: bool,
    /// Concatenation order of the levels. mmseg: fine to coarse; official: coarse to fine.
    pub concat_order: ConcatOrder,
    /// Which inputs are returned unchanged before the fused map.
    pub passthrough: Passthrough,
    /// Normalisation after every conv (mmseg `norm_cfg`). Default BatchNorm (eps 1e-5).
    pub norm: Option<Norm>,
    /// Activation of the level convs and of the pointwise convs (mmseg `act_cfg`). Default ReLU.
    pub act: Activation,
    /// The levels the JPU was designed to fuse (the presets: C3, C4, C5 of a ResNet-50, i.e.
    /// 512 / 1024 / 2048 channels at strides 8 / 16 / 32), or `None` (the default in JSON):
    /// fuse `start_level..end_level` whatever they are.
    ///
    /// When set and `start_level` / `end_level` are left at their defaults, the JPU takes
    /// what the specs give it: it fuses the one run of consecutive inputs that matches (so a
    /// backbone returning C2..C5 works unchanged, C2 passed over). Otherwise — no run
    /// matches, several do, or the explicit levels do not match — building fails with
    /// [`segkit_core::Error::Miswired`] naming both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub designed_for: Option<Vec<FeatureSpec>>,
}

/// C3, C4, C5 of a ResNet-50 at output stride 32: what FastFCN's JPU fuses.
fn resnet50_c3_c5() -> Vec<FeatureSpec> {
    vec![
        FeatureSpec::new(512, 8),
        FeatureSpec::new(1024, 16),
        FeatureSpec::new(2048, 32),
    ]
}

fn show(specs: &[FeatureSpec]) -> String {
    let v: Vec<String> = specs
        .iter()
        .map(|s| format!("{}@{}", s.channels, s.stride))
        .collect();
    format!("[{}] (channels@stride)", v.join(", "))
}

impl Default for JpuConfig {
    /// mmseg's JPU.
    fn default() -> Self {
        Self::mmseg()
    }
}

impl JpuConfig {
    /// mmseg's `JPU` as the `fastfcn_r50-d32_jpu_*` configs use it: width 512, dilations
    /// (1, 2, 4, 8), levels concatenated C3, C4, C5, `align_corners = false`, all inputs fused
    /// (build it from the C3, C4, C5 specs; it returns C3, C4 and the fused map, which the
    /// FastFCN heads read with `in_index` 2, the auxiliary head with 1). On a backbone that
    /// returns C2..C5 it picks C3..C5 itself ([`JpuConfig::designed_for`]) and gives the same
    /// three outputs.
    pub fn mmseg() -> Self {
        Self {
            mid_channels: 512,
            start_level: 0,
            end_level: None,
            dilations: vec![1, 2, 4, 8],
            align_corners: false,
            concat_order: ConcatOrder::FineToCoarse,
            passthrough: Passthrough::FromStartLevel,
            norm: Some(Norm::batch_norm()),
            act: Activation::Relu,
            designed_for: Some(resnet50_c3_c5()),
        }
    }

    /// The official FastFCN JPU (`encoding/nn/customize.py`): levels concatenated C5, C4, C3,
    /// `align_corners = true`. Built from the C3, C4, C5 specs it returns C3, C4 and the fused
    /// map; on C2..C5 (the official call) it picks C3..C5 itself and returns C2, C3, C4 and
    /// the fused map as the original does.
    pub fn fastfcn() -> Self {
        Self {
            align_corners: true,
            concat_order: ConcatOrder::CoarseToFine,
            passthrough: Passthrough::FromFirstInput,
            ..Self::mmseg()
        }
    }

    /// Sets the first fused level.
    pub fn with_start_level(mut self, start_level: usize) -> Self {
        self.start_level = start_level;
        self
    }

    /// Sets (or, with `None`, removes) the levels the JPU was designed to fuse (see
    /// [`JpuConfig::designed_for`]).
    pub fn with_designed_for(mut self, specs: Option<Vec<FeatureSpec>>) -> Self {
        self.designed_for = specs;
        self
    }

    /// The fused levels `start..end` of `inputs`: picked by [`JpuConfig::designed_for`] when
    /// the levels are left at their defaults, checked against it otherwise.
    fn select(&self, inputs: &[FeatureSpec]) -> Result<(usize, usize)> {
        let Some(want) = &self.designed_for else {
            return self.levels(inputs.len());
        };
        let miswired = |problem: String| Error::Miswired {
            component: format!(
                "JPU (start_level {}, end_level {:?})",
                self.start_level, self.end_level
            ),
            problem,
        };
        if self.start_level == 0 && self.end_level.is_none() {
            let runs: Vec<usize> = (0..=inputs.len().saturating_sub(want.len()))
                .filter(|&s| inputs.len() >= want.len() && inputs[s..s + want.len()] == want[..])
                .collect();
            return match runs[..] {
                [s] => Self {
                    start_level: s,
                    end_level: Some(s + want.len()),
                    ..self.clone()
                }
                .levels(inputs.len()),
                [] => Err(miswired(format!(
                    "designed to fuse {}, but no consecutive inputs of {} match; give it those \
                     features, or set `designed_for` to None to fuse the inputs as they are",
                    show(want),
                    show(inputs)
                ))),
                _ => Err(miswired(format!(
                    "designed to fuse {}, which several runs of {} match; set start_level / \
                     end_level",
                    show(want),
                    show(inputs)
                ))),
            };
        }
        let (s, e) = self.levels(inputs.len())?;
        if inputs[s..e] != want[..] {
            return Err(miswired(format!(
                "fuses inputs {s}..{e} = {}, but it was designed to fuse {}; inputs are {} \
                 (leave start_level / end_level at their defaults to pick the matching \
                 levels, or set `designed_for` to None)",
                show(&inputs[s..e]),
                show(want),
                show(inputs)
            )));
        }
        Ok((s, e))
    }

    /// The fused levels `start..end` for `num_inputs` inputs, validated.
    fn levels(&self, num_inputs: usize) -> Result<(usize, usize)> {
        let end = self.end_level.unwrap_or(num_inputs);
        if end > num_inputs || self.start_level >= end {
            return Err(Error::InvalidConfig(format!(
                "JPU levels {}..{end} are not a non-empty range of the {num_inputs} inputs",
                self.start_level
            )));
        }
        if self.mid_channels == 0 {
            return Err(Error::InvalidConfig(
                "JPU mid_channels must be positive".into(),
            ));
        }
        if self.dilations.is_empty() || self.dilations.contains(&0) {
            return Err(Error::InvalidConfig(format!(
                "JPU needs at least one positive dilation, got {:?}",
                self.dilations
            )));
        }
        Ok((self.start_level, end))
    }
}

/// The outputs of a [`Jpu`].
#[derive(Debug, Clone)]
pub struct JpuOutput {
    /// The inputs returned unchanged (see [`Passthrough`]), finest first: C3, C4 for mmseg.
    pub passthrough: Vec<Tensor>,
    /// The fused map at the finest used level's size.
    pub fused: Tensor,
}

impl JpuOutput {
    /// The outputs as mmseg's tuple: pass-through maps, then the fused map.
    pub fn into_vec(self) -> Vec<Tensor> {
        let mut v = self.passthrough;
        v.push(self.fused);
        v
    }
}

/// FastFCN's Joint Pyramid Upsampling neck.
pub struct Jpu {
    cfg: JpuConfig,
    inputs: Vec<FeatureSpec>,
    start: usize,
    end: usize,
    conv_layers: Vec<ConvNormAct>,
    dilation_layers: Vec<DepthwiseSeparableConvModule>,
    out_specs: Vec<FeatureSpec>,
}

impl Jpu {
    /// Builds the neck for features with `inputs` specs, loading mmseg's keys from `vb`
    /// (`conv_layers.*`, `dilation_layers.*`).
    pub fn new(cfg: &JpuConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let (start, end) = cfg.select(inputs)?;
        let mid = cfg.mid_channels;
        let mut conv_layers = Vec::with_capacity(end - start);
        for (i, spec) in inputs[start..end].iter().enumerate() {
            let c = ConvModuleConfig::new(spec.channels, mid, 3)
                .norm(cfg.norm)
                .act(cfg.act);
            conv_layers.push(ConvNormAct::new(&c, vb.pp("conv_layers").pp(i).pp(0))?);
        }
        let cat = (end - start) * mid;
        let mut dilation_layers = Vec::with_capacity(cfg.dilations.len());
        for (j, &d) in cfg.dilations.iter().enumerate() {
            let dw = ConvModuleConfig::new(cat, cat, 3)
                .dilation(d)
                .norm(cfg.norm)
                .act(Activation::None);
            dilation_layers.push(DepthwiseSeparableConvModule::new(
                &dw,
                mid,
                cfg.norm,
                cfg.act,
                vb.pp("dilation_layers").pp(j).pp(0),
            )?);
        }
        let first = match cfg.passthrough {
            Passthrough::FromStartLevel => start,
            Passthrough::FromFirstInput => 0,
        };
        let mut out_specs = inputs[first..end - 1].to_vec();
        out_specs.push(FeatureSpec::new(
            cfg.dilations.len() * mid,
            inputs[start].stride,
        ));
        Ok(Self {
            cfg: cfg.clone(),
            inputs: inputs.to_vec(),
            start,
            end,
            conv_layers,
            dilation_layers,
            out_specs,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &JpuConfig {
        &self.cfg
    }

    /// Runs the neck on one map per input spec. `train` uses batch statistics in BatchNorm.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<JpuOutput> {
        check_features("JPU", features, &self.inputs)?;
        let mut feats = Vec::with_capacity(self.end - self.start);
        for (conv, x) in self.conv_layers.iter().zip(&features[self.start..self.end]) {
            feats.push(conv.forward_t(x, train)?);
        }
        let (_, _, h, w) = feats[0].dims4()?;
        for f in feats.iter_mut().skip(1) {
            *f = ops::resize_bilinear(f, (h, w), self.cfg.align_corners)?;
        }
        if self.cfg.concat_order == ConcatOrder::CoarseToFine {
            feats.reverse();
        }
        let feat = Tensor::cat(&feats, 1)?;
        let mut outs = Vec::with_capacity(self.dilation_layers.len());
        for layer in &self.dilation_layers {
            outs.push(layer.forward_t(&feat, train)?);
        }
        let fused = Tensor::cat(&outs, 1)?;
        let first = match self.cfg.passthrough {
            Passthrough::FromStartLevel => self.start,
            Passthrough::FromFirstInput => 0,
        };
        Ok(JpuOutput {
            passthrough: features[first..self.end - 1].to_vec(),
            fused,
        })
    }
}

impl Neck for Jpu {
    fn output_specs(&self) -> Vec<FeatureSpec> {
        self.out_specs.clone()
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> segkit_core::Result<Vec<Tensor>> {
        Ok(self.forward(features, train)?.into_vec())
    }
}

/// The configuration, the input and output specs (the weights are not printed).
impl std::fmt::Debug for Jpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jpu")
            .field("config", &self.cfg)
            .field("inputs", &self.inputs)
            .field("output_specs", &segkit_core::Neck::output_specs(self))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn specs() -> Vec<FeatureSpec> {
        vec![
            FeatureSpec::new(8, 8),
            FeatureSpec::new(16, 16),
            FeatureSpec::new(32, 32),
        ]
    }

    fn small() -> JpuConfig {
        JpuConfig {
            mid_channels: 4,
            designed_for: Some(specs()),
            ..JpuConfig::mmseg()
        }
    }

    #[test]
    fn specs_and_shapes() {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let jpu = Jpu::new(&small(), &specs(), vb).unwrap();
        assert_eq!(
            jpu.output_specs(),
            vec![
                FeatureSpec::new(8, 8),
                FeatureSpec::new(16, 16),
                FeatureSpec::new(16, 8)
            ]
        );
        let xs = [
            Tensor::zeros((2, 8, 9, 11), DType::F32, &dev).unwrap(),
            Tensor::zeros((2, 16, 5, 6), DType::F32, &dev).unwrap(),
            Tensor::zeros((2, 32, 3, 3), DType::F32, &dev).unwrap(),
        ];
        let out = Neck::forward_t(&jpu, &xs, false).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].dims(), &[2, 16, 9, 11]);
    }

    #[test]
    fn official_passthrough_from_first_input() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let mut s = vec![FeatureSpec::new(4, 4)];
        s.extend(specs());
        // Built on C2..C5, it picks the C3..C5 it was designed for (start level 1).
        let cfg = JpuConfig {
            mid_channels: 4,
            designed_for: Some(specs()),
            ..JpuConfig::fastfcn()
        };
        let jpu = Jpu::new(&cfg, &s, vb).unwrap();
        let o = jpu.output_specs();
        assert_eq!(o.len(), 4);
        assert_eq!(o[0], FeatureSpec::new(4, 4));
        assert_eq!(o[3], FeatureSpec::new(16, 8));
    }

    #[test]
    fn typed_errors() {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let bad = JpuConfig {
            start_level: 3,
            ..small()
        };
        assert!(matches!(
            Jpu::new(&bad, &specs(), vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let jpu = Jpu::new(&small(), &specs(), vb).unwrap();
        let xs = [
            Tensor::zeros((1, 8, 9, 11), DType::F32, &dev).unwrap(),
            Tensor::zeros((1, 15, 5, 6), DType::F32, &dev).unwrap(),
            Tensor::zeros((1, 32, 3, 3), DType::F32, &dev).unwrap(),
        ];
        assert!(matches!(
            jpu.forward(&xs, false),
            Err(segkit_core::Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            jpu.forward(&xs[..2], false),
            Err(Error::WrongInputCount { .. })
        ));
    }

    #[test]
    fn config_roundtrip() {
        let c = JpuConfig::fastfcn();
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<JpuConfig>(&j).unwrap(), c);
        let d: JpuConfig = serde_json::from_str("{}").unwrap();
        // JSON without `designed_for` checks nothing.
        assert_eq!(d, JpuConfig::mmseg().with_designed_for(None));
        assert!(serde_json::from_str::<JpuConfig>(r#"{"width": 3}"#).is_err());
    }
}
