//! Feature Pyramid Network: "Feature Pyramid Networks for Object Detection" (Lin et al., 2017).
//!
//! The plain FPN as two references implement it, number for number, with either's key names:
//! - torchvision `ops/feature_pyramid_network.py` (`FeaturePyramidNetwork`): lateral 1x1
//!   convs `inner_blocks.{i}.0`, output 3x3 convs `layer_blocks.{i}.0` (norm, if any, at
//!   `.1`), optional `LastLevelMaxPool` (an extra level subsampled by `max_pool2d(k=1, s=2)`);
//! - mmdet / mmseg `necks/fpn.py` (`FPN`): `lateral_convs.{i}.conv`, `fpn_convs.{i}.conv`
//!   (mmcv ConvModules, norm at `.bn` / `.gn`), extra levels by max pooling or by stride-2 3x3
//!   convs on the input, lateral or output (`add_extra_convs`, RetinaNet), `start_level` /
//!   `end_level`.
//!
//! Top-down path: starting from the coarsest lateral, each coarser (already merged) lateral is
//! upsampled with nearest-neighbour interpolation to the next finer lateral's size
//! (`F.interpolate(size=..., mode='nearest')`) and added to it; each merged map then goes
//! through its 3x3 output conv.
//!
//! # Shapes
//! Inputs: one `N x C_i x H_i x W_i` map per input spec. Outputs: one `N x out_channels x H_i x
//! W_i` map per used level (`start_level .. end_level`), finest first, then the extra levels,
//! each half the previous size (`ceil(H / 2)`) at twice the stride.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{FeatureSpec, Neck};
//! use segkit_necks::{Fpn, FpnConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(64, 4), FeatureSpec::new(128, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let fpn = Fpn::new(&FpnConfig::torchvision_maskrcnn(), &specs, vb).unwrap();
//! assert_eq!(fpn.output_specs()[2], FeatureSpec::new(256, 16));
//! let xs = [
//!     Tensor::zeros((1, 64, 16, 20), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 128, 8, 10), DType::F32, &dev).unwrap(),
//! ];
//! let out = fpn.forward(&xs, false).unwrap();
//! assert_eq!(out[2].dims(), &[1, 256, 4, 5]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{FeatureSpec, Neck};

use crate::{check_features, Error, Result};

/// Whose state-dict layout to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FpnKeyStyle {
    /// torchvision: `inner_blocks.{i}.0.weight`, `layer_blocks.{i}.0.weight`, norm at `.1`.
    Torchvision,
    /// mmdet / mmseg: `lateral_convs.{i}.conv.weight`, `fpn_convs.{i}.conv.weight`, norm at
    /// `.bn` / `.gn`; extra convs continue `fpn_convs`.
    Mmdet,
}

/// What the first extra conv level reads (mmdet `add_extra_convs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExtraSource {
    /// The last used backbone input (`'on_input'`).
    Input,
    /// The last lateral (`'on_lateral'`).
    Lateral,
    /// The last FPN output (`'on_output'`).
    Output,
}

/// Levels added above the coarsest used input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum ExtraLevels {
    /// No extra level.
    None,
    /// `levels` extra maps, each `max_pool2d(kernel 1, stride 2)` of the previous output
    /// (torchvision `LastLevelMaxPool` is `levels = 1`; mmdet's Faster / Mask R-CNN use it when
    /// `num_outs` exceeds the inputs).
    MaxPool {
        /// Number of extra levels.
        levels: usize,
    },
    /// `levels` stride-2 3x3 ConvModules at `fpn_convs.{n + i}` (mmdet `add_extra_convs`,
    /// RetinaNet's P6 / P7). mmdet key style only.
    Convs {
        /// Number of extra levels.
        levels: usize,
        /// Input of the first extra conv.
        source: ExtraSource,
        /// ReLU before every extra conv but the first (mmdet `relu_before_extra_convs`).
        relu_before: bool,
    },
}

impl ExtraLevels {
    fn count(&self) -> usize {
        match *self {
            ExtraLevels::None => 0,
            ExtraLevels::MaxPool { levels } | ExtraLevels::Convs { levels, .. } => levels,
        }
    }
}

/// Configuration of an [`Fpn`]. Fields missing from a JSON config take torchvision's
/// Mask R-CNN values ([`FpnConfig::torchvision_maskrcnn`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FpnConfig {
    /// Channels of every pyramid level (the paper's d = 256).
    pub out_channels: usize,
    /// Key names to load.
    pub key_style: FpnKeyStyle,
    /// First input level that gets a lateral (mmdet `start_level`). Default 0.
    pub start_level: usize,
    /// One past the last input level used (mmdet `end_level`); `None` = all inputs.
    pub end_level: Option<usize>,
    /// Extra levels above the coarsest input (P6, P7).
    pub extra: ExtraLevels,
    /// Normalisation after every conv (torchvision `norm_layer`, mmdet `norm_cfg`). Default
    /// none (then the convs have biases).
    pub norm: Option<Norm>,
    /// Activation after every conv (mmdet `act_cfg`; torchvision has none). Default none.
    pub act: Activation,
}

impl Default for FpnConfig {
    fn default() -> Self {
        Self::torchvision_maskrcnn()
    }
}

impl FpnConfig {
    /// torchvision's Mask R-CNN / Faster R-CNN FPN: 256 channels, no norm, one
    /// `LastLevelMaxPool` level (`resnet_fpn_backbone` on C2..C5 gives P2..P6).
    pub fn torchvision_maskrcnn() -> Self {
        Self {
            out_channels: 256,
            key_style: FpnKeyStyle::Torchvision,
            start_level: 0,
            end_level: None,
            extra: ExtraLevels::MaxPool { levels: 1 },
            norm: None,
            act: Activation::None,
        }
    }

    /// torchvision's `FeaturePyramidNetwork` without extra blocks.
    pub fn torchvision(out_channels: usize) -> Self {
        Self {
            out_channels,
            extra: ExtraLevels::None,
            ..Self::torchvision_maskrcnn()
        }
    }

    /// mmdet's `FPN` as `mask-rcnn_r50_fpn` configures it: 256 channels, `num_outs = 5` on
    /// four inputs (one max-pooled extra level), no norm, no activation.
    pub fn mmdet_maskrcnn() -> Self {
        Self {
            key_style: FpnKeyStyle::Mmdet,
            ..Self::torchvision_maskrcnn()
        }
    }

    /// mmdet's `FPN` as RetinaNet configures it: 256 channels, `start_level = 1` (C3..C5),
    /// `add_extra_convs = 'on_input'`, `num_outs = 5` (two extra convs, P6 and P7).
    pub fn mmdet_retinanet() -> Self {
        Self {
            start_level: 1,
            extra: ExtraLevels::Convs {
                levels: 2,
                source: ExtraSource::Input,
                relu_before: false,
            },
            ..Self::mmdet_maskrcnn()
        }
    }

    fn levels(&self, num_inputs: usize) -> Result<(usize, usize)> {
        let end = self.end_level.unwrap_or(num_inputs);
        if end > num_inputs || self.start_level >= end {
            return Err(Error::InvalidConfig(format!(
                "FPN levels {}..{end} are not a non-empty range of the {num_inputs} inputs",
                self.start_level
            )));
        }
        if self.out_channels == 0 {
            return Err(Error::InvalidConfig(
                "FPN out_channels must be positive".into(),
            ));
        }
        if let (ExtraLevels::Convs { .. }, FpnKeyStyle::Torchvision) = (self.extra, self.key_style)
        {
            return Err(Error::InvalidConfig(
                "extra conv levels follow mmdet's layout (fpn_convs.{n+i}); use FpnKeyStyle::Mmdet"
                    .into(),
            ));
        }
        Ok((self.start_level, end))
    }
}

/// A plain Feature Pyramid Network.
pub struct Fpn {
    cfg: FpnConfig,
    inputs: Vec<FeatureSpec>,
    start: usize,
    end: usize,
    lateral: Vec<ConvNormAct>,
    output: Vec<ConvNormAct>,
    extra_convs: Vec<ConvNormAct>,
    out_specs: Vec<FeatureSpec>,
}

impl Fpn {
    /// Builds the FPN for features with `inputs` specs, loading the configured key layout.
    pub fn new(cfg: &FpnConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let (start, end) = cfg.levels(inputs.len())?;
        let d = cfg.out_channels;
        let conv = |cin: usize, k: usize, stride: usize, names: (&str, usize)| {
            let c = ConvModuleConfig::new(cin, d, k)
                .stride(stride)
                .norm(cfg.norm)
                .act(cfg.act);
            let base = vb.pp(names.0).pp(names.1);
            Ok::<_, Error>(match cfg.key_style {
                FpnKeyStyle::Torchvision => {
                    ConvNormAct::new_with_paths(&c, base.pp(0), base.pp(1))?
                }
                FpnKeyStyle::Mmdet => ConvNormAct::new(&c, base)?,
            })
        };
        let (lat_name, out_name) = match cfg.key_style {
            FpnKeyStyle::Torchvision => ("inner_blocks", "layer_blocks"),
            FpnKeyStyle::Mmdet => ("lateral_convs", "fpn_convs"),
        };
        let mut lateral = Vec::with_capacity(end - start);
        let mut output = Vec::with_capacity(end - start);
        let mut out_specs = Vec::new();
        for (i, spec) in inputs[start..end].iter().enumerate() {
            lateral.push(conv(spec.channels, 1, 1, (lat_name, i))?);
            output.push(conv(d, 3, 1, (out_name, i))?);
            out_specs.push(FeatureSpec::new(d, spec.stride));
        }
        let used = end - start;
        let mut extra_convs = Vec::new();
        if let ExtraLevels::Convs { levels, source, .. } = cfg.extra {
            for i in 0..levels {
                let cin = if i == 0 && source == ExtraSource::Input {
                    inputs[end - 1].channels
                } else {
                    d
                };
                extra_convs.push(conv(cin, 3, 2, ("fpn_convs", used + i))?);
            }
        }
        let mut stride = inputs[end - 1].stride;
        for _ in 0..cfg.extra.count() {
            stride *= 2;
            out_specs.push(FeatureSpec::new(d, stride));
        }
        Ok(Self {
            cfg: cfg.clone(),
            inputs: inputs.to_vec(),
            start,
            end,
            lateral,
            output,
            extra_convs,
            out_specs,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FpnConfig {
        &self.cfg
    }

    /// Runs the FPN on one map per input spec; returns the pyramid, finest first.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        check_features("FPN", features, &self.inputs)?;
        let mut laterals = Vec::with_capacity(self.lateral.len());
        for (conv, x) in self.lateral.iter().zip(&features[self.start..self.end]) {
            laterals.push(conv.forward_t(x, train)?);
        }
        for i in (1..laterals.len()).rev() {
            let (_, _, h, w) = laterals[i - 1].dims4()?;
            let up = ops::resize_nearest(&laterals[i], (h, w))?;
            laterals[i - 1] = (&laterals[i - 1] + up)?;
        }
        let mut outs = Vec::with_capacity(self.out_specs.len());
        for (conv, x) in self.output.iter().zip(&laterals) {
            outs.push(conv.forward_t(x, train)?);
        }
        match self.cfg.extra {
            ExtraLevels::None => {}
            ExtraLevels::MaxPool { levels } => {
                for _ in 0..levels {
                    let last = outs.last().ok_or_else(no_level)?;
                    outs.push(ops::max_pool2d(last, 1, 2, 0, false)?);
                }
            }
            ExtraLevels::Convs {
                source,
                relu_before,
                ..
            } => {
                for (i, conv) in self.extra_convs.iter().enumerate() {
                    let x = if i == 0 {
                        match source {
                            ExtraSource::Input => features[self.end - 1].clone(),
                            ExtraSource::Lateral => laterals.last().ok_or_else(no_level)?.clone(),
                            ExtraSource::Output => outs.last().ok_or_else(no_level)?.clone(),
                        }
                    } else {
                        let last = outs.last().ok_or_else(no_level)?;
                        if relu_before {
                            last.relu()?
                        } else {
                            last.clone()
                        }
                    };
                    outs.push(conv.forward_t(&x, train)?);
                }
            }
        }
        Ok(outs)
    }
}

fn no_level() -> Error {
    Error::InvalidConfig("FPN has no level".into())
}

impl Neck for Fpn {
    fn output_specs(&self) -> Vec<FeatureSpec> {
        self.out_specs.clone()
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> segkit_core::Result<Vec<Tensor>> {
        self.forward(features, train)
    }
}

/// The configuration, the input and output specs (the weights are not printed).
impl std::fmt::Debug for Fpn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fpn")
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
            FeatureSpec::new(8, 4),
            FeatureSpec::new(16, 8),
            FeatureSpec::new(32, 16),
        ]
    }

    fn inputs(dev: &Device) -> Vec<Tensor> {
        vec![
            Tensor::zeros((1, 8, 17, 21), DType::F32, dev).unwrap(),
            Tensor::zeros((1, 16, 9, 11), DType::F32, dev).unwrap(),
            Tensor::zeros((1, 32, 5, 6), DType::F32, dev).unwrap(),
        ]
    }

    #[test]
    fn retinanet_levels() {
        let dev = Device::Cpu;
        let cfg = FpnConfig {
            out_channels: 4,
            ..FpnConfig::mmdet_retinanet()
        };
        let fpn = Fpn::new(&cfg, &specs(), VarBuilder::zeros(DType::F32, &dev)).unwrap();
        let strides: Vec<usize> = fpn.output_specs().iter().map(|s| s.stride).collect();
        assert_eq!(strides, [8, 16, 32, 64]);
        let out = fpn.forward(&inputs(&dev), false).unwrap();
        let dims: Vec<Vec<usize>> = out.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(
            dims,
            [
                vec![1, 4, 9, 11],
                vec![1, 4, 5, 6],
                vec![1, 4, 3, 3],
                vec![1, 4, 2, 2]
            ]
        );
    }

    #[test]
    fn typed_errors() {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let bad = FpnConfig {
            extra: ExtraLevels::Convs {
                levels: 1,
                source: ExtraSource::Output,
                relu_before: false,
            },
            ..FpnConfig::torchvision(4)
        };
        assert!(matches!(
            Fpn::new(&bad, &specs(), vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let fpn = Fpn::new(&FpnConfig::torchvision(4), &specs(), vb).unwrap();
        let mut xs = inputs(&dev);
        xs[0] = Tensor::zeros((1, 9, 17, 21), DType::F32, &dev).unwrap();
        let err = fpn.forward(&xs, false).unwrap_err();
        assert!(matches!(err, segkit_core::Error::ShapeMismatch { .. }));
        let core: segkit_core::Error = Neck::forward_t(&fpn, &xs[..1], false).unwrap_err();
        assert!(matches!(core, segkit_core::Error::WrongInputCount { .. }));
    }
}
