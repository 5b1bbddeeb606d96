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

    /// The same as [`Backbone::forward_features`] under the name every segkit trait uses for
    /// its forward pass (`Neck::forward_t`, `DecodeHead::forward_t`): one name to call on
    /// any part. Implementors implement `forward_features`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.forward_features(x, train)
    }
}

/// A component that turns multi-scale features into other multi-scale features (FPN, JPU, ...).
pub trait Neck: Send + Sync {
    /// Specs of the outputs, finest first.
    fn output_specs(&self) -> Vec<FeatureSpec>;
    /// Runs the neck on features matching the specs it was built from.
    fn forward_t(&self, features: &[Tensor], train: bool) -> Result<Vec<Tensor>>;
}

/// What one head output predicts, which fixes the target a loss compares it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum OutputKind {
    /// Per-pixel class logits `N x K x h x w` at the head's output stride, scored against the
    /// label map after a bilinear resize to it (mmseg `BaseDecodeHead.loss_by_feat`).
    PixelLogits,
    /// Per-image class logits `N x K`, scored against which classes each image's label map
    /// contains (EncNet's semantic-encoding loss, mmseg `EncHead._convert_to_onehot_labels`).
    ClassPresence,
}

/// Name and kind of one output of a [`DecodeHead`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct HeadOutputSpec {
    /// The output's name ([`HeadOutput::LOGITS`] for the prediction; `pam`, `cam`, `se`, ...).
    pub name: String,
    /// What it predicts.
    pub kind: OutputKind,
}

impl HeadOutputSpec {
    /// An output named `name` of kind `kind`.
    pub fn new(name: impl Into<String>, kind: OutputKind) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }

    /// The prediction every head has: [`HeadOutput::LOGITS`], per-pixel logits.
    pub fn logits() -> Self {
        Self::new(HeadOutput::LOGITS, OutputKind::PixelLogits)
    }
}

/// Every output of one [`DecodeHead`] forward pass, by name: the prediction (`logits`) and the
/// outputs only training scores (DANet's per-branch logits, EncNet's class-presence logits).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use segkit_core::HeadOutput;
/// let t = |c| Tensor::zeros((1, c, 2, 2), DType::F32, &Device::Cpu).unwrap();
/// let out = HeadOutput::new(t(3)).with("pam", t(3));
/// assert_eq!(out.names(), ["logits", "pam"]);
/// assert_eq!(out.get("pam").unwrap().dims(), &[1, 3, 2, 2]);
/// assert!(out.get("cam").is_none());
/// ```
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// The prediction, `N x K x h x w` at the head's output stride (what inference uses).
    pub logits: Tensor,
    /// The other outputs by name, in the order of [`DecodeHead::output_names`] after `logits`.
    pub extra: Vec<(String, Tensor)>,
}

impl HeadOutput {
    /// The name of [`HeadOutput::logits`].
    pub const LOGITS: &'static str = "logits";

    /// An output with only the prediction.
    pub fn new(logits: Tensor) -> Self {
        Self {
            logits,
            extra: Vec::new(),
        }
    }

    /// Adds the output `name`.
    pub fn with(mut self, name: impl Into<String>, t: Tensor) -> Self {
        self.extra.push((name.into(), t));
        self
    }

    /// The output `name` (`logits` is the prediction), if the head produced it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        if name == Self::LOGITS {
            return Some(&self.logits);
        }
        self.extra.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The names of the outputs, `logits` first.
    pub fn names(&self) -> Vec<&str> {
        let mut v = vec![Self::LOGITS];
        v.extend(self.extra.iter().map(|(n, _)| n.as_str()));
        v
    }

    /// Every output with its name, `logits` first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        std::iter::once((Self::LOGITS, &self.logits))
            .chain(self.extra.iter().map(|(n, t)| (n.as_str(), t)))
    }
}

/// A dense-prediction head that maps features to per-pixel class logits, plus whatever other
/// outputs its training losses need (every output by name: [`HeadOutput`]).
pub trait DecodeHead: Send + Sync {
    /// Number of output classes (channels of the logits).
    fn num_classes(&self) -> usize;
    /// Output stride of the logits relative to the input image.
    fn output_stride(&self) -> usize;
    /// `align_corners` of the head's bilinear resizes, also used to resize its logits to the
    /// image or the label map (mmseg's `self.align_corners`).
    fn align_corners(&self) -> bool;
    /// Name and kind of every output [`DecodeHead::forward_t`] returns, [`HeadOutput::LOGITS`]
    /// first. Default: only the logits (heads with more outputs, such as DANet's, override it).
    fn outputs(&self) -> Vec<HeadOutputSpec> {
        vec![HeadOutputSpec::logits()]
    }
    /// The names of [`DecodeHead::outputs`].
    fn output_names(&self) -> Vec<String> {
        self.outputs().into_iter().map(|o| o.name).collect()
    }
    /// Runs the head on the features it was built for and returns every output: the
    /// `N x K x h x w` logits and the extra outputs of [`DecodeHead::outputs`]. `train` enables
    /// dropout and BatchNorm batch statistics.
    fn forward_t(&self, features: &[Tensor], train: bool) -> Result<HeadOutput>;
}
