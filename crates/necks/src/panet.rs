//! PANet's feature pyramid: "Path Aggregation Network for Instance Segmentation" (Liu et al.,
//! CVPR 2018), section 3.1, bottom-up path augmentation, on Detectron's FPN.
//!
//! Matches the official code (ShuLiu1993/PANet, `lib/modeling/FPN.py`: class `fpn` built by
//! `fpn_ResNet50_conv5_body_bup`, i.e. `panet_buttomup=True`) number for number:
//! - FPN (Detectron's, lists coarsest first): `conv_top` (1x1) on C5; for each finer level a
//!   `topdown_lateral_modules.{i}.conv_lateral` (1x1) on C_l plus the coarser merged map
//!   upsampled by nearest x2 (`F.upsample(scale_factor=2)`); `posthoc_modules.{i}` (3x3) on each
//!   merged map gives P5, P4, P3, P2 (`posthoc_modules.0` is P5). With `FPN.USE_GN` (PANet's
//!   config) every one of these convs has no bias and is followed by `GroupNorm(32, eps 1e-5)`
//!   (keys `.0.weight`, `.1.weight`, `.1.bias`), no ReLU; without it they are plain convs with bias.
//! - Bottom-up path: `N2 = P2`, `N_{l+1} = conv2_l(conv1_l(N_l) + P_{l+1})` with
//!   `panet_buttomup_conv1_modules.{l-2}` = 3x3 stride-2 conv (with bias) + GN + ReLU and
//!   `panet_buttomup_conv2_modules.{l-2}` = 3x3 conv (with bias) + GN + ReLU (plain convs with
//!   bias and no ReLU without `USE_GN`, as the official code builds them).
//! - P6 (`maxpool_p6`): `max_pool2d(kernel 1, stride 2)` of the coarsest output (N5).
//!
//! The official module stores all of this under `Conv_Body.` next to the backbone
//! (`Conv_Body.conv_body.*`); build this neck from `vb.pp("Conv_Body")`.
//!
//! Detectron pads the input image to a multiple of 32 so that every x2 upsampling and every
//! stride-2 conv lands exactly on the next level's size; other sizes are a typed error, as they
//! are a runtime error in the official code.
//!
//! mmdet's `PAFPN`, a different network, is [`crate::PaFpn`].
//!
//! # Shapes
//! Inputs: C2..C5 (`N x C_l x H_l x W_l`, finest first, each level half the previous size).
//! Outputs (finest first): N2..N5 (`N x out_channels x H_l x W_l`), then N6 (`ceil(H_5 / 2)`)
//! when `p6_max_pool`. [`PanetFpn::forward_all`] also returns the FPN's P2..P5.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::{FeatureSpec, Neck};
//! use segkit_necks::{PanetFpn, PanetFpnConfig};
//! let dev = Device::Cpu;
//! let specs = [FeatureSpec::new(8, 4), FeatureSpec::new(16, 8)];
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let neck = PanetFpn::new(&PanetFpnConfig::panet(), &specs, vb).unwrap();
//! assert_eq!(neck.output_specs()[2], FeatureSpec::new(256, 16));
//! let xs = [
//!     Tensor::zeros((1, 8, 16, 12), DType::F32, &dev).unwrap(),
//!     Tensor::zeros((1, 16, 8, 6), DType::F32, &dev).unwrap(),
//! ];
//! let out = neck.forward_t(&xs, false).unwrap();
//! assert_eq!(out[2].dims(), &[1, 256, 4, 3]);
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::{Error, FeatureSpec, Neck, Result};

use crate::check_features;

/// Configuration of a [`PanetFpn`] (Detectron's `cfg.FPN` plus PANet's switch).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanetFpnConfig {
    /// Channels of every pyramid level (`FPN.DIM`). Default 256.
    pub out_channels: usize,
    /// GroupNorm after the FPN and bottom-up convs, which then drop the FPN convs' biases
    /// (`FPN.USE_GN`; PANet: true).
    pub use_gn: bool,
    /// GroupNorm groups (`GROUP_NORM.NUM_GROUPS`). Default 32.
    pub gn_groups: usize,
    /// GroupNorm epsilon (`GROUP_NORM.EPSILON`). Default 1e-5.
    pub gn_eps: f64,
    /// PANet's bottom-up path augmentation (`panet_buttomup`); false gives Detectron's FPN.
    pub bottom_up: bool,
    /// An extra level from the coarsest output by `max_pool2d(1, stride 2)` (`maxpool_p6`:
    /// RPN on levels 2..6 without `FPN.EXTRA_CONV_LEVELS`). Default true.
    pub p6_max_pool: bool,
}

impl PanetFpnConfig {
    /// PANet's `e2e_panet_R-50-FPN_2x_mask`: 256 channels, GN(32), bottom-up path, P6.
    pub fn panet() -> Self {
        Self {
            out_channels: 256,
            use_gn: true,
            gn_groups: 32,
            gn_eps: 1e-5,
            bottom_up: true,
            p6_max_pool: true,
        }
    }

    /// Detectron's GN FPN without the bottom-up path (`fpn_ResNet50_conv5_body`, `USE_GN`).
    pub fn detectron_fpn_gn() -> Self {
        Self {
            bottom_up: false,
            ..Self::panet()
        }
    }

    fn norm(&self) -> Option<Norm> {
        self.use_gn.then_some(Norm::GroupNorm {
            groups: self.gn_groups,
            eps: self.gn_eps,
        })
    }
}

/// The FPN's and the bottom-up path's maps.
#[derive(Debug, Clone)]
pub struct PanetFpnOutput {
    /// P2..P5 (the FPN's `posthoc_modules` outputs), finest first.
    pub fpn: Vec<Tensor>,
    /// N2..N5 (P2..P5 when `bottom_up` is off), finest first, then N6 when `p6_max_pool`.
    pub outputs: Vec<Tensor>,
}

/// PANet's FPN with bottom-up path augmentation (see the module docs).
pub struct PanetFpn {
    cfg: PanetFpnConfig,
    conv_top: ConvNormAct,
    /// Laterals for the levels below the coarsest, coarsest first (`topdown_lateral_modules`).
    laterals: Vec<ConvNormAct>,
    /// `posthoc_modules`, coarsest first.
    posthoc: Vec<ConvNormAct>,
    /// `panet_buttomup_conv1_modules` / `conv2_modules`, finest first.
    bottom_up: Vec<(ConvNormAct, ConvNormAct)>,
    specs: Vec<FeatureSpec>,
}

/// A conv (+ GN) block under the official keys: `.0` conv and `.1` GN inside an
/// `nn.Sequential`, or a bare conv at `vb` itself.
fn block(
    cfg: &PanetFpnConfig,
    cin: usize,
    k: usize,
    stride: usize,
    conv_bias: bool,
    act: Activation,
    vb: VarBuilder<'_>,
) -> Result<ConvNormAct> {
    let c = ConvModuleConfig::new(cin, cfg.out_channels, k)
        .stride(stride)
        .padding(k / 2)
        .norm(cfg.norm())
        .bias(conv_bias || !cfg.use_gn)
        .act(act);
    if cfg.use_gn {
        ConvNormAct::new_with_paths(&c, vb.pp("0"), vb.pp("1"))
    } else {
        ConvNormAct::new_with_paths(&c, vb.clone(), vb)
    }
}

impl PanetFpn {
    /// Builds the neck on C2..C5-like `inputs` (finest first, strides doubling), loading
    /// parameters under the official names (`conv_top.0.weight`, `posthoc_modules.3.1.bias`,
    /// `panet_buttomup_conv1_modules.0.0.weight`, ...).
    pub fn new(cfg: &PanetFpnConfig, inputs: &[FeatureSpec], vb: VarBuilder<'_>) -> Result<Self> {
        if inputs.len() < 2 || cfg.out_channels == 0 {
            return Err(Error::InvalidConfig(format!(
                "PANet FPN needs at least two input levels and out_channels > 0, got {} inputs, \
                 out_channels {}",
                inputs.len(),
                cfg.out_channels
            )));
        }
        for w in inputs.windows(2) {
            if w[1].stride != 2 * w[0].stride {
                return Err(Error::InvalidConfig(format!(
                    "PANet FPN inputs must double their stride level to level, got {:?}",
                    inputs.iter().map(|s| s.stride).collect::<Vec<_>>()
                )));
            }
        }
        let n = inputs.len();
        let act = if cfg.use_gn {
            Activation::Relu
        } else {
            Activation::None
        };
        let conv_top = block(
            cfg,
            inputs[n - 1].channels,
            1,
            1,
            false,
            Activation::None,
            vb.pp("conv_top"),
        )?;
        let mut laterals = Vec::with_capacity(n - 1);
        for i in 0..n - 1 {
            let v = vb.pp(format!("topdown_lateral_modules.{i}.conv_lateral"));
            laterals.push(block(
                cfg,
                inputs[n - 2 - i].channels,
                1,
                1,
                false,
                Activation::None,
                v,
            )?);
        }
        let c = cfg.out_channels;
        let mut posthoc = Vec::with_capacity(n);
        for i in 0..n {
            let v = vb.pp(format!("posthoc_modules.{i}"));
            posthoc.push(block(cfg, c, 3, 1, false, Activation::None, v)?);
        }
        let mut bottom_up = Vec::new();
        if cfg.bottom_up {
            for i in 0..n - 1 {
                let v1 = vb.pp(format!("panet_buttomup_conv1_modules.{i}"));
                let v2 = vb.pp(format!("panet_buttomup_conv2_modules.{i}"));
                bottom_up.push((
                    block(cfg, c, 3, 2, true, act, v1)?,
                    block(cfg, c, 3, 1, true, act, v2)?,
                ));
            }
        }
        let mut specs: Vec<FeatureSpec> = inputs
            .iter()
            .map(|s| FeatureSpec::new(c, s.stride))
            .collect();
        if cfg.p6_max_pool {
            specs.push(FeatureSpec::new(c, 2 * inputs[n - 1].stride));
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_top,
            laterals,
            posthoc,
            bottom_up,
            specs,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PanetFpnConfig {
        &self.cfg
    }

    fn input_specs(&self) -> Vec<FeatureSpec> {
        let n = self.laterals.len() + 1;
        let mut v = vec![FeatureSpec::new(
            self.conv_top.config().in_channels,
            self.specs[n - 1].stride,
        )];
        for (i, l) in self.laterals.iter().enumerate() {
            v.push(FeatureSpec::new(
                l.config().in_channels,
                self.specs[n - 2 - i].stride,
            ));
        }
        v.reverse();
        v
    }

    /// Runs the FPN and the bottom-up path, returning both (see [`PanetFpnOutput`]).
    pub fn forward_all(&self, features: &[Tensor], train: bool) -> Result<PanetFpnOutput> {
        check_features("PANet FPN", features, &self.input_specs())?;
        let n = features.len();
        // Top-down, coarsest first.
        let mut inner = vec![self.conv_top.forward_t(&features[n - 1], train)?];
        for (i, lateral) in self.laterals.iter().enumerate() {
            let lat = lateral.forward_t(&features[n - 2 - i], train)?;
            let prev = &inner[i];
            let (h, w) = (prev.dim(2)?, prev.dim(3)?);
            // segkit-core's nearest resize, not candle's `upsample_nearest2d`: candle 0.11's
            // backward of that op overwrites the input's accumulated gradient instead of adding
            // to it, dropping the posthoc conv's share of the top-down gradient.
            let td = ops::resize_nearest(prev, (2 * h, 2 * w))?;
            same_size(&lat, &td, || {
                format!(
                    "PANet FPN top-down: lateral of input {} vs 2x-upsampled coarser level",
                    n - 2 - i
                )
            })?;
            inner.push((lat + td)?);
        }
        let mut middle = Vec::with_capacity(n);
        for (m, x) in self.posthoc.iter().zip(&inner) {
            middle.push(m.forward_t(x, train)?);
        }
        middle.reverse(); // finest first: P2..P5
        let mut outputs = if self.cfg.bottom_up {
            let mut outs = vec![middle[0].clone()];
            for (l, (conv1, conv2)) in self.bottom_up.iter().enumerate() {
                let down = conv1.forward_t(&outs[l], train)?;
                same_size(&down, &middle[l + 1], || {
                    format!("PANet bottom-up: stride-2 conv of N{} vs P{}", l + 2, l + 3)
                })?;
                outs.push(conv2.forward_t(&(down + &middle[l + 1])?, train)?);
            }
            outs
        } else {
            middle.clone()
        };
        if self.cfg.p6_max_pool {
            let last = &outputs[outputs.len() - 1];
            outputs.push(ops::max_pool2d(last, 1, 2, 0, false)?);
        }
        Ok(PanetFpnOutput {
            fpn: middle,
            outputs,
        })
    }
}

fn same_size(a: &Tensor, b: &Tensor, what: impl Fn() -> String) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::shape(
            format!(
                "{} (pad the image to a multiple of 32, as Detectron does)",
                what()
            ),
            a.dims(),
            b.dims(),
        ));
    }
    Ok(())
}

impl Neck for PanetFpn {
    fn output_specs(&self) -> Vec<FeatureSpec> {
        self.specs.clone()
    }

    fn forward_t(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        Ok(self.forward_all(features, train)?.outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn specs() -> Vec<FeatureSpec> {
        vec![
            FeatureSpec::new(4, 4),
            FeatureSpec::new(8, 8),
            FeatureSpec::new(16, 16),
        ]
    }

    #[test]
    fn sizes_that_do_not_halve_are_typed_errors() {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let neck = PanetFpn::new(&PanetFpnConfig::panet(), &specs(), vb).unwrap();
        let z = |c, h, w| Tensor::zeros((1, c, h, w), DType::F32, &dev).unwrap();
        let out = neck
            .forward_t(&[z(4, 16, 8), z(8, 8, 4), z(16, 4, 2)], false)
            .unwrap();
        let dims: Vec<_> = out.iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(dims[3], [1, 256, 2, 1]);
        let err = neck
            .forward_t(&[z(4, 17, 8), z(8, 9, 4), z(16, 5, 2)], false)
            .unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        assert!(neck.forward_t(&[z(4, 16, 8), z(8, 8, 4)], false).is_err());
        assert!(neck
            .forward_t(&[z(5, 16, 8), z(8, 8, 4), z(16, 4, 2)], false)
            .is_err());
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let cfg = PanetFpnConfig::panet();
        assert!(matches!(
            PanetFpn::new(&cfg, &specs()[..1], vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let bad = [FeatureSpec::new(4, 4), FeatureSpec::new(8, 16)];
        assert!(matches!(
            PanetFpn::new(&cfg, &bad, vb.clone()),
            Err(Error::InvalidConfig(_))
        ));
        let cfg = PanetFpnConfig {
            gn_groups: 3,
            ..cfg
        };
        assert!(PanetFpn::new(&cfg, &specs(), vb).is_err());
    }
}
