//! Gated-SCNN's shape stream, as the official `network/gscnn.py` (`GSCNN.forward`,
//! nv-tlabs/GSCNN) wires it.
//!
//! Side outputs `dsn3`, `dsn4`, `dsn7` (1x1 convs to one channel, with bias) on the three
//! regular-stream maps, each upsampled bilinearly (`align_corners=True`) to the input size.
//! The stream: `res1` (a ResNet `BasicBlock` on the shape input) -> upsample to the input size
//! (`align_corners=True`) -> `d1` (1x1, bias) -> `gate1(., s3)` -> `res2` -> `d2` ->
//! `gate2(., s4)` -> `res3` -> `d3` -> `gate3(., s7)` -> `fuse` (1x1 to one channel, no bias)
//! -> sigmoid = `edge_out`. The reference upsamples the shape input (WRN38's `m1`, already at
//! the input size) before `res1`; running `res1` at the input's own stride and upsampling after
//! it is the same computation there, and keeps a stride-4 input (the ResNet regular stream)
//! cheap. The other upsamples of the reference are identities (their maps are already at the
//! input size) and are skipped. Where the shape input is smaller than the input (the ResNet
//! regular stream), `d1` runs before that upsample instead of after it: a 1x1 conv commutes
//! with a bilinear resize, and it narrows the map 8x (see `upsample_then_1x1`).
//!
//! `dsn1` (1x1 to one channel on the shape input) is in the reference module and its
//! checkpoints but unused by its forward; it is loaded (so that a checkpoint's every key has a
//! place) and never run.
//!
//! Keys: `dsn1`, `dsn3`, `dsn4`, `dsn7`, `res{1,2,3}.{conv1,bn1,conv2,bn2}`, `d{1,2,3}`,
//! `gate{1,2,3}` ([`super::GatedSpatialConv`]), `fuse.weight`.
//!
//! # Shapes
//! shape input `N x C0 x H/s x W/s`, side inputs `N x C_i x h_i x w_i` -> `edge_out`
//! `N x 1 x H x W` and three gates `N x 1 x H x W`.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::{self, Activation};
use segkit_core::FeatureSpec;

use super::gcl::GatedSpatialConv;
use crate::Result;

/// Bilinear resize to `size`, skipped when the map already has it (PyTorch's same-size
/// `interpolate` copies the input).
pub(crate) fn upsample(x: &Tensor, size: (usize, usize), align_corners: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == size {
        return Ok(x.clone());
    }
    ops::resize_bilinear(x, size, align_corners)
}

/// `d(upsample(x))` for a 1x1 conv `d` with a bias and no norm or activation.
///
/// A bilinear resize and such a conv commute: each output pixel of the resize is a weighted
/// sum of input pixels whose weights sum to one, and the conv is affine per pixel. When the
/// map must grow and `d` narrows it, `d` runs first, on the small map: for the ResNet regular
/// stream (a 256-channel stride-4 shape input, `d1` to 32 channels) the resize writes 8x fewer
/// bytes and the conv does 16x fewer FLOPs. The values agree up to float rounding; the
/// reference's order is kept otherwise.
fn upsample_then_1x1(
    x: &Tensor,
    d: &ConvNormAct,
    size: (usize, usize),
    train: bool,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let cfg = d.config();
    let affine = cfg.kernel_size == 1
        && cfg.stride == 1
        && cfg.padding == 0
        && cfg.groups == 1
        && cfg.norm.is_none()
        && cfg.act == Activation::None;
    if (h, w) != size && affine && cfg.out_channels < c {
        return upsample(&d.forward_t(x, train)?, size, true);
    }
    d.forward_t(&upsample(x, size, true)?, train)
}

/// A torchvision-style `BasicBlock` (`conv1`, `bn1`, `conv2`, `bn2`, identity shortcut).
struct BasicBlock {
    conv1: ConvNormAct,
    conv2: ConvNormAct,
}

impl BasicBlock {
    fn new(c: usize, norm: Norm, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = ConvModuleConfig::new(c, c, 3).norm(Some(norm));
        Ok(Self {
            conv1: ConvNormAct::new_with_paths(&cfg, vb.pp("conv1"), vb.pp("bn1"))?,
            conv2: ConvNormAct::new_with_paths(
                &cfg.clone().act(Activation::None),
                vb.pp("conv2"),
                vb.pp("bn2"),
            )?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv1.forward_t(x, train)?;
        let y = self.conv2.forward_t(&y, train)?;
        ops::add_act(&y, x, Activation::Relu)
    }
}

fn conv1x1(i: usize, o: usize, bias: bool, vb: VarBuilder<'_>) -> Result<ConvNormAct> {
    let cfg = ConvModuleConfig::new(i, o, 1)
        .norm(None)
        .bias(bias)
        .act(Activation::None);
    let none = vb.pp("none");
    ConvNormAct::new_with_paths(&cfg, vb, none)
}

/// `[f(0), f(1), f(2)]`, stopping at the first error.
fn three<T>(f: impl Fn(usize) -> Result<T>) -> Result<[T; 3]> {
    Ok([f(0)?, f(1)?, f(2)?])
}

/// The shape stream's outputs.
#[derive(Debug, Clone)]
pub struct ShapeStreamOutput {
    /// `edge_out`: the sigmoided boundary map, `N x 1 x H x W`.
    pub edge: Tensor,
    /// The three gates' attention maps (`gate1`..`gate3`), each `N x 1 x H x W`.
    pub alphas: [Tensor; 3],
}

/// The shape stream (see the module docs).
pub struct ShapeStream {
    #[allow(dead_code)] // loaded, never run: as in the reference
    dsn1: ConvNormAct,
    dsn: [ConvNormAct; 3],
    res: [BasicBlock; 3],
    d: [ConvNormAct; 3],
    gates: [GatedSpatialConv; 3],
    fuse: ConvNormAct,
}

impl ShapeStream {
    /// Built from the specs of the shape input and the three side inputs; `widths` are the
    /// stream's channels after `d1`, `d2`, `d3` (official: 32, 16, 8).
    pub fn new(
        shape: FeatureSpec,
        sides: [FeatureSpec; 3],
        widths: [usize; 3],
        norm: Norm,
        bn_eps: f64,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let dsn_names = ["dsn3", "dsn4", "dsn7"];
        let ins = [shape.channels, widths[0], widths[1]];
        Ok(Self {
            dsn1: conv1x1(shape.channels, 1, true, vb.pp("dsn1"))?,
            dsn: three(|i| conv1x1(sides[i].channels, 1, true, vb.pp(dsn_names[i])))?,
            res: three(|i| BasicBlock::new(ins[i], norm, vb.pp(format!("res{}", i + 1))))?,
            d: three(|i| conv1x1(ins[i], widths[i], true, vb.pp(format!("d{}", i + 1))))?,
            gates: three(|i| {
                GatedSpatialConv::new(widths[i], bn_eps, vb.pp(format!("gate{}", i + 1)))
            })?,
            fuse: conv1x1(widths[2], 1, false, vb.pp("fuse"))?,
        })
    }

    /// Runs the stream on the shape input and the three side inputs, at input size `size`.
    pub fn forward_t(
        &self,
        shape: &Tensor,
        sides: [&Tensor; 3],
        size: (usize, usize),
        train: bool,
    ) -> Result<ShapeStreamOutput> {
        let mut cs = shape.clone();
        let mut alphas = Vec::with_capacity(3);
        let stages = self.dsn.iter().zip(&self.res).zip(&self.d).zip(&self.gates);
        for ((((dsn, res), d), gate), side) in stages.zip(sides) {
            let s = upsample(&dsn.forward_t(side, train)?, size, true)?;
            cs = res.forward(&cs, train)?;
            cs = upsample_then_1x1(&cs, d, size, train)?;
            let g = gate.forward_t(&cs, &s, train)?;
            cs = g.out;
            alphas.push(g.alpha);
        }
        let cs = self.fuse.forward_t(&cs, train)?;
        let edge = ops::activate(&upsample(&cs, size, true)?, Activation::Sigmoid)?;
        let mut it = alphas.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| crate::Error::InvalidConfig("three gates".into()))
        };
        Ok(ShapeStreamOutput {
            edge,
            alphas: [next()?, next()?, next()?],
        })
    }
}
