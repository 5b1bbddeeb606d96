//! segkit-necks: components that turn a backbone's multi-scale features into other multi-scale
//! features.
//!
//! Each neck is built from the [`segkit_core::FeatureSpec`]s of the features it consumes and
//! reports its own through [`segkit_core::Neck::output_specs`], so heads are built from the
//! neck's specs and nobody copies a channel count by hand. Parameter names equal the reference
//! checkpoints' state-dict keys.
//!
//! - [`jpu`]: FastFCN's Joint Pyramid Upsampling (mmseg `necks/jpu.py` keys; official FastFCN
//!   and mmseg conventions as presets).
//! - [`fpn`]: the plain Feature Pyramid Network with torchvision
//!   (`ops/feature_pyramid_network.py`) or mmdet / mmseg (`necks/fpn.py`) key names, optional
//!   extra levels.
//! - [`panet`]: PANet's pyramid as the official code computes it (Detectron's FPN with GN,
//!   bottom-up path augmentation N2..N5, P6 by max pooling; official key names).
//! - [`pafpn`]: mmdet's `PAFPN` (a different bottom-up path, mmdet key names).
//! - [`msdeform`]: the multi-scale deformable-attention pixel decoder of OneFormer / Mask2Former
//!   (transformers' `OneFormerPixelDecoder` keys), with a CPU kernel for the attention core.
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod fpn;
pub mod jpu;
pub mod msdeform;
pub mod pafpn;
pub mod panet;

pub use fpn::{ExtraLevels, ExtraSource, Fpn, FpnConfig, FpnKeyStyle};
pub use jpu::{ConcatOrder, Jpu, JpuConfig, JpuOutput, Passthrough};
pub use msdeform::{
    multi_scale_deformable_attention, MsDeformAttn, MsDeformAttnPixelDecoder,
    MsDeformAttnPixelDecoderConfig, PixelDecoderOutput,
};
pub use pafpn::{PaFpn, PaFpnConfig};
pub use panet::{PanetFpn, PanetFpnConfig, PanetFpnOutput};

use candle_core::Tensor;
use segkit_core::FeatureSpec;

/// Errors of segkit-necks: segkit-core's [`segkit_core::Error`], the one error type of segkit's
/// component crates (so a missing weight, a shape or a mis-wiring is matched the same way
/// whichever component reported it; see [`segkit_core::error`]).
pub use segkit_core::Error;

/// `Result` with segkit-necks's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `features` match `specs`: same count, rank 4, the spec's channel count and one
/// batch size, non-empty spatial size.
pub(crate) fn check_features(
    what: &'static str,
    features: &[Tensor],
    specs: &[FeatureSpec],
) -> Result<()> {
    if features.len() != specs.len() {
        return Err(Error::WrongInputCount {
            what,
            expected: specs.len(),
            got: features.len(),
        });
    }
    let mut batch = None;
    for (i, (t, s)) in features.iter().zip(specs).enumerate() {
        let dims = t.dims();
        let &[n, c, h, w] = dims else {
            return Err(segkit_core::Error::shape(
                format!("{what} input {i} (N x C x H x W)"),
                &[1, s.channels, 1, 1],
                dims,
            ));
        };
        if c != s.channels {
            return Err(segkit_core::Error::shape(
                format!("{what} input {i} channels"),
                &[s.channels],
                &[c],
            ));
        }
        if h == 0 || w == 0 {
            return Err(segkit_core::Error::InvalidArgument(format!(
                "{what} input {i} has an empty spatial size {h} x {w}"
            )));
        }
        match batch {
            None => batch = Some(n),
            Some(b) if b != n => {
                return Err(segkit_core::Error::shape(
                    format!("{what} input {i} batch size"),
                    &[b],
                    &[n],
                ))
            }
            _ => {}
        }
    }
    Ok(())
}
