//! The gated convolution layer (GCL) of Gated-SCNN, as the official code's
//! `my_functionals/GatedSpatialConv.py` (`GatedSpatialConv2d`, nv-tlabs/GSCNN) computes it.
//!
//! `alpha = sigmoid(BN_1(conv_{C+1->1}(ReLU(conv_{C+1->C+1}(BN_{C+1}(cat[s, r]))))))`, with `s`
//! the shape-stream features (`C` channels) and `r` the one-channel regular-stream side output;
//! both gate convs are 1x1 with bias. The output is `conv_{C->C}(s * (1 + alpha))`, a 1x1 conv
//! without bias.
//!
//! Keys under the layer's path: `weight` (the output conv, `C x C x 1 x 1`),
//! `_gate_conv.0.*` (BatchNorm C+1), `_gate_conv.1.{weight,bias}`, `_gate_conv.3.{weight,bias}`,
//! `_gate_conv.4.*` (BatchNorm 1).
//!
//! # Shapes
//! `s`: `N x C x H x W`, `r`: `N x 1 x H x W` -> output `N x C x H x W`, alpha `N x 1 x H x W`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_heads::gscnn::GatedSpatialConv;
//! let dev = Device::Cpu;
//! let vb = candle_nn::VarBuilder::zeros(DType::F32, &dev);
//! let gcl = GatedSpatialConv::new(8, 1e-5, vb).unwrap();
//! let s = Tensor::zeros((1, 8, 5, 7), DType::F32, &dev).unwrap();
//! let r = Tensor::zeros((1, 1, 5, 7), DType::F32, &dev).unwrap();
//! let o = gcl.forward_t(&s, &r, false).unwrap();
//! assert_eq!((o.out.dims(), o.alpha.dims()), (&[1, 8, 5, 7][..], &[1, 1, 5, 7][..]));
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{BatchNormAct, ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation, Conv2dParams};

use crate::Result;

/// The output of a [`GatedSpatialConv`]: the gated features and the gate's attention map.
#[derive(Debug, Clone)]
pub struct GclOutput {
    /// `conv(s * (1 + alpha))`, `N x C x H x W`.
    pub out: Tensor,
    /// The gate `alpha`, `N x 1 x H x W`, in (0, 1).
    pub alpha: Tensor,
}

/// Gated-SCNN's `GatedSpatialConv2d` with its defaults (1x1, no bias); see the module docs.
pub struct GatedSpatialConv {
    channels: usize,
    bn_in: BatchNormAct,
    conv_a: ConvNormAct,
    conv_b: ConvNormAct,
    weight: Tensor,
}

impl GatedSpatialConv {
    /// A GCL over `channels` shape-stream channels, BatchNorm epsilon `bn_eps`.
    pub fn new(channels: usize, bn_eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        let g = vb.pp("_gate_conv");
        let c1 = channels + 1;
        let a = ConvModuleConfig::new(c1, c1, 1).norm(None);
        let b = ConvModuleConfig::new(c1, 1, 1)
            .norm(Some(Norm::BatchNorm {
                eps: bn_eps,
                momentum: 0.1,
            }))
            .bias(true)
            .act(Activation::Sigmoid);
        Ok(Self {
            channels,
            bn_in: BatchNormAct::new(c1, bn_eps, Activation::None, g.pp(0))?,
            conv_a: ConvNormAct::new_with_paths(&a, g.pp(1), g.pp("none"))?,
            conv_b: ConvNormAct::new_with_paths(&b, g.pp(3), g.pp(4))?,
            weight: vb.get((channels, channels, 1, 1), "weight")?,
        })
    }

    /// Gates `s` with the side output `r`; `train` uses BatchNorm batch statistics.
    pub fn forward_t(&self, s: &Tensor, r: &Tensor, train: bool) -> Result<GclOutput> {
        if s.rank() != 4 || s.dim(1)? != self.channels {
            let (h, w) = (1, 1);
            return Err(segkit_core::Error::shape(
                "GatedSpatialConv input",
                &[1, self.channels, h, w],
                s.dims(),
            ));
        }
        let x = Tensor::cat(&[s, r], 1)?;
        let x = self.bn_in.forward_t(&x, train)?;
        let x = self.conv_a.forward_t(&x, train)?;
        let alpha = self.conv_b.forward_t(&x, train)?;
        let gated = s.broadcast_mul(&(&alpha + 1.0)?)?;
        let p = Conv2dParams {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        };
        let out = ops::conv2d(&gated, &self.weight, None, p, Activation::None)?;
        Ok(GclOutput { out, alpha })
    }
}
