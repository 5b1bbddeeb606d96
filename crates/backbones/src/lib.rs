//! segkit-backbones: multi-scale feature extractors for segmentation.
//!
//! Each backbone implements [`segkit_core::Backbone`]: it reports a [`segkit_core::FeatureSpec`]
//! (channels, stride) per output so that necks and heads are built from the specs, never from
//! hand-copied channel counts. Parameter names equal the reference checkpoints' state-dict keys.
//!
//! - [`resnet`]: ResNet-18/34/50/101/152 with torchvision (V1b), mmseg V1c (deep stem) and
//!   V1d (deep stem + average-pool shortcut, mmseg or timm conventions) stems, output stride
//!   8 / 16 / 32 through dilation, contracted dilation and multi-grid.
//! - [`resnet_caffe`]: Detectron's caffe-style (MSRA) ResNet-50/101/152 (stride on the 1x1
//!   conv, frozen `AffineChannel2d` norms, BGR mean input), PANet's official key names.
//! - [`swin`]: Swin Transformer T / S / B / L (HF `SwinBackbone` or mmseg `SwinTransformer`
//!   keys and numerics, stages 1..4 at strides 4 / 8 / 16 / 32), configured from an HF
//!   `backbone_config` or an mmseg backbone dict.
//! - [`wider_resnet`]: WideResNet38-A2 (pre-activation blocks, output stride 8), Gated-SCNN's
//!   regular stream with the official key names (m1..m7).
#![deny(missing_docs)]

/// The README's usage example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod resnet;
pub mod resnet_caffe;
pub mod swin;
pub mod wider_resnet;

pub use resnet::{KeyStyle, ResNet, ResNetConfig, ResNetOutput, Stem};
pub use resnet_caffe::{subtract_pixel_means, CaffeResNet, CaffeResNetConfig, PIXEL_MEANS_BGR};
pub use swin::{HiddenAct, Swin, SwinConfig, SwinKeyStyle, SwinOutput};
pub use wider_resnet::{WideResNet, WideResNetConfig, WideResNetOutput};

/// Errors of segkit-backbones: segkit-core's [`segkit_core::Error`], the one error type of segkit's
/// component crates (so a missing weight, a shape or a mis-wiring is matched the same way
/// whichever component reported it; see [`segkit_core::error`]).
pub use segkit_core::Error;

/// `Result` with segkit-backbones's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
