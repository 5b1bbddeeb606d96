//! How components describe their outputs to each other, and the traits that connect them.
//!
//! A backbone reports one [`FeatureSpec`] per output; a neck is built from those specs and
//! reports its own; a head is built from the neck's (or the backbone's). No component copies a
//! channel count by hand (the idea of detectron2's `ShapeSpec`).

use candle_core::Tensor;

use crate::Result;

/// Channels and stride of one feature map, as its producer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FeatureSpec {
    /// Number of channels (the `C` of `N x C x H x W`).
    pub channels: usize,
    /// Ratio of input size to this map's size (4 for C2 of a ResNet, 32 for an undilated C5).
    pub stride: usize,
}

impl FeatureSpec {
    /// A spec with `channels` channels at `stride`.
    pub const fn new(channels: usize, stride: usize) -> Self {
        Self { channels, stride }
    }
}

/// A multi-scale feature extractor (ResNet, Swin, ...).
///
/// `forward_features` returns one tensor per entry of [`Backbone::feature_specs`], in that order,
/// finest first.
pub trait Backbone: Send + Sync {
    /// Channels and strides of the returned features, finest first.
    fn feature_specs(&self) -> Vec<FeatureSpec>;
    /// Names of the returned features (`c2`..`c5` for ResNet), same order as the specs.
    fn feature_names(&self) -> Vec<String>;
    /// Runs the backbone on an `N x 3 x H x W` batch. `train` selects batch statistics for
    /// BatchNorm and enables dropout / drop-path.
    fn forward_features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>>;
}

/// A component that turns multi-scale features into other multi-scale features (FPN, JPU, ...).
pub trait Neck: Send + Sync {
    /// Specs of the outputs, finest first.
    fn output_specs(&self) -> Vec<FeatureSpec>;
    /// Runs the neck on features matching the specs it was built from.
    fn forward_t(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>>;
}

/// A dense-prediction head that maps features to per-pixel class logits.
pub trait DecodeHead: Send + Sync {
    /// Number of output classes (channels of the logits).
    fn num_classes(&self) -> usize;
    /// Output stride of the logits relative to the input image.
    fn output_stride(&self) -> usize;
    /// Runs the head on the features it was built for and returns `N x K x h x w` logits.
    fn forward_t(&self, features: &[Tensor], train: bool) -> Result<Tensor>;
}
