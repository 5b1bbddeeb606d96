//! PANet's RoI heads ("Path Aggregation Network for Instance Segmentation", Liu et al., CVPR
//! 2018), as the official code (ShuLiu1993/PANet, Detectron.pytorch) computes them:
//!
//! - [`PanetBoxHead`]: adaptive feature pooling (every RoI from every level N2..N5), per-level
//!   conv + GN + ReLU, element-wise max, shared convs, fc 1024, class scores and class-specific
//!   box deltas (`fast_rcnn_heads.py::roi_Xconv1fc_gn_head_panet`, `fast_rcnn_outputs`);
//! - [`PanetMaskHead`]: adaptive feature pooling and fully-connected fusion
//!   (`mask_rcnn_heads.py::mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff`, `mask_rcnn_outputs`);
//! - [`postprocess`]: the test-time post-processing of `lib/core/test.py` (box decoding with
//!   weights (10, 10, 5, 5), clipping, per-class score threshold and NMS, the per-image limit,
//!   masks of the detections pasted into the image), returning [`Detections`];
//! - [`PanetRoiHeads`]: the three together, from proposals to [`Detections`].
//!
//! Key names are the official checkpoint's (`Box_Head.*`, `Box_Outs.*`, `Mask_Head.*`,
//! `Mask_Outs.*`), so a PANet state dict loads with `vb` at its root.
//!
//! # Shapes
//! Features: N2..N5, `N x C x H_l x W_l` (strides 4..32); proposals: boxes `[x1, y1, x2, y2]` in
//! network-input pixels of one image. Box head: `K x 81` logits, `K x 324` deltas; mask head:
//! `K x 81 x 28 x 28` logits; detections: boxes in original-image pixels, binary masks of the
//! original image size.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use segkit_core::FeatureSpec;
//! use segkit_heads::panet::{PanetRoiHeads, PanetRoiHeadsConfig};
//! let dev = Device::Cpu;
//! let specs: Vec<_> = (2..=5).map(|l| FeatureSpec::new(64, 1 << l)).collect();
//! let mut cfg = PanetRoiHeadsConfig::panet_coco();
//! cfg.box_head.conv_dim = 64;
//! cfg.box_head.fc_dim = 32;
//! cfg.mask_head.as_mut().unwrap().dim = 64;
//! let heads = PanetRoiHeads::new(&cfg, &specs, candle_nn::VarBuilder::zeros(DType::F32, &dev)).unwrap();
//! let feats: Vec<_> = (2..=5)
//!     .map(|l| Tensor::zeros((1, 64, 128 >> l, 128 >> l), DType::F32, &dev).unwrap())
//!     .collect();
//! let proposals = [[10.0f32, 10.0, 60.0, 50.0], [0.0, 0.0, 127.0, 127.0]];
//! // Zero weights give uniform scores (1/81 < 0.05): no detection, an empty valid result.
//! let dets = heads.detect(&feats, &proposals, 0, 1.0, (128, 128)).unwrap();
//! assert!(dets.is_empty());
//! ```

mod box_head;
mod mask_head;
pub mod postprocess;
mod roi_heads;
#[cfg(test)]
mod tests;

pub use box_head::{PanetBoxHead, PanetBoxHeadConfig, PanetBoxHeadOutput};
pub use mask_head::{PanetMaskHead, PanetMaskHeadConfig};
pub use postprocess::{Detections, PanetDetectionConfig};
pub use roi_heads::{PanetRoiHeads, PanetRoiHeadsConfig, PanetRoiHeadsOutput};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use segkit_core::nn::{ConvModuleConfig, ConvNormAct, Norm};
use segkit_core::ops::Activation;
use segkit_core::{Error, FeatureSpec, Result};

/// `1 / stride` per RoI level and the common channel count; errors unless the levels have equal
/// channels and strictly increasing positive strides.
fn level_scales(what: &str, inputs: &[FeatureSpec]) -> Result<(Vec<f32>, usize)> {
    let Some(first) = inputs.first() else {
        return Err(Error::InvalidConfig(format!("{what}: no RoI levels given")));
    };
    for (i, s) in inputs.iter().enumerate() {
        let bad_stride = s.stride == 0 || (i > 0 && s.stride <= inputs[i - 1].stride);
        if s.channels != first.channels || bad_stride {
            return Err(Error::InvalidConfig(format!(
                "{what}: RoI level {i} has {s:?}; every level needs {} channels and a stride \
                 above the previous level's",
                first.channels
            )));
        }
    }
    let scales = inputs
        .iter()
        .map(|s| (1.0 / s.stride as f64) as f32)
        .collect();
    Ok((scales, first.channels))
}

/// `Sequential(Conv2d(3x3, bias=False), GroupNorm, ReLU)` with the conv at `conv_vb` and the
/// norm at `norm_vb`.
fn gn_conv(
    cin: usize,
    cout: usize,
    dilation: usize,
    groups: usize,
    eps: f64,
    conv_vb: VarBuilder<'_>,
    norm_vb: VarBuilder<'_>,
) -> Result<ConvNormAct> {
    let cfg = ConvModuleConfig::new(cin, cout, 3)
        .padding(dilation)
        .dilation(dilation)
        .bias(false)
        .norm(Some(Norm::GroupNorm { groups, eps }))
        .act(Activation::Relu);
    ConvNormAct::new_with_paths(&cfg, conv_vb, norm_vb)
}

/// PANet's fusion: `convs[l]` on level `l`'s pooled features (`pooled(l)`, built on demand),
/// folded into an element-wise max.
fn fuse_levels(
    convs: &[ConvNormAct],
    mut pooled: impl FnMut(usize) -> Result<Tensor>,
    train: bool,
) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (l, c) in convs.iter().enumerate() {
        let y = c.forward_t(&pooled(l)?, train)?;
        acc = Some(match acc {
            None => y,
            Some(a) => a.maximum(&y)?,
        });
    }
    acc.ok_or_else(|| Error::InvalidArgument("PANet fusion over zero levels".into()))
}

/// `features` must hold one map per RoI level (`levels` of them); `head` names the caller.
fn check_levels(head: &str, levels: usize, features: &[Tensor]) -> Result<()> {
    if features.len() != levels {
        return Err(Error::InvalidArgument(format!(
            "PANet {head}: expected {levels} feature maps (one per RoI level), got {}",
            features.len()
        )));
    }
    Ok(())
}

/// `pooled` must hold one `K x channels x r x r` tensor per level (`levels` of them).
fn check_pooled(
    head: &str,
    levels: usize,
    channels: usize,
    r: usize,
    pooled: &[Tensor],
) -> Result<()> {
    let want = [channels, r, r];
    if pooled.len() != levels
        || pooled
            .iter()
            .any(|p| p.rank() != 4 || p.dims()[1..] != want)
    {
        return Err(Error::InvalidArgument(format!(
            "PANet {head}: expected {levels} pooled tensors of K x {channels} x {r} x {r}, got {:?}",
            pooled.iter().map(|p| p.dims().to_vec()).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// A `0 x n` tensor.
fn empty_rows(n: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros((0, n), dtype, dev)?)
}
