//! mmdet's `PAFPN`: the "Path Aggregation Network" neck as MMDetection implements it
//! (`mmdet/models/necks/pafpn.py`, on `necks/fpn.py`), with mmdet's key names.
//!
//! This is NOT the official PANet pyramid ([`crate::PanetFpn`]): mmdet's FPN convs have biases
//! and, by default, no norm and no activation; its bottom-up path adds the stride-2 conv of the
//! running sum before the 3x3 conv (`inter_l += downsample_convs[l-1](inter_{l-1})`, then
//! `out_l = pafpn_convs[l-1](inter_l)`), whereas PANet convolves, normalises and activates each
//! `N_l` first.
//!
//! - laterals `lateral_convs.{i}` (1x1 ConvModule), top-down by `F.interpolate(size=.., mode=
//!   'nearest')` of the coarser merged lateral, `fpn_convs.{i}` (3x3) on each merged map;
//! - bottom-up: `downsample_convs.{i}` (3x3, stride 2), `pafpn_convs.{i}` (3x3);
//! - extra levels: max-pool (kernel 1, stride 2) of the last output, or stride-2 3x3 convs
//!   continuing `fpn_convs` on the input, lateral or output (`add_extra_convs`), optionally
//!   after a ReLU (`relu_before_extra_convs`).
//!
//! Keys are mmcv ConvModule keys (`lateral_convs.0.conv.weight`, `.bn.*` / `.gn.*` with a norm;
//! a conv has a bias exactly when it has no norm).
//!
//! # Shapes
//! Inputs: one `N x C_i x H_i x W_i` map per input spec (finest first). Outputs: `num_outs` maps
//! of `out_channels`, finest first; the extra levels each `ceil(H / 2)` of the previous one.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{FeatureSpec, Neck};
//! use segkit_necks::{PaFpn, PaFpnConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(8, 4), FeatureSpec::new(16, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let neck = PaFpn::new(&PaFpnConfig::mmdet(32, 3), &specs, vb).unwrap();
//! let xs = [
//!     Tensor::zeros((1, 8, 15, 11), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 16, 8, 6), DType::F32, &dev).unwrap(),
//! ];
//! let out = neck.forward_t(&xs, false).unwrap();
//! assert_eq!(out[2].dims(), &[1, 32, 4, 3]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{Error, FeatureSpec, Neck, Result};

use crate::{check_features, ExtraSource};

/// Configuration of a [`PaFpn`] (the arguments of mmdet's `PAFPN`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaFpnConfig {
    /// Channels of every output (`out_channels`).
    pub out_channels: usize,
    /// Number of outputs (`num_outs`), the used inputs plus extra levels.
    pub num_outs: usize,
    /// First input used (`start_level`). Default 0.
    pub start_level: usize,
    /// Last input used, inclusive (`end_level`; `None` = the last input, mmdet's -1).
    pub end_level: Option<usize>,
    /// Extra levels by stride-2 convs reading this source (`add_extra_convs`); `None` = by
    /// max pooling (mmdet's `False`). mmdet's `True` is [`ExtraSource::Input`].
    pub add_extra_convs: Option<ExtraSource>,
    /// A ReLU before every extra conv but the first (`relu_before_extra_convs`). Default false.
    pub relu_before_extra_convs: bool,
    /// No norm on the laterals (`no_norm_on_lateral`). Default false.
    pub no_norm_on_lateral: bool,
    /// Norm of every ConvModule (`norm_cfg`). Default none.
    pub norm: Option<Norm>,
    /// Activation of every ConvModule (`act_cfg`). Default none.
    pub act: Activation,
}

impl PaFpnConfig {
    /// mmdet's defaults with `out_channels` and `num_outs` (`configs/pafpn/
    /// faster-rcnn_r50_pafpn_1x_coco.py`: 256 channels, 5 outputs, max-pool extra level).
    pub fn mmdet(out_channels: usize, num_outs: usize) -> Self {
        Self {
            out_channels,
            num_outs,
            start_level: 0,
            end_level: None,
            add_extra_convs: None,
            relu_before_extra_convs: false,
            no_norm_on_lateral: false,
            norm: None,
            act: Activation::None,
        }
    }

    /// `(start, backbone_end)` as mmdet's `FPN.__init__` derives them, with its assertions as
    /// typed errors.
    fn levels(&self, num_ins: usize) -> Result<(usize, usize)> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("PAFPN: {m}")));
        let end = match self.end_level {
            None => num_ins,
            Some(e) if e + 1 == num_ins => num_ins,
            Some(e) if e < num_ins => {
                if self.num_outs != e + 1 - self.start_level.min(e + 1) {
                    return bad(format!(
                        "end_level {e} is not the last input, so num_outs must be end_level - \
                         start_level + 1, got {}",
                        self.num_outs
                    ));
                }
                e + 1
            }
            Some(e) => return bad(format!("end_level {e} >= number of inputs {num_ins}")),
        };
        if self.start_level >= end {
            return bad(format!(
                "start_level {} leaves no input level",
                self.start_level
            ));
        }
        if self.num_outs < end - self.start_level || self.out_channels == 0 {
            return bad(format!(
                "num_outs {} < {} used inputs, or out_channels 0",
                self.num_outs,
                end - self.start_level
            ));
        }
        Ok((self.start_level, end))
    }
}

/// mmdet's `PAFPN` (see the module docs).
pub struct PaFpn {
    cfg: PaFpnConfig,
    start: usize,
    end: usize,
    lateral: Vec<ConvNormAct>,
    /// `fpn_convs`: one per used input, then the extra convs.
    fpn: Vec<ConvNormAct>,
    downsample: Vec<ConvNormAct>,
    pafpn: Vec<ConvNormAct>,
    inputs: Vec<FeatureSpec>,
    specs: Vec<FeatureSpec>,
}

impl PaFpn {
    /// Builds the neck on `inputs` (finest first), loading parameters under mmdet's names.
    pub fn new(cfg: &PaFpnConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        let (start, end) = cfg.levels(inputs.len())?;
        let c = cfg.out_channels;
        let module = |cin, k, stride, norm: Option<Norm>, vb: VarBuilder<'_>| {
            let m = ConvModuleConfig::new(cin, c, k)
                .stride(stride)
                .padding(k / 2)
                .norm(norm)
                .bias(norm.is_none())
                .act(cfg.act);
            ConvNormAct::new(&m, vb)
        };
        let lat_norm = if cfg.no_norm_on_lateral {
            None
        } else {
            cfg.norm
        };
        let (mut lateral, mut fpn) = (Vec::new(), Vec::new());
        for (i, s) in inputs[start..end].iter().enumerate() {
            lateral.push(module(
                s.channels,
                1,
                1,
                lat_norm,
                vb.pp(format!("lateral_convs.{i}")),
            )?);
            fpn.push(module(c, 3, 1, cfg.norm, vb.pp(format!("fpn_convs.{i}")))?);
        }
        let used = end - start;
        if let Some(src) = cfg.add_extra_convs {
            for i in 0..cfg.num_outs - used {
                let cin = if i == 0 && src == ExtraSource::Input {
                    inputs[end - 1].channels
                } else {
                    c
                };
                fpn.push(module(
                    cin,
                    3,
                    2,
                    cfg.norm,
                    vb.pp(format!("fpn_convs.{}", used + i)),
                )?);
            }
        }
        let (mut downsample, mut pafpn) = (Vec::new(), Vec::new());
        for i in 0..used - 1 {
            downsample.push(module(
                c,
                3,
                2,
                cfg.norm,
                vb.pp(format!("downsample_convs.{i}")),
            )?);
            pafpn.push(module(
                c,
                3,
                1,
                cfg.norm,
                vb.pp(format!("pafpn_convs.{i}")),
            )?);
        }
        let mut specs: Vec<FeatureSpec> = inputs[start..end]
            .iter()
            .map(|s| FeatureSpec::new(c, s.stride))
            .collect();
        for _ in used..cfg.num_outs {
            let s = specs[specs.len() - 1].stride;
            specs.push(FeatureSpec::new(c, 2 * s));
        }
        Ok(Self {
            cfg: cfg.clone(),
            start,
            end,
            lateral,
            fpn,
            downsample,
            pafpn,
            inputs: inputs.to_vec(),
            specs,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PaFpnConfig {
        &self.cfg
    }

    /// Runs the neck: `num_outs` maps, finest first.
    pub fn forward(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        check_features("PAFPN", features, &self.inputs)?;
        let used = self.end - self.start;
        let mut lat = Vec::with_capacity(used);
        for (i, l) in self.lateral.iter().enumerate() {
            lat.push(l.forward_t(&features[self.start + i], train)?);
        }
        for i in (1..used).rev() {
            let (h, w) = (lat[i - 1].dim(2)?, lat[i - 1].dim(3)?);
            let up = ops::resize_nearest(&lat[i], (h, w))?;
            lat[i - 1] = (&lat[i - 1] + up)?;
        }
        let mut inter = Vec::with_capacity(used);
        for (i, l) in lat.iter().enumerate() {
            inter.push(self.fpn[i].forward_t(l, train)?);
        }
        for i in 0..used - 1 {
            let down = self.downsample[i].forward_t(&inter[i], train)?;
            if down.dims() != inter[i + 1].dims() {
                return Err(Error::shape(
                    format!(
                        "PAFPN bottom-up: stride-2 conv of level {i} vs level {}",
                        i + 1
                    ),
                    inter[i + 1].dims(),
                    down.dims(),
                ));
            }
            inter[i + 1] = (&inter[i + 1] + down)?;
        }
        let mut outs = vec![inter[0].clone()];
        for (conv, x) in self.pafpn.iter().zip(&inter[1..]) {
            outs.push(conv.forward_t(x, train)?);
        }
        match self.cfg.add_extra_convs {
            None => {
                for _ in used..self.cfg.num_outs {
                    let last = &outs[outs.len() - 1];
                    outs.push(ops::max_pool2d(last, 1, 2, 0, false)?);
                }
            }
            Some(_) if self.cfg.num_outs == used => {}
            Some(src) => {
                let first = match src {
                    ExtraSource::Input => features[self.end - 1].clone(),
                    ExtraSource::Lateral => lat[used - 1].clone(),
                    ExtraSource::Output => outs[used - 1].clone(),
                };
                outs.push(self.fpn[used].forward_t(&first, train)?);
                for i in used + 1..self.cfg.num_outs {
                    let prev = &outs[outs.len() - 1];
                    let x = if self.cfg.relu_before_extra_convs {
                        prev.relu()?
                    } else {
                        prev.clone()
                    };
                    outs.push(self.fpn[i].forward_t(&x, train)?);
                }
            }
        }
        Ok(outs)
    }
}

impl Neck for PaFpn {
    fn output_specs(&self) -> Vec<FeatureSpec> {
        self.specs.clone()
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.forward(features, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn mmdet_assertions_are_typed_errors() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let specs = [
            FeatureSpec::new(4, 4),
            FeatureSpec::new(8, 8),
            FeatureSpec::new(16, 16),
        ];
        let mut cfg = PaFpnConfig::mmdet(8, 2);
        assert!(matches!(
            PaFpn::new(&cfg, &specs, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        cfg.num_outs = 5;
        cfg.end_level = Some(1);
        assert!(matches!(
            PaFpn::new(&cfg, &specs, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        cfg.end_level = Some(7);
        assert!(matches!(
            PaFpn::new(&cfg, &specs, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        cfg.end_level = None;
        let neck = PaFpn::new(&cfg, &specs, vb).unwrap();
        assert_eq!(neck.output_specs().last().unwrap().stride, 64);
        let z = |c, h, w| Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu).unwrap();
        assert!(neck.forward(&[z(4, 8, 8), z(8, 4, 4)], false).is_err());
        let out = neck
            .forward(&[z(4, 9, 7), z(8, 5, 4), z(16, 3, 2)], false)
            .unwrap();
        assert_eq!(out[4].dims(), &[1, 8, 1, 1]);
    }
}
